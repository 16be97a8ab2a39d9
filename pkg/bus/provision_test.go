package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
)

// TestWaitConsumerRidesOutAnOutage binds while the server is away for longer than
// one request may take: the bind must keep trying and succeed once it is back,
// not give up on the first timeout (a worker starting during a leader election or
// a restart would otherwise exit).
func TestWaitConsumerRidesOutAnOutage(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "worker")
	srv.Shutdown()
	srv.WaitForShutdown()

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	bound := make(chan error, 1)
	go func() {
		_, err := bus.WaitConsumer(ctx, js, contracts.StreamCommands, contracts.ConsumerName(contracts.ServiceTransfer))
		bound <- err
	}()
	select {
	case err := <-bound:
		t.Fatalf("bind ended while the server was down: %v", err)
	case <-time.After(7 * time.Second): // longer than one attempt and JetStream's default API timeout
	}
	srv.Restart(t)
	if err := <-bound; err != nil {
		t.Fatalf("bind after the server came back: %v", err)
	}
}

// TestWaitConsumerGivesUpWithTheReason: when ctx ends first, the error says what
// was awaited and the last answer.
func TestWaitConsumerGivesUpWithTheReason(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "worker")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := bus.WaitConsumer(ctx, js, contracts.StreamCommands, "nobody")
	if err == nil {
		t.Fatal("bound a consumer that does not exist")
	}
	want := "consumer nobody on " + contracts.StreamCommands + " not provisioned"
	if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
		t.Errorf("error %q, want it to start %q", got, want)
	}
}

// TestPublishRidesOutAnOutage publishes while the server is away for longer than the
// client library's own retries (two, 250 ms apart): the publish lands once it is
// back, and a second publish with the same id is a duplicate, not a second message.
func TestPublishRidesOutAnOutage(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "helpdesk")
	srv.Shutdown()
	srv.WaitForShutdown()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := bus.Message(contracts.SubjectJobSubmit, map[string]string{"schema": "x"}, "job-1")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := bus.PublishMsg(ctx, js, m, "job-1")
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("publish ended while the server was down: %v", err)
	case <-time.After(3 * time.Second):
	}
	srv.Restart(t)
	if err := <-done; err != nil {
		t.Fatalf("publish after the server came back: %v", err)
	}
	ack, err := bus.PublishMsg(ctx, js, m, "job-1")
	if err != nil || !ack.Duplicate {
		t.Fatalf("second publish with the same id: %+v %v, want a duplicate", ack, err)
	}
	st, err := js.Stream(ctx, contracts.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("%d messages stored, want 1", n)
	}
}
