package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshtest"
	"golang.org/x/crypto/ssh"
)

// TestMetricsConventions runs `ferry dev --demo` (every service in process, their
// metrics on one registry, each labelled service="<name>": the union of what the
// services export on their own) through the demo's update and a job that fails on a
// changed host key, then checks /metrics: `promtool check metrics` passes, every
// family the operators' issue asks for is there, and every ferry metric that a
// dashboard (deployments/grafana/dashboards) or an alert rule
// (deployments/prometheus/rules) names is exported.
func TestMetricsConventions(t *testing.T) {
	d := startDev(t, "--data-dir", t.TempDir(), "--demo")
	defer d.stop(t)
	env := map[string]string{"FERRY_NATS_URL": d.nats}
	metrics := func() string {
		_, body := httpGet(t, "http://"+d.http+"/metrics")
		return body
	}
	waitFor(t, 60*time.Second, "the demo's update job", func() bool {
		return strings.Contains(metrics(), `ferry_jobs_total{action="update",outcome="succeeded",service="orchestrator"} 1`)
	})

	// A job that fails on a changed host key: the SSH failure series exist.
	r := ferry(t, env, "host", "get", demoCustomer, "-o", "json")
	var h struct{ Port int }
	if err := json.Unmarshal([]byte(r.stdout), &h); err != nil || h.Port == 0 {
		t.Fatalf("host get: %v %s %s", err, r.stdout, r.stderr)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	spub, _ := ssh.NewPublicKey(pub)
	if r := ferry(t, env, "host", "add", "demo-wrong-key", "--address", "127.0.0.1", "--port", strconv.Itoa(h.Port), "--user", "demo",
		"--credential", demoCustomer, "--host-key", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub)))); r.code != 0 {
		t.Fatalf("host add: %s", r.stderr)
	}
	if r := ferry(t, env, "backup", "logs", "--from", "demo-wrong-key", "--paths", "logs/*.log", "--to", demoOperator, "--wait"); r.code != exitFail || !strings.Contains(r.stderr, "host_key") {
		t.Fatalf("backup from a host with the wrong key: exit %d, %s", r.code, r.stderr)
	}
	waitFor(t, 10*time.Second, "the failed job's metrics", func() bool {
		return strings.Contains(metrics(), `ferry_jobs_total{action="log-backup",outcome="failed",service="orchestrator"} 1`)
	})
	body := metrics()
	exported := sampleNames(body)

	t.Run("promtool check metrics", func(t *testing.T) {
		bin, err := exec.LookPath("promtool")
		if err != nil {
			sshtest.Unavailable(t, "promtool not installed (Debian: apt-get install prometheus)")
		}
		c := exec.Command(bin, "check", "metrics")
		c.Stdin = strings.NewReader(body)
		out, err := c.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("coverage", func(t *testing.T) {
		for _, want := range []string{
			`ferry_jobs_total{action="update",outcome="succeeded"`,             // jobs by action and outcome
			`ferry_job_duration_seconds_bucket{action="update"`,                // job duration
			`ferry_step_duration_seconds_bucket{action="update"`,               // step duration (orchestrator)
			`ferry_step_execution_duration_seconds_bucket{op="bundle"`,         // step attempt duration (worker)
			`ferry_steps_in_flight{op="push",service="transfer"}`,              // steps in flight
			`ferry_step_retries_total{action="update",service="orchestrator"`,  // retries
			`ferry_steps_past_deadline{action="update"`,                        // stuck steps
			`ferry_transfer_bytes_total{direction="push",host="demo-customer"`, // bytes by direction and host
			`ferry_transfer_throughput_bytes_per_second_bucket{direction="pull"`,
			`ferry_ssh_connections_total{host="demo-operator",method="password",outcome="ok"`,
			`ferry_ssh_connections_total{host="demo-wrong-key",method="none",outcome="host_key_changed"`,
			`ferry_ssh_host_key_failures_total{host="demo-wrong-key",kind="changed"`,
			`ferry_ssh_handshake_duration_seconds_bucket`,
			`ferry_ssh_sessions_active{service="connector"}`,
			`ferry_ssh_tunnels_active{service="connector"}`,
			`ferry_staging_bytes{service="cleanup"}`,
			`ferry_staging_filesystem_avail_bytes{service="cleanup"}`,
			`ferry_staging_filesystem_size_bytes{service="cleanup"}`,
			`ferry_nats_consumer_pending_messages{consumer="worker-transfer",service="transfer",stream="FERRY_CMDS"}`,
			`ferry_nats_consumer_ack_pending_messages{consumer="orchestrator-step-events",service="orchestrator",stream="FERRY_EVENTS"}`,
			`ferry_nats_consumer_pending_messages{consumer="orchestrator-jobs",service="orchestrator",stream="FERRY_JOBS"}`,
			`ferry_step_redeliveries_total{op="archive",service="archiver"}`,
			`ferry_build_info{`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	t.Run("dashboards and rules name exported metrics", func(t *testing.T) {
		files, _ := filepath.Glob("../../deployments/grafana/dashboards/*.json")
		rules, _ := filepath.Glob("../../deployments/prometheus/rules/*.yml")
		if len(files) == 0 || len(rules) == 0 {
			t.Fatalf("dashboards %v, rules %v", files, rules)
		}
		nameRE := regexp.MustCompile(`\bferry_[a-zA-Z0-9_]+\b`)
		seen := map[string]bool{}
		for _, f := range append(files, rules...) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range nameRE.FindAllString(string(raw), -1) {
				if !exported[n] && !seen[n] {
					t.Errorf("%s names %s, which no service exports", filepath.Base(f), n)
				}
				seen[n] = true
			}
		}
		var names []string
		for n := range seen {
			names = append(names, n)
		}
		sort.Strings(names)
		t.Logf("%d metrics named by dashboards and rules: %s", len(names), strings.Join(names, " "))
	})
}

// sampleNames are the names of the samples of a text exposition (histograms' _bucket,
// _sum and _count included).
func sampleNames(body string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}
