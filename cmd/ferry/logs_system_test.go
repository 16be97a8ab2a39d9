package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/inventory"
)

// alias puts host of (a running sshd of the system) into the inventory as name, with
// of's credential; port, when set, replaces the port.
func (s *system) alias(name, of string, port int) {
	s.t.Helper()
	h := s.hosts[of].Host(name, of)
	if port != 0 {
		h.Port = port
	}
	hosts, err := inventory.Open(context.Background(), s.js)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := hosts.Put(context.Background(), h); err != nil {
		s.t.Fatal(err)
	}
}

// bundle reads the log bundle job id delivered into dir and its manifest, checks the
// bundle against the manifest and returns the extracted files.
func (s *system) bundle(id, dir string) (contracts.Manifest, map[string][]byte) {
	s.t.Helper()
	t := s.t
	j := s.job(id)
	name := j.Created.UTC().Format(contracts.BackupTimeFormat) + ".tar.zst"
	m, out := extractDelivered(t, dir, name)
	if m.JobID != id {
		t.Fatalf("manifest of job %q, want %s", m.JobID, id)
	}
	got := map[string][]byte{}
	err := filepath.Walk(out, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		got[filepath.ToSlash(rel)], err = os.ReadFile(p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m, got
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ferry backup logs through the CLI, every service real, between two real sshd hosts:
// the matching logs (rotated and compressed ones included) are pulled, bundled with a
// manifest and delivered to ~/ferry/logs/<customer>/<UTC time>.tar.zst on the operator's
// computer; --since and --max-size filter, a glob matching nothing or escaping the
// host's roots fails naming it, --allow-empty gives an empty bundle, an unreachable
// operator fails the job after its retries; nothing is left behind.
func TestSystemLogBackup(t *testing.T) {
	s := startSystem(t, false)
	home, uid, gid := testHome(t)
	src := filepath.Join(home, "logs-"+t.Name())
	delivered := filepath.Join(home, "ferry", "logs")
	t.Cleanup(func() { os.RemoveAll(src); os.RemoveAll(delivered); _ = os.Remove(filepath.Join(home, "ferry")) })
	env := map[string]string{"FERRY_NATS_URL": s.srv.URL}
	now := time.Now()
	// logs writes the files of a case (name → data, age) below src/<dir>.
	logs := func(dir string, files map[string]string, age map[string]time.Duration) map[string][]byte {
		t.Helper()
		want := map[string][]byte{}
		for name, data := range files {
			p := filepath.Join(src, dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
			mt := now.Add(-age[name])
			if err := os.Chtimes(p, mt, mt); err != nil {
				t.Fatal(err)
			}
			want[name] = []byte(data)
		}
		chownTree(t, src, uid, gid)
		return want
	}
	glob := func(dir, pattern string) string { return filepath.Base(src) + "/" + dir + "/" + pattern }
	run := func(t *testing.T, args ...string) result {
		t.Helper()
		r := ferry(t, env, append([]string{"backup", "logs"}, args...)...)
		return r
	}
	ok := func(t *testing.T, r result) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
	}

	t.Run("bundle", func(t *testing.T) {
		s.alias("cust-all", "customer", 0)
		want := logs("all", map[string]string{
			"app.log":      strings.Repeat("GET /health 200\n", 2000),
			"app.log.1":    "yesterday\n",
			"app.log.2.gz": string(random(t, 70<<10)),
			"other.txt":    "not a log",
		}, nil)
		delete(want, "other.txt")
		ok(t, run(t, "--id", "logs-all", "--from", "cust-all", "--paths", glob("all", "app*.log*"), "--to", "operator-pc", "--wait"))
		m, got := s.bundle("logs-all", filepath.Join(delivered, "cust-all"))
		if m.Empty || len(m.Files) != 3 {
			t.Errorf("manifest %+v", m)
		}
		if !slices.Equal(keys(got), keys(want)) {
			t.Fatalf("bundle holds %v, want %v", keys(got), keys(want))
		}
		for name, data := range want {
			if string(got[name]) != string(data) {
				t.Errorf("%s differs", name)
			}
		}
		s.nothingLeft("logs-all")
	})

	t.Run("since", func(t *testing.T) {
		s.alias("cust-since", "customer", 0)
		logs("since", map[string]string{"app.log": "today\n", "app.log.1": "yesterday\n", "app.log.7.gz": "last week\n"},
			map[string]time.Duration{"app.log": time.Minute, "app.log.1": 20 * time.Hour, "app.log.7.gz": 7 * 24 * time.Hour})
		ok(t, run(t, "--id", "logs-since", "--from", "cust-since", "--paths", glob("since", "app.log*"), "--since", "24h",
			"--to", "operator-pc", "--wait"))
		_, got := s.bundle("logs-since", filepath.Join(delivered, "cust-since"))
		if names := keys(got); !slices.Equal(names, []string{"app.log", "app.log.1"}) {
			t.Fatalf("bundle holds %v, want the files of the last 24h", names)
		}
		s.nothingLeft("logs-since")
	})

	t.Run("max size", func(t *testing.T) {
		s.alias("cust-max", "customer", 0)
		kib := strings.Repeat("x", 1000)
		logs("max", map[string]string{"app.log": kib, "app.log.1": kib, "app.log.2": kib},
			map[string]time.Duration{"app.log": time.Minute, "app.log.1": time.Hour, "app.log.2": 2 * time.Hour})
		ok(t, run(t, "--id", "logs-max", "--from", "cust-max", "--paths", glob("max", "app.log*"), "--max-size", "2500",
			"--to", "operator-pc", "--wait"))
		_, got := s.bundle("logs-max", filepath.Join(delivered, "cust-max"))
		if names := keys(got); !slices.Equal(names, []string{"app.log", "app.log.1"}) {
			t.Fatalf("bundle holds %v, want the newest files within 2500 bytes", names)
		}
		s.nothingLeft("logs-max")
	})

	t.Run("no match", func(t *testing.T) {
		s.alias("cust-none", "customer", 0)
		g := glob("none", "*.log")
		r := run(t, "--id", "logs-none", "--from", "cust-none", "--paths", g, "--to", "operator-pc", "--wait")
		if r.code != 1 || !strings.Contains(r.stderr, g) || !strings.Contains(r.stderr, "bundle") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(delivered, "cust-none")); err == nil {
			t.Error("something was delivered")
		}
		s.nothingLeft("logs-none")
	})

	t.Run("allow empty", func(t *testing.T) {
		s.alias("cust-empty", "customer", 0)
		ok(t, run(t, "--id", "logs-empty", "--from", "cust-empty", "--paths", glob("none", "*.log"), "--allow-empty",
			"--to", "operator-pc", "--wait"))
		m, got := s.bundle("logs-empty", filepath.Join(delivered, "cust-empty"))
		if !m.Empty || len(m.Files) != 0 || len(got) != 0 {
			t.Fatalf("manifest %+v, files %v: want an empty bundle that says so", m, keys(got))
		}
		s.nothingLeft("logs-empty")
	})

	t.Run("escaping glob", func(t *testing.T) {
		r := run(t, "--id", "logs-escape", "--from", "customer", "--paths", "/etc/*", "--to", "operator-pc", "--wait")
		if r.code != 1 || !strings.Contains(r.stderr, "/etc/*") || !strings.Contains(r.stderr, "outside") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		s.nothingLeft("logs-escape")
	})

	t.Run("operator unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		s.alias("operator-down", "operator-pc", closed)
		logs("down", map[string]string{"app.log": "x\n"}, nil)
		r := run(t, "--id", "logs-down", "--from", "customer", "--paths", glob("down", "app.log"), "--to", "operator-down", "--wait")
		if r.code != 1 || !strings.Contains(r.stderr, "connect-operator") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		j := s.job("logs-down")
		if j.Failure == nil || j.Failure.Step != "connect-operator" {
			t.Fatalf("failure %+v", j.Failure)
		}
		for _, st := range j.Steps {
			switch st.Name {
			case "connect-operator":
				if st.Attempt != 2 {
					t.Errorf("connect-operator: %d attempts, want the policy's 2", st.Attempt)
				}
			case "bundle", "remove-staging", "close":
				if st.State != contracts.StepDone {
					t.Errorf("%s: %s", st.Name, st.State)
				}
			}
		}
		s.nothingLeft("logs-down") // the bundle stayed in staging until the job's end only
	})
}

// --keep N keeps the newest N bundles ferry delivered for the customer and removes the
// older ones with their manifests; files ferry did not write — without a manifest, or
// with one that does not describe them — stay, whatever their names.
func TestSystemLogRetention(t *testing.T) {
	s := startSystem(t, false)
	home, uid, gid := testHome(t)
	src := filepath.Join(home, "logs-"+t.Name())
	dir := filepath.Join(home, "ferry", "logs", "cust-keep")
	t.Cleanup(func() {
		os.RemoveAll(src)
		os.RemoveAll(filepath.Dir(dir))
		_ = os.Remove(filepath.Join(home, "ferry"))
	})
	s.alias("cust-keep", "customer", 0)
	env := map[string]string{"FERRY_NATS_URL": s.srv.URL}
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "app.log"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hand := map[string]string{
		"20200101T000000Z.tar.zst":               "no manifest",
		"20200102T000000Z.tar.zst":               "a manifest of another size",
		"20200102T000000Z.tar.zst.manifest.json": `{"schema":"ferry.v1.manifest","artifact":{"name":"x","size":1}}`,
		"notes.txt":                              "the operator's notes",
	}
	for name, data := range hand {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	chownTree(t, src, uid, gid)
	chownTree(t, filepath.Dir(dir), uid, gid)

	var bundles []string
	for i, id := range []string{"keep-1", "keep-2", "keep-3"} {
		if i > 0 {
			time.Sleep(1100 * time.Millisecond) // bundle names have a resolution of a second
		}
		r := ferry(t, env, "backup", "logs", "--id", id, "--from", "cust-keep", "--paths", filepath.Base(src)+"/app.log",
			"--to", "operator-pc", "--keep", "2", "--wait")
		if r.code != 0 {
			t.Fatalf("%s: exit %d\n%s\n%s", id, r.code, r.stdout, r.stderr)
		}
		bundles = append(bundles, s.job(id).Created.UTC().Format(contracts.BackupTimeFormat)+".tar.zst")
		s.nothingLeft(id)
	}
	want := keys(hand)
	for _, b := range bundles[1:] {
		want = append(want, b, contracts.ManifestName(b))
	}
	slices.Sort(want)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("left %v\nwant %v", got, want)
	}
	for name, data := range hand {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != data {
			t.Errorf("%s was changed", name)
		}
	}
	// The third job's prune says what it removed.
	var pr contracts.PruneResult
	for _, st := range s.job("keep-3").Steps {
		if st.Name == "prune" {
			_ = json.Unmarshal(st.Output, &pr)
		}
	}
	if pr.Kept != 2 || len(pr.Removed) != 2 || filepath.Base(pr.Removed[0]) != bundles[0] {
		t.Errorf("prune result %+v, want %s and its manifest removed", pr, bundles[0])
	}
}
