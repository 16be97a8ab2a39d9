package bus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The consumer metrics are JetStream's view of a durable consumer, read at scrape time.
func TestConsumerMetrics(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "test")
	ctx := context.Background()
	for i := range 3 {
		cmd := contracts.StepCommand{Schema: contracts.SchemaStepCommand, JobID: "j", Step: "s", Attempt: i + 1}
		if err := bus.Publish(ctx, js, contracts.CommandSubject(contracts.ServiceTransfer, contracts.OpPull), cmd, contracts.CommandMsgID("j", "s", i+1), "j"); err != nil {
			t.Fatal(err)
		}
	}
	consumer := contracts.ConsumerName(contracts.ServiceTransfer)
	cons, err := js.Consumer(ctx, contracts.StreamCommands, consumer)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range batch.Messages() { // delivered, not acknowledged
	}
	// The server updates a filtered consumer's pending count asynchronously after a
	// publish: wait until its info says what the scrape is to show (it read 0 pending
	// once under load, right after the fetch).
	for deadline := time.Now().Add(10 * time.Second); ; {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 2 && info.NumAckPending == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer info: %d pending, %d ack pending; want 2 and 1", info.NumPending, info.NumAckPending)
		}
		time.Sleep(20 * time.Millisecond)
	}

	reg := prometheus.NewPedanticRegistry()
	if err := bus.RegisterConsumerMetrics(reg, js,
		bus.ConsumerRef{Stream: contracts.StreamCommands, Consumer: consumer},
		bus.ConsumerRef{Stream: contracts.StreamCommands, Consumer: "no-such-consumer"}); err != nil {
		t.Fatal(err)
	}
	labels := `{consumer="` + consumer + `",stream="` + contracts.StreamCommands + `"}`
	want := `
# HELP ferry_nats_consumer_ack_pending_messages Messages delivered to the durable consumer and not yet acknowledged (NumAckPending): work in flight.
# TYPE ferry_nats_consumer_ack_pending_messages gauge
ferry_nats_consumer_ack_pending_messages` + labels + ` 1
# HELP ferry_nats_consumer_info_errors_total Scrapes that could not read a durable consumer's info from JetStream.
# TYPE ferry_nats_consumer_info_errors_total counter
ferry_nats_consumer_info_errors_total 1
# HELP ferry_nats_consumer_pending_messages Messages of the durable consumer's stream not yet delivered to it (NumPending): the backlog.
# TYPE ferry_nats_consumer_pending_messages gauge
ferry_nats_consumer_pending_messages` + labels + ` 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"ferry_nats_consumer_pending_messages", "ferry_nats_consumer_ack_pending_messages", "ferry_nats_consumer_info_errors_total"); err != nil {
		t.Error(err)
	}
}
