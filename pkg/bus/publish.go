package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Message builds a JSON message with a correlation id header.
func Message(subject string, v any, correlationID string) (*nats.Msg, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding message for %s: %w", subject, err)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	if correlationID != "" {
		m.Header.Set(contracts.HeaderCorrelationID, correlationID)
	}
	return m, nil
}

// Publish stores v as JSON on a stream subject with Nats-Msg-Id msgID, so a retried
// publish is stored once, and waits for the stream's acknowledgement. The message
// carries correlationID and, when ctx has one (WithTrace), a traceparent.
func Publish(ctx context.Context, js jetstream.JetStream, subject string, v any, msgID, correlationID string) error {
	m, err := Message(subject, v, correlationID)
	if err != nil {
		return err
	}
	if t, ok := TraceFrom(ctx); ok {
		SetTrace(m, t)
	}
	if _, err := PublishMsg(ctx, js, m, msgID); err != nil {
		return fmt.Errorf("publishing %s (%s): %w", subject, msgID, err)
	}
	return nil
}

// publishAttempt bounds one publish: a reply lost while a stream elects a leader must
// not use up the caller's deadline.
const publishAttempt = 2 * time.Second

// PublishMsg stores m on its stream with Nats-Msg-Id msgID and returns the ack. It
// rides out a stream that is briefly without a leader (a node died, an election runs:
// "no response from stream", 503, a lost reply) by trying again until ctx ends; the
// message id makes every retry land once. The client library retries only twice,
// 250 ms apart, which an election outlasts.
func PublishMsg(ctx context.Context, js jetstream.JetStream, m *nats.Msg, msgID string) (*jetstream.PubAck, error) {
	return retryFor(ctx, publishAttempt, func(ctx context.Context) (*jetstream.PubAck, error) {
		return js.PublishMsg(ctx, m, jetstream.WithMsgID(msgID))
	})
}

// SignalCancel tells every worker to abort in-flight work of job (core NATS, not
// stored: a worker that misses it is stopped by the step's deadline instead).
func SignalCancel(ctx context.Context, nc *nats.Conn, job string) error {
	m, err := Message(contracts.CancelSignalSubject(job), contracts.CancelRequest{Schema: contracts.SchemaCancel, JobID: job}, job)
	if err != nil {
		return err
	}
	if t, ok := TraceFrom(ctx); ok {
		SetTrace(m, t)
	}
	return nc.PublishMsg(m)
}
