package orchestrator

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A job keeps the trace its request came with: every step runs in it (a span whose
// parent is the orchestrator's dispatch) and every job event carries it; a request
// without one gets the trace id derived from the job id.
func TestTraceContextFollowsTheJob(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	seen := map[string][]bus.Trace{} // job → the trace of each step attempt
	for _, s := range contracts.Workers {
		h.startWorker(s, func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
			tr, _ := bus.TraceFrom(ctx)
			mu.Lock()
			seen[cmd.JobID] = append(seen[cmd.JobID], tr)
			mu.Unlock()
			return worker.Result{Output: defaultOutput(cmd)}, nil
		})
	}
	h.startOrchestrator(Config{})

	const traced = "0af7651916cd43dd8448eb211c80319c"
	req := request("job-traced")
	m, err := bus.Message(contracts.SubjectJobSubmit, req, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Set(contracts.HeaderTraceParent, "00-"+traced+"-b7ad6b7169203331-01")
	if _, err := h.js.PublishMsg(context.Background(), m, jetstream.WithMsgID(req.ID)); err != nil {
		t.Fatal(err)
	}
	h.submit(request("job-plain"))

	for id, want := range map[string]string{"job-traced": traced, "job-plain": bus.TraceIDFor("job-plain")} {
		j := h.wait(id, 20*time.Second)
		if j.State != contracts.JobSucceeded {
			t.Fatalf("%s: %s", id, describe(j))
		}
		if j.TraceID != want {
			t.Errorf("%s: record trace id %q, want %q", id, j.TraceID, want)
		}
		mu.Lock()
		steps := seen[id]
		mu.Unlock()
		if len(steps) != len(j.Steps) {
			t.Errorf("%s: %d step attempts seen, %d steps", id, len(steps), len(j.Steps))
		}
		spans := map[string]bool{}
		for _, tr := range steps {
			if tr.TraceID != want || tr.ParentID == "" || tr.SpanID == "" || tr.SpanID == tr.ParentID {
				t.Errorf("%s: a step ran in trace %+v, want trace %s with a parent", id, tr, want)
			}
			spans[tr.SpanID] = true
		}
		if len(spans) != len(steps) {
			t.Errorf("%s: step attempts share spans: %v", id, steps)
		}
		// Every job event carries the trace.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := h.js.OrderedConsumer(ctx, contracts.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{contracts.JobEventSubject(id)}})
		if err != nil {
			t.Fatal(err)
		}
		batch, err := c.Fetch(100, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			tid, _, ok := bus.ParseTraceParent(msg.Headers().Get(contracts.HeaderTraceParent))
			if !ok || tid != want || msg.Headers().Get(contracts.HeaderCorrelationID) != id {
				t.Errorf("%s: job event with headers %v", id, msg.Headers())
			}
		}
		cancel()
		if n == 0 {
			t.Errorf("%s: no job events", id)
		}
	}
}

// ferry_steps_past_deadline counts the jobs whose running step is past its deadline.
func TestStepsPastDeadline(t *testing.T) {
	now := time.Now()
	e := &engine{inFlight: map[string]flight{
		"a": {action: contracts.ActionUpdate, deadline: now.Add(-time.Minute)},
		"b": {action: contracts.ActionUpdate, deadline: now.Add(time.Minute)},
		"c": {action: contracts.ActionDBBackup, deadline: now.Add(-time.Second)},
		"d": {action: contracts.ActionLogBackup}, // waiting for a retry: no step runs
	}}
	reg := prometheus.NewPedanticRegistry()
	registerPastDeadline(reg, e)
	want := `
# HELP ferry_steps_past_deadline Steps running past their attempt's deadline (the orchestrator should have timed them out), by action.
# TYPE ferry_steps_past_deadline gauge
ferry_steps_past_deadline{action="db-backup"} 1
ferry_steps_past_deadline{action="log-backup"} 0
ferry_steps_past_deadline{action="update"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ferry_steps_past_deadline"); err != nil {
		t.Error(err)
	}
}

// The counters dashboards and alerts read exist at zero for every action, outcome and
// step from the start.
func TestMetricsStartAtZero(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	wf := DefaultWorkflows()
	newMetrics(reg, wf)
	steps := 0
	for _, a := range contracts.Actions {
		steps += len(wf[a].Steps)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		got[mf.GetName()] = len(mf.GetMetric())
	}
	for name, want := range map[string]int{
		"ferry_jobs_total":          len(contracts.Actions) * len(jobOutcomes),
		"ferry_steps_total":         steps * len(stepOutcomes),
		"ferry_step_retries_total":  steps,
		"ferry_step_timeouts_total": steps,
		"ferry_jobs_in_flight":      len(contracts.Actions),
	} {
		if got[name] != want {
			t.Errorf("%s: %d series, want %d", name, got[name], want)
		}
	}
}
