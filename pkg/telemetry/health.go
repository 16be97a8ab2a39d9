package telemetry

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSHealth checks that nc is connected and that JetStream answers an account-info
// request within ctx's deadline.
func NATSHealth(nc *nats.Conn) func(context.Context) error {
	return func(ctx context.Context) error {
		if nc == nil {
			return errors.New("nats: no connection")
		}
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("nats: %s", s)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		if _, err := js.AccountInfo(ctx); err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		return nil
	}
}
