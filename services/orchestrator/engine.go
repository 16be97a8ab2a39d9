package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// engine runs the machine against the bus: it feeds it submissions, cancellations, step
// events and timer ticks, stores each transition by compare-and-set, and then performs
// the transition's effects. Work for one job always runs on the same lane, so a replica
// handles a job's messages in order; replicas racing on a job are settled by the store.
type engine struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *store
	machine *machine
	metrics *metrics
	log     *slog.Logger

	lanes []chan func(context.Context)

	mu       sync.Mutex
	timers   map[string]*time.Timer
	inFlight map[string]flight
}

// flight is what the engine remembers of a job in flight: its action, and the deadline
// of its running step's attempt (zero when no step runs).
type flight struct {
	action   contracts.Action
	deadline time.Time
}

func (e *engine) lane(job string) chan func(context.Context) {
	h := fnv.New32a()
	h.Write([]byte(job))
	return e.lanes[h.Sum32()%uint32(len(e.lanes))]
}

// do queues fn on the job's lane.
func (e *engine) do(ctx context.Context, job string, fn func(context.Context)) {
	select {
	case e.lane(job) <- fn:
	case <-ctx.Done():
	}
}

func (e *engine) runLanes(ctx context.Context, wg *sync.WaitGroup) {
	for _, l := range e.lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case fn := <-l:
					fn(ctx)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
}

// finishLanes waits until every lane has run the work queued on it so far, or d passes.
func (e *engine) finishLanes(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for _, l := range e.lanes {
		done := make(chan struct{})
		select {
		case l <- func(context.Context) { close(done) }:
		case <-t.C:
			return
		}
		select {
		case <-done:
		case <-t.C:
			return
		}
	}
}

// apply stores a change of a job and performs its effects.
func (e *engine) apply(ctx context.Context, id string, change func(*contracts.Job) (effects, error)) error {
	var before map[string]contracts.StepState
	j, fx, err := e.store.update(ctx, id, func(j *contracts.Job) (effects, error) {
		before = stepStates(j)
		return change(j)
	})
	if err != nil {
		return err
	}
	e.metrics.observe(j, before, fx)
	e.perform(ctx, j, fx)
	return nil
}

// perform publishes what a stored transition asked for. A failure here is repaired by
// the dispatch grace timer (commands) or is harmless (events: watchers also read the
// record; cancel signals: the step's deadline stops the work).
func (e *engine) perform(ctx context.Context, j *contracts.Job, fx effects) {
	tr := jobTrace(ctx, j)
	ctx = bus.WithTrace(ctx, tr)
	log := e.log.With("job_id", j.ID).With(tr.LogAttrs()...)
	if fx.cancel {
		if err := bus.SignalCancel(ctx, e.nc, j.ID); err != nil {
			log.Warn("signalling cancel", "error", err)
		}
	}
	for _, cmd := range fx.commands {
		err := bus.Publish(ctx, e.js, contracts.CommandSubject(cmd.Service, cmd.Op), cmd,
			contracts.CommandMsgID(cmd.JobID, cmd.Step, cmd.Attempt), cmd.JobID)
		if err != nil {
			log.Error("dispatching step", "step", cmd.Step, "attempt", cmd.Attempt, "error", err)
			continue
		}
		e.markDispatched(ctx, cmd)
	}
	for _, ev := range fx.events {
		// Job events are for watchers; the record is the truth. They are published
		// without waiting for the stream's ack, which keeps them off the step's path.
		m, err := bus.Message(contracts.JobEventSubject(ev.JobID), ev, ev.JobID)
		if err == nil {
			bus.SetTrace(m, tr)
			_, err = e.js.PublishMsgAsync(m, jetstream.WithMsgID(fmt.Sprintf("%s/event/%d", ev.JobID, ev.Seq)))
		}
		if err != nil {
			log.Warn("publishing job event", "kind", ev.Kind, "error", err)
		}
		lvl := slog.LevelInfo
		if ev.Error != nil {
			lvl = slog.LevelWarn
		}
		log.Log(ctx, lvl, "job event", "kind", ev.Kind, "step", ev.Step, "attempt", ev.Attempt, "state", j.State, "error", errText(ev.Error))
	}
	e.schedule(j)
}

// jobTrace is the span of the work on j that ctx runs: the job's trace id, and the
// span of the message being handled (from ctx) or a new one (a timer fired).
func jobTrace(ctx context.Context, j *contracts.Job) bus.Trace {
	t, _ := bus.TraceFrom(ctx)
	if t.SpanID == "" {
		t.SpanID = bus.NewSpanID()
	}
	t.TraceID = j.TraceID
	if t.TraceID == "" { // a record from before trace ids
		t.TraceID = bus.TraceIDFor(j.ID)
	}
	return t
}

func errText(se *contracts.StepError) string {
	if se == nil {
		return ""
	}
	return se.Code + ": " + se.Message
}

func (e *engine) markDispatched(ctx context.Context, cmd contracts.StepCommand) {
	_, _, err := e.store.update(ctx, cmd.JobID, func(j *contracts.Job) (effects, error) {
		i := stepIndex(j, cmd.Step)
		if i < 0 || j.Steps[i].State != contracts.StepRunning || j.Steps[i].Attempt != cmd.Attempt || j.Steps[i].Dispatched {
			return effects{}, errNoChange
		}
		j.Steps[i].Dispatched = true
		return effects{}, nil
	})
	if err != nil && !errors.Is(err, errNoChange) {
		e.log.Warn("marking step dispatched", "job_id", cmd.JobID, "step", cmd.Step, "error", err)
	}
}

// schedule arms the job's timer for its next wake time.
func (e *engine) schedule(j *contracts.Job) {
	at := e.machine.wake(j)
	e.mu.Lock()
	defer e.mu.Unlock()
	if t := e.timers[j.ID]; t != nil {
		t.Stop()
		delete(e.timers, j.ID)
	}
	if j.State.Final() {
		delete(e.inFlight, j.ID)
	} else {
		f := flight{action: j.Action}
		if i := j.Current(); i >= 0 && j.Steps[i].State == contracts.StepRunning {
			f.deadline = j.Steps[i].Deadline
		}
		e.inFlight[j.ID] = f
	}
	if at.IsZero() {
		return
	}
	id := j.ID
	e.timers[id] = time.AfterFunc(time.Until(at), func() {
		e.do(context.Background(), id, func(ctx context.Context) { e.tick(ctx, id) })
	})
}

func (e *engine) inFlightByAction() map[contracts.Action]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := map[contracts.Action]int{}
	for _, f := range e.inFlight {
		n[f.action]++
	}
	return n
}

// pastDeadline counts, by action, the jobs whose running step is past its attempt's
// deadline at now.
func (e *engine) pastDeadline(now time.Time) map[contracts.Action]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := map[contracts.Action]int{}
	for _, f := range e.inFlight {
		if !f.deadline.IsZero() && now.After(f.deadline) {
			n[f.action]++
		}
	}
	return n
}

func (e *engine) stopTimers() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, t := range e.timers {
		t.Stop()
		delete(e.timers, id)
	}
}

// tick advances a job whose timer fired: a retry is due, an attempt timed out, or a
// command must be published again.
func (e *engine) tick(ctx context.Context, id string) {
	err := e.apply(ctx, id, func(j *contracts.Job) (effects, error) {
		events := j.Events
		fx := e.machine.advance(j, time.Now().UTC())
		if j.Events == events && len(fx.commands) == 0 {
			return effects{}, errNoChange
		}
		return fx, nil
	})
	if err != nil && !errors.Is(err, errNoChange) {
		e.log.Error("advancing job", "job_id", id, "error", err)
		e.retryLater(id)
	} else if errors.Is(err, errNoChange) {
		if j, _, gerr := e.store.get(ctx, id); gerr == nil {
			e.schedule(j)
		}
	}
}

// retryLater re-arms a job's timer after a store error (NATS briefly away).
func (e *engine) retryLater(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t := e.timers[id]; t != nil {
		t.Stop()
	}
	e.timers[id] = time.AfterFunc(time.Second, func() {
		e.do(context.Background(), id, func(ctx context.Context) { e.tick(ctx, id) })
	})
}

// onSubmit handles a message of the jobs stream's submit subject.
func (e *engine) onSubmit(ctx context.Context, msg jetstream.Msg) {
	now := time.Now().UTC()
	req, err := contracts.DecodeJobRequest(msg.Data())
	// The job's trace: the one the request came with (a helpdesk system that traces),
	// else one derived from the job id.
	tr := bus.TraceOf(msg.Headers(), req.ID)
	ctx = bus.WithTrace(ctx, tr)
	log := e.log.With("job_id", req.ID).With(tr.LogAttrs()...)
	if err != nil {
		var ve *contracts.ValidationError
		errors.As(err, &ve)
		e.metrics.rejected.Inc()
		log.Warn("job request rejected", "error", err)
		if contracts.ValidID(req.ID) {
			e.reject(ctx, req, msg.Data(), ve, now, tr.TraceID)
		}
		_ = msg.Ack()
		return
	}
	j, fx, err := e.machine.newJob(&req, json.RawMessage(msg.Data()), now)
	if err != nil {
		log.Error("building job", "error", err)
		_ = msg.Term()
		return
	}
	j.TraceID = tr.TraceID
	if _, err := e.store.create(ctx, j); errors.Is(err, errJobExists) {
		log.Info("duplicate submission ignored")
		_ = msg.Ack()
		return
	} else if err != nil {
		log.Error("storing job", "error", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	e.metrics.observe(j, nil, fx)
	e.perform(ctx, j, fx)
	_ = msg.Ack()
}

// reject keeps a record of a rejected request under its id, so `ferry job get` and the
// helpdesk see why, and announces it to watchers.
func (e *engine) reject(ctx context.Context, req contracts.JobRequest, raw []byte, ve *contracts.ValidationError, now time.Time, traceID string) {
	if !json.Valid(raw) {
		raw, _ = json.Marshal(string(raw))
	}
	j := &contracts.Job{Schema: contracts.SchemaJob, ID: req.ID, Action: req.Action, Request: raw,
		State: contracts.JobRejected, Created: now, Updated: now, Finished: now, TraceID: traceID,
		Failure: &contracts.JobFailure{Code: "invalid", Message: ve.Error()}}
	var fx effects
	e.machine.event(j, &fx, contracts.JobEvent{Kind: contracts.EventRejected, State: contracts.JobRejected, Rejection: ve}, now)
	if _, err := e.store.create(ctx, j); err != nil {
		return // a job with this id exists: the rejected duplicate changes nothing
	}
	e.perform(ctx, j, fx)
}

func (e *engine) onCancel(ctx context.Context, msg jetstream.Msg) {
	var c contracts.CancelRequest
	if err := json.Unmarshal(msg.Data(), &c); err != nil || c.Validate() != nil {
		e.log.Warn("invalid cancel request dropped", "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	ctx = bus.WithTrace(ctx, bus.TraceOf(msg.Headers(), c.JobID))
	err := e.apply(ctx, c.JobID, func(j *contracts.Job) (effects, error) {
		fx, ok := e.machine.cancel(j, c.Reason, time.Now().UTC())
		if !ok {
			return fx, errNoChange
		}
		return fx, nil
	})
	switch {
	case err == nil, errors.Is(err, errNoChange), errors.Is(err, errNoJob):
		_ = msg.Ack()
	default:
		e.log.Error("cancelling job", "job_id", c.JobID, "error", err)
		_ = msg.NakWithDelay(time.Second)
	}
}

func (e *engine) onStepEvent(ctx context.Context, msg jetstream.Msg) {
	var ev contracts.StepEvent
	if err := json.Unmarshal(msg.Data(), &ev); err != nil || !contracts.ValidID(ev.JobID) {
		e.log.Warn("undecodable step event dropped", "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	tr := bus.TraceOf(msg.Headers(), ev.JobID)
	ctx = bus.WithTrace(ctx, tr)
	err := e.apply(ctx, ev.JobID, func(j *contracts.Job) (effects, error) {
		fx, ok := e.machine.onStepEvent(j, &ev, time.Now().UTC())
		if !ok {
			return fx, errNoChange
		}
		return fx, nil
	})
	switch {
	case err == nil:
		_ = msg.Ack()
	case errors.Is(err, errNoChange):
		e.log.Debug("stale or duplicate step event", append([]any{"job_id", ev.JobID, "step", ev.Step, "attempt", ev.Attempt}, tr.LogAttrs()...)...)
		_ = msg.Ack()
	case errors.Is(err, errNoJob):
		e.log.Warn("step event of an unknown job", "job_id", ev.JobID, "step", ev.Step)
		_ = msg.Ack()
	default:
		e.log.Error("applying step event", "job_id", ev.JobID, "step", ev.Step, "error", err)
		_ = msg.NakWithDelay(time.Second)
	}
}

// consume feeds a durable consumer's messages to the lanes of their jobs.
func (e *engine) consume(ctx context.Context, stream, durable string, route func(jetstream.Msg) (string, func(context.Context, jetstream.Msg))) (jetstream.ConsumeContext, error) {
	cons, err := bus.WaitConsumer(ctx, e.js, stream, durable)
	if err != nil {
		return nil, err
	}
	return cons.Consume(func(msg jetstream.Msg) {
		job, handle := route(msg)
		if handle == nil {
			_ = msg.Term()
			return
		}
		e.do(ctx, job, func(ctx context.Context) { handle(ctx, msg) })
	}, jetstream.PullMaxMessages(256))
}

func (e *engine) routeJobs(msg jetstream.Msg) (string, func(context.Context, jetstream.Msg)) {
	subj := msg.Subject()
	if subj == contracts.SubjectJobSubmit {
		var head struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(msg.Data(), &head)
		return head.ID, e.onSubmit
	}
	if job, ok := strings.CutPrefix(subj, contracts.SubjectJobCancelPrefix+"."); ok {
		return job, e.onCancel
	}
	e.log.Warn("message on an unknown jobs subject dropped", "subject", subj)
	return "", nil
}

func (e *engine) routeStepEvents(msg jetstream.Msg) (string, func(context.Context, jetstream.Msg)) {
	subj := msg.Subject()
	return subj[strings.LastIndexByte(subj, '.')+1:], e.onStepEvent
}

// watch follows every job record, from the first, to arm timers: at start this resumes
// every job in flight; afterwards it keeps the timers of jobs that other replicas
// advance, so any replica can take over.
func (e *engine) watch(ctx context.Context, ready chan<- struct{}) error {
	resumed := 0
	err := bus.Follow(ctx, e.store.kv, bus.FollowOptions{
		FromStart:     true,
		IgnoreDeletes: true,
		Loaded: func() {
			e.log.Info("job records loaded", "resumed", resumed)
			if ready != nil {
				close(ready)
				ready = nil
			}
		},
		Remade: func(from uint64, why error) {
			e.log.Warn("job record watcher made again", "from_revision", from, "error", why)
		},
	}, func(entry jetstream.KeyValueEntry) {
		var j contracts.Job
		if err := json.Unmarshal(entry.Value(), &j); err != nil {
			e.log.Error("undecodable job record", "key", entry.Key(), "error", err)
			return
		}
		if ready != nil && !j.State.Final() {
			resumed++
		}
		e.schedule(&j)
		n := e.inFlightByAction()
		for _, a := range contracts.Actions {
			e.metrics.inFlight.WithLabelValues(string(a)).Set(float64(n[a]))
		}
	})
	if err != nil {
		return fmt.Errorf("watching job records: %w", err)
	}
	return nil
}
