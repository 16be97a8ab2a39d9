// Package worker is the JetStream transport of ferry's worker services: a Runner pulls
// step commands from the service's durable consumer, runs them through a go-kit style
// handler, and maps the result to JetStream's ack verbs and to step events.
//
//	success              → step event "succeeded", Ack
//	step error           → step event "failed" (retryable or not), Term: the orchestrator
//	                       owns retries, per the step's policy
//	Defer(d, err)        → NakWithDelay(d): not an attempt, try again later
//	event not published  → NakWithDelay: the step is redelivered and, being idempotent,
//	                       completes again; the event's message id records it once
//	undecodable command  → Term with reason (poison), and a failed event when it names a job
//	job cancelled        → step event "failed" with code cancelled, Term
//	attempt superseded   → Term without running: the job record shows the attempt over
//	shutdown             → stop fetching, let in-flight steps finish within DrainTimeout,
//	                       then Nak what is left so another replica takes it at once
//
// While a step runs, the Runner sends in-progress acks so a long transfer is not
// redelivered as if its worker had died.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Handler executes one step command. It must be idempotent: a command may be delivered
// again after the handler did its work.
type Handler func(ctx context.Context, cmd contracts.StepCommand) (Result, error)

// Result is what a successful step returns.
type Result struct {
	Output any   // encoded into StepEvent.Output
	Bytes  int64 // bytes moved or written
}

// Runner pulls commands for one service and runs them.
type Runner struct {
	NC      *nats.Conn
	JS      jetstream.JetStream
	Service contracts.Service
	Handler Handler
	Log     *slog.Logger
	// Concurrency is how many commands run at once (default 8).
	Concurrency int
	// InProgressEvery is the period of in-progress acks (default 10 s; keep it well
	// under the consumer's AckWait).
	InProgressEvery time.Duration
	// DrainTimeout bounds how long shutdown waits for steps in flight (default 30 s).
	DrainTimeout time.Duration
	// RetryDelay is the redelivery delay when an event cannot be published (default 2 s).
	RetryDelay time.Duration
	// Worker identifies this replica in events (default host name and pid).
	Worker string
	// Metrics, when set, counts redeliveries and terminations.
	Metrics *RunnerMetrics
	// Ready, when set, is called once the consumer is bound and cancel signals are
	// heard: from then on the service takes work.
	Ready func()

	jobs     jetstream.KeyValue // job records, read to skip superseded commands
	mu       sync.Mutex
	inflight map[string]map[*inflightStep]struct{} // by job id

	// testHookBeforeAck, when set, runs after the success event is stored and before
	// the ack (tests kill the worker there).
	testHookBeforeAck func()
}

type inflightStep struct {
	cancel context.CancelCauseFunc
}

var (
	errJobCancelled = errors.New("job cancelled")
	errShutdown     = errors.New("worker shutting down")
)

func (r *Runner) defaults() {
	if r.Concurrency <= 0 {
		r.Concurrency = 8
	}
	if r.InProgressEvery <= 0 {
		r.InProgressEvery = 10 * time.Second
	}
	if r.DrainTimeout <= 0 {
		r.DrainTimeout = 30 * time.Second
	}
	if r.RetryDelay <= 0 {
		r.RetryDelay = 2 * time.Second
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Worker == "" {
		h, _ := os.Hostname()
		r.Worker = fmt.Sprintf("%s/%s/%d", r.Service, h, os.Getpid())
	}
	r.inflight = map[string]map[*inflightStep]struct{}{}
}

// Run pulls and executes commands until ctx ends, then drains. It returns nil after a
// clean drain.
func (r *Runner) Run(ctx context.Context) error {
	r.defaults()
	cons, err := bus.WaitConsumer(ctx, r.JS, contracts.StreamCommands, contracts.ConsumerName(r.Service))
	if err != nil {
		return err
	}
	if r.jobs, err = bus.WaitKeyValue(ctx, r.JS, contracts.BucketJobs); err != nil {
		return err
	}
	sub, err := r.NC.Subscribe(contracts.SubjectCancelSignalAll, r.onCancelSignal)
	if err != nil {
		return fmt.Errorf("subscribing to cancel signals: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	// Steps run under work, not ctx: shutdown first stops fetching and drains.
	work, stopWork := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopWork(errShutdown)
	slots := make(chan struct{}, r.Concurrency)
	var wg sync.WaitGroup
	r.Log.Info("worker started", "worker", r.Worker, "concurrency", r.Concurrency)
	if r.Ready != nil {
		r.Ready()
	}

	for ctx.Err() == nil {
		free := r.Concurrency - len(slots)
		if free == 0 {
			select { // wait for a slot
			case slots <- struct{}{}:
				<-slots
			case <-ctx.Done():
			}
			continue
		}
		batch, err := cons.Fetch(free, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() == nil {
				r.Log.Warn("fetching commands", "error", err)
				sleep(ctx, 500*time.Millisecond)
			}
			continue
		}
		for msg := range batch.Messages() {
			slots <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-slots; wg.Done() }()
				r.handle(work, msg)
			}()
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			// "No responders" comes back at once while the consumer elects a leader:
			// without a pause this loop spun (ten thousand warnings in a second).
			r.Log.Warn("fetch batch", "error", err)
			sleep(ctx, 250*time.Millisecond)
		}
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(r.DrainTimeout):
		r.Log.Warn("drain timeout: handing steps in flight back", "timeout", r.DrainTimeout)
		stopWork(errShutdown)
		<-done
	}
	r.Log.Info("worker stopped", "worker", r.Worker)
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (r *Runner) onCancelSignal(m *nats.Msg) {
	var c contracts.CancelRequest
	if err := json.Unmarshal(m.Data, &c); err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for s := range r.inflight[c.JobID] {
		s.cancel(errJobCancelled)
	}
}

func (r *Runner) track(job string, s *inflightStep) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight[job] == nil {
		r.inflight[job] = map[*inflightStep]struct{}{}
	}
	r.inflight[job][s] = struct{}{}
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.inflight[job], s)
		if len(r.inflight[job]) == 0 {
			delete(r.inflight, job)
		}
	}
}

// hostArg picks the host out of a command's arguments for the log line, when it has one.
func hostArg(args json.RawMessage) string {
	var a struct {
		Host string `json:"host"`
	}
	_ = json.Unmarshal(args, &a)
	return a.Host
}

func (r *Runner) handle(work context.Context, msg jetstream.Msg) {
	var cmd contracts.StepCommand
	if err := json.Unmarshal(msg.Data(), &cmd); err != nil || cmd.Schema != contracts.SchemaStepCommand || !contracts.ValidID(cmd.JobID) || cmd.Step == "" {
		reason := "undecodable step command"
		if err != nil {
			reason += ": " + err.Error()
		}
		tr := bus.TraceOf(msg.Headers(), cmd.JobID)
		r.Log.Error("poison command terminated", append([]any{"subject", msg.Subject(), "reason", reason, "job_id", cmd.JobID}, tr.LogAttrs()...)...)
		r.Metrics.terminated(string(cmd.Op), "poison")
		if contracts.ValidID(cmd.JobID) && cmd.Step != "" {
			r.publishEvent(bus.WithTrace(work, tr), cmd, contracts.StepFailed, &contracts.StepError{Code: contracts.CodeInvalidCommand, Message: reason}, Result{}, 0)
		}
		_ = msg.TermWithReason(reason)
		return
	}
	// The attempt is a span of the job's trace: its id is logged on every line and is
	// the parent in the traceparent of the events it publishes.
	tr := bus.TraceOf(msg.Headers(), cmd.JobID)
	work = bus.WithTrace(work, tr)
	log := r.Log.With("job_id", cmd.JobID, "step", cmd.Step, "attempt", cmd.Attempt, "op", cmd.Op, "host", hostArg(cmd.Args))
	log = log.With(tr.LogAttrs()...)
	if cid := msg.Headers().Get(contracts.HeaderCorrelationID); cid != "" && cid != cmd.JobID {
		log = log.With("correlation_id", cid)
	}
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 1 {
		log.Info("command redelivered", "delivery", md.NumDelivered)
		r.Metrics.redelivered(string(cmd.Op))
	}
	if cmd.Service != r.Service {
		reason := fmt.Sprintf("command for service %q reached %q", cmd.Service, r.Service)
		log.Error("poison command terminated", "reason", reason)
		r.publishEvent(work, cmd, contracts.StepFailed, &contracts.StepError{Code: contracts.CodeInvalidCommand, Message: reason}, Result{}, 0)
		_ = msg.TermWithReason(reason)
		return
	}
	if why := r.superseded(work, cmd); why != "" {
		log.Info("command superseded; not started", "reason", why)
		r.Metrics.terminated(string(cmd.Op), "superseded")
		_ = msg.TermWithReason(why)
		return
	}
	if !cmd.Deadline.IsZero() && time.Now().After(cmd.Deadline) {
		log.Warn("command arrived after its deadline; not started", "deadline", cmd.Deadline)
		r.Metrics.terminated(string(cmd.Op), "expired")
		_ = msg.TermWithReason("deadline passed before the step started")
		return
	}

	ctx, cancel := context.WithCancelCause(work)
	defer cancel(nil)
	if !cmd.Deadline.IsZero() {
		var c context.CancelFunc
		ctx, c = context.WithDeadline(ctx, cmd.Deadline)
		defer c()
	}
	defer r.track(cmd.JobID, &inflightStep{cancel: cancel})()
	ctx = logctx.With(ctx, log)
	ctx = context.WithValue(ctx, jobIDKey{}, cmd.JobID)
	ctx = context.WithValue(ctx, attemptKey{}, cmd.Attempt)
	ctx = withProgress(ctx, r.NC, cmd)

	stopProgress := r.keepAlive(msg)
	start := time.Now()
	res, err := r.call(ctx, cmd)
	elapsed := time.Since(start)
	stopProgress()

	var d *deferral
	switch {
	case err == nil:
		if r.publishEvent(work, cmd, contracts.StepSucceeded, nil, res, elapsed) {
			if r.testHookBeforeAck != nil {
				r.testHookBeforeAck()
			}
			_ = msg.Ack()
		} else {
			_ = msg.NakWithDelay(r.RetryDelay)
		}
	case errors.As(err, &d):
		log.Info("step deferred", "after", d.after, "reason", d.err)
		_ = msg.NakWithDelay(d.after)
	case errors.Is(context.Cause(ctx), errShutdown):
		log.Warn("step interrupted by shutdown; handing it back", "error", err)
		_ = msg.Nak()
	default:
		se := Classify(err)
		if errors.Is(context.Cause(ctx), errJobCancelled) {
			se = &contracts.StepError{Code: contracts.CodeCancelled, Message: "step cancelled with its job"}
		}
		log.Warn("step failed", "code", se.Code, "retryable", se.Retryable, "error", se.Message)
		if r.publishEvent(work, cmd, contracts.StepFailed, se, Result{}, elapsed) {
			_ = msg.TermWithReason(se.Code)
		} else {
			_ = msg.NakWithDelay(r.RetryDelay)
		}
	}
}

// superseded says why cmd must not run when the job record shows its attempt over:
// the step ended or a later attempt took its place. It happens when an ack is lost
// (the consumer's leader died with it) and the command comes back after its job went
// on, maybe ended: run again, a connect would open a session nobody closes and a pull
// would fill staging already removed. The orchestrator stores the step as running
// before it publishes the command, and a record only moves forward, so a replica
// that lags can only make this say "run"; so does a record that cannot be read.
func (r *Runner) superseded(ctx context.Context, cmd contracts.StepCommand) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	e, err := r.jobs.Get(ctx, cmd.JobID)
	if err != nil {
		return ""
	}
	var j contracts.Job
	if json.Unmarshal(e.Value(), &j) != nil {
		return ""
	}
	for _, s := range j.Steps {
		switch {
		case s.Name != cmd.Step:
		case s.Attempt > cmd.Attempt:
			return fmt.Sprintf("attempt %d of step %s was superseded by attempt %d", cmd.Attempt, cmd.Step, s.Attempt)
		case s.Attempt == cmd.Attempt && s.State != contracts.StepRunning:
			return fmt.Sprintf("attempt %d of step %s already ended (%s)", cmd.Attempt, cmd.Step, s.State)
		}
	}
	return ""
}

type jobIDKey struct{}

// JobID returns the id of the job whose step runs in ctx (set by the Runner before the
// handler is called), or "" outside a step. Typed endpoints receive only their
// arguments; a step that acts on the job as a whole (remove its staging area) reads it
// here.
func JobID(ctx context.Context) string {
	id, _ := ctx.Value(jobIDKey{}).(string)
	return id
}

type attemptKey struct{}

// Attempt returns the attempt of the step that runs in ctx (1 for the first; a
// redelivered command keeps its attempt), or 0 outside a step. A step that can work in
// a faster way or a resumable one picks by it: a retry follows a failure.
func Attempt(ctx context.Context) int {
	n, _ := ctx.Value(attemptKey{}).(int)
	return n
}

// call runs the handler, turning a panic into a permanent internal error.
func (r *Runner) call(ctx context.Context, cmd contracts.StepCommand) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			logctx.From(ctx).Error("step panicked", "panic", fmt.Sprint(p))
			err = Permanent(contracts.CodeInternal, fmt.Errorf("%s %s panicked: %v", cmd.Service, cmd.Op, p))
		}
	}()
	return r.Handler(ctx, cmd)
}

func (r *Runner) keepAlive(msg jetstream.Msg) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.InProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(stop); <-done }
}

// publishEvent stores a step event; false when it could not be stored.
func (r *Runner) publishEvent(ctx context.Context, cmd contracts.StepCommand, kind contracts.StepEventKind, se *contracts.StepError, res Result, elapsed time.Duration) bool {
	ev := contracts.StepEvent{
		Schema: contracts.SchemaStepEvent, JobID: cmd.JobID, Step: cmd.Step, Attempt: cmd.Attempt,
		Service: r.Service, Op: cmd.Op, Kind: kind, Error: se, Bytes: res.Bytes,
		Duration: elapsed, Worker: r.Worker, Time: time.Now().UTC(),
	}
	if res.Output != nil {
		out, err := json.Marshal(res.Output)
		if err != nil {
			ev.Kind, ev.Error = contracts.StepFailed, &contracts.StepError{Code: contracts.CodeInternal, Message: "encoding step output: " + err.Error()}
		} else {
			ev.Output = out
		}
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := bus.Publish(pctx, r.JS, contracts.StepEventSubject(cmd.JobID), ev,
		contracts.StepEventMsgID(cmd.JobID, cmd.Step, cmd.Attempt, ev.Kind), cmd.JobID)
	if err != nil {
		r.Log.Error("publishing step event", "job_id", cmd.JobID, "step", cmd.Step, "attempt", cmd.Attempt, "error", err)
		return false
	}
	return true
}
