package sshdial_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func TestStoppedPeerIsDetected(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	ka := sshdial.Keepalive{Interval: 300 * time.Millisecond, CountMax: 2}
	opts := e.options()
	opts.Keepalive = ka
	c, err := e.dialHost(t, e.srv.Host("web1", e.credential(t, "pw", map[string]string{"password": e.srv.User().Password})), opts)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * ka.Interval) // keepalives are answered while the peer runs
	if err := c.Err(); err != nil {
		t.Fatalf("healthy connection failed: %v", err)
	}

	if n := e.srv.SignalConnections(syscall.SIGSTOP); n == 0 {
		t.Fatal("no sshd connection process to stop")
	}
	stopped := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- c.Wait() }()
	bound := time.Duration(ka.CountMax+1) * ka.Interval
	select {
	case err = <-errc:
	case <-time.After(bound + 2*time.Second):
		t.Fatalf("dead peer not detected within %s", bound+2*time.Second)
	}
	took := time.Since(stopped)
	t.Logf("detected after %s (bound %s)", took, bound)
	if took > bound+500*time.Millisecond {
		t.Errorf("detection took %s, bound is %s", took, bound)
	}
	if !errors.Is(err, sshdial.ErrPeerUnresponsive) || !sshdial.Retryable(err) ||
		!strings.Contains(err.Error(), "ssh peer web1") || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("Wait = %v, want a retryable ErrPeerUnresponsive", err)
	}
	if _, err := c.NewSession(); !errors.Is(err, sshdial.ErrPeerUnresponsive) {
		t.Errorf("NewSession after death = %v", err)
	}
	if _, err := c.DialContext(context.Background(), "tcp", "127.0.0.1:1"); !errors.Is(err, sshdial.ErrPeerUnresponsive) {
		t.Errorf("DialContext after death = %v", err)
	}
}

func TestLostConnectionAndClose(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	ref := e.credential(t, "pw", map[string]string{"password": e.srv.User().Password})

	c := e.mustDial(t, ref)
	e.srv.SignalConnections(syscall.SIGKILL)
	if err := c.Wait(); !errors.Is(err, sshdial.ErrConnectionLost) || !sshdial.Retryable(err) {
		t.Fatalf("Wait after the peer died = %v, want retryable ErrConnectionLost", err)
	}

	c = e.mustDial(t, ref)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Errorf("Wait after Close = %v, want nil", err)
	}
	if _, err := c.NewSession(); !errors.Is(err, sshdial.ErrClosed) {
		t.Errorf("NewSession after Close = %v, want ErrClosed", err)
	}
}

func TestUnreachableIsRetryable(t *testing.T) {
	e := &env{secrets: t.TempDir(), logs: &syncBuffer{}}
	e.credential(t, "pw", map[string]string{"password": canaryPassword})

	// Nothing listens.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	_, err := e.dialHost(t, hostAt(port), e.options())
	if !errors.Is(err, sshdial.ErrUnreachable) || !sshdial.Retryable(err) {
		t.Errorf("closed port: %v, want retryable ErrUnreachable", err)
	}

	// Accepts but never speaks SSH.
	silent, _ := net.Listen("tcp", "127.0.0.1:0")
	defer silent.Close()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			conns = append(conns, conn)
		}
	}()
	opts := e.options()
	opts.Timeout = 300 * time.Millisecond
	reg := prometheus.NewPedanticRegistry()
	opts.Hooks = sshdial.NewMetrics(reg).Hooks()
	start := time.Now()
	_, err = e.dialHost(t, hostAt(silent.Addr().(*net.TCPAddr).Port), opts)
	if !errors.Is(err, sshdial.ErrUnreachable) || !sshdial.Retryable(err) || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("silent server: %v, want a retryable timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %s", d)
	}
	checkMetrics(t, reg, map[string]float64{`ferry_ssh_connections_total{host="nowhere",method="none",outcome="timeout"}`: 1})

	// The caller's context bounds the handshake too.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = sshdial.Dial(ctx, hostAt(silent.Addr().(*net.TCPAddr).Port), e.options())
	if !errors.Is(err, sshdial.ErrUnreachable) {
		t.Errorf("context deadline: %v, want ErrUnreachable", err)
	}
	assertNoCanary(t, "log", e.logs.String())
}

func hostAt(port int) contracts.Host {
	return contracts.Host{Name: "nowhere", Address: "127.0.0.1", Port: port, User: "u", Credential: "pw", TrustOnFirstUse: true}
}

func TestPool(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	host := e.srv.Host("web1", e.credential(t, "pw", map[string]string{"password": e.srv.User().Password}))
	var dials atomic.Int32
	dial := func(ctx context.Context) (*sshdial.Client, error) {
		dials.Add(1)
		return sshdial.Dial(ctx, host, e.options())
	}
	pool := sshdial.NewPool()
	defer pool.Close()
	ctx := context.Background()

	clients := make([]*sshdial.Client, 8)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			c, err := pool.Get(ctx, "lease-1", dial)
			if err != nil {
				t.Error(err)
			}
			clients[i] = c
		})
	}
	wg.Wait()
	if dials.Load() != 1 {
		t.Fatalf("%d dials for concurrent Gets, want 1", dials.Load())
	}
	for _, c := range clients {
		if c != clients[0] {
			t.Fatal("concurrent Gets returned different clients")
		}
	}

	// A dead client is replaced on the next Get.
	e.srv.SignalConnections(syscall.SIGKILL)
	clients[0].Wait()
	c, err := pool.Get(ctx, "lease-1", dial)
	if err != nil || c == clients[0] || dials.Load() != 2 {
		t.Fatalf("Get after death: %v, same=%v, dials=%d", err, c == clients[0], dials.Load())
	}

	// A failed dial is not cached.
	failing := func(context.Context) (*sshdial.Client, error) { dials.Add(1); return nil, errors.New("boom") }
	if _, err := pool.Get(ctx, "lease-2", failing); err == nil {
		t.Fatal("failing dial succeeded")
	}
	if _, err := pool.Get(ctx, "lease-2", dial); err != nil {
		t.Fatal(err)
	}
	if pool.Len() != 2 {
		t.Errorf("Len = %d, want 2", pool.Len())
	}

	pool.Drop("lease-1")
	if !errors.Is(c.Err(), sshdial.ErrClosed) {
		t.Errorf("dropped client: Err = %v, want ErrClosed", c.Err())
	}
	pool.Close()
	if _, err := pool.Get(ctx, "lease-1", dial); !errors.Is(err, sshdial.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	reg := prometheus.NewPedanticRegistry()
	m := sshdial.NewMetrics(reg)
	opts := e.options()
	opts.Hooks = m.Hooks()

	ok := e.srv.Host("web1", e.credential(t, "pw", map[string]string{"password": e.srv.User().Password}))
	c, err := e.dialHost(t, ok, opts)
	if err != nil {
		t.Fatal(err)
	}
	tun, err := c.Forward(context.Background(), "127.0.0.1:0", sshtest.EchoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	unknown := ok
	unknown.HostKeys = nil
	e.dialHost(t, unknown, opts)

	want := map[string]float64{
		`ferry_ssh_connections_total{host="web1",method="password",outcome="ok"}`:           1,
		`ferry_ssh_connections_total{host="web1",method="none",outcome="host_key_unknown"}`: 1,
		`ferry_ssh_host_key_failures_total{host="web1",kind="unknown"}`:                     1,
		`ferry_ssh_sessions_active`:                  1,
		`ferry_ssh_tunnels_active`:                   1,
		`ferry_ssh_handshake_duration_seconds_count`: 1,
	}
	checkMetrics(t, reg, want)
	tun.Close()
	c.Close()
	want[`ferry_ssh_sessions_active`], want[`ferry_ssh_tunnels_active`] = 0, 0
	checkMetrics(t, reg, want)
}

func checkMetrics(t *testing.T, reg *prometheus.Registry, want map[string]float64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				got[name] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[name] = m.Gauge.GetValue()
			case m.Histogram != nil:
				got[name+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}
