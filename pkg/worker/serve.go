package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Deps are what a worker service's composition root gives it.
type Deps struct {
	NC *nats.Conn
	// Registerer takes the service's metrics; label it with the service name when
	// several services share a registry. Nil keeps them unregistered.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Ready, when set, is called once the service takes work (its consumer bound).
	Ready func()
}

// WithDefaults returns d with a discarding logger and a private registry where none
// was given.
func (d Deps) WithDefaults() Deps {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Registerer == nil {
		d.Registerer = prometheus.NewRegistry()
	}
	return d
}

// ServeConfig tunes Serve; zero values take the Runner's defaults.
type ServeConfig struct {
	Concurrency     int
	DrainTimeout    time.Duration
	InProgressEvery time.Duration
}

// Serve runs a worker service: its ops behind the logging and instrumenting endpoint
// middleware, on a Runner bound to the service's durable consumer, until ctx ends; then
// it drains the steps in flight.
func Serve(ctx context.Context, service contracts.Service, ops []Op, cfg ServeConfig, deps Deps) error {
	deps = deps.WithDefaults()
	js, err := jetstream.New(deps.NC)
	if err != nil {
		return fmt.Errorf("%s: %w", service, err)
	}
	names := make([]contracts.Op, len(ops))
	for i, op := range ops {
		names[i] = op.Name
	}
	em := NewEndpointMetrics(deps.Registerer)
	em.Init(names...)
	rm := NewRunnerMetrics(deps.Registerer)
	rm.Init(names...)
	if err := bus.RegisterConsumerMetrics(deps.Registerer, js,
		bus.ConsumerRef{Stream: contracts.StreamCommands, Consumer: contracts.ConsumerName(service)}); err != nil {
		return fmt.Errorf("%s: registering consumer metrics: %w", service, err)
	}
	runner := &Runner{
		NC:      deps.NC,
		JS:      js,
		Service: service,
		Handler: NewHandler(service, ops,
			Logging(), Instrumenting(em)),
		Log:             deps.Logger,
		Concurrency:     cfg.Concurrency,
		DrainTimeout:    cfg.DrainTimeout,
		InProgressEvery: cfg.InProgressEvery,
		Metrics:         rm,
		Ready:           deps.Ready,
	}
	return runner.Run(ctx)
}
