package connector_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/worker/workertest"
	"github.com/ferrydesk/ferry/services/connector"
	"github.com/prometheus/client_golang/prometheus"
)

// TestWiring runs the service against a real JetStream server and sends it one command
// of each operation: none is implemented yet, so each must fail with not_supported
// (never a pretended success), counted by the endpoint metrics.
func TestWiring(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "connector")
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- connector.Run(ctx, connector.Config{DrainTimeout: 5 * time.Second},
			connector.Deps{NC: nc, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
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

	const job = "job-wiring"
	ops := []struct {
		op   contracts.Op
		args any
	}{
		{contracts.OpConnect, contracts.ConnectArgs{Host: "customer-1"}},
		{contracts.OpTunnel, contracts.TunnelArgs{Host: "customer-1", Remote: "127.0.0.1:5432"}},
		{contracts.OpClose, contracts.CloseArgs{}},
	}
	for _, o := range ops {
		workertest.Send(t, js, contracts.ServiceConnector, o.op, job, string(o.op), o.args)
	}
	evs := workertest.ByStep(workertest.StepEvents(t, js, job, len(ops), 20*time.Second))
	for _, o := range ops {
		ev, ok := evs[string(o.op)]
		switch {
		case !ok:
			t.Errorf("%s: no step event", o.op)
		case ev.Kind != contracts.StepFailed || ev.Error == nil || ev.Error.Code != contracts.CodeNotSupported:
			t.Errorf("%s: event %+v (error %+v), want failed with not_supported", o.op, ev, ev.Error)
		case ev.Service != contracts.ServiceConnector || ev.Error.Retryable:
			t.Errorf("%s: event %+v", o.op, ev)
		}
		if got := workertest.Counter(t, reg, "ferry_step_executions_total", map[string]string{"op": string(o.op), "outcome": "failed"}); got != 1 {
			t.Errorf("%s: ferry_step_executions_total{outcome=failed} = %v, want 1", o.op, got)
		}
	}
}
