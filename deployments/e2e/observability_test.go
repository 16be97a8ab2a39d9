//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"golang.org/x/crypto/ssh"
)

// TestObservabilityQueries runs after TestActions (make e2e): the stack's Prometheus
// has scraped every service through the three actions. It adds jobs that fail the
// ways operators watch for (a host key that is not the pinned one, a host that cannot
// be reached: retries) and one that succeeds, then runs the PromQL of every dashboard
// panel and every alert rule against that Prometheus: each parses, each panel returns
// data, every metric they name is exported by some service, and Prometheus loaded
// every rule and evaluates it without error. Then one grep of the services' logs
// follows the successful job through all five services under one trace id.
func TestObservabilityQueries(t *testing.T) {
	ctx := context.Background()
	stamp := time.Now().UnixNano()

	// A customer entry whose pinned key is not the customer's, and one on a port
	// where nothing listens.
	wrong, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string][]string{
		"customer-wrong-key": {"--address", "customer", "--host-key", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(wrong.pub)))},
		"customer-gone":      {"--address", "customer", "--port", "2", "--host-key", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(wrong.pub)))},
	}
	for name, args := range hosts {
		if _, err := st.cli(ctx, "admin", append([]string{"host", "add", name, "--user", "customer", "--credential", "customer", "--replace"}, args...)...); err != nil {
			t.Fatal(err)
		}
		defer st.cli(ctx, "admin", "host", "remove", name)
	}
	for name, code := range map[string]string{"customer-wrong-key": contracts.CodeHostKey, "customer-gone": contracts.CodeUnreachable} {
		id := fmt.Sprintf("e2e-obs-%s-%d", name, stamp)
		st.cli(ctx, "helpdesk", "backup", "logs", "--id", id, "--from", name, "--paths", "/var/log/app/*.log", "--to", "operator-pc", "--wait")
		j := st.waitJob(t, id, 2*time.Minute)
		if j.State != contracts.JobFailed || j.Failure == nil || j.Failure.Code != code {
			t.Fatalf("job %s from %s: %s %+v, want failed with %s", id, name, j.State, j.Failure, code)
		}
	}
	okID := fmt.Sprintf("e2e-obs-logs-%d", stamp)
	if _, err := st.cli(ctx, "helpdesk", "backup", "logs", "--id", okID, "--from", "customer", "--paths", "/var/log/app/*.log*",
		"--to", "operator-pc", "--wait"); err != nil {
		t.Fatal(err)
	}
	st.nothingLeft(t)

	base := fmt.Sprintf("http://127.0.0.1:%d", prometheusPort)
	// Prometheus scrapes every 5 s: the panels of what just ran fill within a few
	// scrapes; checkQueries retries them for up to two minutes.
	checkQueries(t, base, 2*time.Minute)
	checkLoadedRules(t, newPrometheus(base))

	t.Run("one grep follows a job", func(t *testing.T) {
		j := st.job(t, okID)
		if j.TraceID == "" {
			t.Fatalf("job %s has no trace id", okID)
		}
		needle := `"job_id":"` + okID + `"`
		traceRE := regexp.MustCompile(`"trace_id":"([0-9a-f]{32})"`)
		// Every service that ran a step of the job logs it, and the orchestrator
		// (an update or a log backup runs no archiver step: its bundle is the transfer's).
		used := map[string]bool{"orchestrator": true}
		for _, s := range j.Steps {
			used[string(s.Service)] = true
		}
		for _, svc := range Services {
			if !used[svc] {
				continue
			}
			out, err := st.compose(ctx, "logs", "--no-color", svc)
			if err != nil {
				t.Fatal(err)
			}
			var lines int
			for _, line := range strings.Split(out, "\n") {
				if !strings.Contains(line, needle) {
					continue
				}
				lines++
				if m := traceRE.FindStringSubmatch(line); m != nil && m[1] != j.TraceID {
					t.Errorf("%s logs job %s in trace %s, the job's trace is %s:\n%s", svc, okID, m[1], j.TraceID, line)
				}
			}
			if lines == 0 {
				t.Errorf("%s logged nothing with %s", svc, needle)
			}
			t.Logf("%s: %d lines of job %s", svc, lines, okID)
		}
	})
}
