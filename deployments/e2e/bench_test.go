//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkStack reports the jobs per minute the compose stack sustains with 100 small
// update jobs submitted at once, and the p50/p95 job latency (created to finished), for
// three NATS set-ups: one node fsyncing before every ack (sync_interval: always, the
// default of deployments/nats/nats.conf), one node with NATS's default (fsync every
// 2 minutes), and three nodes with R3 streams (fsync default). `make bench-stack`:
//
//	cd deployments/e2e && go test -tags e2e -run '^$' -bench Stack -benchtime 1x -timeout 60m .
func BenchmarkStack(b *testing.B) {
	const jobs = 100
	setups := []struct {
		name    string
		cluster bool
		nosync  bool
	}{
		{"1 node, sync_interval: always", false, false},
		{"1 node, fsync default (2 min)", false, true},
		{"3 nodes, R3", true, false},
	}
	fmt.Printf("stack: %d small update jobs (operator-pc → customer, one 60-byte file, 8 steps each) submitted at once by %d CLI processes in parallel\n", jobs, 10)
	for i, setup := range setups {
		if i > 0 || setup.cluster || setup.nosync {
			st.down()
		}
		st.cluster = setup.cluster
		st.extra = nil
		if setup.nosync {
			f, err := noSyncOverride(st.work)
			if err != nil {
				b.Fatal(err)
			}
			st.extra = []string{f}
		}
		if err := st.up(context.Background()); err != nil {
			b.Fatal(err)
		}
		ids := make([]string, jobs)
		base := time.Now().UnixNano()
		for i := range ids {
			ids[i] = fmt.Sprintf("bench-%d-%03d", base, i)
		}
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 10)
		for _, id := range ids {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if _, err := st.cli(context.Background(), "helpdesk", "update", "--id", id, "--from", "operator-pc",
					"--files", "updates/app-2.3.1/config/app.toml", "--to", "customer", "--dest", "/opt/app/releases"); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		submitted := time.Since(start)
		var lat []time.Duration
		var first, last time.Time
		failed := 0
		for _, id := range ids {
			j := st.waitJob(b, id, 10*time.Minute)
			if j.State != "succeeded" {
				failed++
			}
			lat = append(lat, j.Finished.Sub(j.Created))
			if first.IsZero() || j.Created.Before(first) {
				first = j.Created
			}
			if j.Finished.After(last) {
				last = j.Finished
			}
		}
		slices.Sort(lat)
		span := last.Sub(first)
		perMin := float64(jobs) / span.Minutes()
		fmt.Printf("stack, %s: %d jobs in %s (submitted in %s) → %.0f jobs/min; latency p50 %s, p95 %s, max %s; %d failed\n",
			setup.name, jobs, span.Round(10*time.Millisecond), submitted.Round(10*time.Millisecond), perMin,
			lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*95/100].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), failed)
		b.ReportMetric(perMin, strings.NewReplacer(" ", "-", ",", "", ":", "", "(", "", ")", "").Replace(setup.name)+"-jobs/min")
	}
	b.ReportMetric(0, "ns/op")
	st.cluster, st.extra = false, nil
}

// noSyncOverride writes a compose override that runs the single node with the
// generated configuration less its sync_interval line (NATS's default fsync).
func noSyncOverride(work string) (string, error) {
	conf, err := os.ReadFile(filepath.Join(st.root, "deployments/nats/nats.conf"))
	if err != nil {
		return "", err
	}
	var kept []string
	for _, line := range strings.Split(string(conf), "\n") {
		if !strings.Contains(line, "sync_interval") {
			kept = append(kept, line)
		}
	}
	confPath := filepath.Join(work, "nats-nosync.conf")
	if err := os.WriteFile(confPath, []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		return "", err
	}
	override := filepath.Join(work, "docker-compose.nosync.yml")
	yml := fmt.Sprintf("services:\n  nats:\n    volumes:\n      - %s:/etc/nats/nats.conf:ro\n", confPath)
	return override, os.WriteFile(override, []byte(yml), 0o644)
}
