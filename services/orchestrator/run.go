package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

// Run runs the orchestrator until ctx ends: it provisions the bus when asked, resumes
// every job in flight, then consumes submissions, cancellations and step events, and
// serves the API.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := deps.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	js, err := jetstream.New(deps.NC)
	if err != nil {
		return err
	}
	if cfg.Provision {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := bus.Provision(pctx, js, bus.Topology{Replicas: cfg.Replicas, EventsMaxAge: cfg.EventsMaxAge})
		cancel()
		if err != nil {
			return err
		}
	}
	kv, err := bus.WaitKeyValue(ctx, js, contracts.BucketJobs)
	if err != nil {
		return err
	}
	wf := cfg.Workflows
	if wf == nil {
		wf = DefaultWorkflows()
	}
	lanes := cfg.Lanes
	if lanes <= 0 {
		lanes = 16
	}
	grace := cfg.CancelGrace
	if grace <= 0 {
		grace = 30 * time.Second
	}
	e := &engine{
		nc: deps.NC, js: js, store: &store{kv: kv}, log: log, metrics: newMetrics(reg, wf),
		machine:  &machine{workflows: wf, cancelGrace: grace, dispatchGrace: 5 * time.Second},
		timers:   map[string]*time.Timer{},
		inFlight: map[string]flight{},
	}
	registerPastDeadline(reg, e)
	if err := bus.RegisterConsumerMetrics(reg, js,
		bus.ConsumerRef{Stream: contracts.StreamJobs, Consumer: contracts.ConsumerOrchestratorJobs},
		bus.ConsumerRef{Stream: contracts.StreamEvents, Consumer: contracts.ConsumerOrchestratorEvents}); err != nil {
		return fmt.Errorf("registering consumer metrics: %w", err)
	}
	for range lanes {
		e.lanes = append(e.lanes, make(chan func(context.Context), 256))
	}

	laneCtx, stopLanes := context.WithCancel(context.WithoutCancel(ctx))
	var lanesWG sync.WaitGroup
	e.runLanes(laneCtx, &lanesWG)
	defer e.stopTimers()
	// On the way out the consumers stop first (deferred below), then the lanes finish
	// the messages already handed to them: a message dropped here would sit
	// unacknowledged until its AckWait, long after another replica could have taken it.
	defer func() { e.finishLanes(shutdownGrace); stopLanes(); lanesWG.Wait() }()

	// Resume first: every job in flight gets its timers before new messages arrive.
	ready := make(chan struct{})
	watchDone := make(chan error, 1)
	go func() { watchDone <- e.watch(ctx, ready) }()
	select {
	case <-ready:
	case err := <-watchDone:
		return err
	case <-ctx.Done():
		return nil
	}

	jobs, err := e.consume(laneCtx, contracts.StreamJobs, contracts.ConsumerOrchestratorJobs, e.routeJobs)
	if err != nil {
		return err
	}
	defer stopConsuming(jobs, shutdownGrace)
	events, err := e.consume(laneCtx, contracts.StreamEvents, contracts.ConsumerOrchestratorEvents, e.routeStepEvents)
	if err != nil {
		return err
	}
	defer stopConsuming(events, shutdownGrace)

	svc, err := micro.AddService(deps.NC, micro.Config{
		Name: contracts.APIServiceName, Version: "1.0.0",
		Description: "ferry job API: submit, get, list, cancel",
	})
	if err != nil {
		return fmt.Errorf("starting the API: %w", err)
	}
	defer func() { _ = svc.Stop() }()
	if err := (&api{e: e}).register(svc); err != nil {
		return fmt.Errorf("registering the API: %w", err)
	}
	log.Info("orchestrator started", "lanes", lanes)
	if deps.Ready != nil {
		// The API's subscriptions reach the server before anyone is told to use them.
		if err := deps.NC.FlushTimeout(10 * time.Second); err != nil {
			return fmt.Errorf("starting the API: %w", err)
		}
		deps.Ready()
	}

	select {
	case <-ctx.Done():
	case err := <-watchDone:
		if err != nil {
			return err
		}
	}
	log.Info("orchestrator stopping")
	return nil
}

// shutdownGrace bounds each stage of the shutdown: the consumers' drain, then the
// lanes' queued work.
const shutdownGrace = 10 * time.Second

// stopConsuming stops cc and waits until every message it received has been handed to
// a lane (Drain alone returns at once, and a message delivered meanwhile would be lost),
// or d passes.
func stopConsuming(cc jetstream.ConsumeContext, d time.Duration) {
	closed := cc.Closed()
	cc.Drain()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-closed:
	case <-t.C:
		cc.Stop()
	}
}
