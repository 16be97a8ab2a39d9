package cleanup_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/services/cleanup"
	"github.com/prometheus/client_golang/prometheus"
)

// At start (and then periodically) cleanup removes the staging of finished and unknown
// jobs, and leaves the staging of jobs in flight alone.
func TestSweepRemovesOrphanedStaging(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "cleanup")
	stagingDir := t.TempDir()
	kv, err := js.KeyValue(context.Background(), contracts.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	for id, state := range map[string]contracts.JobState{"job-done": contracts.JobSucceeded, "job-failed": contracts.JobFailed, "job-running": contracts.JobRunning} {
		data, _ := json.Marshal(contracts.Job{Schema: contracts.SchemaJob, ID: id, State: state})
		if _, err := kv.Put(context.Background(), id, data); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"job-done", "job-failed", "job-running", "job-unknown"} {
		if err := os.MkdirAll(filepath.Join(stagingDir, id, "files"), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stagingDir, id, "files", "f"), []byte("x"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cleanup.Run(ctx, cleanup.Config{StagingDir: stagingDir, DrainTimeout: time.Second},
			cleanup.Deps{NC: nc, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	}()
	defer func() { cancel(); <-done }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		left, _ := os.ReadDir(stagingDir)
		if len(left) == 1 && left[0].Name() == "job-running" {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, e := range left {
				names = append(names, e.Name())
			}
			t.Fatalf("staging left: %v, want only job-running", names)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
