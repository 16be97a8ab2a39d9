package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/nats-io/nats.go/jetstream"
)

// devRun is `ferry dev` running in process.
type devRun struct {
	out, errb *syncBuffer
	nats      string
	http      string // /metrics and /healthz
	cancel    context.CancelFunc
	done      chan error
}

func startDev(t *testing.T, args ...string) *devRun {
	t.Helper()
	d := &devRun{out: &syncBuffer{}, errb: &syncBuffer{}, done: make(chan error, 1)}
	a := newApp(d.out, d.errb, func(string) string { return "" })
	ready := make(chan [2]string, 1)
	a.devReady = func(n, h string) { ready <- [2]string{n, h} }
	root := a.rootCommand()
	root.SetArgs(append([]string{"dev", "--nats-listen", "127.0.0.1:0", "--http", "127.0.0.1:0"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() { d.done <- root.ExecuteContext(ctx) }()
	select {
	case addrs := <-ready:
		d.nats, d.http = addrs[0], addrs[1]
	case err := <-d.done:
		t.Fatalf("ferry dev stopped: %v\n%s", err, d.errb.String())
	case <-time.After(20 * time.Second):
		t.Fatal("ferry dev did not start")
	}
	return d
}

func (d *devRun) stop(t *testing.T) {
	t.Helper()
	d.cancel()
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("ferry dev: %v", err)
		}
	case <-time.After(devShutdownTimeout + 5*time.Second):
		t.Fatal("ferry dev did not stop")
	}
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestDevDemo runs `ferry dev --demo` twice on one data directory: the demo hosts are
// in the inventory, reachable with their stored credentials and pinned keys, keep
// their keys across runs, and every run submits a new update job.
func TestDevDemo(t *testing.T) {
	dataDir := t.TempDir()
	var jobs []string
	var keys []string
	for run := range 2 {
		d := startDev(t, "--data-dir", dataDir, "--demo")
		env := map[string]string{"FERRY_NATS_URL": d.nats}

		// The demo submits its job once the hosts are in the inventory.
		var id string
		waitFor(t, 15*time.Second, "the demo job", func() bool {
			for _, line := range strings.Split(d.out.String(), "\n") {
				if f := strings.Fields(line); len(f) == 3 && f[0] == "job" && f[2] == "submitted" {
					id = f[1]
					return true
				}
			}
			return false
		})
		jobs = append(jobs, id)

		nc, err := bus.Connect(context.Background(), bus.Config{URL: d.nats, Name: "test"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		store, err := inventory.Open(context.Background(), js)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{demoOperator, demoCustomer} {
			h, _, err := store.Get(context.Background(), name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if h.Address != "127.0.0.1" || h.Credential != name || len(h.HostKeys) != 1 || len(h.Roots) != 0 {
				t.Errorf("inventory entry %+v", h)
			}
			keys = append(keys, h.HostKeys[0])
			fi, err := os.Stat(filepath.Join(dataDir, "secrets", name, sshdial.FilePassword))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("credential of %s: %v %v", name, err, fi)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := sshdial.Dial(ctx, h, sshdial.Options{SecretsDir: filepath.Join(dataDir, "secrets")})
			cancel()
			if err != nil {
				t.Fatalf("dial %s: %v", name, err)
			}
			if c.Info().AuthMethod != "password" || c.Info().TrustedOnFirstUse {
				t.Errorf("%s: %+v", name, c.Info())
			}
			c.Close()
		}
		nc.Close()

		// Its record exists; the job may fail while steps are missing in this version.
		var job contracts.Job
		waitFor(t, 15*time.Second, "the demo job to end", func() bool {
			r := ferry(t, env, "job", "get", id, "-o", "json")
			return r.code == 0 && json.Unmarshal([]byte(r.stdout), &job) == nil && job.State.Final()
		})
		if job.Action != contracts.ActionUpdate || !strings.Contains(string(job.Request), `"demo-customer"`) {
			t.Errorf("job %+v", job)
		}
		// When it ends the demo prints the outcome, the step table and where the files went.
		waitFor(t, 5*time.Second, "the summary", func() bool { return strings.Contains(d.out.String(), "ferry dev keeps running") })
		out := d.out.String()
		for _, w := range []string{
			"demo-operator  127.0.0.1:", "demo: the operator PC holds ~/updates/app-2.3.1 (4 files, 8.0 MiB)",
			"step connect-operator succeeded in ", "demo: job " + id + " " + strings.ToUpper(string(job.State)),
			"STEP", "connect-operator", "close", filepath.Join(dataDir, "demo", "demo-customer", "opt", "app", "releases"),
		} {
			if !strings.Contains(out, w) {
				t.Errorf("run %d: output lacks %q:\n%s", run, w, out)
			}
		}
		if job.State == contracts.JobFailed && !strings.Contains(out, "FAILED at step "+job.Failure.Step) {
			t.Errorf("failure not shown:\n%s", out)
		}
		d.stop(t)
		if t.Failed() {
			t.Logf("stderr:\n%s", d.errb.String())
			return
		}
	}
	if jobs[0] == jobs[1] {
		t.Errorf("both runs submitted job %s", jobs[0])
	}
	if keys[0] != keys[2] || keys[1] != keys[3] || keys[0] == keys[1] {
		t.Errorf("host keys across runs: %q", keys)
	}
}

func TestSeedOperator(t *testing.T) {
	root := t.TempDir()
	files, size, err := seedOperator(root)
	if err != nil || files != 4 || size < 8<<20 {
		t.Fatalf("seed: %d files, %d bytes, %v", files, size, err)
	}
	bin, err := os.ReadFile(filepath.Join(root, "updates", "app-2.3.1", "bin", "app"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(bin)
	// Deterministic: the same bytes on every machine.
	root2 := t.TempDir()
	seedOperator(root2)
	bin2, _ := os.ReadFile(filepath.Join(root2, "updates", "app-2.3.1", "bin", "app"))
	if sha256.Sum256(bin2) != sum {
		t.Errorf("bin/app differs between seeds")
	}
	// An existing update is left alone.
	readme := filepath.Join(root, "updates", "app-2.3.1", "README.md")
	os.WriteFile(readme, []byte("mine"), 0o644)
	if _, _, err := seedOperator(root); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(readme); string(b) != "mine" {
		t.Errorf("seed overwrote the update")
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "updates")); len(entries) != 1 {
		t.Errorf("left-overs in updates/: %v", entries)
	}
	t.Logf("bin/app sha256 %s", hex.EncodeToString(sum[:8]))
}

func TestDemoSummary(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "customer", "opt", "app", "releases")
	os.MkdirAll(dest, 0o755)
	os.WriteFile(filepath.Join(dest, "old.tar.zst"), []byte("old"), 0o644)
	before := listFiles(dest)
	os.WriteFile(filepath.Join(dest, "update-j1.tar.zst"), make([]byte, 3<<20), 0o644)
	os.WriteFile(filepath.Join(dest, "update-j1.manifest.json"), []byte("{}"), 0o644)
	t0 := time.Now()
	job := &contracts.Job{ID: "j1", State: contracts.JobSucceeded, Steps: []contracts.Step{
		{Name: "connect-operator", State: contracts.StepDone, Attempt: 1, Started: t0, Ended: t0.Add(150 * time.Millisecond), Elapsed: 20 * time.Millisecond},
		{Name: "push", State: contracts.StepDone, Attempt: 2, Started: t0, Ended: t0.Add(2500 * time.Millisecond), Elapsed: 2 * time.Second, Bytes: 3 << 20},
	}}
	got := demoSummary(job, 3*time.Second, nil, filepath.Join(dir, "operator"), dest, before)
	for _, w := range []string{
		"demo: job j1 SUCCEEDED after 3.0s",
		"connect-operator  succeeded  1         150ms  20ms  -",
		"push              succeeded  2         2.5s   2.0s  3.0 MiB",
		"3.0 MiB  " + filepath.Join(dest, "update-j1.tar.zst"),
		"2 B  " + filepath.Join(dest, "update-j1.manifest.json"),
		"(and 1 file of earlier runs)",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("summary lacks %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, "old.tar.zst") || strings.Contains(got, "FAILED") {
		t.Errorf("summary:\n%s", got)
	}
}
