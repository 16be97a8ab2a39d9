package worker

import (
	"context"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go"
)

type progressKey struct{}

// progress publishes a step's progress for watchers, at most every interval.
type progress struct {
	nc       *nats.Conn
	cmd      contracts.StepCommand
	interval time.Duration

	mu   sync.Mutex
	last time.Time
}

func withProgress(ctx context.Context, nc *nats.Conn, cmd contracts.StepCommand) context.Context {
	return context.WithValue(ctx, progressKey{}, &progress{nc: nc, cmd: cmd, interval: 250 * time.Millisecond})
}

// ReportProgress tells watchers how far a step is (bytes done of total, for file).
// Calls are throttled to a few a second; a final call with done == total always goes out.
// It is safe to call from several goroutines and a no-op outside a step.
func ReportProgress(ctx context.Context, file string, done, total int64) {
	p, ok := ctx.Value(progressKey{}).(*progress)
	if !ok {
		return
	}
	p.mu.Lock()
	now := time.Now()
	if now.Sub(p.last) < p.interval && done != total {
		p.mu.Unlock()
		return
	}
	p.last = now
	p.mu.Unlock()
	m, err := bus.Message(contracts.ProgressSubject(p.cmd.JobID), contracts.Progress{
		Schema: contracts.SchemaProgress, JobID: p.cmd.JobID, Step: p.cmd.Step, Attempt: p.cmd.Attempt,
		File: file, Done: done, Total: total, Time: now.UTC(),
	}, p.cmd.JobID)
	if t, ok := bus.TraceFrom(ctx); ok && err == nil {
		bus.SetTrace(m, t)
	}
	if err == nil {
		_ = p.nc.PublishMsg(m) // best effort: progress is advisory
	}
}
