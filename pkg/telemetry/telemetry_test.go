package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/prometheus/client_golang/prometheus"
)

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, "transfer", slog.LevelInfo)
	log.Debug("hidden")
	log.Info("hello", "job_id", "j1")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON record: %q: %v", buf.String(), err)
	}
	if rec["service"] != "transfer" || rec["msg"] != "hello" || rec["job_id"] != "j1" {
		t.Errorf("record = %v", rec)
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("ParseLevel accepted an unknown level")
	}
	if l, err := ParseLevel("WARN"); err != nil || l != slog.LevelWarn {
		t.Errorf("ParseLevel(WARN) = %v, %v", l, err)
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_test_total", Help: "test"})
	c.Add(3)
	reg.MustRegister(c)
	var healthErr error
	h := Handler(reg, func(context.Context) error { return healthErr })

	code, body := get(t, h, "/metrics")
	if code != 200 || !strings.Contains(body, "ferry_test_total 3") {
		t.Errorf("/metrics = %d %q", code, body)
	}
	if strings.Contains(body, "go_goroutines") {
		t.Error("/metrics serves the global registry")
	}
	if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz healthy = %d %q", code, body)
	}
	healthErr = errors.New("nats: disconnected")
	if code, body := get(t, h, "/healthz"); code != 503 || !strings.Contains(body, "nats: disconnected") {
		t.Errorf("/healthz unhealthy = %d %q", code, body)
	}
}

func TestServeShutsDown(t *testing.T) {
	s, err := Listen("127.0.0.1:0", prometheus.NewRegistry(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	resp, err := http.Get("http://" + s.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Errorf("GET /healthz = %d %q", resp.StatusCode, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(ShutdownTimeout + time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
	if _, err := http.Get("http://" + s.Addr() + "/healthz"); err == nil {
		t.Error("server still answers after shutdown")
	}
}

func TestNATSHealth(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	nc, _ := srv.Connect(t, "health")
	check := NATSHealth(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := check(ctx); err != nil {
		t.Fatalf("healthy connection: %v", err)
	}
	nc.Close()
	if err := check(ctx); err == nil || !strings.Contains(err.Error(), "CLOSED") {
		t.Errorf("closed connection: %v", err)
	}
}

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	BuildInfo(reg)
	_, body := get(t, Handler(reg, nil), "/metrics")
	want := `ferry_build_info{goversion="` + runtime.Version() + `",version="` + BuildVersion() + `"} 1`
	if !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %s:\n%s", want, body)
	}
	old := Version
	Version = "v9.9.9"
	defer func() { Version = old }()
	if BuildVersion() != "v9.9.9" {
		t.Errorf("BuildVersion ignores Version")
	}
}

func TestReadiness(t *testing.T) {
	r := NewReadiness("orchestrator", "transfer")
	var natsErr error
	health := r.Check(func(context.Context) error { return natsErr })
	h := Handler(prometheus.NewRegistry(), health)
	if code, body := get(t, h, "/healthz"); code != 503 || body != "starting: orchestrator, transfer not ready yet\n" {
		t.Errorf("/healthz before any part is ready = %d %q", code, body)
	}
	r.Ready("transfer")()
	r.Ready("transfer")() // a second call changes nothing
	if code, body := get(t, h, "/healthz"); code != 503 || body != "starting: orchestrator not ready yet\n" {
		t.Errorf("/healthz with the orchestrator pending = %d %q", code, body)
	}
	r.Ready("orchestrator")()
	if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz once all are ready = %d %q", code, body)
	}
	natsErr = errors.New("nats: disconnected")
	if code, body := get(t, h, "/healthz"); code != 503 || !strings.Contains(body, "nats: disconnected") {
		t.Errorf("/healthz ready but disconnected = %d %q", code, body)
	}
}
