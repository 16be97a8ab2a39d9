package natsconf_test

import (
	"context"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/bus/natsconf"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestClusterConfig starts the generated three-node configuration (routes with mutual
// TLS) and checks that the orchestrator provisions every stream and bucket with three
// replicas under its permissions, that a submission is stored on all three, and that
// it survives the node the client was connected to.
func TestClusterConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("three servers")
	}
	c := bustest.StartSecureCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	orch, orchErrs := bustest.ConnectAs(t, c.Config(t, string(contracts.ServiceOrchestrator)))
	ojs, _ := jetstream.New(orch)
	if err := bus.Provision(ctx, ojs, bus.Topology{Replicas: 3}); err != nil {
		t.Fatalf("provisioning R3: %v", err)
	}
	kv, err := ojs.KeyValue(ctx, contracts.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; r != 3 {
		t.Errorf("jobs bucket has %d replicas", r)
	}

	// The helpdesk, connected to the first node only, submits a job.
	cfg := c.Nodes[0].Config(t, natsconf.UserHelpdesk)
	hd, hdErrs := bustest.ConnectAs(t, cfg)
	hjs, _ := jetstream.New(hd)
	m := nats.NewMsg(contracts.SubjectJobSubmit)
	m.Data = []byte(`{"schema":"ferry.v1.job-request"}`)
	ack, err := hjs.PublishMsg(ctx, m, jetstream.WithMsgID("r3-job"))
	if err != nil {
		t.Fatalf("helpdesk submitting: %v", err)
	}
	// The ack says a majority of the replicas stored it: the first node may go away.
	hd.Close()
	c.Nodes[0].Shutdown()
	c.Nodes[0].WaitForShutdown()

	cons, err := bus.WaitConsumer(ctx, ojs, contracts.StreamJobs, contracts.ConsumerOrchestratorJobs)
	if err != nil {
		t.Fatal(err)
	}
	var got jetstream.Msg
	for got == nil && ctx.Err() == nil {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			continue
		}
		for msg := range batch.Messages() {
			got = msg
		}
	}
	if got == nil {
		t.Fatal("the submission did not survive the node it was stored on")
	}
	if md, _ := got.Metadata(); md.Sequence.Stream != ack.Sequence || string(got.Data()) != string(m.Data) {
		t.Errorf("got %s (seq %v), want seq %d", got.Data(), md, ack.Sequence)
	}
	if err := got.Ack(); err != nil {
		t.Fatal(err)
	}
	for _, errs := range []<-chan error{orchErrs, hdErrs} {
		for len(errs) > 0 {
			t.Errorf("asynchronous error: %v", <-errs)
		}
	}
	for _, v := range c.Violations() {
		t.Errorf("server: %s", v)
	}
}
