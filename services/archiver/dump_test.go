package archiver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/dbdump"
	"github.com/ferrydesk/ferry/pkg/dbtest"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"github.com/ferrydesk/ferry/pkg/worker/workertest"
	"github.com/ferrydesk/ferry/services/archiver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// The database password of the tests: characters that need escaping in a pgpass line
// (':' '\') and in a MySQL option file ('"' '\” '#' ' '). Its marker must never show up
// in a log line, a step event, an error message or a process's argv or environment.
const (
	canaryMarker = "canary-dbpw-6b2f"
	canary       = canaryMarker + `:\"#' x`
	dumpUser     = "ferry_dump"
)

// dumpEnv is a real database server behind a real sshd, and the archiver service
// dumping it over JetStream with a captured log.
type dumpEnv struct {
	db      *dbtest.Server
	sshd    *sshtest.Server
	ssh     string // secrets dir of the SSH login
	nc      *nats.Conn
	js      jetstream.JetStream
	reg     *prometheus.Registry
	staging string
	logs    *syncBuffer
}

func newDumpEnv(t *testing.T, db *dbtest.Server) *dumpEnv {
	t.Helper()
	e := &dumpEnv{db: db, sshd: sshtest.Start(t, sshtest.Options{}), ssh: t.TempDir(), logs: &syncBuffer{}}
	sshtest.WriteCredential(t, e.ssh, "ssh", map[string]string{"password": e.sshd.User().Password})

	secrets := t.TempDir()
	sshtest.WriteCredential(t, secrets, "db", map[string]string{"password": canary + "\n"})
	sshtest.WriteCredential(t, secrets, "wrong", map[string]string{"password": "wrong-password"})
	dir := sshtest.WriteCredential(t, secrets, "loose", map[string]string{"password": canary})
	if err := os.Chmod(filepath.Join(dir, "password"), 0o644); err != nil {
		t.Fatal(err)
	}

	srv := bustest.Start(t, bus.Topology{})
	nc, js := srv.Connect(t, "archiver")
	e.nc, e.js, e.reg, e.staging = nc, js, prometheus.NewRegistry(), t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		done <- archiver.Run(ctx, archiver.Config{StagingDir: e.staging, SecretsDir: secrets, DrainTimeout: 5 * time.Second},
			archiver.Deps{NC: nc, Registerer: e.reg, Logger: log})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not stop")
		}
	})
	return e
}

// tunnel dials the sshd (a new SSH connection) and forwards a loopback listener to
// remote, as the connector's tunnel step does. It returns the listener's address.
func (e *dumpEnv) tunnel(t *testing.T, remote string) string {
	t.Helper()
	ctx := context.Background()
	c, err := sshdial.Dial(ctx, e.sshd.Host("db-host", "ssh"), sshdial.Options{SecretsDir: e.ssh, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	tun, err := c.Forward(ctx, "127.0.0.1:0", remote)
	if err != nil {
		t.Fatal(err)
	}
	return tun.Addr().String()
}

// dump sends a dump command and waits for its step event.
func (e *dumpEnv) dump(t *testing.T, job string, args contracts.DumpArgs) contracts.StepEvent {
	t.Helper()
	workertest.Send(t, e.js, contracts.ServiceArchiver, contracts.OpDump, job, "dump", args)
	return e.event(t, job, 1)
}

func (e *dumpEnv) event(t *testing.T, job string, n int) contracts.StepEvent {
	t.Helper()
	evs := workertest.StepEvents(t, e.js, job, n, 45*time.Second)
	if len(evs) != n {
		t.Fatalf("%s: %d step events, want %d: %+v", job, len(evs), n, evs)
	}
	ev := evs[n-1]
	raw, _ := json.Marshal(ev)
	assertNoCanary(t, "step event", string(raw))
	return ev
}

// succeeded checks a successful dump event and the files it describes, and returns
// the result and the dump's path.
func (e *dumpEnv) succeeded(t *testing.T, job string, ev contracts.StepEvent, args contracts.DumpArgs, kind string) (contracts.ArtifactResult, string) {
	t.Helper()
	if ev.Kind != contracts.StepSucceeded {
		t.Fatalf("%s: %+v (error %+v)", job, ev, ev.Error)
	}
	var res contracts.ArtifactResult
	if err := json.Unmarshal(ev.Output, &res); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.staging, job, args.Name)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != args.Name || res.Manifest != contracts.ManifestName(args.Name) || res.Size != fi.Size() || ev.Bytes != res.Size || res.SHA256 != fileSum(t, path) {
		t.Errorf("%s: result %+v (event bytes %d), dump of %d bytes with SHA-256 %s", job, res, ev.Bytes, fi.Size(), fileSum(t, path))
	}
	var m contracts.Manifest
	b, err := os.ReadFile(filepath.Join(e.staging, job, res.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Schema != contracts.SchemaManifest || m.JobID != job || m.Artifact.Name != args.Name || m.Artifact.Kind != kind ||
		m.Artifact.Size != res.Size || m.Artifact.SHA256 != res.SHA256 || m.Files == nil || len(m.Files) != 0 || m.Artifact.Compression != "" {
		t.Errorf("%s: manifest %s", job, b)
	}
	e.noTemporaries(t, job)
	return res, path
}

// failed checks a failed dump event: its code, retryability and message, and that
// nothing is left under the dump's final name nor under a temporary one.
func (e *dumpEnv) failed(t *testing.T, job string, ev contracts.StepEvent, name, code string, retryable bool, says ...string) {
	t.Helper()
	if ev.Kind != contracts.StepFailed || ev.Error == nil {
		t.Fatalf("%s: %+v, want failed", job, ev)
	}
	t.Logf("%s: %s: %s", job, ev.Error.Code, ev.Error.Message)
	if ev.Error.Code != code || ev.Error.Retryable != retryable {
		t.Errorf("%s: error %+v, want code %s retryable %v", job, ev.Error, code, retryable)
	}
	for _, s := range says {
		if !strings.Contains(ev.Error.Message, s) {
			t.Errorf("%s: message %q does not say %q", job, ev.Error.Message, s)
		}
	}
	for _, p := range []string{name, contracts.ManifestName(name)} {
		if _, err := os.Stat(filepath.Join(e.staging, job, p)); !os.IsNotExist(err) {
			t.Errorf("%s: %s exists after a failed dump (%v)", job, p, err)
		}
	}
	e.noTemporaries(t, job)
}

func (e *dumpEnv) noTemporaries(t *testing.T, job string) {
	t.Helper()
	tmps, _ := filepath.Glob(filepath.Join(e.staging, job, "*.tmp-*"))
	if len(tmps) > 0 {
		t.Errorf("%s: temporary files left: %v", job, tmps)
	}
}

// progress collects the progress messages of job until the returned function is
// called; it returns them.
func (e *dumpEnv) progress(t *testing.T, job string) func() []contracts.Progress {
	t.Helper()
	var mu sync.Mutex
	var ps []contracts.Progress
	sub, err := e.nc.Subscribe(contracts.ProgressSubject(job), func(m *nats.Msg) {
		var p contracts.Progress
		if json.Unmarshal(m.Data, &p) == nil {
			mu.Lock()
			ps = append(ps, p)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return func() []contracts.Progress {
		_ = e.nc.Flush()
		_ = sub.Unsubscribe()
		mu.Lock()
		defer mu.Unlock()
		return ps
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestDumpPostgres dumps a real PostgreSQL through a real sshd tunnel with the
// archiver service: the dump restores with the same rows, a redelivered command does
// not dump again; a wrong password, an unknown database, a closed port and a loose
// credential file fail as they should with nothing delivered; a tunnel dropped in the
// middle of a dump fails retryably with nothing delivered and a retry through a new
// tunnel succeeds; the password shows up nowhere.
func TestDumpPostgres(t *testing.T) {
	t.Parallel()
	pg := dbtest.StartPostgres(t)
	pg.CreateDatabase(t, "app")
	rows := pg.Seed(t, "app", 2000)
	pg.CreateDatabase(t, "bigdb")
	bigRows := pg.SeedBig(t, "bigdb", 50)
	pg.CreateUser(t, dumpUser, canary)
	e := newDumpEnv(t, pg)
	addr := e.tunnel(t, pg.Addr)

	args := contracts.DumpArgs{Engine: "", Database: "app", Addr: addr, User: dumpUser, Credential: "db", Name: "app.dump"}
	start := time.Now()
	ev := e.dump(t, "pg-ok", args)
	res, path := e.succeeded(t, "pg-ok", ev, args, "pg-dump")
	t.Logf("dump of %d bytes in %v", res.Size, time.Since(start))
	pg.Restore(t, path, "app_restored")
	for table, n := range rows {
		if got := pg.Count(t, "app_restored", table); got != n {
			t.Errorf("restored %s has %d rows, want %d", table, got, n)
		}
	}
	// Delivered again: the same result, the dump not written again.
	fi, _ := os.Stat(path)
	workertest.Send(t, e.js, contracts.ServiceArchiver, contracts.OpDump, "pg-ok", "dump-again", args)
	ev2 := e.event(t, "pg-ok", 2)
	var res2 contracts.ArtifactResult
	_ = json.Unmarshal(ev2.Output, &res2)
	fi2, err := os.Stat(path)
	if err != nil || ev2.Kind != contracts.StepSucceeded || res2 != res || !os.SameFile(fi, fi2) {
		t.Errorf("redelivered: %+v %+v; rewritten: %v (%v)", ev2, res2, err != nil || !os.SameFile(fi, fi2), err)
	}

	bad := args
	bad.Credential = "wrong"
	e.failed(t, "pg-badpw", e.dump(t, "pg-badpw", bad), args.Name, contracts.CodeAuth, false, "password rejected", dumpUser)
	bad = args
	bad.Database = "nope"
	e.failed(t, "pg-nodb", e.dump(t, "pg-nodb", bad), args.Name, contracts.CodeNotFound, false, "database nope does not exist")
	bad = args
	bad.Credential = "loose"
	e.failed(t, "pg-loose", e.dump(t, "pg-loose", bad), args.Name, contracts.CodeAuth, false, "mode 0644")
	bad = args
	bad.Addr = e.tunnel(t, closedPort(t))
	e.failed(t, "pg-closed", e.dump(t, "pg-closed", bad), args.Name, contracts.CodeUnreachable, true, "closed or unreachable through the tunnel")

	// The tunnel drops in the middle of a dump of bigdb.
	progress := e.progress(t, "pg-drop")
	big := contracts.DumpArgs{Engine: "postgres", Database: "bigdb", Addr: e.tunnel(t, pg.Addr), User: dumpUser, Credential: "db", Name: "bigdb.dump"}
	e.dropTunnelMidDump(t, "pg-drop", big, "pg_dump")
	// The retry, through a new tunnel, produces a complete verified dump.
	big.Addr = e.tunnel(t, pg.Addr)
	workertest.Send(t, e.js, contracts.ServiceArchiver, contracts.OpDump, "pg-drop", "dump-retry", big)
	_, path = e.succeeded(t, "pg-drop", e.event(t, "pg-drop", 2), big, "pg-dump")
	pg.Restore(t, path, "bigdb_restored")
	if got := pg.Count(t, "bigdb_restored", "big"); got != bigRows {
		t.Errorf("restored big has %d rows, want %d", got, bigRows)
	}
	ps := progress()
	if len(ps) < 2 || ps[0].File != big.Name || ps[0].Done <= 0 || ps[0].Total != 0 {
		t.Errorf("progress %+v", ps)
	} else if last := ps[len(ps)-1]; last.Done != last.Total || last.Step != "dump-retry" {
		t.Errorf("last progress %+v", last)
	}

	// Verification reads the dump whole: a truncated copy fails it (whatever
	// pg_restore --list, which reads only the table of contents, says).
	truncated := filepath.Join(t.TempDir(), "truncated.dump")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(truncated, b[:len(b)*2/3], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := (&dbdump.Dumper{}).Verify(context.Background(), dbdump.Postgres, truncated); !errors.Is(err, dbdump.ErrIncomplete) {
		t.Errorf("Verify of a truncated dump = %v, want ErrIncomplete", err)
	}
	list := exec.Command("pg_restore", "--list", truncated).Run()
	t.Logf("pg_restore --list of the truncated dump: %v (nil: it does not notice)", list)

	// Dump has pg_restore read the dump while it is written. A stand-in pg_dump that
	// writes the real dump in two parts a moment apart passes (the reader waits for
	// the rest); one that writes the truncated copy and exits 0 is caught.
	standIn := func(script string) *dbdump.Dumper {
		tool := filepath.Join(t.TempDir(), "pg_dump")
		if err := os.WriteFile(tool, []byte("#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --file=*) out=\"${a#--file=}\";; esac; done\n"+script+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return &dbdump.Dumper{PgDump: tool, TempDir: t.TempDir()}
	}
	half := len(b) / 2
	slow := standIn(fmt.Sprintf(`head -c %d %s >"$out"; sleep 0.5; tail -c +%d %s >>"$out"`, half, path, half+1, path))
	target := dbdump.Target{Engine: dbdump.Postgres, Addr: "127.0.0.1:5432", Database: "app"}
	if err := slow.Dump(context.Background(), target, filepath.Join(t.TempDir(), "slow.dump"), nil); err != nil {
		t.Errorf("a whole dump written in two parts: %v", err)
	}
	// (cat, not cp: cp creates a file it found missing with O_EXCL, and the dump's
	// reader may create it first; pg_dump opens it as the shell does.)
	short := standIn(`cat ` + truncated + ` >"$out"`)
	if err := short.Dump(context.Background(), target, filepath.Join(t.TempDir(), "short.dump"), nil); !errors.Is(err, dbdump.ErrIncomplete) {
		t.Errorf("a truncated dump from a tool that exited 0: %v, want ErrIncomplete", err)
	}

	assertNoCanary(t, "service log", e.logs.String())
	if !strings.Contains(e.logs.String(), "database dumped") {
		t.Error("the service logged no dump: the log check is vacuous")
	}
	for outcome, want := range map[string]float64{"succeeded": 3, "failed": 5} {
		if got := workertest.Counter(t, e.reg, "ferry_step_executions_total", map[string]string{"op": "dump", "outcome": outcome}); got != want {
			t.Errorf("dump %s = %v, want %v", outcome, got, want)
		}
	}
}

// TestDumpMySQL does the same against a real MariaDB with mysqldump
// --single-transaction.
func TestDumpMySQL(t *testing.T) {
	t.Parallel()
	my := dbtest.StartMariaDB(t)
	my.CreateDatabase(t, "app")
	rows := my.Seed(t, "app", 2000)
	my.CreateDatabase(t, "bigdb")
	bigRows := my.SeedBig(t, "bigdb", 30)
	my.CreateUser(t, dumpUser, canary, "app", "bigdb")
	e := newDumpEnv(t, my)
	addr := e.tunnel(t, my.Addr)

	args := contracts.DumpArgs{Engine: "mysql", Database: "app", Addr: addr, User: dumpUser, Credential: "db", Name: "app.sql"}
	start := time.Now()
	res, path := e.succeeded(t, "my-ok", e.dump(t, "my-ok", args), args, "mysql-dump")
	t.Logf("dump of %d bytes in %v", res.Size, time.Since(start))
	my.Restore(t, path, "app_restored")
	for table, n := range rows {
		if got := my.Count(t, "app_restored", table); got != n {
			t.Errorf("restored %s has %d rows, want %d", table, got, n)
		}
	}

	bad := args
	bad.Credential = "wrong"
	e.failed(t, "my-badpw", e.dump(t, "my-badpw", bad), args.Name, contracts.CodeAuth, false, "password rejected", dumpUser)
	bad = args
	bad.Database = "nope"
	e.failed(t, "my-nodb", e.dump(t, "my-nodb", bad), args.Name, contracts.CodeNotFound, false, "database nope does not exist")
	bad = args
	bad.Addr = e.tunnel(t, closedPort(t))
	e.failed(t, "my-closed", e.dump(t, "my-closed", bad), args.Name, contracts.CodeUnreachable, true, "closed or unreachable through the tunnel")

	big := contracts.DumpArgs{Engine: "mysql", Database: "bigdb", Addr: e.tunnel(t, my.Addr), User: dumpUser, Credential: "db", Name: "bigdb.sql"}
	e.dropTunnelMidDump(t, "my-drop", big, "mariadb-dump")
	big.Addr = e.tunnel(t, my.Addr)
	workertest.Send(t, e.js, contracts.ServiceArchiver, contracts.OpDump, "my-drop", "dump-retry", big)
	_, path = e.succeeded(t, "my-drop", e.event(t, "my-drop", 2), big, "mysql-dump")
	my.Restore(t, path, "bigdb_restored")
	if got := my.Count(t, "bigdb_restored", "big"); got != bigRows {
		t.Errorf("restored big has %d rows, want %d", got, bigRows)
	}

	assertNoCanary(t, "service log", e.logs.String())
	if !strings.Contains(e.logs.String(), "database dumped") {
		t.Error("the service logged no dump: the log check is vacuous")
	}
}

// dropTunnelMidDump starts a dump through the tunnel in args.Addr, checks the
// dump tool's argv and environment while it runs, kills the sshd processes serving
// the tunnel once the partial dump passes 2 MiB, and checks the step fails retryably
// with nothing delivered.
func (e *dumpEnv) dropTunnelMidDump(t *testing.T, job string, args contracts.DumpArgs, tool string) {
	t.Helper()
	workertest.Send(t, e.js, contracts.ServiceArchiver, contracts.OpDump, job, "dump", args)
	deadline := time.Now().Add(30 * time.Second)
	sawTool := false
	var partial int64
	for partial < 2<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the partial dump did not reach 2 MiB (%d bytes); tool seen: %v", job, partial, sawTool)
		}
		sawTool = checkProcesses(t, tool) || sawTool
		tmps, _ := filepath.Glob(filepath.Join(e.staging, job, args.Name+".tmp-*"))
		for _, p := range tmps {
			if fi, err := os.Stat(p); err == nil {
				partial = max(partial, fi.Size())
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !sawTool {
		t.Errorf("%s: never saw %s running: the argv check is vacuous", job, tool)
	}
	if n := e.sshd.SignalConnections(syscall.SIGKILL); n == 0 {
		t.Fatalf("%s: no sshd connection process to kill", job)
	}
	t.Logf("%s: killed the tunnel's sshd processes at %d bytes of dump", job, partial)
	e.failed(t, job, e.event(t, job, 1), args.Name, contracts.CodeUnreachable, true, "lost during the dump")
}

// checkProcesses fails the test if any process's argv or environment holds the
// canary, and reports whether tool runs; its environment must name a passfile or
// carry no password variable.
func checkProcesses(t *testing.T, tool string) bool {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	seen := false
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		assertNoCanary(t, fmt.Sprintf("argv of process %d (%q)", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})), string(cmdline))
		assertNoCanary(t, fmt.Sprintf("environment of process %d", pid), string(environ))
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		if filepath.Base(string(argv0)) != tool && !bytes.Contains(cmdline, []byte("/"+tool+"\x00")) {
			continue
		}
		seen = true
		for _, v := range bytes.Split(environ, []byte{0}) {
			if bytes.HasPrefix(v, []byte("PGPASSWORD=")) || bytes.HasPrefix(v, []byte("MYSQL_PWD=")) {
				t.Errorf("%s (pid %d) gets the password in its environment: %s", tool, pid, bytes.SplitN(v, []byte("="), 2)[0])
			}
		}
		if tool == "pg_dump" && !bytes.Contains(environ, []byte("PGPASSFILE=")) {
			t.Errorf("pg_dump (pid %d) runs without PGPASSFILE", pid)
		}
		if tool != "pg_dump" && !bytes.Contains(cmdline, []byte("--defaults-extra-file=")) {
			t.Errorf("%s (pid %d) runs without --defaults-extra-file", tool, pid)
		}
	}
	return seen
}

func assertNoCanary(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, canaryMarker) {
		t.Errorf("%s leaks the database password: %q", what, s)
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
