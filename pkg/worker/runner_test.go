package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The runner's conformance suite: every worker service relies on these behaviours.

const svc = contracts.ServiceTransfer

type fixture struct {
	t   *testing.T
	srv *bustest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

func newFixture(t *testing.T) *fixture {
	srv := bustest.Start(t, bus.Topology{CommandAckWait: time.Second})
	nc, js := srv.Connect(t, "test")
	return &fixture{t: t, srv: srv, nc: nc, js: js}
}

// start runs a runner with h until the test ends (or stop is called).
func (f *fixture) start(h Handler, tweak ...func(*Runner)) (stop func()) {
	nc, js := f.srv.Connect(f.t, "worker")
	r := &Runner{NC: nc, JS: js, Service: svc, Handler: h, InProgressEvery: 200 * time.Millisecond, DrainTimeout: 5 * time.Second, RetryDelay: 200 * time.Millisecond}
	for _, tw := range tweak {
		tw(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					f.t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				f.t.Error("runner did not stop")
			}
		})
	}
	f.t.Cleanup(stop)
	return stop
}

func (f *fixture) send(job, step string, attempt int, deadline time.Duration) {
	f.t.Helper()
	cmd := contracts.StepCommand{
		Schema: contracts.SchemaStepCommand, JobID: job, Step: step, Attempt: attempt,
		Service: svc, Op: contracts.OpPush, Deadline: time.Now().Add(deadline), Args: json.RawMessage(`{"host":"h1"}`),
	}
	if err := bus.Publish(context.Background(), f.js, contracts.CommandSubject(svc, contracts.OpPush), cmd, contracts.CommandMsgID(job, step, attempt), job); err != nil {
		f.t.Fatal(err)
	}
}

// events waits until n step events of job are stored (or timeout) and returns them all.
func (f *fixture) events(job string, n int, timeout time.Duration) []contracts.StepEvent {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := f.readEvents(job)
		if len(evs) >= n || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) readEvents(job string) []contracts.StepEvent {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.js.OrderedConsumer(ctx, contracts.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{contracts.StepEventSubject(job)}})
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	var evs []contracts.StepEvent
	if info.NumPending == 0 {
		return nil
	}
	batch, err := c.Fetch(int(info.NumPending), jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		f.t.Fatal(err)
	}
	for m := range batch.Messages() {
		var ev contracts.StepEvent
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			f.t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func (f *fixture) pendingCommands() uint64 {
	f.t.Helper()
	s, err := f.js.Stream(context.Background(), contracts.StreamCommands)
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return info.State.Msgs
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type output struct {
	N int `json:"n"`
}

func TestSuccessAcksAndPublishesOneEvent(t *testing.T) {
	f := newFixture(t)
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		return Result{Output: output{N: 7}, Bytes: 42}, nil
	})
	f.send("j1", "push", 1, time.Minute)
	evs := f.events("j1", 1, 5*time.Second)
	if len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded || evs[0].Bytes != 42 || string(evs[0].Output) != `{"n":7}` {
		t.Fatalf("events = %+v", evs)
	}
	waitFor(t, "command acked", 5*time.Second, func() bool { return f.pendingCommands() == 0 })
}

func TestStepErrorIsReportedAndTerminated(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		calls.Add(1)
		return Result{}, Retryable(contracts.CodeUnreachable, errors.New("host h1 unreachable"))
	})
	f.send("j1", "push", 1, time.Minute)
	evs := f.events("j1", 1, 5*time.Second)
	if len(evs) != 1 || evs[0].Kind != contracts.StepFailed || evs[0].Error == nil || !evs[0].Error.Retryable || evs[0].Error.Code != contracts.CodeUnreachable {
		t.Fatalf("events = %+v", evs)
	}
	waitFor(t, "command terminated", 5*time.Second, func() bool { return f.pendingCommands() == 0 })
	time.Sleep(1500 * time.Millisecond) // past AckWait: a terminated command is not redelivered
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times, want 1: the orchestrator owns retries", n)
	}
}

func TestPoisonCommandIsTerminatedWithoutRunning(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		calls.Add(1)
		return Result{}, nil
	})
	// Not JSON at all: nothing to report to, terminated.
	if _, err := f.js.Publish(context.Background(), contracts.CommandSubject(svc, contracts.OpPush), []byte("{garbage")); err != nil {
		t.Fatal(err)
	}
	// Decodable but missing the schema: names a job, so the job hears of it.
	if _, err := f.js.Publish(context.Background(), contracts.CommandSubject(svc, contracts.OpPush), []byte(`{"job_id":"j2","step":"push","attempt":1}`)); err != nil {
		t.Fatal(err)
	}
	evs := f.events("j2", 1, 5*time.Second)
	if len(evs) != 1 || evs[0].Error == nil || evs[0].Error.Code != contracts.CodeInvalidCommand || evs[0].Error.Retryable {
		t.Fatalf("events = %+v", evs)
	}
	waitFor(t, "poison terminated", 5*time.Second, func() bool { return f.pendingCommands() == 0 })
	time.Sleep(1500 * time.Millisecond)
	if calls.Load() != 0 {
		t.Fatal("handler ran a poison command")
	}
}

func TestPanicBecomesPermanentFailure(t *testing.T) {
	f := newFixture(t)
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		panic("boom")
	})
	f.send("j1", "push", 1, time.Minute)
	evs := f.events("j1", 1, 5*time.Second)
	if len(evs) != 1 || evs[0].Error == nil || evs[0].Error.Retryable || evs[0].Error.Code != contracts.CodeInternal {
		t.Fatalf("events = %+v", evs)
	}
}

// A worker that dies after doing the step and storing its event, but before acking: the
// command is redelivered, the step runs again (handlers are idempotent), and the job
// still sees exactly one completion.
func TestRedeliveryAfterDeathBeforeAckRecordsOneCompletion(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	h := func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		calls.Add(1)
		return Result{Output: output{N: 1}}, nil
	}
	died := make(chan struct{})
	var dyingNC *nats.Conn
	f.start(h, func(r *Runner) {
		dyingNC = r.NC
		r.testHookBeforeAck = func() {
			dyingNC.Close() // the process dies: no ack will ever reach the server
			close(died)
		}
	})
	f.send("j1", "push", 1, time.Minute)
	<-died
	f.start(h) // a second replica takes over after AckWait
	waitFor(t, "redelivered command acked", 10*time.Second, func() bool { return f.pendingCommands() == 0 })
	if n := calls.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (once, then once on redelivery)", n)
	}
	if evs := f.events("j1", 2, time.Second); len(evs) != 1 {
		t.Fatalf("want exactly one completion event, got %d: %+v", len(evs), evs)
	}
}

// A step longer than the consumer's AckWait is kept alive by in-progress acks.
func TestLongStepIsNotRedelivered(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	started := make(chan struct{}, 1)
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		calls.Add(1)
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-time.After(3 * time.Second): // three times AckWait
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
		return Result{}, nil
	})
	f.send("j1", "push", 1, time.Minute)
	// The second replica comes up once the first holds the command: which of two idle
	// replicas is handed a command first is up to the server.
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the step did not start")
	}
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		calls.Add(1)
		return Result{}, errors.New("a second replica must not get the command")
	})
	evs := f.events("j1", 1, 10*time.Second)
	if len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded {
		t.Fatalf("events = %+v", evs)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// Shutdown stops fetching and lets the step in flight finish and report.
func TestShutdownDrainsInFlightStep(t *testing.T) {
	f := newFixture(t)
	started := make(chan struct{})
	stop := f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		close(started)
		time.Sleep(700 * time.Millisecond)
		return Result{}, ctx.Err()
	})
	f.send("j1", "push", 1, time.Minute)
	<-started
	stop()
	evs := f.events("j1", 1, time.Second)
	if len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded {
		t.Fatalf("the drained step did not complete: %+v", evs)
	}
	if f.pendingCommands() != 0 {
		t.Fatal("drained command not acked")
	}
}

// A step that outlives the drain timeout is handed back (nak) and another replica runs it.
func TestShutdownHandsBackStepPastDrainTimeout(t *testing.T) {
	f := newFixture(t)
	started := make(chan struct{})
	stop := f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		close(started)
		<-ctx.Done()
		return Result{}, ctx.Err()
	}, func(r *Runner) { r.DrainTimeout = 300 * time.Millisecond })
	f.send("j1", "push", 1, time.Minute)
	<-started
	stop()
	if evs := f.readEvents("j1"); len(evs) != 0 {
		t.Fatalf("an interrupted step must not report: %+v", evs)
	}
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) { return Result{}, nil })
	evs := f.events("j1", 1, 5*time.Second)
	if len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded {
		t.Fatalf("events = %+v", evs)
	}
}

func TestCancelSignalStopsStep(t *testing.T) {
	f := newFixture(t)
	started := make(chan struct{})
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		close(started)
		<-ctx.Done()
		return Result{}, ctx.Err()
	})
	f.send("j1", "push", 1, time.Minute)
	<-started
	if err := bus.SignalCancel(context.Background(), f.nc, "j1"); err != nil {
		t.Fatal(err)
	}
	evs := f.events("j1", 1, 5*time.Second)
	if len(evs) != 1 || evs[0].Error == nil || evs[0].Error.Code != contracts.CodeCancelled {
		t.Fatalf("events = %+v", evs)
	}
}

func TestDeferRedeliversLater(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		if calls.Add(1) == 1 {
			return Result{}, Defer(300*time.Millisecond, errors.New("lease not visible yet"))
		}
		return Result{}, nil
	})
	f.send("j1", "push", 1, time.Minute)
	evs := f.events("j1", 1, 5*time.Second)
	if len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded || calls.Load() != 2 {
		t.Fatalf("events = %+v, calls = %d", evs, calls.Load())
	}
}

func TestExpiredCommandIsNotStarted(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		calls.Add(1)
		return Result{}, nil
	})
	f.send("j1", "push", 1, -time.Second)
	waitFor(t, "expired command terminated", 5*time.Second, func() bool { return f.pendingCommands() == 0 })
	if calls.Load() != 0 {
		t.Fatal("an expired command ran")
	}
}

func TestHandlerRoutesTypedOps(t *testing.T) {
	type args struct {
		Host string `json:"host"`
	}
	h := NewHandler(svc, []Op{Typed(contracts.OpPush, func(ctx context.Context, a args) (output, error) {
		return output{N: len(a.Host)}, nil
	})}, Logging())
	res, err := h(context.Background(), contracts.StepCommand{Op: contracts.OpPush, Args: json.RawMessage(`{"host":"abc"}`)})
	if err != nil || res.Output.(output).N != 3 {
		t.Fatalf("res = %+v, err = %v", res, err)
	}
	_, err = h(context.Background(), contracts.StepCommand{Op: contracts.OpPush, Args: json.RawMessage(`{"hots":"abc"}`)})
	if se := Classify(err); se.Code != contracts.CodeInvalidCommand || se.Retryable {
		t.Fatalf("bad args: %v", err)
	}
	_, err = h(context.Background(), contracts.StepCommand{Op: contracts.OpPull})
	if se := Classify(err); se.Code != contracts.CodeNotSupported || se.Retryable {
		t.Fatalf("unknown op: %v", err)
	}
}

// TestSupersededCommandIsNotRun: a command whose attempt the job record shows over
// (a lost ack brought it back after the job went on) is terminated without running
// and without an event; one the record does not rule out runs, whether the record is
// current, behind (a lagging replica) or missing.
func TestSupersededCommandIsNotRun(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	jobs, err := bus.WaitKeyValue(ctx, f.js, contracts.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	record := func(job string, state contracts.StepState, attempt int) {
		j := contracts.Job{Schema: contracts.SchemaJob, ID: job, State: contracts.JobRunning, Steps: []contracts.Step{
			{Name: "connect", State: contracts.StepDone, Attempt: 1},
			{Name: "push", State: state, Attempt: attempt},
		}}
		data, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jobs.Put(ctx, job, data); err != nil {
			t.Fatal(err)
		}
	}
	record("j-ended", contracts.StepDone, 1)
	record("j-retried", contracts.StepRunning, 2)
	record("j-waiting", contracts.StepWaiting, 1)
	record("j-current", contracts.StepRunning, 1)
	record("j-behind", contracts.StepPending, 0)

	var mu sync.Mutex
	ran := map[string]bool{}
	f.start(func(ctx context.Context, cmd contracts.StepCommand) (Result, error) {
		mu.Lock()
		defer mu.Unlock()
		ran[cmd.JobID] = true
		return Result{}, nil
	})
	for _, job := range []string{"j-ended", "j-retried", "j-waiting", "j-current", "j-behind", "j-unknown"} {
		f.send(job, "push", 1, time.Minute)
	}
	waitFor(t, "every command ended", 5*time.Second, func() bool { return f.pendingCommands() == 0 })
	for _, job := range []string{"j-current", "j-behind", "j-unknown"} {
		if evs := f.events(job, 1, 5*time.Second); len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded {
			t.Errorf("%s: events %+v, want the step run once", job, evs)
		}
	}
	time.Sleep(1500 * time.Millisecond) // past AckWait: a terminated command does not return
	mu.Lock()
	defer mu.Unlock()
	for _, job := range []string{"j-ended", "j-retried", "j-waiting"} {
		if ran[job] {
			t.Errorf("%s: the superseded command ran", job)
		}
		if evs := f.readEvents(job); len(evs) != 0 {
			t.Errorf("%s: events %+v for a superseded command", job, evs)
		}
	}
}
