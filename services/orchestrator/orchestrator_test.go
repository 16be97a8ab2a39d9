package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The orchestrator is tested against a real embedded JetStream server, with the four
// worker services played by real worker.Runners whose step handlers are defined here.

type stepFunc func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error)

type harness struct {
	t   *testing.T
	srv *bustest.Server
	nc  *nats.Conn
	js  jetstream.JetStream

	mu       sync.Mutex
	handlers map[string]stepFunc // by step name; default succeeds
	calls    map[string]int      // "job/step" → executions
}

func newHarness(t *testing.T) *harness {
	srv := bustest.Start(t, bus.Topology{CommandAckWait: 2 * time.Second})
	nc, js := srv.Connect(t, "test")
	return &harness{t: t, srv: srv, nc: nc, js: js, handlers: map[string]stepFunc{}, calls: map[string]int{}}
}

// testWorkflows are the default workflows with fast retries and short timeouts.
func testWorkflows() Workflows {
	wf := DefaultWorkflows()
	for a, w := range wf {
		for i := range w.Steps {
			w.Steps[i].Policy = Policy{Attempts: 3, Backoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Timeout: 5 * time.Second}
		}
		wf[a] = w
	}
	return wf
}

func (h *harness) on(step string, f stepFunc) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.handlers[step] = f
}

func (h *harness) count(job, step string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[job+"/"+step]
}

// defaultOutput is what a step needs to hand the next one.
func defaultOutput(cmd contracts.StepCommand) any {
	switch cmd.Op {
	case contracts.OpArchive, contracts.OpDump, contracts.OpBundle:
		return contracts.ArtifactResult{Name: cmd.Step + ".out", Size: 1, SHA256: "00"}
	case contracts.OpTunnel:
		return contracts.TunnelResult{Addr: "127.0.0.1:1"}
	}
	return map[string]string{"step": cmd.Step}
}

func (h *harness) handle(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
	h.mu.Lock()
	h.calls[cmd.JobID+"/"+cmd.Step]++
	f := h.handlers[cmd.Step]
	h.mu.Unlock()
	if f != nil {
		return f(ctx, cmd)
	}
	return worker.Result{Output: defaultOutput(cmd)}, nil
}

// startWorkers runs one runner per worker service until the test ends.
func (h *harness) startWorkers() {
	for _, s := range contracts.Workers {
		h.startWorker(s, h.handle)
	}
}

func (h *harness) startWorker(s contracts.Service, f stepFunc) (stop func()) {
	nc, js := h.srv.Connect(h.t, "worker-"+string(s))
	r := &worker.Runner{NC: nc, JS: js, Service: s, Handler: worker.Handler(f), InProgressEvery: 500 * time.Millisecond, DrainTimeout: time.Second, RetryDelay: 100 * time.Millisecond}
	return h.run(func(ctx context.Context) error { return r.Run(ctx) })
}

// startOrchestrator runs an orchestrator replica; stop() kills it (as far as a test can).
func (h *harness) startOrchestrator(cfg Config) (stop func(), reg *prometheus.Registry) {
	if cfg.Workflows == nil {
		cfg.Workflows = testWorkflows()
	}
	if cfg.CancelGrace == 0 {
		cfg.CancelGrace = 2 * time.Second
	}
	reg = prometheus.NewRegistry()
	nc, _ := h.srv.Connect(h.t, "orchestrator")
	return h.run(func(ctx context.Context) error {
		return Run(ctx, cfg, Deps{NC: nc, Registerer: reg})
	}), reg
}

func (h *harness) run(f func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("service: %v", err)
				}
			case <-time.After(20 * time.Second):
				h.t.Error("service did not stop")
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

func request(id string) contracts.JobRequest {
	return contracts.JobRequest{
		Schema: contracts.SchemaJobRequest, ID: id, Action: contracts.ActionUpdate,
		Update: &contracts.UpdateRequest{From: "operator-pc", Files: []string{"updates/app"}, To: "customer", Dest: "/opt/app"},
	}
}

// submit publishes a request on the jobs stream as the helpdesk system does.
func (h *harness) submit(req contracts.JobRequest) {
	h.t.Helper()
	if err := bus.Publish(context.Background(), h.js, contracts.SubjectJobSubmit, req, req.ID, req.ID); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) api(subject string, req, reply any) {
	h.t.Helper()
	data, _ := json.Marshal(req)
	msg, err := h.nc.Request(subject, data, 5*time.Second)
	for deadline := time.Now().Add(10 * time.Second); errors.Is(err, nats.ErrNoResponders) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond) // the API comes up once the records are loaded
		msg, err = h.nc.Request(subject, data, 5*time.Second)
	}
	if err != nil {
		h.t.Fatalf("%s: %v", subject, err)
	}
	if err := json.Unmarshal(msg.Data, reply); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) job(id string) *contracts.Job {
	h.t.Helper()
	var r contracts.JobReply
	h.api(contracts.SubjectAPIGet, contracts.GetRequest{JobID: id}, &r)
	if r.Error != nil {
		return nil
	}
	return r.Job
}

// wait polls until the job is final and returns it.
func (h *harness) wait(id string, timeout time.Duration) *contracts.Job {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j := h.job(id)
		if j != nil && j.State.Final() {
			return j
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("job %s not final after %s: %s", id, timeout, describe(j))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func describe(j *contracts.Job) string {
	if j == nil {
		return "no record"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "state %s;", j.State)
	for _, s := range j.Steps {
		fmt.Fprintf(&b, " %s=%s/%d", s.Name, s.State, s.Attempt)
	}
	return b.String()
}

func stepState(j *contracts.Job, name string) contracts.Step {
	for _, s := range j.Steps {
		if s.Name == name {
			return s
		}
	}
	return contracts.Step{}
}

// allJobEvents waits until every event the record j counts is stored, and returns the
// stored events of the job. The orchestrator publishes job events without waiting for
// the stream (the record is the truth), so they may land after the record is read.
func (h *harness) allJobEvents(j *contracts.Job) []contracts.JobEvent {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := h.jobEvents(j.ID)
		if len(evs) >= j.Events || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// jobEvents reads every job event of a job stored so far.
func (h *harness) jobEvents(id string) []contracts.JobEvent {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.js.OrderedConsumer(ctx, contracts.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{contracts.JobEventSubject(id)}})
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var evs []contracts.JobEvent
	if info.NumPending == 0 {
		return nil
	}
	batch, err := c.Fetch(int(info.NumPending), jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		h.t.Fatal(err)
	}
	for m := range batch.Messages() {
		var ev contracts.JobEvent
		_ = json.Unmarshal(m.Data(), &ev)
		evs = append(evs, ev)
	}
	return evs
}

func TestUpdateJobRunsEveryStepInOrder(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	_, reg := h.startOrchestrator(Config{})
	var order []string
	var mu sync.Mutex
	for _, d := range DefaultWorkflows()[contracts.ActionUpdate].Steps {
		h.on(d.Name, func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
			mu.Lock()
			order = append(order, cmd.Step)
			mu.Unlock()
			if cmd.Step == "push" {
				var a contracts.PushArgs
				_ = json.Unmarshal(cmd.Args, &a)
				if a.Artifact != "bundle.out" || a.DestDir != "/opt/app" || a.Host != "customer" {
					return worker.Result{}, worker.Permanent("test", fmt.Errorf("push got %+v", a))
				}
			}
			return worker.Result{Output: defaultOutput(cmd), Bytes: 10}, nil
		})
	}
	h.submit(request("job-ok"))
	j := h.wait("job-ok", 20*time.Second)
	if j.State != contracts.JobSucceeded {
		t.Fatalf("job %s: %+v", describe(j), j.Failure)
	}
	want := "connect-operator copy-to-home connect-customer bundle push remove-staging close"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("steps ran as %q, want %q", got, want)
	}
	for _, s := range j.Steps {
		if s.State != contracts.StepDone || s.Attempt != 1 || s.Ended.IsZero() {
			t.Errorf("step %+v", s)
		}
	}
	evs := h.allJobEvents(j)
	if len(evs) == 0 {
		t.Fatal("no job events")
	}
	if evs[0].Kind != contracts.EventAccepted || evs[len(evs)-1].Kind != contracts.EventFinished || evs[len(evs)-1].State != contracts.JobSucceeded {
		t.Fatalf("events: first %v, last %v", evs[0].Kind, evs[len(evs)-1].Kind)
	}
	for i, ev := range evs {
		if ev.Seq != i+1 {
			t.Fatalf("event %d has seq %d: events lost or duplicated", i, ev.Seq)
		}
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "ferry_jobs_total")); got != 1 {
		t.Errorf("ferry_jobs_total = %v", got)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: name})
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			c.Add(sum)
			return c
		}
	}
	t.Fatalf("metric %s not registered", name)
	return nil
}

func TestSameRequestIDGivesOneJob(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	h.startOrchestrator(Config{})
	req := request("job-dup")
	h.submit(req)
	h.submit(req) // same Nats-Msg-Id: deduplicated by the stream
	// Past the dedup window a publisher may use another message id: the job record
	// refuses a second job with the same id.
	if err := bus.Publish(context.Background(), h.js, contracts.SubjectJobSubmit, req, "other-msg-id", req.ID); err != nil {
		t.Fatal(err)
	}
	var reply contracts.SubmitReply
	h.api(contracts.SubjectAPISubmit, req, &reply)
	j := h.wait("job-dup", 20*time.Second)
	if j.State != contracts.JobSucceeded {
		t.Fatal(describe(j))
	}
	time.Sleep(300 * time.Millisecond)
	if !reply.Duplicate || reply.JobID != "job-dup" {
		t.Errorf("API submit of a known id: %+v", reply)
	}
	for _, s := range j.Steps {
		if n := h.count("job-dup", s.Name); n != 1 {
			t.Errorf("step %s executed %d times", s.Name, n)
		}
	}
}

func TestInvalidRequestIsRejectedNamingTheField(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	h.startOrchestrator(Config{})
	bad := request("job-bad")
	bad.Update.To = ""
	h.submit(bad)
	j := h.wait("job-bad", 10*time.Second)
	if j.State != contracts.JobRejected || !strings.Contains(j.Failure.Message, `"update.to"`) {
		t.Fatalf("record: %s %+v", j.State, j.Failure)
	}
	evs := h.allJobEvents(j)
	if len(evs) != 1 || evs[0].Kind != contracts.EventRejected || evs[0].Rejection.Fields[0].Field != "update.to" {
		t.Fatalf("events %+v", evs)
	}
	// Malformed JSON on the stream: nothing to name the job by, nothing dispatched.
	if _, err := h.js.Publish(context.Background(), contracts.SubjectJobSubmit, []byte(`{"schema": "ferry.v1.job.request", "id": "x",`)); err != nil {
		t.Fatal(err)
	}
	// The synchronous API names the field to the caller.
	var reply contracts.SubmitReply
	h.api(contracts.SubjectAPISubmit, bad, &reply)
	if reply.Error == nil || reply.Error.Code != "invalid" || reply.Error.Fields[0].Field != "update.to" {
		t.Fatalf("API reply %+v", reply)
	}
	unknown := []byte(`{"schema":"ferry.v1.job.request","id":"job-bad2","action":"reboot"}`)
	msg, err := h.nc.Request(contracts.SubjectAPISubmit, unknown, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(msg.Data), `"field":"action"`) {
		t.Fatalf("unknown action reply: %s", msg.Data)
	}
	time.Sleep(500 * time.Millisecond)
	s, _ := h.js.Stream(context.Background(), contracts.StreamCommands)
	info, _ := s.Info(context.Background())
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.calls) != 0 || info.State.FirstSeq > 1 || info.State.Msgs != 0 {
		t.Fatalf("something was dispatched: calls %v, stream %+v", h.calls, info.State)
	}
}

func TestFailingStepFailsJobAfterRetriesAndClosingStepsRun(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	h.startOrchestrator(Config{})
	h.on("bundle", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		return worker.Result{}, worker.Retryable(contracts.CodeUnreachable, errors.New("operator-pc: connection refused"))
	})
	h.submit(request("job-fail"))
	j := h.wait("job-fail", 20*time.Second)
	if j.State != contracts.JobFailed || j.Failure == nil || j.Failure.Step != "bundle" ||
		!strings.Contains(j.Failure.Message, "connection refused") || !strings.Contains(j.Failure.Message, "after 3 attempts") {
		t.Fatalf("job %s, failure %+v", describe(j), j.Failure)
	}
	if n := h.count("job-fail", "bundle"); n != 3 {
		t.Errorf("bundle ran %d times, want 3 (the policy)", n)
	}
	for _, name := range []string{"push"} {
		if s := stepState(j, name); s.State != contracts.StepSkipped || h.count("job-fail", name) != 0 {
			t.Errorf("step %s: %s, ran %d times", name, s.State, h.count("job-fail", name))
		}
	}
	for _, name := range []string{"remove-staging", "close"} {
		if s := stepState(j, name); s.State != contracts.StepDone {
			t.Errorf("closing step %s: %s", name, s.State)
		}
	}
}

func TestPermanentErrorIsNotRetried(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	h.startOrchestrator(Config{})
	h.on("connect-operator", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		return worker.Result{}, worker.Permanent(contracts.CodeHostKey, errors.New("host key changed for operator-pc"))
	})
	h.submit(request("job-perm"))
	j := h.wait("job-perm", 10*time.Second)
	if j.State != contracts.JobFailed || j.Failure.Code != contracts.CodeHostKey || h.count("job-perm", "connect-operator") != 1 {
		t.Fatalf("%s %+v", describe(j), j.Failure)
	}
	if stepState(j, "close").State != contracts.StepDone {
		t.Fatal("close did not run")
	}
}

func TestNotSupportedStepFailsTheJobClearly(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	h.startOrchestrator(Config{})
	h.on("copy-to-home", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		return worker.Result{}, worker.ErrNotSupported(cmd.Service, cmd.Op)
	})
	h.submit(request("job-ns"))
	j := h.wait("job-ns", 10*time.Second)
	if j.State != contracts.JobFailed || !strings.Contains(j.Failure.Message, "not supported by this version") {
		t.Fatalf("%s %+v", describe(j), j.Failure)
	}
}

func TestStepTimeoutIsRetried(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	wf := testWorkflows()
	for i := range wf[contracts.ActionUpdate].Steps {
		if wf[contracts.ActionUpdate].Steps[i].Name == "bundle" {
			wf[contracts.ActionUpdate].Steps[i].Policy.Timeout = 700 * time.Millisecond
		}
	}
	h.startOrchestrator(Config{Workflows: wf})
	var first atomic.Bool
	h.on("bundle", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		if first.CompareAndSwap(false, true) {
			<-ctx.Done() // hangs until the orchestrator gives up on the attempt
			return worker.Result{}, ctx.Err()
		}
		return worker.Result{Output: defaultOutput(cmd)}, nil
	})
	h.submit(request("job-slow"))
	j := h.wait("job-slow", 20*time.Second)
	if j.State != contracts.JobSucceeded || stepState(j, "bundle").Attempt != 2 {
		t.Fatalf("%s %+v", describe(j), j.Failure)
	}
}

func TestCancelDuringStepRunsClosingSteps(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	h.startOrchestrator(Config{})
	started := make(chan struct{})
	var stopped atomic.Bool
	h.on("bundle", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		close(started)
		<-ctx.Done()
		stopped.Store(true)
		return worker.Result{}, context.Cause(ctx)
	})
	h.submit(request("job-cancel"))
	<-started
	var reply contracts.JobReply
	h.api(contracts.SubjectAPICancel, contracts.CancelRequest{JobID: "job-cancel", Reason: "operator changed their mind"}, &reply)
	if reply.Error != nil {
		t.Fatal(reply.Error)
	}
	j := h.wait("job-cancel", 20*time.Second)
	if j.State != contracts.JobCancelled {
		t.Fatalf("%s %+v", describe(j), j.Failure)
	}
	if !stopped.Load() {
		t.Error("the step in flight was not told to stop")
	}
	if s := stepState(j, "bundle"); s.State != contracts.StepCancelled {
		t.Errorf("bundle: %s", s.State)
	}
	for _, name := range []string{"push"} {
		if h.count("job-cancel", name) != 0 {
			t.Errorf("%s ran after cancel", name)
		}
	}
	for _, name := range []string{"remove-staging", "close"} {
		if s := stepState(j, name); s.State != contracts.StepDone {
			t.Errorf("closing step %s: %s", name, s.State)
		}
	}
	// Cancelling a finished job changes nothing.
	h.api(contracts.SubjectAPICancel, contracts.CancelRequest{JobID: "job-cancel"}, &reply)
	if reply.Job.State != contracts.JobCancelled {
		t.Fatal(reply.Job.State)
	}
	h.api(contracts.SubjectAPICancel, contracts.CancelRequest{JobID: "no-such-job"}, &reply)
	if reply.Error == nil || reply.Error.Code != "not_found" {
		t.Fatalf("%+v", reply.Error)
	}
}

// The orchestrator dies while a step runs and while a retry is pending; a new one resumes
// both jobs from their records and they finish.
func TestRestartedOrchestratorResumesJobsInFlight(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	release := make(chan struct{})
	h.on("bundle", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		if cmd.JobID == "job-a" {
			<-release
		}
		return worker.Result{Output: defaultOutput(cmd)}, nil
	})
	var fails atomic.Int32
	h.on("connect-customer", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		if cmd.JobID == "job-b" && fails.Add(1) == 1 {
			return worker.Result{}, worker.Retryable(contracts.CodeUnreachable, errors.New("customer unreachable"))
		}
		return worker.Result{Output: defaultOutput(cmd)}, nil
	})
	wf := testWorkflows()
	for i := range wf[contracts.ActionUpdate].Steps {
		if wf[contracts.ActionUpdate].Steps[i].Name == "connect-customer" {
			wf[contracts.ActionUpdate].Steps[i].Policy.Backoff = 2 * time.Second
		}
	}
	stop, _ := h.startOrchestrator(Config{Workflows: wf})
	h.submit(request("job-a"))
	h.submit(request("job-b"))
	waitUntil(t, "job-a in bundle and job-b waiting to retry", 10*time.Second, func() bool {
		a, b := h.job("job-a"), h.job("job-b")
		return a != nil && b != nil && stepState(a, "bundle").State == contracts.StepRunning &&
			stepState(b, "connect-customer").State == contracts.StepWaiting
	})
	stop() // killed mid-way: no orchestrator while the step ends and the retry falls due
	close(release)
	time.Sleep(2500 * time.Millisecond)
	h.startOrchestrator(Config{Workflows: wf})
	for _, id := range []string{"job-a", "job-b"} {
		if j := h.wait(id, 20*time.Second); j.State != contracts.JobSucceeded {
			t.Fatalf("%s: %s", id, describe(j))
		}
	}
	if n := h.count("job-b", "connect-customer"); n != 2 {
		t.Errorf("job-b connect-customer ran %d times, want 2", n)
	}
	if n := h.count("job-a", "bundle"); n != 1 {
		t.Errorf("job-a bundle ran %d times, want 1", n)
	}
}

// A worker dies after doing its step but before its completion reached anyone: the
// command is redelivered to another replica and the job finishes, with one completion.
func TestWorkerDeathBeforeAckIsRedelivered(t *testing.T) {
	h := newHarness(t)
	for _, s := range []contracts.Service{contracts.ServiceConnector, contracts.ServiceArchiver, contracts.ServiceCleanup} {
		h.startWorker(s, h.handle)
	}
	var did atomic.Int32
	nc, js := h.srv.Connect(t, "dying-transfer")
	dying := &worker.Runner{NC: nc, JS: js, Service: contracts.ServiceTransfer, InProgressEvery: 500 * time.Millisecond,
		Handler: func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
			if cmd.Step == "bundle" {
				did.Add(1)
				nc.Close() // the process dies right after the work, before any report or ack
				return worker.Result{Output: defaultOutput(cmd)}, nil
			}
			return h.handle(ctx, cmd)
		}}
	h.run(dying.Run)
	h.startOrchestrator(Config{})
	h.submit(request("job-death"))
	waitUntil(t, "the dying worker did the bundle", 10*time.Second, func() bool { return did.Load() == 1 })
	h.startWorker(contracts.ServiceTransfer, h.handle) // the replacement replica
	j := h.wait("job-death", 30*time.Second)
	if j.State != contracts.JobSucceeded {
		t.Fatal(describe(j))
	}
	if s := stepState(j, "bundle"); s.Attempt != 1 || h.count("job-death", "bundle") != 1 {
		t.Fatalf("bundle attempt %d, replacement ran it %d times", s.Attempt, h.count("job-death", "bundle"))
	}
	completions := 0
	for _, ev := range h.allJobEvents(j) {
		if ev.Kind == contracts.EventStepSucceeded && ev.Step == "bundle" {
			completions++
		}
	}
	if completions != 1 {
		t.Fatalf("bundle completed %d times", completions)
	}
}

// Two replicas share the work of many jobs without corrupting any of them.
func TestTwoReplicasDoNotCorruptJobs(t *testing.T) {
	h := newHarness(t)
	h.startWorkers()
	h.startOrchestrator(Config{})
	h.startOrchestrator(Config{})
	const n = 40
	for i := range n {
		h.submit(request(fmt.Sprintf("job-%02d", i)))
	}
	for i := range n {
		id := fmt.Sprintf("job-%02d", i)
		j := h.wait(id, 60*time.Second)
		if j.State != contracts.JobSucceeded {
			t.Fatalf("%s: %s", id, describe(j))
		}
		for _, s := range j.Steps {
			if s.Attempt != 1 || h.count(id, s.Name) != 1 {
				t.Fatalf("%s step %s: attempt %d, executed %d times", id, s.Name, s.Attempt, h.count(id, s.Name))
			}
		}
		// Replicas publish the events of the transitions they store, so two replicas
		// may store neighbouring events out of order; none is lost or duplicated.
		evs := h.allJobEvents(j)
		seen := map[int]bool{}
		for _, ev := range evs {
			if seen[ev.Seq] {
				t.Fatalf("%s: event %d stored twice", id, ev.Seq)
			}
			seen[ev.Seq] = true
		}
		for k := 1; k <= len(evs); k++ {
			if !seen[k] {
				t.Fatalf("%s: event %d missing", id, k)
			}
		}
	}
}

func waitUntil(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
