package connector_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"github.com/ferrydesk/ferry/pkg/worker/workertest"
	"github.com/ferrydesk/ferry/services/connector"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The connector is tested as it runs: a real JetStream server, the service's Run, and a
// real OpenSSH sshd on a loopback port. Commands go in through the bus, step events come
// out of it.

type fixture struct {
	t         *testing.T
	js        jetstream.JetStream
	nc        *nats.Conn
	secrets   string
	hosts     *inventory.Store
	leases    *session.Leases
	reg       *prometheus.Registry
	logs      *syncBuffer
	traffic   *syncBuffer // every message on the bus, headers included
	srv       *bustest.Server
	cfg       connector.Config
	stopFirst func() // stops the connector start began
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, cfg connector.Config) *fixture {
	t.Helper()
	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "test")
	f := &fixture{t: t, js: js, nc: nc, secrets: t.TempDir(), reg: prometheus.NewRegistry(), logs: &syncBuffer{}, traffic: &syncBuffer{}}
	// Capture all traffic on the bus for the secret checks.
	spy, _ := srv.Connect(t, "spy")
	if _, err := spy.Subscribe(">", func(m *nats.Msg) {
		fmt.Fprintf(f.traffic, "%s %v %s\n", m.Subject, m.Header, m.Data)
	}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.hosts, err = inventory.Open(context.Background(), js); err != nil {
		t.Fatal(err)
	}
	if f.leases, err = session.OpenLeases(context.Background(), js); err != nil {
		t.Fatal(err)
	}
	cfg.SecretsDir = f.secrets
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second // PAM delays a failed password by about 2 s
	}
	f.srv, f.cfg = srv, cfg
	f.stopFirst = f.run()
	t.Cleanup(f.stopFirst)
	return f
}

// run starts a connector on the fixture's bus; stop ends it and waits.
func (f *fixture) run() (stop func()) {
	t := f.t
	f.reg = prometheus.NewRegistry() // a new process: its own metrics
	cnc, _ := f.srv.Connect(t, "connector")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- connector.Run(ctx, f.cfg, connector.Deps{NC: cnc, Registerer: f.reg,
			Logger: slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("Run did not stop")
			}
		})
	}
}

// step sends one command and waits for its event.
func (f *fixture) step(job, step string, op contracts.Op, args any) contracts.StepEvent {
	f.t.Helper()
	workertest.Send(f.t, f.js, contracts.ServiceConnector, op, job, step, args)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		// Ask for more events than a job has: returns what is stored after the wait.
		if ev, ok := workertest.ByStep(workertest.StepEvents(f.t, f.js, job, 1000, 100*time.Millisecond))[step]; ok {
			return ev
		}
	}
	f.t.Fatalf("no event for step %s of job %s", step, job)
	return contracts.StepEvent{}
}

func (f *fixture) addHost(h contracts.Host) {
	f.t.Helper()
	if err := f.hosts.Put(context.Background(), h); err != nil {
		f.t.Fatal(err)
	}
}

// passwordHost registers the sshd as host name with a password credential.
func (f *fixture) passwordHost(sshd *sshtest.Server, name string) contracts.Host {
	sshtest.WriteCredential(f.t, f.secrets, name+"-cred", map[string]string{sshdial.FilePassword: sshd.User().Password})
	h := sshd.Host(name, name+"-cred")
	f.addHost(h)
	return h
}

func (f *fixture) gauge(name string) float64 {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}

func mustSucceed(t *testing.T, ev contracts.StepEvent) {
	t.Helper()
	if ev.Kind != contracts.StepSucceeded {
		t.Fatalf("step %s failed: %+v", ev.Step, ev.Error)
	}
}

func mustFail(t *testing.T, ev contracts.StepEvent, code string, retryable bool, words ...string) {
	t.Helper()
	if ev.Kind != contracts.StepFailed || ev.Error.Code != code || ev.Error.Retryable != retryable {
		t.Fatalf("step %s: want failed %s (retryable %v), got %s %+v", ev.Step, code, retryable, ev.Kind, ev.Error)
	}
	for _, w := range words {
		if !strings.Contains(ev.Error.Message, w) {
			t.Errorf("error %q does not say %q", ev.Error.Message, w)
		}
	}
}

func TestConnectTunnelClose(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	f := start(t, connector.Config{})
	f.passwordHost(sshd, "customer")
	echo := sshtest.EchoServer(t)

	ev := f.step("job1", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "customer"})
	mustSucceed(t, ev)
	var res contracts.ConnectResult
	_ = json.Unmarshal(ev.Output, &res)
	ls, _, err := f.leases.Get(context.Background(), "job1", "customer")
	if err != nil || ls.Fingerprint != res.Fingerprint || !strings.HasPrefix(ls.Fingerprint, "SHA256:") || ls.AuthMethod != sshdial.MethodPassword {
		t.Fatalf("lease %+v, err %v", ls, err)
	}

	ev = f.step("job1", "tunnel", contracts.OpTunnel, contracts.TunnelArgs{Host: "customer", Remote: echo})
	mustSucceed(t, ev)
	var tr contracts.TunnelResult
	_ = json.Unmarshal(ev.Output, &tr)
	conn, err := net.DialTimeout("tcp", tr.Addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("ferry"), 100_000)
	go func() { _, _ = conn.Write(payload); _ = conn.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("tunnel carried %d of %d bytes: %v", len(got), len(payload), err)
	}
	if ls, _, _ := f.leases.Get(context.Background(), "job1", "customer"); len(ls.Tunnels) != 1 || ls.Tunnels[0].Addr != tr.Addr {
		t.Fatalf("lease tunnels %+v", ls.Tunnels)
	}
	if f.gauge("ferry_ssh_sessions_active") != 1 || f.gauge("ferry_ssh_tunnels_active") != 1 {
		t.Fatalf("sessions %v tunnels %v", f.gauge("ferry_ssh_sessions_active"), f.gauge("ferry_ssh_tunnels_active"))
	}

	// A redelivered connect re-verifies under the lease and opens nothing new.
	mustSucceed(t, f.step("job1", "connect-again", contracts.OpConnect, contracts.ConnectArgs{Host: "customer"}))
	if f.gauge("ferry_ssh_sessions_active") != 1 {
		t.Fatal("a repeated connect opened another session")
	}

	ev = f.step("job1", "close", contracts.OpClose, contracts.CloseArgs{})
	mustSucceed(t, ev)
	if c, err := net.DialTimeout("tcp", tr.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the tunnel still accepts connections after close")
	}
	if _, _, err := f.leases.Get(context.Background(), "job1", "customer"); err == nil {
		t.Fatal("lease left after close")
	}
	if f.gauge("ferry_ssh_sessions_active") != 0 || f.gauge("ferry_ssh_tunnels_active") != 0 {
		t.Fatalf("after close: sessions %v tunnels %v", f.gauge("ferry_ssh_sessions_active"), f.gauge("ferry_ssh_tunnels_active"))
	}
	// Closing again is harmless.
	mustSucceed(t, f.step("job1", "close-again", contracts.OpClose, contracts.CloseArgs{}))
}

// A connector that stops and starts again (the same host name, as a restarted
// container) re-opens the tunnels of live leases on their recorded ports: a dump
// retried after the restart reaches its database through the same address.
func TestRestartRestoresTunnels(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	f := start(t, connector.Config{})
	f.passwordHost(sshd, "customer")
	echo := sshtest.EchoServer(t)
	mustSucceed(t, f.step("job1", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "customer"}))
	ev := f.step("job1", "tunnel", contracts.OpTunnel, contracts.TunnelArgs{Host: "customer", Remote: echo})
	mustSucceed(t, ev)
	var tr contracts.TunnelResult
	_ = json.Unmarshal(ev.Output, &tr)

	f.stopFirst()
	if c, err := net.DialTimeout("tcp", tr.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the tunnel outlived its connector")
	}
	t.Cleanup(f.run())
	waitFor(t, "the tunnel to be restored", 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", tr.Addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_, _ = c.Write([]byte("ping"))
		_ = c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		return string(got) == "ping"
	})
	if f.gauge("ferry_ssh_tunnels_active") != 1 {
		t.Fatalf("tunnels active after the restart: %v", f.gauge("ferry_ssh_tunnels_active"))
	}
	mustSucceed(t, f.step("job1", "close", contracts.OpClose, contracts.CloseArgs{}))
	if c, err := net.DialTimeout("tcp", tr.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the restored tunnel still accepts connections after close")
	}
}

func TestHostKeyPolicy(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	f := start(t, connector.Config{})
	h := f.passwordHost(sshd, "pinned")

	// Unknown key, strict: refused.
	strict := h
	strict.Name, strict.HostKeys = "strict", nil
	f.addHost(strict)
	mustFail(t, f.step("job-strict", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "strict"}),
		contracts.CodeHostKey, false, "unknown host key", "ferry host trust")

	// Trust on first use: pinned on the first connect.
	tofu := strict
	tofu.Name, tofu.TrustOnFirstUse = "tofu", true
	f.addHost(tofu)
	mustSucceed(t, f.step("job-tofu", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "tofu"}))
	if got, _, _ := f.hosts.Get(context.Background(), "tofu"); len(got.HostKeys) != 1 || !contains(sshd.HostKeys(), got.HostKeys[0]) {
		t.Fatalf("TOFU pinned %v, server has %v", got.HostKeys, sshd.HostKeys())
	}
	mustSucceed(t, f.step("job-tofu", "close", contracts.OpClose, contracts.CloseArgs{}))

	// The server's key changes: refused before any credential is sent, both fingerprints shown.
	sshd.Restart(true)
	before := len(sshd.LogText())
	for _, name := range []string{"pinned", "tofu"} {
		ev := f.step("job-changed-"+name, "connect", contracts.OpConnect, contracts.ConnectArgs{Host: name})
		mustFail(t, ev, contracts.CodeHostKey, false, "host key changed")
		if strings.Count(ev.Error.Message, "SHA256:") < 2 {
			t.Errorf("error does not show both fingerprints: %s", ev.Error.Message)
		}
	}
	if log := sshd.LogText()[before:]; strings.Contains(log, "userauth-request") || !strings.Contains(log, "KEX") {
		t.Fatalf("a credential reached the server with a changed host key:\n%s", log)
	}
	if n := testutil.ToFloat64(counterSum(t, f.reg, "ferry_ssh_host_key_failures_total")); n < 3 {
		t.Errorf("host key failures counted: %v", n)
	}
}

func TestLoginFailuresAreClear(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	f := start(t, connector.Config{})
	f.passwordHost(sshd, "good")

	sshtest.WriteCredential(t, f.secrets, "wrong", map[string]string{sshdial.FilePassword: "not-the-password"})
	f.addHost(sshd.Host("wrong-password", "wrong"))
	mustFail(t, f.step("job-auth", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "wrong-password"}),
		contracts.CodeAuth, false)

	key := sshtest.NewClientKey(t, "rsa", "the-right-passphrase")
	sshd.Authorize(key.Public())
	sshtest.WriteCredential(t, f.secrets, "badpass", map[string]string{sshdial.FilePrivateKey: string(key.PEM), sshdial.FilePassphrase: "a-wrong-passphrase"})
	f.addHost(sshd.Host("wrong-passphrase", "badpass"))
	mustFail(t, f.step("job-pass", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "wrong-passphrase"}),
		contracts.CodeAuth, false, "passphrase")

	f.addHost(sshd.Host("no-such-credential", "missing"))
	mustFail(t, f.step("job-cred", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "no-such-credential"}),
		contracts.CodeAuth, false, "missing")

	mustFail(t, f.step("job-unknown", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "nobody"}),
		contracts.CodeNotFound, false, "unknown host")

	down := sshd.Host("down", "good-cred")
	down.Port = freePort(t)
	f.addHost(down)
	mustFail(t, f.step("job-down", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "down"}),
		contracts.CodeUnreachable, true)

	mustFail(t, f.step("job-tunnel-first", "tunnel", contracts.OpTunnel, contracts.TunnelArgs{Host: "good", Remote: "127.0.0.1:5432"}),
		contracts.CodeInvalidCommand, false, "connect step has not run")
	mustFail(t, f.step("job-bad-remote", "tunnel", contracts.OpTunnel, contracts.TunnelArgs{Host: "good", Remote: "no-port"}),
		contracts.CodeInvalidCommand, false, "host:port")
}

// A peer that stops answering mid-session is detected within the keepalive bound; the
// step that needs the session fails as retryable.
func TestStoppedPeerIsDetected(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	f := start(t, connector.Config{Keepalive: sshdial.Keepalive{Interval: 300 * time.Millisecond, CountMax: 2}, DialTimeout: time.Second})
	f.passwordHost(sshd, "customer")
	mustSucceed(t, f.step("job1", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "customer"}))

	stopped := time.Now()
	if n := sshd.SignalConnections(syscall.SIGSTOP); n == 0 {
		t.Fatal("no sshd connection process to stop") // else the test proves nothing
	}
	if err := syscall.Kill(sshd.PID(), syscall.SIGSTOP); err != nil { // and the listener: no redial either
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(sshd.PID(), syscall.SIGCONT); sshd.SignalConnections(syscall.SIGCONT) })
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(f.logs.String())
		}
	})
	waitFor(t, "session dropped", 5*time.Second, func() bool { return f.gauge("ferry_ssh_sessions_active") == 0 })
	if d := time.Since(stopped); d > 3*300*time.Millisecond+500*time.Millisecond {
		t.Errorf("dead peer detected after %s", d)
	}
	mustFail(t, f.step("job1", "tunnel", contracts.OpTunnel, contracts.TunnelArgs{Host: "customer", Remote: "127.0.0.1:5432"}),
		contracts.CodeUnreachable, true)
}

// A job that never closes its sessions leaks nothing for long: the lease expires, is
// revoked, and the connection is dropped.
func TestExpiredLeaseIsRevoked(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	f := start(t, connector.Config{LeaseTTL: time.Second, SweepEvery: 200 * time.Millisecond})
	f.passwordHost(sshd, "customer")
	mustSucceed(t, f.step("job1", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "customer"}))
	waitFor(t, "expired lease revoked", 10*time.Second, func() bool {
		all, _ := f.leases.All(context.Background())
		return len(all) == 0 && f.gauge("ferry_ssh_sessions_active") == 0
	})
}

// Canary secrets appear nowhere: not in the service's logs, not on the bus.
func TestSecretsStayOffTheBusAndLogs(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	f := start(t, connector.Config{})
	f.passwordHost(sshd, "by-password")
	passphrase := "canary-passphrase-7c1e0a"
	key := sshtest.NewClientKey(t, "rsa", passphrase)
	sshd.Authorize(key.Public())
	sshtest.WriteCredential(t, f.secrets, "bykey", map[string]string{sshdial.FilePrivateKey: string(key.PEM), sshdial.FilePassphrase: passphrase})
	f.addHost(sshd.Host("by-key", "bykey"))
	sshtest.WriteCredential(t, f.secrets, "badkey", map[string]string{sshdial.FilePrivateKey: string(key.PEM), sshdial.FilePassphrase: passphrase + "-wrong"})
	f.addHost(sshd.Host("bad-key", "badkey"))
	sshtest.WriteCredential(t, f.secrets, "badpw", map[string]string{sshdial.FilePassword: sshd.User().Password + "-wrong"})
	f.addHost(sshd.Host("bad-pw", "badpw"))

	for i, h := range []string{"by-password", "by-key", "bad-key", "bad-pw"} {
		f.step(fmt.Sprintf("job%d", i), "connect", contracts.OpConnect, contracts.ConnectArgs{Host: h})
		f.step(fmt.Sprintf("job%d", i), "close", contracts.OpClose, contracts.CloseArgs{})
	}
	sshd.Restart(true) // and a host-key failure
	f.step("job-hk", "connect", contracts.OpConnect, contracts.ConnectArgs{Host: "by-password"})
	time.Sleep(200 * time.Millisecond)
	logs, traffic := f.logs.String(), f.traffic.String()
	if !strings.Contains(traffic, "ferry.v1.evt.step.job0") || !strings.Contains(logs, "session open") {
		t.Fatal("the capture saw nothing: the check would prove nothing")
	}
	for _, secret := range []string{sshd.User().Password, passphrase} {
		if strings.Contains(logs, secret) || strings.Contains(traffic, secret) {
			t.Fatalf("secret %q leaked (logs: %v, bus: %v)", secret, strings.Contains(logs, secret), strings.Contains(traffic, secret))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func counterSum(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, _ := reg.Gather()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "sum"})
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				c.Add(m.GetCounter().GetValue())
			}
		}
	}
	return c
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
