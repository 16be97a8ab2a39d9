package natsconf_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/bus/natsconf"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// client is one user's connection with the asynchronous errors it receives.
type client struct {
	user string
	nc   *nats.Conn
	js   jetstream.JetStream
	errs <-chan error
}

func connect(t *testing.T, s *bustest.Secure, user string) *client {
	t.Helper()
	nc, errs := s.Connect(t, user)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if !nc.TLSRequired() {
		t.Errorf("%s: connection without TLS", user)
	}
	return &client{user: user, nc: nc, js: js, errs: errs}
}

// denied runs act, which the server must refuse: the client gets a permissions
// violation naming subject. When mustFail, act must not succeed either (a request whose
// publish the server dropped would wait for its deadline: it is cut short once the
// violation is in).
func (c *client) denied(t *testing.T, what, subject string, mustFail bool, act func(ctx context.Context) error) {
	t.Helper()
	for len(c.errs) > 0 {
		<-c.errs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- act(ctx) }()
	violated := false
	for !violated {
		select {
		case e := <-c.errs:
			violated = errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(e.Error(), `"`+subject+`"`)
		case <-ctx.Done():
			t.Errorf("%s: %s: no permissions violation for %s", c.user, what, subject)
			violated = true
		}
	}
	cancel()
	if err := <-done; mustFail && err == nil {
		t.Errorf("%s: %s succeeded", c.user, what)
	}
}

// publish tries a core publish.
func (c *client) publish(t *testing.T, what, subject string) {
	t.Helper()
	c.denied(t, what, subject, false, func(context.Context) error {
		if err := c.nc.Publish(subject, []byte(`{}`)); err != nil {
			return err
		}
		return c.nc.Flush()
	})
}

// jsPublish tries a JetStream publish (it waits for the stream's ack, which never comes).
func (c *client) jsPublish(t *testing.T, what, subject string) {
	t.Helper()
	c.denied(t, what, subject, true, func(ctx context.Context) error {
		_, err := c.js.Publish(ctx, subject, []byte(`{}`))
		return err
	})
}

// subscribe tries a subscription.
func (c *client) subscribe(t *testing.T, what, subject string) {
	t.Helper()
	c.denied(t, what, subject, false, func(context.Context) error {
		sub, err := c.nc.SubscribeSync(subject)
		if err != nil {
			return err
		}
		defer func() { _ = sub.Unsubscribe() }()
		return c.nc.Flush()
	})
}

// deleteStream tries to delete a stream.
func (c *client) deleteStream(t *testing.T, stream string) {
	t.Helper()
	c.denied(t, "delete stream "+stream, "$JS.API.STREAM.DELETE."+stream, true, func(ctx context.Context) error {
		return c.js.DeleteStream(ctx, stream)
	})
}

// readHosts tries to bind the hosts bucket and to read a host directly.
func (c *client) readHosts(t *testing.T) {
	t.Helper()
	kv := "KV_" + contracts.BucketHosts
	c.denied(t, "bind the hosts bucket", "$JS.API.STREAM.INFO."+kv, true, func(ctx context.Context) error {
		_, err := c.js.KeyValue(ctx, contracts.BucketHosts)
		return err
	})
	subject := "$JS.API.DIRECT.GET." + kv + ".$KV." + contracts.BucketHosts + ".customer-1"
	c.denied(t, "read a host", subject, true, func(ctx context.Context) error {
		_, err := c.nc.RequestWithContext(ctx, subject, nil)
		return err
	})
	c.subscribe(t, "watch hosts", "$KV."+contracts.BucketHosts+".>")
}

// fetch tries to pull from a durable consumer.
func (c *client) fetch(t *testing.T, stream, consumer string) {
	t.Helper()
	subject := "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + consumer
	c.denied(t, "fetch from "+consumer, subject, false, func(ctx context.Context) error {
		_, err := c.nc.RequestWithContext(ctx, subject, []byte(`{"batch":1,"no_wait":true}`))
		return err
	})
}

func (c *client) noViolation(t *testing.T) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	for len(c.errs) > 0 {
		t.Errorf("%s: unexpected asynchronous error: %v", c.user, <-c.errs)
	}
}

// TestPermissionsEnforced starts the generated single-node configuration and checks,
// user by user, that what it must do works over TLS and that what it must not do is
// refused with a permissions violation: another service's command subject, deleting a
// stream, the hosts bucket (for whoever does not dial hosts), another's consumer or
// inbox. The real services run against these permissions in cmd/ferry's
// TestSecuredStack.
func TestPermissionsEnforced(t *testing.T) {
	s := bustest.StartSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The orchestrator provisions everything, and may do it again.
	orch := connect(t, s, string(contracts.ServiceOrchestrator))
	for range 2 {
		if err := bus.Provision(ctx, orch.js, bus.Topology{}); err != nil {
			t.Fatalf("orchestrator provisioning: %v", err)
		}
	}
	orch.noViolation(t)

	// The admin adds a host.
	admin := connect(t, s, natsconf.UserAdmin)
	hosts, err := inventory.Open(ctx, admin.js)
	if err != nil {
		t.Fatal(err)
	}
	if err := hosts.Put(ctx, contracts.Host{Schema: contracts.SchemaHost, Name: "customer-1", Address: "192.0.2.7", Port: 22, User: "maint", Credential: "customer-1"}); err != nil {
		t.Fatalf("admin adding a host: %v", err)
	}
	if list, err := hosts.List(ctx); err != nil || len(list) != 1 {
		t.Fatalf("admin listing hosts: %v %v", list, err)
	}
	admin.noViolation(t)

	// The helpdesk submits a job on the jobs stream, deduplicated by its id.
	helpdesk := connect(t, s, natsconf.UserHelpdesk)
	m := nats.NewMsg(contracts.SubjectJobSubmit)
	m.Data = []byte(`{}`)
	if _, err := helpdesk.js.PublishMsg(ctx, m, jetstream.WithMsgID("hd-1")); err != nil {
		t.Fatalf("helpdesk submitting: %v", err)
	}
	events, err := helpdesk.nc.SubscribeSync(contracts.JobEventSubject("hd-1"))
	if err == nil {
		err = helpdesk.nc.Flush() // the server has the subscription before the event
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := orch.js.Publish(ctx, contracts.JobEventSubject("hd-1"), []byte(`{"kind":"accepted"}`)); err != nil {
		t.Fatalf("orchestrator publishing a job event: %v", err)
	}
	if _, err := events.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("helpdesk reading a job event: %v", err)
	}
	helpdesk.noViolation(t)

	others := map[contracts.Service]contracts.Service{
		contracts.ServiceConnector: contracts.ServiceTransfer, contracts.ServiceTransfer: contracts.ServiceArchiver,
		contracts.ServiceArchiver: contracts.ServiceCleanup, contracts.ServiceCleanup: contracts.ServiceConnector,
	}
	for _, svc := range contracts.Workers {
		t.Run(string(svc), func(t *testing.T) {
			w := connect(t, s, string(svc))
			other := others[svc]
			// What it must do: bind its consumer, publish a step event, answer /healthz.
			if _, err := bus.WaitConsumer(ctx, w.js, contracts.StreamCommands, contracts.ConsumerName(svc)); err != nil {
				t.Fatalf("binding its consumer: %v", err)
			}
			if err := bus.Publish(ctx, w.js, contracts.StepEventSubject("job-1"), map[string]string{"x": "y"}, "job-1/"+string(svc), "job-1"); err != nil {
				t.Fatalf("publishing a step event: %v", err)
			}
			if _, err := w.js.AccountInfo(ctx); err != nil {
				t.Fatalf("account info (/healthz): %v", err)
			}
			// Read a job record: the runner skips a command whose attempt is over.
			jobs, err := bus.WaitKeyValue(ctx, w.js, contracts.BucketJobs)
			if err != nil {
				t.Fatalf("binding jobs: %v", err)
			}
			if _, err := jobs.Get(ctx, "job-1"); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Fatalf("reading a job record: %v", err)
			}
			switch svc {
			case contracts.ServiceConnector, contracts.ServiceTransfer, contracts.ServiceCleanup:
				kv, err := w.js.KeyValue(ctx, contracts.BucketHosts)
				if err != nil {
					t.Fatalf("binding hosts: %v", err)
				}
				if _, err := kv.Get(ctx, "customer-1"); err != nil {
					t.Fatalf("reading a host: %v", err)
				}
				if _, err := w.js.KeyValue(ctx, contracts.BucketLeases); err != nil {
					t.Fatalf("binding leases: %v", err)
				}
			}
			w.noViolation(t)

			// What it must not do.
			w.jsPublish(t, "command for "+string(other), contracts.CommandSubject(other, "x"))
			w.publish(t, "core command for "+string(other), contracts.CommandSubject(other, "x"))
			w.publish(t, "a job event", contracts.JobEventSubject("job-1"))
			w.publish(t, "a job submission", contracts.SubjectJobSubmit)
			w.deleteStream(t, contracts.StreamCommands)
			w.deleteStream(t, "KV_"+contracts.BucketHosts)
			w.fetch(t, contracts.StreamCommands, contracts.ConsumerName(other))
			w.subscribe(t, "another's inbox", "_INBOX_"+string(other)+".>")
			w.subscribe(t, "every inbox", "_INBOX.>")
			w.subscribe(t, "another's commands", contracts.CommandFilter(other))
			w.denied(t, "create a consumer", "$JS.API.CONSUMER.CREATE."+contracts.StreamCommands+".mine", true, func(ctx context.Context) error {
				_, err := w.js.CreateOrUpdateConsumer(ctx, contracts.StreamCommands, jetstream.ConsumerConfig{Name: "mine"})
				return err
			})
			switch svc {
			case contracts.ServiceArchiver:
				w.readHosts(t)
				w.denied(t, "bind leases", "$JS.API.STREAM.INFO.KV_"+contracts.BucketLeases, true, func(ctx context.Context) error {
					_, err := w.js.KeyValue(ctx, contracts.BucketLeases)
					return err
				})
			case contracts.ServiceTransfer, contracts.ServiceCleanup:
				w.publish(t, "write a host", "$KV."+contracts.BucketHosts+".customer-1")
				w.publish(t, "write a lease", "$KV."+contracts.BucketLeases+".job-1.customer-1")
			}
			w.publish(t, "write a job record", "$KV."+contracts.BucketJobs+".job-1")
		})
	}

	t.Run("helpdesk", func(t *testing.T) {
		helpdesk.jsPublish(t, "a step command", contracts.CommandSubject(contracts.ServiceConnector, contracts.OpConnect))
		helpdesk.publish(t, "a cancellation", contracts.CancelRequestSubject("hd-1"))
		helpdesk.publish(t, "a step event", contracts.StepEventSubject("hd-1"))
		helpdesk.publish(t, "the job API's get", contracts.SubjectAPIGet)
		helpdesk.deleteStream(t, contracts.StreamJobs)
		helpdesk.readHosts(t)
		helpdesk.fetch(t, contracts.StreamEvents, contracts.ConsumerOrchestratorEvents)
		helpdesk.fetch(t, contracts.StreamJobs, contracts.ConsumerOrchestratorJobs)
		helpdesk.subscribe(t, "the orchestrator's inbox", "_INBOX_orchestrator.>")
		helpdesk.subscribe(t, "step commands", contracts.SubjectCommandsAll)
		helpdesk.subscribe(t, "the API's requests", contracts.SubjectAPISubmit)
		helpdesk.denied(t, "redefine the orchestrator's durable", "$JS.API.CONSUMER.CREATE.FERRY_EVENTS.orchestrator-step-events.ferry.v1.evt.job.>", true,
			func(ctx context.Context) error {
				_, err := helpdesk.js.CreateOrUpdateConsumer(ctx, contracts.StreamEvents, jetstream.ConsumerConfig{
					Durable: contracts.ConsumerOrchestratorEvents, FilterSubject: "ferry.v1.evt.job.>",
				})
				return err
			})
		// ... but it may follow a job from its first event, as ferry job watch does.
		cons, err := helpdesk.js.OrderedConsumer(ctx, contracts.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{contracts.WatchFilter("hd-1")}, DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil || msg.Subject() != contracts.JobEventSubject("hd-1") {
			t.Fatalf("helpdesk watching a job: %v %v", msg, err)
		}
		helpdesk.noViolation(t)
	})

	t.Run("admin", func(t *testing.T) {
		admin.jsPublish(t, "a step command", contracts.CommandSubject(contracts.ServiceCleanup, contracts.OpRemoveStaging))
		admin.deleteStream(t, contracts.StreamEvents)
		admin.denied(t, "delete a worker's consumer", "$JS.API.CONSUMER.DELETE.FERRY_CMDS.worker-connector", true, func(ctx context.Context) error {
			return admin.js.DeleteConsumer(ctx, contracts.StreamCommands, contracts.ConsumerName(contracts.ServiceConnector))
		})
		admin.denied(t, "bind leases", "$JS.API.STREAM.INFO.KV_"+contracts.BucketLeases, true, func(ctx context.Context) error {
			_, err := admin.js.KeyValue(ctx, contracts.BucketLeases)
			return err
		})
		admin.fetch(t, contracts.StreamEvents, contracts.ConsumerOrchestratorEvents)
		admin.subscribe(t, "the helpdesk's inbox", "_INBOX_helpdesk.>")
	})

	t.Run("orchestrator", func(t *testing.T) {
		orch.deleteStream(t, contracts.StreamJobs)
		orch.readHosts(t)
		orch.denied(t, "delete a worker's consumer", "$JS.API.CONSUMER.DELETE.FERRY_CMDS.worker-transfer", true, func(ctx context.Context) error {
			return orch.js.DeleteConsumer(ctx, contracts.StreamCommands, contracts.ConsumerName(contracts.ServiceTransfer))
		})
		orch.denied(t, "purge a stream", "$JS.API.STREAM.PURGE.FERRY_CMDS", true, func(ctx context.Context) error {
			_, err := orch.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE.FERRY_CMDS", nil)
			return err
		})
		orch.publish(t, "a step event (a worker's word)", contracts.StepEventSubject("job-1"))
		orch.fetch(t, contracts.StreamCommands, contracts.ConsumerName(contracts.ServiceConnector))
	})

	if v := s.Violations(); len(v) == 0 {
		t.Error("the server logged no permission violation")
	}
}

// TestTLSRequired: the client port speaks TLS only, to clients that start with the TLS
// handshake (ferry's) and to those that wait for the server's INFO first (the nats CLI
// without --tls-first); without TLS, or with a wrong password, nobody gets in.
func TestTLSRequired(t *testing.T) {
	s := bustest.StartSecure(t)
	pw := s.Passwords[natsconf.UserAdmin]
	hostPort := strings.TrimPrefix(s.URL, "tls://")

	nc, err := nats.Connect(s.URL, nats.RootCAs(s.CAFile), nats.UserInfo(natsconf.UserAdmin, pw),
		nats.CustomInboxPrefix("_INBOX_"+natsconf.UserAdmin))
	if err != nil {
		t.Fatalf("INFO-first TLS client: %v", err)
	}
	nc.Close()

	if nc, err := nats.Connect("nats://"+hostPort, nats.UserInfo(natsconf.UserAdmin, pw), nats.Timeout(3*time.Second)); err == nil {
		nc.Close()
		t.Error("a client without TLS got in")
	}
	cfg := s.Config(t, natsconf.UserAdmin)
	cfg.Password = "wrong"
	if nc, err := bus.Connect(context.Background(), cfg, nil); err == nil {
		nc.Close()
		t.Error("a wrong password got in")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("wrong password: %v", err)
	}
}
