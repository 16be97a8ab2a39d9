package svcenv

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaults(t *testing.T) {
	e, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if e.HTTPAddr != DefaultHTTPAddr || e.StagingDir != DefaultStagingDir || e.SecretsDir != DefaultSecretsDir ||
		e.NATS.URL != nats.DefaultURL || e.LogLevel != slog.LevelInfo || e.ShutdownTimeout != DefaultShutdownTimeout {
		t.Errorf("defaults = %+v", e)
	}
}

func TestLoad(t *testing.T) {
	e, err := Load(env(map[string]string{
		"FERRY_NATS_URL": "nats://bus:4222", "FERRY_NATS_USER": "svc", "FERRY_NATS_PASSWORD": "hunter2",
		"FERRY_HTTP_ADDR": "127.0.0.1:9191", "FERRY_LOG_LEVEL": "debug", "FERRY_STAGING_DIR": "/srv/staging",
		"FERRY_CONCURRENCY": "3", "FERRY_SHUTDOWN_TIMEOUT": "5s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if e.NATS.URL != "nats://bus:4222" || e.NATS.User != "svc" || e.NATS.Password != "hunter2" || e.HTTPAddr != "127.0.0.1:9191" ||
		e.LogLevel != slog.LevelDebug || e.StagingDir != "/srv/staging" || e.Concurrency != 3 || e.ShutdownTimeout != 5*time.Second {
		t.Errorf("Load = %+v", e)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "env", e)
	if strings.Contains(buf.String(), "hunter2") {
		t.Errorf("password logged: %s", buf.String())
	}
}

func TestLoadNamesBadVariables(t *testing.T) {
	_, err := Load(env(map[string]string{"FERRY_LOG_LEVEL": "loud", "FERRY_CONCURRENCY": "-1", "FERRY_SHUTDOWN_TIMEOUT": "soon", "FERRY_NATS_CERT": "c.pem"}))
	if err == nil {
		t.Fatal("no error")
	}
	for _, v := range []string{"FERRY_LOG_LEVEL", "FERRY_CONCURRENCY", "FERRY_SHUTDOWN_TIMEOUT", "FERRY_NATS_KEY"} {
		if !strings.Contains(err.Error(), v) {
			t.Errorf("error does not name %s: %v", v, err)
		}
	}
}

func TestRun(t *testing.T) {
	var logs syncBuffer
	old := logOutput
	logOutput = &logs
	t.Cleanup(func() { logOutput = old })
	srv := bustest.Start(t, bus.Topology{})
	e, _ := Load(env(map[string]string{"FERRY_NATS_URL": srv.URL, "FERRY_HTTP_ADDR": "127.0.0.1:0", "FERRY_SHUTDOWN_TIMEOUT": "5s"}))

	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan Deps, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, contracts.ServiceCleanup, e, func(ctx context.Context, d Deps) error {
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_test_total", Help: "test"})
			d.Registerer.MustRegister(c)
			started <- d
			<-ctx.Done()
			return nil
		})
	}()
	select {
	case d := <-started:
		if !d.NC.IsConnected() {
			t.Error("service got a connection that is not connected")
		}
	case err := <-done:
		t.Fatalf("Run returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("service not started")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if !strings.Contains(logs.String(), `"service":"cleanup"`) {
		t.Errorf("logs lack the service name: %s", logs.String())
	}

	// A service that fails stops the process with its error.
	boom := errors.New("boom")
	err := Run(context.Background(), contracts.ServiceCleanup, e, func(context.Context, Deps) error { return boom })
	if !errors.Is(err, boom) {
		t.Errorf("Run = %v, want boom", err)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
