package orchestrator

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// The state machine of a job. Every function here changes a *contracts.Job in memory
// and says what must happen outside (effects); the caller stores the job by
// compare-and-set and only then performs the effects. Nothing here does I/O, so the
// whole lifecycle is testable without a bus.

// effects are what a transition asks the outside world to do, after it was stored.
type effects struct {
	commands []contracts.StepCommand
	events   []contracts.JobEvent
	cancel   bool // signal workers to abort the job's work in flight
	finished bool // the job reached a final state in this transition
	retried  []string
	timedOut []string
}

func (e *effects) merge(o effects) {
	e.commands = append(e.commands, o.commands...)
	e.events = append(e.events, o.events...)
	e.cancel = e.cancel || o.cancel
	e.finished = e.finished || o.finished
	e.retried = append(e.retried, o.retried...)
	e.timedOut = append(e.timedOut, o.timedOut...)
}

// machine applies the workflows to jobs.
type machine struct {
	workflows     Workflows
	cancelGrace   time.Duration
	dispatchGrace time.Duration
}

// newJob builds the record of an accepted request and starts its first step.
func (m *machine) newJob(req *contracts.JobRequest, raw json.RawMessage, now time.Time) (*contracts.Job, effects, error) {
	wf, ok := m.workflows[req.Action]
	if !ok {
		return nil, effects{}, fmt.Errorf("no workflow for action %q", req.Action)
	}
	j := &contracts.Job{
		Schema: contracts.SchemaJob, ID: req.ID, Action: req.Action, Request: raw,
		State: contracts.JobPending, Created: now, Updated: now,
	}
	for _, d := range wf.Steps {
		j.Steps = append(j.Steps, contracts.Step{Name: d.Name, Service: d.Service, Op: d.Op, Always: d.Always, State: contracts.StepPending})
	}
	var fx effects
	m.event(j, &fx, contracts.JobEvent{Kind: contracts.EventAccepted}, now)
	fx.merge(m.advance(j, now))
	return j, fx, nil
}

// event appends a job event, numbered in the record so a re-published event keeps its
// message id.
func (m *machine) event(j *contracts.Job, fx *effects, ev contracts.JobEvent, now time.Time) {
	j.Events++
	ev.Schema, ev.JobID, ev.Seq, ev.Action, ev.Time = contracts.SchemaJobEvent, j.ID, j.Events, j.Action, now
	fx.events = append(fx.events, ev)
}

// advance moves the job as far as it can go now: starts the next step, fires retries and
// timeouts, skips what a failure or cancellation makes pointless, finishes the job.
func (m *machine) advance(j *contracts.Job, now time.Time) effects {
	var fx effects
	defer func() { j.State = m.state(j); j.Updated = now }()
	if j.State.Final() {
		return fx
	}
	wf := m.workflows[j.Action]
	for {
		i := j.Current()
		if i < 0 {
			m.finish(j, &fx, now)
			return fx
		}
		s := &j.Steps[i]
		def, _ := wf.def(s.Name)
		stopping := j.Failure != nil || j.CancelRequested
		switch s.State {
		case contracts.StepPending:
			if stopping && !s.Always {
				s.State = contracts.StepSkipped
				m.event(j, &fx, contracts.JobEvent{Kind: contracts.EventStepSkipped, Step: s.Name}, now)
				continue
			}
			m.startAttempt(j, i, def, &fx, now)
			if s.State == contracts.StepRunning {
				return fx
			}
		case contracts.StepWaiting:
			if stopping && !s.Always {
				s.State = contracts.StepCancelled
				s.Ended = now
				m.event(j, &fx, contracts.JobEvent{Kind: contracts.EventStepSkipped, Step: s.Name, Attempt: s.Attempt}, now)
				continue
			}
			if now.Before(s.RetryAt) {
				return fx
			}
			m.startAttempt(j, i, def, &fx, now)
			if s.State == contracts.StepRunning {
				return fx
			}
		case contracts.StepRunning:
			if now.Before(s.Deadline) {
				if !s.Dispatched && !now.Before(s.AttemptStarted.Add(m.dispatchGrace)) {
					// Stored as running but its command may never have been published
					// (a replica died in between): publish again, same message id.
					if cmd, err := m.command(j, i, def); err == nil {
						fx.commands = append(fx.commands, cmd)
					}
				}
				return fx
			}
			if j.CancelRequested && !s.Always {
				m.cancelled(j, s, &fx, now)
				continue
			}
			fx.cancel = true
			fx.timedOut = append(fx.timedOut, s.Name)
			m.failed(j, s, def, &contracts.StepError{
				Code: contracts.CodeTimeout, Retryable: true,
				Message: fmt.Sprintf("step %s attempt %d timed out after %s", s.Name, s.Attempt, def.Policy.Timeout),
			}, &fx, now)
		}
	}
}

func (m *machine) startAttempt(j *contracts.Job, i int, def StepDef, fx *effects, now time.Time) {
	s := &j.Steps[i]
	s.Attempt++
	s.State = contracts.StepRunning
	s.Dispatched = false
	s.Error = nil
	s.RetryAt = time.Time{}
	if s.Started.IsZero() {
		s.Started = now
	}
	s.AttemptStarted = now
	s.Deadline = now.Add(def.Policy.Timeout)
	cmd, err := m.command(j, i, def)
	if err != nil {
		// The arguments cannot be built: no attempt of this step can ever run.
		m.failed(j, s, def, &contracts.StepError{Code: contracts.CodeInvalidCommand, Message: err.Error()}, fx, now)
		return
	}
	fx.commands = append(fx.commands, cmd)
	m.event(j, fx, contracts.JobEvent{Kind: contracts.EventStepStarted, Step: s.Name, Attempt: s.Attempt}, now)
}

// command builds the command of the current attempt of step i.
func (m *machine) command(j *contracts.Job, i int, def StepDef) (contracts.StepCommand, error) {
	s := &j.Steps[i]
	cmd := contracts.StepCommand{
		Schema: contracts.SchemaStepCommand, JobID: j.ID, Action: j.Action, Step: s.Name,
		Attempt: s.Attempt, Service: s.Service, Op: s.Op, Deadline: s.Deadline,
	}
	if def.Args == nil {
		return cmd, nil
	}
	var req contracts.JobRequest
	if err := json.Unmarshal(j.Request, &req); err != nil {
		return cmd, fmt.Errorf("stored request of job %s unreadable: %w", j.ID, err)
	}
	args, err := def.Args(&req, j)
	if err == nil {
		cmd.Args, err = json.Marshal(args)
	}
	if err != nil {
		return cmd, fmt.Errorf("cannot build arguments of step %s: %w", s.Name, err)
	}
	return cmd, nil
}

// onStepEvent applies a worker's report. Reports of another attempt, or of a step that
// is not running, are stale or duplicate and change nothing (ok is false).
func (m *machine) onStepEvent(j *contracts.Job, ev *contracts.StepEvent, now time.Time) (effects, bool) {
	var fx effects
	if j.State.Final() {
		return fx, false
	}
	i := stepIndex(j, ev.Step)
	if i < 0 {
		return fx, false
	}
	s := &j.Steps[i]
	if s.State != contracts.StepRunning || s.Attempt != ev.Attempt {
		return fx, false
	}
	def, _ := m.workflows[j.Action].def(s.Name)
	s.Elapsed += ev.Duration
	s.Dispatched = true
	switch ev.Kind {
	case contracts.StepSucceeded:
		s.State = contracts.StepDone
		s.Ended = now
		s.Output = ev.Output
		s.Bytes += ev.Bytes
		m.event(j, &fx, contracts.JobEvent{Kind: contracts.EventStepSucceeded, Step: s.Name, Attempt: s.Attempt}, now)
	case contracts.StepFailed:
		se := ev.Error
		if se == nil {
			se = &contracts.StepError{Code: contracts.CodeInternal, Message: "step failed without an error"}
		}
		if se.Code == contracts.CodeCancelled && j.CancelRequested {
			m.cancelled(j, s, &fx, now)
		} else {
			m.failed(j, s, def, se, &fx, now)
		}
	default:
		return fx, false
	}
	fx.merge(m.advance(j, now))
	return fx, true
}

// failed records a failed attempt: another attempt later when the error is retryable
// and the policy allows, else the step (and so the job) fails.
func (m *machine) failed(j *contracts.Job, s *contracts.Step, def StepDef, se *contracts.StepError, fx *effects, now time.Time) {
	s.Error = se
	attempts := max(def.Policy.Attempts, 1)
	if se.Retryable && s.Attempt < attempts && !(j.CancelRequested && !s.Always) {
		s.State = contracts.StepWaiting
		s.RetryAt = now.Add(def.Policy.delay(s.Attempt))
		fx.retried = append(fx.retried, s.Name)
		m.event(j, fx, contracts.JobEvent{Kind: contracts.EventStepRetrying, Step: s.Name, Attempt: s.Attempt, Error: se}, now)
		return
	}
	s.State = contracts.StepFailedS
	s.Ended = now
	if j.Failure == nil {
		msg := se.Message
		if se.Retryable && s.Attempt > 1 {
			msg = fmt.Sprintf("%s (after %d attempts)", msg, s.Attempt)
		}
		j.Failure = &contracts.JobFailure{Step: s.Name, Code: se.Code, Message: msg}
	}
	m.event(j, fx, contracts.JobEvent{Kind: contracts.EventStepFailed, Step: s.Name, Attempt: s.Attempt, Error: se}, now)
}

func (m *machine) cancelled(j *contracts.Job, s *contracts.Step, fx *effects, now time.Time) {
	s.State = contracts.StepCancelled
	s.Ended = now
	s.Error = &contracts.StepError{Code: contracts.CodeCancelled, Message: "cancelled: " + j.CancelReason}
	m.event(j, fx, contracts.JobEvent{Kind: contracts.EventStepFailed, Step: s.Name, Attempt: s.Attempt, Error: s.Error}, now)
}

// cancel asks the job to stop: the step in flight is signalled and given cancelGrace to
// stop, the remaining steps are skipped, and the closing steps run.
func (m *machine) cancel(j *contracts.Job, reason string, now time.Time) (effects, bool) {
	var fx effects
	if j.State.Final() || j.CancelRequested {
		return fx, false
	}
	j.CancelRequested = true
	j.CancelReason = reason
	if j.CancelReason == "" {
		j.CancelReason = "requested"
	}
	if i := j.Current(); i >= 0 {
		s := &j.Steps[i]
		if s.State == contracts.StepRunning && !s.Always {
			fx.cancel = true
			if grace := now.Add(m.cancelGrace); grace.Before(s.Deadline) {
				s.Deadline = grace
			}
		}
	}
	m.event(j, &fx, contracts.JobEvent{Kind: contracts.EventCancelling}, now)
	fx.merge(m.advance(j, now))
	return fx, true
}

func (m *machine) finish(j *contracts.Job, fx *effects, now time.Time) {
	j.Finished = now
	j.State = m.state(j)
	fx.finished = true
	m.event(j, fx, contracts.JobEvent{Kind: contracts.EventFinished, State: j.State, Failure: j.Failure}, now)
}

// state derives the job's state from its steps.
func (m *machine) state(j *contracts.Job) contracts.JobState {
	if j.State == contracts.JobRejected {
		return j.State
	}
	i := j.Current()
	switch {
	case i < 0 && j.Failure != nil:
		return contracts.JobFailed
	case i < 0 && j.CancelRequested:
		return contracts.JobCancelled
	case i < 0:
		return contracts.JobSucceeded
	case j.CancelRequested && j.Steps[i].State == contracts.StepRunning && !j.Steps[i].Always:
		return contracts.JobCancelling
	case j.Failure != nil || j.CancelRequested:
		return contracts.JobClosing
	case i == 0 && j.Steps[0].State == contracts.StepPending:
		return contracts.JobPending
	}
	return contracts.JobRunning
}

// wake is when the job next needs attention without any message arriving (a retry, a
// timeout, a command to publish again); zero when it only waits for messages or is done.
func (m *machine) wake(j *contracts.Job) time.Time {
	if j.State.Final() {
		return time.Time{}
	}
	i := j.Current()
	if i < 0 {
		return time.Now() // must finish
	}
	s := &j.Steps[i]
	switch s.State {
	case contracts.StepWaiting:
		return s.RetryAt
	case contracts.StepRunning:
		if !s.Dispatched {
			if g := s.AttemptStarted.Add(m.dispatchGrace); g.Before(s.Deadline) {
				return g
			}
		}
		return s.Deadline
	}
	return time.Now()
}

func stepIndex(j *contracts.Job, name string) int {
	for i := range j.Steps {
		if j.Steps[i].Name == name {
			return i
		}
	}
	return -1
}
