package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Topology sizes the streams and buckets. The zero value is the single-node default.
type Topology struct {
	// Replicas of every stream and bucket (1, or 3 on a three-node cluster).
	Replicas int
	// EventsMaxAge is how long step and job events are kept (default 7 days).
	EventsMaxAge time.Duration
	// DedupWindow is how long a Nats-Msg-Id is remembered (default 10 minutes).
	DedupWindow time.Duration
	// CommandAckWait is how long a worker may hold a command without an ack or an
	// in-progress signal before it is redelivered (default 30 s).
	CommandAckWait time.Duration
	// CommandMaxDeliver bounds redeliveries of one command (default 10).
	CommandMaxDeliver int
	// Memory keeps streams in memory (benchmarks only).
	Memory bool
}

func (t Topology) withDefaults() Topology {
	if t.Replicas == 0 {
		t.Replicas = 1
	}
	if t.EventsMaxAge == 0 {
		t.EventsMaxAge = 7 * 24 * time.Hour
	}
	if t.DedupWindow == 0 {
		t.DedupWindow = 10 * time.Minute
	}
	if t.CommandAckWait == 0 {
		t.CommandAckWait = 30 * time.Second
	}
	if t.CommandMaxDeliver == 0 {
		t.CommandMaxDeliver = 10
	}
	return t
}

// Provision creates or updates every stream, durable consumer and key-value bucket of
// ferry. It is idempotent and is the only place that defines them: the orchestrator (or
// `ferry dev`) calls it at start; workers only bind to what it made.
func Provision(ctx context.Context, js jetstream.JetStream, t Topology) error {
	t = t.withDefaults()
	storage := jetstream.FileStorage
	if t.Memory {
		storage = jetstream.MemoryStorage
	}
	streams := []jetstream.StreamConfig{
		{
			Name: contracts.StreamJobs, Subjects: []string{contracts.SubjectJobsAll},
			Retention: jetstream.WorkQueuePolicy, Duplicates: t.DedupWindow,
			Description: "job requests and cancellations from the helpdesk",
		},
		{
			Name: contracts.StreamCommands, Subjects: []string{contracts.SubjectCommandsAll},
			Retention: jetstream.WorkQueuePolicy, Duplicates: t.DedupWindow,
			Description: "step commands, one durable consumer per worker service",
		},
		{
			Name: contracts.StreamEvents, Subjects: []string{contracts.SubjectEventsAll},
			Retention: jetstream.LimitsPolicy, MaxAge: t.EventsMaxAge, Duplicates: t.DedupWindow,
			Description: "step, progress and job events",
		},
	}
	for _, cfg := range streams {
		cfg.Storage = storage
		cfg.Replicas = t.Replicas
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provisioning stream %s: %w", cfg.Name, err)
		}
	}
	consumers := []struct {
		stream string
		cfg    jetstream.ConsumerConfig
	}{
		{contracts.StreamJobs, jetstream.ConsumerConfig{
			Durable: contracts.ConsumerOrchestratorJobs, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: 30 * time.Second, MaxDeliver: -1, MaxAckPending: 1000,
		}},
		{contracts.StreamEvents, jetstream.ConsumerConfig{
			Durable: contracts.ConsumerOrchestratorEvents, AckPolicy: jetstream.AckExplicitPolicy,
			FilterSubject: contracts.SubjectStepEventsAll, DeliverPolicy: jetstream.DeliverNewPolicy,
			AckWait: 30 * time.Second, MaxDeliver: -1, MaxAckPending: 4000,
		}},
	}
	for _, s := range contracts.Workers {
		consumers = append(consumers, struct {
			stream string
			cfg    jetstream.ConsumerConfig
		}{contracts.StreamCommands, jetstream.ConsumerConfig{
			Durable: contracts.ConsumerName(s), AckPolicy: jetstream.AckExplicitPolicy,
			FilterSubject: contracts.CommandFilter(s),
			AckWait:       t.CommandAckWait, MaxDeliver: t.CommandMaxDeliver, MaxAckPending: 1000,
			BackOff: nil,
		}})
	}
	for _, c := range consumers {
		c.cfg.Replicas = t.Replicas
		c.cfg.MemoryStorage = t.Memory
		if _, err := js.CreateOrUpdateConsumer(ctx, c.stream, c.cfg); err != nil {
			return fmt.Errorf("provisioning consumer %s on %s: %w", c.cfg.Durable, c.stream, err)
		}
	}
	buckets := []jetstream.KeyValueConfig{
		{Bucket: contracts.BucketJobs, History: 5, Description: "job records, changed by compare-and-set"},
		{Bucket: contracts.BucketLeases, History: 1, TTL: 24 * time.Hour, Description: "SSH session leases"},
		{Bucket: contracts.BucketHosts, History: 10, Description: "host inventory"},
		{Bucket: contracts.BucketLeftovers, History: 1, Description: "jobs' temporary files on hosts out of reach, for cleanup's sweep"},
	}
	for _, cfg := range buckets {
		cfg.Replicas = t.Replicas
		cfg.Storage = storage
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("provisioning bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// WaitConsumer binds to a durable consumer, waiting (until ctx ends) for the
// provisioning owner to create it and riding out a cluster that is electing a
// leader or a connection that is being re-established.
func WaitConsumer(ctx context.Context, js jetstream.JetStream, stream, name string) (jetstream.Consumer, error) {
	what := fmt.Sprintf("consumer %s on %s", name, stream)
	return waitBound(ctx, what, func(ctx context.Context) (jetstream.Consumer, error) {
		return js.Consumer(ctx, stream, name)
	}, jetstream.ErrConsumerNotFound, jetstream.ErrStreamNotFound)
}

// WaitKeyValue binds to a bucket, waiting for provisioning like WaitConsumer. The
// handle's Get, Put, Create, Update and Delete ride out a leader election or a
// reconnection the same way (see steadyKV).
func WaitKeyValue(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, error) {
	kv, err := waitBound(ctx, "bucket "+bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.KeyValue(ctx, bucket)
	}, jetstream.ErrBucketNotFound)
	if err != nil {
		return nil, err
	}
	return steady(kv), nil
}

// bindAttempt bounds one lookup: a reply lost while the client reconnects, or a
// request made while the cluster has no leader, must not use up the caller's whole
// deadline (it did: a three-node test waited two minutes on one lost reply).
const bindAttempt = 5 * time.Second

// waitBound repeats lookup until it succeeds, ctx ends, or it fails in a way
// waiting cannot mend (a permission error, a closed connection).
func waitBound[T any](ctx context.Context, what string, lookup func(context.Context) (T, error), missing ...error) (T, error) {
	for {
		attempt, cancel := context.WithTimeout(ctx, bindAttempt)
		v, err := lookup(attempt)
		cancel()
		if err == nil {
			return v, nil
		}
		if !isMissing(err, missing) && !transient(err) {
			return v, fmt.Errorf("binding %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("%s not provisioned: %w (last answer: %v)", what, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func isMissing(err error, missing []error) bool {
	for _, m := range missing {
		if errors.Is(err, m) {
			return true
		}
	}
	return false
}

// transient reports errors that a later attempt can get past: no reply in time,
// nobody answering yet, or JetStream saying it is momentarily unavailable (503,
// as during a leader election).
func transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && api.Code == 503 &&
		api.ErrorCode != jetstream.JSErrCodeJetStreamNotEnabled &&
		api.ErrorCode != jetstream.JSErrCodeJetStreamNotEnabledForAccount
}
