package cleanup_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/worker/workertest"
	"github.com/ferrydesk/ferry/services/cleanup"
	"github.com/prometheus/client_golang/prometheus"
)

// TestWiring runs the service against a real JetStream server: remove-staging removes
// a job's staging directory; prune answers (the pruning itself is tested in
// internal/service and, against real hosts, by cmd/ferry's system tests). Both are
// counted by the endpoint metrics.
func TestWiring(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "cleanup")
	reg := prometheus.NewRegistry()
	stagingDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cleanup.Run(ctx, cleanup.Config{StagingDir: stagingDir, DrainTimeout: 5 * time.Second},
			cleanup.Deps{NC: nc, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not stop")
		}
	})

	// remove-staging is real: the job's directory goes, and a job that staged
	// nothing is clean already.
	staged := filepath.Join(stagingDir, "job-staged")
	if err := os.MkdirAll(filepath.Join(staged, "files", "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staged, "files", "sub", "a.bin"), []byte("data"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, j := range []string{"job-staged", "job-never-staged"} {
		workertest.Send(t, js, contracts.ServiceCleanup, contracts.OpRemoveStaging, j, "remove-staging", contracts.RemoveStagingArgs{})
		evs := workertest.StepEvents(t, js, j, 1, 20*time.Second)
		if len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded {
			t.Fatalf("%s: remove-staging events %+v", j, evs)
		}
	}
	if _, err := os.Stat(staged); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging of job-staged still there: %v", err)
	}
	if got := workertest.Counter(t, reg, "ferry_step_executions_total", map[string]string{"op": "remove-staging", "outcome": "succeeded"}); got != 2 {
		t.Errorf("remove-staging succeeded = %v, want 2", got)
	}

	// A leftover that is not one of the job's temporary names is refused, for good,
	// before anything is removed: the step never deletes a host's own files.
	forged := filepath.Join(stagingDir, "job-forged")
	if err := os.MkdirAll(forged, 0o750); err != nil {
		t.Fatal(err)
	}
	workertest.Send(t, js, contracts.ServiceCleanup, contracts.OpRemoveStaging, "job-forged", "remove-staging",
		contracts.RemoveStagingArgs{Leftovers: []contracts.Leftover{{Host: "customer", Dir: "/etc", Names: []string{"passwd"}}}})
	if evs := workertest.StepEvents(t, js, "job-forged", 1, 20*time.Second); len(evs) != 1 || evs[0].Kind != contracts.StepFailed ||
		evs[0].Error == nil || evs[0].Error.Code != contracts.CodeInvalidCommand || evs[0].Error.Retryable || !strings.Contains(evs[0].Error.Message, `"passwd"`) {
		t.Errorf("remove-staging with a forged leftover: %+v", evs)
	}
	if _, err := os.Stat(forged); err != nil {
		t.Errorf("staging removed though the command was refused: %v", err)
	}

	// prune with keep 0 keeps everything and touches no host; with keep set it dials
	// the host under the job's lease: an unknown host fails for good.
	const job = "job-wiring"
	workertest.Send(t, js, contracts.ServiceCleanup, contracts.OpPrune, job, "prune-none", contracts.PruneArgs{Host: "op-pc", Dir: "ferry/logs/c", Keep: 0})
	workertest.Send(t, js, contracts.ServiceCleanup, contracts.OpPrune, job, "prune-unknown", contracts.PruneArgs{Host: "op-pc", Dir: "ferry/logs/c", Keep: 3})
	evs := workertest.ByStep(workertest.StepEvents(t, js, job, 2, 20*time.Second))
	if ev := evs["prune-none"]; ev.Kind != contracts.StepSucceeded || string(ev.Output) != `{"removed":[],"kept":0}` {
		t.Errorf("prune keep 0: %+v (output %s)", ev, ev.Output)
	}
	if ev := evs["prune-unknown"]; ev.Kind != contracts.StepFailed || ev.Error == nil || ev.Error.Code != contracts.CodeNotFound || ev.Error.Retryable ||
		!strings.Contains(ev.Error.Message, "op-pc") {
		t.Errorf("prune on an unknown host: %+v (error %+v)", ev, ev.Error)
	}
	for outcome, want := range map[string]float64{"succeeded": 1, "failed": 1} {
		if got := workertest.Counter(t, reg, "ferry_step_executions_total", map[string]string{"op": "prune", "outcome": outcome}); got != want {
			t.Errorf("prune: ferry_step_executions_total{outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
}
