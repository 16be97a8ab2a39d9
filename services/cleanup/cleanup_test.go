package cleanup_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
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
// a job's staging directory; prune is not implemented yet, so it must fail with
// not_supported (never a pretended success). Both are counted by the endpoint metrics.
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

	const job = "job-wiring"
	ops := []struct {
		op   contracts.Op
		args any
	}{
		{contracts.OpPrune, contracts.PruneArgs{Host: "op-pc", Dir: "backups", Prefix: "app-", Keep: 3}},
	}
	for _, o := range ops {
		workertest.Send(t, js, contracts.ServiceCleanup, o.op, job, string(o.op), o.args)
	}
	evs := workertest.ByStep(workertest.StepEvents(t, js, job, len(ops), 20*time.Second))
	for _, o := range ops {
		ev, ok := evs[string(o.op)]
		switch {
		case !ok:
			t.Errorf("%s: no step event", o.op)
		case ev.Kind != contracts.StepFailed || ev.Error == nil || ev.Error.Code != contracts.CodeNotSupported:
			t.Errorf("%s: event %+v (error %+v), want failed with not_supported", o.op, ev, ev.Error)
		case ev.Service != contracts.ServiceCleanup || ev.Error.Retryable:
			t.Errorf("%s: event %+v", o.op, ev)
		}
		if got := workertest.Counter(t, reg, "ferry_step_executions_total", map[string]string{"op": string(o.op), "outcome": "failed"}); got != 1 {
			t.Errorf("%s: ferry_step_executions_total{outcome=failed} = %v, want 1", o.op, got)
		}
	}
}
