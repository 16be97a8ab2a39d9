// Package workertest drives a worker service from a test the way the orchestrator
// does: it publishes step commands and reads back the step events the service stored.
package workertest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Send publishes one step command of job for service and op with args (marshalled to
// JSON; nil sends none), attempt 1, a deadline a minute away, and returns the command.
func Send(t testing.TB, js jetstream.JetStream, service contracts.Service, op contracts.Op, job, step string, args any) contracts.StepCommand {
	t.Helper()
	return SendAttempt(t, js, service, op, job, step, 1, args)
}

// SendAttempt is Send for the given attempt of the step, as the orchestrator's retry
// would send it.
func SendAttempt(t testing.TB, js jetstream.JetStream, service contracts.Service, op contracts.Op, job, step string, attempt int, args any) contracts.StepCommand {
	t.Helper()
	cmd := contracts.StepCommand{
		Schema: contracts.SchemaStepCommand, JobID: job, Action: contracts.ActionUpdate, Step: step, Attempt: attempt,
		Service: service, Op: op, Deadline: time.Now().Add(time.Minute),
	}
	if args != nil {
		raw, err := json.Marshal(args)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Args = raw
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Publish(ctx, js, contracts.CommandSubject(service, op), cmd, contracts.CommandMsgID(job, step, cmd.Attempt), job); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// StepEvents waits until at least n step events of job are stored, or timeout passes,
// and returns those stored, in order.
func StepEvents(t testing.TB, js jetstream.JetStream, job string, n int, timeout time.Duration) []contracts.StepEvent {
	t.Helper()
	// timeout bounds the wait for events, not the consumer's creation: on a busy
	// machine that round trip alone can take longer than a short poll's timeout.
	setup, cancelSetup := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelSetup()
	cons, err := js.OrderedConsumer(setup, contracts.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{contracts.StepEventSubject(job)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	it, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	var evs []contracts.StepEvent
	for len(evs) < n {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			break // timeout: the caller checks what arrived
		}
		var ev contracts.StepEvent
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatalf("step event %s: %v", msg.Data(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// ByStep indexes events by step name (the last event of each step wins).
func ByStep(evs []contracts.StepEvent) map[string]contracts.StepEvent {
	m := make(map[string]contracts.StepEvent, len(evs))
	for _, ev := range evs {
		m[ev.Step] = ev
	}
	return m
}

// Counter returns the value of counter name with exactly the given labels in g, or 0
// when there is none.
func Counter(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
