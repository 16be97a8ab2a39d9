package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"github.com/ferrydesk/ferry/pkg/worker"
	"github.com/ferrydesk/ferry/services/archiver"
	"github.com/ferrydesk/ferry/services/cleanup"
	"github.com/ferrydesk/ferry/services/connector"
	"github.com/ferrydesk/ferry/services/orchestrator"
	"github.com/ferrydesk/ferry/services/transfer"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// System tests: the real orchestrator, connector and cleanup services on a real
// JetStream server, against real OpenSSH servers. Steps of services that do not exist
// yet in this version (transfer, archiver) are played by handlers in the test; the dump
// handler uses the connector's tunnel for real.

type system struct {
	t       *testing.T
	srv     *bustest.Server
	js      jetstream.JetStream
	leases  *session.Leases
	connReg *prometheus.Registry
	staging string
	secrets string
	hosts   map[string]*sshtest.Server

	mu    sync.Mutex
	steps map[string]func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error)
}

// startSystem runs the real orchestrator, connector and cleanup, and transfer and
// archiver for real too unless played is set (then test handlers play their steps).
func startSystem(t *testing.T, played bool) *system {
	t.Helper()
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "test")
	s := &system{t: t, srv: srv, js: js, connReg: prometheus.NewRegistry(), hosts: map[string]*sshtest.Server{},
		steps: map[string]func(context.Context, contracts.StepCommand) (worker.Result, error){}}
	var err error
	if s.leases, err = session.OpenLeases(context.Background(), js); err != nil {
		t.Fatal(err)
	}
	secrets, staging := t.TempDir(), t.TempDir()
	s.staging, s.secrets = staging, secrets
	hosts, _ := inventory.Open(context.Background(), js)
	for _, name := range []string{"customer", "operator-pc"} {
		sshd := sshtest.Start(t, sshtest.Options{})
		s.hosts[name] = sshd
		sshtest.WriteCredential(t, secrets, name, map[string]string{sshdial.FilePassword: sshd.User().Password})
		if err := hosts.Put(context.Background(), sshd.Host(name, name)); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.DiscardHandler)
	wf := orchestrator.DefaultWorkflows()
	for a, w := range wf {
		for i := range w.Steps {
			w.Steps[i].Policy = orchestrator.Policy{Attempts: 2, Backoff: 100 * time.Millisecond, Timeout: 20 * time.Second}
		}
		wf[a] = w
	}
	s.run(func(ctx context.Context) error {
		nc, _ := srv.Connect(t, "orchestrator")
		return orchestrator.Run(ctx, orchestrator.Config{Workflows: wf, CancelGrace: 5 * time.Second}, orchestrator.Deps{NC: nc, Logger: log})
	})
	s.run(func(ctx context.Context) error {
		nc, _ := srv.Connect(t, "connector")
		return connector.Run(ctx, connector.Config{SecretsDir: secrets}, connector.Deps{NC: nc, Registerer: s.connReg, Logger: log})
	})
	s.run(func(ctx context.Context) error {
		nc, _ := srv.Connect(t, "cleanup")
		// Leftovers on a host out of reach are given 3 s and swept every 2 s, not 30 s
		// and 10 min (TestSystemUpdateLeftoversOnAHostOutOfReach).
		return cleanup.Run(ctx, cleanup.Config{StagingDir: staging, SecretsDir: secrets, LeftoversWait: 3 * time.Second, SweepEvery: 2 * time.Second},
			cleanup.Deps{NC: nc, Logger: log})
	})
	defer s.waitForAPI()
	if !played {
		s.run(func(ctx context.Context) error {
			nc, _ := srv.Connect(t, "transfer")
			return transfer.Run(ctx, transfer.Config{StagingDir: staging, SecretsDir: secrets}, transfer.Deps{NC: nc, Logger: log})
		})
		s.run(func(ctx context.Context) error {
			nc, _ := srv.Connect(t, "archiver")
			return archiver.Run(ctx, archiver.Config{StagingDir: staging, SecretsDir: secrets}, archiver.Deps{NC: nc, Logger: log})
		})
		return s
	}
	for _, svc := range []contracts.Service{contracts.ServiceTransfer, contracts.ServiceArchiver} {
		nc, js := srv.Connect(t, string(svc))
		r := &worker.Runner{NC: nc, JS: js, Service: svc, Handler: s.play}
		s.run(r.Run)
	}
	return s
}

// waitForAPI returns once the orchestrator answers requests (it serves its API after
// loading the job records).
func (s *system) waitForAPI() {
	s.t.Helper()
	nc, _ := s.srv.Connect(s.t, "probe")
	defer nc.Close()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := nc.Request(contracts.SubjectAPIList, []byte(`{}`), time.Second); err == nil {
			return
		}
	}
	s.t.Fatal("the orchestrator's API did not come up")
}

func (s *system) run(f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	s.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				s.t.Errorf("service: %v", err)
			}
		case <-time.After(20 * time.Second):
			s.t.Error("service did not stop")
		}
	})
}

func (s *system) on(step string, f func(context.Context, contracts.StepCommand) (worker.Result, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps[step] = f
}

// play is the handler of the steps this version's transfer and archiver lack.
func (s *system) play(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
	s.mu.Lock()
	f := s.steps[cmd.Step]
	s.mu.Unlock()
	if f != nil {
		return f(ctx, cmd)
	}
	switch cmd.Op {
	case contracts.OpDump, contracts.OpArchive:
		return worker.Result{Output: contracts.ArtifactResult{Name: cmd.Step + ".out", Size: 1, SHA256: "00"}}, nil
	}
	return worker.Result{Output: contracts.DeliveryResult{}}, nil
}

func (s *system) job(id string) *contracts.Job {
	kv, _ := s.js.KeyValue(context.Background(), contracts.BucketJobs)
	e, err := kv.Get(context.Background(), id)
	if err != nil {
		return nil
	}
	var j contracts.Job
	_ = json.Unmarshal(e.Value(), &j)
	return &j
}

func (s *system) wait(id string) *contracts.Job {
	s.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if j := s.job(id); j != nil && j.State.Final() {
			return j
		}
	}
	s.t.Fatalf("job %s did not finish", id)
	return nil
}

func (s *system) gauge(name string) float64 {
	mfs, _ := s.connReg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// nothingLeft asserts that no lease, SSH session or tunnel survives the job.
func (s *system) nothingLeft(id string) {
	s.t.Helper()
	if ls, _ := s.leases.OfJob(context.Background(), id); len(ls) != 0 {
		s.t.Errorf("job %s left leases: %+v", id, ls)
	}
	if n := s.gauge("ferry_ssh_sessions_active"); n != 0 {
		s.t.Errorf("job %s left %v SSH sessions open", id, n)
	}
	if n := s.gauge("ferry_ssh_tunnels_active"); n != 0 {
		s.t.Errorf("job %s left %v tunnels open", id, n)
	}
	if left, _ := os.ReadDir(s.staging); len(left) != 0 {
		s.t.Errorf("job %s left staging: %v", id, left)
	}
}

func TestSystemNothingLeftBehind(t *testing.T) {
	s := startSystem(t, true)
	echo := sshtest.EchoServer(t) // stands in for the database port behind the customer

	// The dump step uses the connector's tunnel for real: bytes go through it and back.
	s.on("dump", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
		var a contracts.DumpArgs
		_ = json.Unmarshal(cmd.Args, &a)
		conn, err := net.DialTimeout("tcp", a.Addr, 2*time.Second)
		if err != nil {
			return worker.Result{}, err
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("SELECT 1")); err != nil {
			return worker.Result{}, err
		}
		_ = conn.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(conn)
		if err != nil || string(got) != "SELECT 1" {
			return worker.Result{}, worker.Permanent("test", errors.New("the tunnel did not carry the bytes"))
		}
		return worker.Result{Output: contracts.ArtifactResult{Name: "erp.dump", Size: 8, SHA256: "00"}}, nil
	})

	t.Run("succeeded", func(t *testing.T) {
		s.submitTo("job-ok", echo)
		if j := s.wait("job-ok"); j.State != contracts.JobSucceeded {
			t.Fatalf("%s: %+v", j.State, j.Failure)
		}
		s.nothingLeft("job-ok")
	})
	t.Run("failed", func(t *testing.T) {
		s.on("deliver", func(context.Context, contracts.StepCommand) (worker.Result, error) {
			return worker.Result{}, worker.Permanent(contracts.CodeRemoteWrite, errors.New("remote write failed (disk full?)"))
		})
		s.submitTo("job-failed", echo)
		if j := s.wait("job-failed"); j.State != contracts.JobFailed || j.Failure.Step != "deliver" {
			t.Fatalf("%s: %+v", j.State, j.Failure)
		}
		s.nothingLeft("job-failed")
		s.on("deliver", nil)
	})
	t.Run("cancelled", func(t *testing.T) {
		started := make(chan struct{})
		s.on("deliver", func(ctx context.Context, cmd contracts.StepCommand) (worker.Result, error) {
			close(started)
			<-ctx.Done()
			return worker.Result{}, ctx.Err()
		})
		s.submitTo("job-cancelled", echo)
		<-started
		if err := bus.Publish(context.Background(), s.js, contracts.CancelRequestSubject("job-cancelled"),
			contracts.CancelRequest{Schema: contracts.SchemaCancel, JobID: "job-cancelled"}, "job-cancelled/cancel", "job-cancelled"); err != nil {
			t.Fatal(err)
		}
		if j := s.wait("job-cancelled"); j.State != contracts.JobCancelled {
			t.Fatalf("%s: %+v", j.State, j.Failure)
		}
		s.nothingLeft("job-cancelled")
	})
}

// submitTo submits a database backup whose database port is addr (as seen from the
// customer, which is this machine).
func (s *system) submitTo(id, addr string) {
	s.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	req := contracts.JobRequest{Schema: contracts.SchemaJobRequest, ID: id, Action: contracts.ActionDBBackup,
		DBBackup: &contracts.DBBackupRequest{From: "customer", Database: "erp", DBHost: host, DBPort: p, To: "operator-pc"}}
	if err := bus.Publish(context.Background(), s.js, contracts.SubjectJobSubmit, req, id, id); err != nil {
		s.t.Fatal(err)
	}
}
