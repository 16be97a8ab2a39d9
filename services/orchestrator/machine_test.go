package orchestrator

import (
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// Unit tests of the pure state machine; the bus-level behaviour is in orchestrator_test.go.

func testMachine() *machine {
	return &machine{workflows: testWorkflows(), cancelGrace: time.Second, dispatchGrace: 5 * time.Second}
}

func newTestJob(t *testing.T, m *machine, now time.Time) (*contracts.Job, effects) {
	t.Helper()
	req := request("j1")
	raw := []byte(`{"schema":"ferry.v1.job.request","id":"j1","action":"update","update":{"from":"operator-pc","files":["updates/app"],"to":"customer","dest":"/opt/app"}}`)
	j, fx, err := m.newJob(&req, raw, now)
	if err != nil {
		t.Fatal(err)
	}
	return j, fx
}

func succeed(t *testing.T, m *machine, j *contracts.Job, now time.Time) effects {
	t.Helper()
	s := j.Steps[j.Current()]
	fx, ok := m.onStepEvent(j, &contracts.StepEvent{Step: s.Name, Attempt: s.Attempt, Kind: contracts.StepSucceeded,
		Output: []byte(`{"name":"a.tar.zst","size":1,"sha256":"00"}`)}, now)
	if !ok {
		t.Fatalf("event for %s refused", s.Name)
	}
	return fx
}

func TestNewJobDispatchesFirstStep(t *testing.T) {
	m := testMachine()
	now := time.Now()
	j, fx := newTestJob(t, m, now)
	if j.State != contracts.JobRunning || len(fx.commands) != 1 || fx.commands[0].Step != "connect-operator" {
		t.Fatalf("state %s, commands %+v", j.State, fx.commands)
	}
	if got := fx.commands[0].Deadline; !got.Equal(now.Add(5 * time.Second)) {
		t.Errorf("deadline %v", got)
	}
	if len(fx.events) != 2 || fx.events[0].Kind != contracts.EventAccepted || fx.events[1].Kind != contracts.EventStepStarted {
		t.Errorf("events %+v", fx.events)
	}
}

func TestStaleAndDuplicateEventsChangeNothing(t *testing.T) {
	m := testMachine()
	now := time.Now()
	j, _ := newTestJob(t, m, now)
	if _, ok := m.onStepEvent(j, &contracts.StepEvent{Step: "connect-operator", Attempt: 2, Kind: contracts.StepSucceeded}, now); ok {
		t.Fatal("event of another attempt accepted")
	}
	if _, ok := m.onStepEvent(j, &contracts.StepEvent{Step: "push", Attempt: 1, Kind: contracts.StepSucceeded}, now); ok {
		t.Fatal("event of a step not running accepted")
	}
	succeed(t, m, j, now)
	if _, ok := m.onStepEvent(j, &contracts.StepEvent{Step: "connect-operator", Attempt: 1, Kind: contracts.StepSucceeded}, now); ok {
		t.Fatal("duplicate completion accepted")
	}
}

func TestBackoffDoublesUpToMax(t *testing.T) {
	p := Policy{Backoff: time.Second, MaxBackoff: 5 * time.Second}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 5 * time.Second, 9: 5 * time.Second} {
		if got := p.delay(n); got != want {
			t.Errorf("delay(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestRetryWaitsForItsTime(t *testing.T) {
	m := testMachine()
	now := time.Now()
	j, _ := newTestJob(t, m, now)
	fx, _ := m.onStepEvent(j, &contracts.StepEvent{Step: "connect-operator", Attempt: 1, Kind: contracts.StepFailed,
		Error: &contracts.StepError{Code: contracts.CodeUnreachable, Message: "refused", Retryable: true}}, now)
	s := j.Steps[0]
	if s.State != contracts.StepWaiting || len(fx.commands) != 0 || !m.wake(j).Equal(s.RetryAt) {
		t.Fatalf("step %+v, commands %d", s, len(fx.commands))
	}
	if fx := m.advance(j, now.Add(50*time.Millisecond)); len(fx.commands) != 0 {
		t.Fatal("retried before its time")
	}
	fx = m.advance(j, now.Add(150*time.Millisecond))
	if len(fx.commands) != 1 || fx.commands[0].Attempt != 2 {
		t.Fatalf("commands %+v", fx.commands)
	}
}

func TestUndispatchedCommandIsPublishedAgainAfterGrace(t *testing.T) {
	m := testMachine()
	now := time.Now()
	m.workflows[contracts.ActionUpdate].Steps[0].Policy.Timeout = time.Minute
	j, _ := newTestJob(t, m, now)
	if !m.wake(j).Equal(now.Add(5 * time.Second)) {
		t.Fatalf("wake %v", m.wake(j))
	}
	fx := m.advance(j, now.Add(6*time.Second))
	if len(fx.commands) != 1 || fx.commands[0].Attempt != 1 {
		t.Fatalf("commands %+v", fx.commands)
	}
	j.Steps[0].Dispatched = true
	if fx := m.advance(j, now.Add(7*time.Second)); len(fx.commands) != 0 {
		t.Fatal("a dispatched command was published again")
	}
}

func TestCancelWhileWaitingSkipsToClosingSteps(t *testing.T) {
	m := testMachine()
	now := time.Now()
	j, _ := newTestJob(t, m, now)
	succeed(t, m, j, now)
	m.onStepEvent(j, &contracts.StepEvent{Step: "copy-to-home", Attempt: 1, Kind: contracts.StepFailed,
		Error: &contracts.StepError{Code: contracts.CodeUnreachable, Message: "x", Retryable: true}}, now)
	fx, ok := m.cancel(j, "ticket closed", now)
	if !ok || fx.cancel {
		t.Fatalf("ok %v, cancel signal %v (nothing is in flight)", ok, fx.cancel)
	}
	if len(fx.commands) != 1 || fx.commands[0].Step != "remove-staging" || j.State != contracts.JobClosing {
		t.Fatalf("state %s, commands %+v", j.State, fx.commands)
	}
	succeed(t, m, j, now)
	fx = succeed(t, m, j, now)
	if j.State != contracts.JobCancelled || !fx.finished {
		t.Fatalf("state %s", j.State)
	}
	if _, ok := m.cancel(j, "again", now); ok {
		t.Fatal("cancel of a finished job changed it")
	}
}

func TestFailingClosingStepFailsTheJobButOthersStillRun(t *testing.T) {
	m := testMachine()
	now := time.Now()
	j, _ := newTestJob(t, m, now)
	for j.Steps[j.Current()].Name != "remove-staging" {
		succeed(t, m, j, now)
	}
	m.onStepEvent(j, &contracts.StepEvent{Step: "remove-staging", Attempt: 1, Kind: contracts.StepFailed,
		Error: &contracts.StepError{Code: contracts.CodeInternal, Message: "permission denied", Retryable: false}}, now)
	if c := j.Steps[j.Current()]; c.Name != "close" || c.State != contracts.StepRunning {
		t.Fatalf("current %+v", c)
	}
	succeed(t, m, j, now)
	if j.State != contracts.JobFailed || j.Failure.Step != "remove-staging" {
		t.Fatalf("state %s failure %+v", j.State, j.Failure)
	}
}
