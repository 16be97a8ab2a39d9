package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkOrchestration measures the orchestration overhead with no-op steps on the
// embedded server (file storage): per-step latency (from the end of one step to the end
// of the next: dispatch, worker round trip, event, record update) and jobs per second,
// with 1 job in flight and with 500. Run it with `make bench`.
func BenchmarkOrchestration(b *testing.B) {
	for _, inFlight := range []int{1, 500} {
		b.Run(fmt.Sprintf("in-flight=%d", inFlight), func(b *testing.B) {
			benchOrchestration(b, inFlight)
		})
	}
}

func benchOrchestration(b *testing.B, inFlight int) {
	srv := bustest.Start(b, bus.Topology{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	start := func(f func(context.Context) error) {
		wg.Add(1)
		go func() { defer wg.Done(); _ = f(ctx) }()
	}
	for _, s := range contracts.Workers {
		nc, js := srv.Connect(b, "bench-"+string(s))
		r := &worker.Runner{NC: nc, JS: js, Service: s, Concurrency: 64,
			Handler: func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
				return worker.Result{Output: defaultOutput(cmd)}, nil
			}}
		start(r.Run)
	}
	onc, _ := srv.Connect(b, "bench-orchestrator")
	start(func(ctx context.Context) error {
		return Run(ctx, Config{Lanes: 32}, Deps{NC: onc, Registerer: prometheus.NewRegistry()})
	})
	nc, js := srv.Connect(b, "bench-client")

	// Finished jobs are announced on their job events; count them as they come.
	finished := make(chan string, 1<<16)
	sub, err := nc.Subscribe(contracts.JobEventsAll, func(m *nats.Msg) {
		var ev contracts.JobEvent
		if json.Unmarshal(m.Data, &ev) == nil && ev.Kind == contracts.EventFinished {
			finished <- ev.JobID
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()

	total := 200
	if inFlight > total {
		total = inFlight * 2
	}
	b.ResetTimer()
	begin := time.Now()
	var ids []string
	submitted := 0
	submit := func() {
		id := fmt.Sprintf("bench-%d-%d", inFlight, submitted)
		submitted++
		ids = append(ids, id)
		if err := bus.Publish(ctx, js, contracts.SubjectJobSubmit, request(id), id, id); err != nil {
			b.Fatal(err)
		}
	}
	for submitted < inFlight {
		submit()
	}
	done := 0
	timeout := time.After(5 * time.Minute)
	for done < total {
		select {
		case <-finished:
			done++
			if submitted < total {
				submit()
			}
		case <-timeout:
			b.Fatalf("%d of %d jobs finished: jobs lost or stuck", done, total)
		}
	}
	elapsed := time.Since(begin)
	b.StopTimer()

	kv, err := js.KeyValue(ctx, contracts.BucketJobs)
	if err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for _, id := range ids {
		e, err := kv.Get(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		var j contracts.Job
		_ = json.Unmarshal(e.Value(), &j)
		if j.State != contracts.JobSucceeded {
			b.Fatalf("job %s: %s", id, j.State)
		}
		prev := j.Created
		for _, s := range j.Steps {
			lat = append(lat, s.Ended.Sub(prev))
			prev = s.Ended
		}
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	b.ReportMetric(float64(p(0.50).Microseconds())/1000, "p50-step-ms")
	b.ReportMetric(float64(p(0.99).Microseconds())/1000, "p99-step-ms")
	b.ReportMetric(float64(total)/elapsed.Seconds(), "jobs/s")
	b.ReportMetric(0, "ns/op")
	fmt.Printf("orchestration, %d in flight: %d jobs (%d steps each) in %s — step latency p50 %s, p99 %s; %.1f jobs/s; lost or stuck: 0\n",
		inFlight, total, len(DefaultWorkflows()[contracts.ActionUpdate].Steps), elapsed.Round(time.Millisecond),
		p(0.50).Round(10*time.Microsecond), p(0.99).Round(10*time.Microsecond), float64(total)/elapsed.Seconds())
}
