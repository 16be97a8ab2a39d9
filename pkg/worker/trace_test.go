package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/nats-io/nats.go/jetstream"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// A step runs as a span of its command's trace: every log line of the step names the
// job and the trace, and the step event carries the trace with the step's span as
// parent.
func TestStepRunsInTheCommandsTrace(t *testing.T) {
	f := newFixture(t)
	var logs lockedBuffer
	inStep := make(chan bus.Trace, 1)
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		tr, _ := bus.TraceFrom(ctx)
		logctx.From(ctx).Info("inside the step")
		inStep <- tr
		return Result{}, nil
	}, func(r *Runner) { r.Log = slog.New(slog.NewJSONHandler(&logs, nil)) })

	const traceID, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	ctx := bus.WithTrace(context.Background(), bus.Trace{TraceID: traceID, SpanID: parent})
	cmd := contracts.StepCommand{Schema: contracts.SchemaStepCommand, JobID: "j-trace", Step: "push", Attempt: 1,
		Service: svc, Op: contracts.OpPush, Deadline: time.Now().Add(time.Minute)}
	if err := bus.Publish(ctx, f.js, contracts.CommandSubject(svc, contracts.OpPush), cmd, contracts.CommandMsgID("j-trace", "push", 1), "j-trace"); err != nil {
		t.Fatal(err)
	}
	var tr bus.Trace
	select {
	case tr = <-inStep:
	case <-time.After(10 * time.Second):
		t.Fatal("step did not run")
	}
	if tr.TraceID != traceID || tr.ParentID != parent || tr.SpanID == "" || tr.SpanID == parent {
		t.Errorf("step ran in %+v", tr)
	}
	if evs := f.events("j-trace", 1, 5*time.Second); len(evs) != 1 {
		t.Fatalf("events: %v", evs)
	}
	c, err := f.js.OrderedConsumer(context.Background(), contracts.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{contracts.StepEventSubject("j-trace")}})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.Next(jetstream.FetchMaxWait(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Headers().Get(contracts.HeaderTraceParent); got != bus.TraceParent(traceID, tr.SpanID) {
		t.Errorf("step event traceparent %q, want %q", got, bus.TraceParent(traceID, tr.SpanID))
	}
	if got := msg.Headers().Get(contracts.HeaderCorrelationID); got != "j-trace" {
		t.Errorf("step event correlation id %q", got)
	}
	var inside bool
	for _, l := range logs.lines() {
		if l["msg"] == "inside the step" {
			inside = true
			if l["job_id"] != "j-trace" || l["trace_id"] != traceID || l["span_id"] != tr.SpanID || l["parent_span_id"] != parent {
				t.Errorf("step log line %v", l)
			}
		}
	}
	if !inside {
		t.Errorf("no log line of the step: %v", logs.lines())
	}
}
