// Package orchestrator turns helpdesk job requests into step commands, gathers step
// events, applies each step's retry policy and timeout, handles cancellation, and always
// runs a job's closing steps. Job records live in a KV bucket and change only by
// compare-and-set, so several replicas can run at once and a restarted one resumes
// every job in flight.
package orchestrator

import (
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Config of the orchestrator.
type Config struct {
	// Provision creates streams, consumers and buckets at start (the default owner).
	Provision bool
	// Replicas of streams and buckets when provisioning (1 or 3).
	Replicas int
	// EventsMaxAge is how long events are kept when provisioning.
	EventsMaxAge time.Duration
	// Lanes is how many jobs are advanced in parallel (default 16).
	Lanes int
	// CancelGrace bounds how long a cancel waits for the step in flight to stop
	// before the closing steps run (default 30 s).
	CancelGrace time.Duration
	// Workflows overrides the step policies (tests); nil uses DefaultWorkflows.
	Workflows Workflows
}

// Deps are what the orchestrator is given by its composition root.
type Deps struct {
	NC         *nats.Conn
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Ready, when set, is called once every job in flight is resumed and the API
	// answers.
	Ready func()
}
