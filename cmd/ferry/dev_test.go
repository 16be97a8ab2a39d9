package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestDev starts `ferry dev` in process, checks its health and metrics, talks to its
// API with the CLI, and stops it.
func TestDev(t *testing.T) {
	var out, errb syncBuffer
	a := newApp(&out, &errb, func(string) string { return "" })
	type addrs struct{ nats, http string }
	ready := make(chan addrs, 1)
	a.devReady = func(n, h string) { ready <- addrs{n, h} }
	root := a.rootCommand()
	root.SetArgs([]string{"dev", "--data-dir", t.TempDir(), "--nats-listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warn"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()

	var at addrs
	select {
	case at = <-ready:
	case err := <-done:
		t.Fatalf("ferry dev stopped: %v\n%s", err, errb.String())
	case <-time.After(30 * time.Second):
		t.Fatal("ferry dev did not start")
	}
	// /healthz says "starting" until every service takes work; once it says ok, the
	// orchestrator's API answers at once.
	var code int
	var body string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if code, body = httpGet(t, "http://"+at.http+"/healthz"); code == 200 || !strings.HasPrefix(body, "starting: ") {
			break
		}
	}
	if code != 200 || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	env := map[string]string{"FERRY_NATS_URL": at.nats}
	r := ferry(t, env, "job", "list", "--timeout", "5s")
	if r.code != 0 {
		t.Fatalf("job list against ferry dev once healthy: exit %d: %s", r.code, r.stderr)
	}
	_, metrics := httpGet(t, "http://"+at.http+"/metrics")
	for _, w := range []string{"ferry_build_info{", "go_goroutines"} {
		if !strings.Contains(metrics, w) {
			t.Errorf("/metrics lacks %s", w)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ferry dev: %v", err)
		}
	case <-time.After(devShutdownTimeout + 5*time.Second):
		t.Fatal("ferry dev did not stop")
	}
}
