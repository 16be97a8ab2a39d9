package main

// The two backup actions as real jobs against the same by-hand OpenSSH procedure, in
// the same run (see bench_test.go for the conventions: one timed run of each side,
// handshakes included, one line per figure with its ratio and target). Every service
// runs in this process (orchestrator, connector, transfer, archiver, cleanup) on an
// embedded JetStream server; the jobs are submitted with the ferry CLI (`ferry backup
// db` / `ferry backup logs`, without --wait) and timed from the submit to the job's
// end, its closing steps included. Two real sshds stand for the customer server and
// the operator's PC (both log in the test user, so both homes are the same directory
// on this machine); this process is the helpdesk server.

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/dbtest"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"github.com/ferrydesk/ferry/services/archiver"
	"github.com/ferrydesk/ferry/services/cleanup"
	"github.com/ferrydesk/ferry/services/connector"
	"github.com/ferrydesk/ferry/services/orchestrator"
	"github.com/ferrydesk/ferry/services/transfer"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	benchDBGenBudget = 90 * time.Second // generating more than this is cut short and scaled
	benchLogTotal    = 2 << 30          // 2 GiB of logs
	benchLogFiles    = 200
)

// ---------------------------------------------------------------------------------
// A ~1 GiB PostgreSQL database: `ferry backup db` (connect, tunnel, pg_dump -Fc through
// the tunnel, verify, deliver) vs ssh -L + pg_dump -Fc through it + scp to the operator.

// jobTurn is one turn of a backup job: the job, the machine's CPU meanwhile, and the
// size of what it delivered.
type jobTurn struct {
	job   *contracts.Job
	meter *cpuMeter
	cpu   float64
	size  int64
}

func BenchmarkOpenSSHDBBackup1GiB(b *testing.B) {
	benchFacts()
	pg := dbtest.StartPostgres(b)
	const db, dbUser, dbPassword = "benchdb", "ferry_bench", "bench-db-password"
	pg.CreateDatabase(b, db)
	pg.CreateUser(b, dbUser, dbPassword, db)

	// Table big as dbtest.SeedBig makes it (int key, three md5 hex strings: ~100 bytes
	// of poorly compressible text a row), filled in chunks until the table and its
	// index take 1 GiB on disk, then frozen so that neither dump sets hint bits.
	genStart := time.Now()
	pg.Exec(b, db, "CREATE TABLE big (id int PRIMARY KEY, a text, b text, c text)")
	var rows, size int64
	for want := int64(1 << 20); size < benchBig && time.Since(genStart) < benchDBGenBudget; {
		n := min(want, 1<<20)
		pg.Exec(b, db, fmt.Sprintf(`INSERT INTO big SELECT g, md5(g::text), md5((g+1)::text), md5((g*7)::text)::varchar(36)
FROM generate_series(%d, %d) g`, rows+1, rows+n))
		rows += n
		size = queryInt(b, pg, db, "SELECT pg_total_relation_size('big')")
		want = int64(float64(benchBig)/float64(size)*float64(rows)) + 1 - rows // rows still missing at this density
	}
	pg.Exec(b, db, "VACUUM (FREEZE, ANALYZE) big")
	size = queryInt(b, pg, db, "SELECT pg_total_relation_size('big')")
	dbSize := queryInt(b, pg, db, "SELECT pg_database_size(current_database())")
	gen := time.Since(genStart)
	scale, scaled := float64(benchBig)/float64(size), ""
	if size >= benchBig*98/100 {
		scale = 1
	} else {
		scaled = fmt.Sprintf(", generation cut short at %s: times scaled ×%.2f to 1 GiB", secs(benchDBGenBudget), scale)
	}

	j := startBenchJobs(b)
	sshtest.WriteCredential(b, j.secrets, "bench-db", map[string]string{"password": dbPassword})
	delivered := filepath.Join(j.home, "ferry", "backups", "bench-customer")
	b.Cleanup(func() { os.RemoveAll(delivered); j.removeEmpty("ferry/backups") })

	// By hand: ssh -L to the customer, pg_dump -Fc through it here, scp to the operator.
	pgDump, err := exec.LookPath("pg_dump") // the one the archiver finds too
	if err != nil {
		b.Fatal(err)
	}
	helpdesk := b.TempDir()
	passfile := filepath.Join(helpdesk, "pgpass")
	if err := os.WriteFile(passfile, fmt.Appendf(nil, "*:*:*:%s:%s\n", dbUser, dbPassword), 0o600); err != nil {
		b.Fatal(err)
	}
	local := filepath.Join(helpdesk, db+".dump")
	toOperator := filepath.Join(j.op.dir, db+".dump") // removed with the bench dir

	// ferry's job and the tools by hand take benchTurns alternating turns each, every
	// turn settled first (see alternate): one run of either varies by up to 1.2× here.
	type handTurn struct {
		tun, dump, hop time.Duration
		cpu            float64
		size           int64
	}
	var ferryTurns []jobTurn
	var handTurns []handTurn
	ferryRuns, handRuns := alternate(benchTurns, func() time.Duration {
		// ferry: the job, from `ferry backup db` to its last step.
		id := fmt.Sprintf("bench-db-%d", time.Now().UnixNano())
		var job *contracts.Job
		meter := startCPUMeter()
		d := timeIt(func() {
			j.submit(b, "backup", "db", "--id", id, "--from", "bench-customer", "--db", db, "--db-host", "127.0.0.1",
				"--db-port", strconv.Itoa(pg.Port()), "--db-user", dbUser, "--db-credential", "bench-db", "--to", "bench-operator")
			job = waitJob(b, j.js, id, 15*time.Minute)
		})
		cpu := meter.stop()
		if job.State != contracts.JobSucceeded {
			b.Fatalf("db backup %s: %+v", job.State, job.Failure)
		}
		fi, err := os.Stat(filepath.Join(delivered, db+"-"+job.Created.UTC().Format(contracts.BackupTimeFormat)+".dump"))
		if err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(delivered)
		ferryTurns = append(ferryTurns, jobTurn{job: job, meter: meter, cpu: cpu, size: fi.Size()})
		return d
	}, func() time.Duration {
		var t handTurn
		meter := startCPUMeter()
		d := timeIt(func() {
			start := time.Now()
			stop := j.cust.sshForward(b, pg.Port())
			t.tun = time.Since(start)
			start = time.Now()
			cmd := exec.Command(pgDump, "-Fc", "-h", "127.0.0.1", "-p", strconv.Itoa(stop.port), "-U", dbUser, "-d", db, "-f", local)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PGPASSFILE=" + passfile, "HOME=" + helpdesk}
			out, err := cmd.CombinedOutput()
			t.dump = time.Since(start)
			stop.close()
			if err != nil {
				b.Fatalf("pg_dump through ssh -L: %v\n%s", err, out)
			}
			start = time.Now()
			j.op.scp(b, j.op.sshd.Port(), local, j.op.remote(toOperator))
			t.hop = time.Since(start)
		})
		t.cpu = meter.stop()
		fi, err := os.Stat(toOperator)
		if err != nil {
			b.Fatal(err)
		}
		t.size = fi.Size()
		os.Remove(toOperator)
		os.Remove(local)
		handTurns = append(handTurns, t)
		return d
	})

	ferry, total := median(ferryRuns), median(handRuns)
	ft := ferryTurns[slices.Index(ferryRuns, ferry)]
	ht := handTurns[slices.Index(handRuns, total)]
	sc := func(d time.Duration) string { return secs(time.Duration(float64(d) * scale)) }
	ratio := ferry.Seconds() / total.Seconds()
	report(b, fmt.Sprintf("db backup PostgreSQL %.2f GiB on disk (table big %d rows, database %.2f GiB; generated in %s%s), loopback: ferry backup db %s (dump %.0f MiB), ssh -L + pg_dump -Fc %s + scp to operator %s = %s (dump %.0f MiB) (medians of %d alternating turns: ferry %s; by hand %s) → ratio %.2f (target ≤ 1.1)",
		float64(size)/(1<<30), rows, float64(dbSize)/(1<<30), secs(gen), scaled, sc(ferry), float64(ft.size)/(1<<20),
		sc(ht.tun+ht.dump), sc(ht.hop), sc(total), float64(ht.size)/(1<<20), benchTurns, runsText(ferryRuns), runsText(handRuns), ratio),
		ratio, "ratio-to-openssh")
	fmt.Printf("  db backup job steps of the median turn (wall, first start to end, and the machine's CPU time meanwhile): %s\n", jobSteps(ft.job, ft.meter))
	ferryCPU, handCPU := ft.cpu, ht.cpu
	fmt.Printf("  CPU time of the whole machine (%d cores): ferry %.2f s, by hand %.2f s\n", runtime.NumCPU(), ferryCPU, handCPU)
}

// ---------------------------------------------------------------------------------
// 2 GiB of logs in 200 files: `ferry backup logs` (pull, archive tar.zst, deliver) vs
// ssh customer 'tar cf - …' | zstd -1 -T0 on the helpdesk + scp to the operator.

func BenchmarkOpenSSHLogBackup2GiB(b *testing.B) {
	benchFacts()
	j := startBenchJobs(b)
	logs := filepath.Join(j.cust.dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		b.Fatal(err)
	}
	genStart := time.Now()
	writeBenchLogs(b, logs, benchLogTotal, benchLogFiles)
	j.cust.chown(j.cust.dir)
	gen := time.Since(genStart)
	delivered := filepath.Join(j.home, "ferry", "logs", "bench-customer")
	b.Cleanup(func() { os.RemoveAll(delivered); j.removeEmpty("ferry/logs") })

	// Ferry and the pipeline take benchTurns alternating turns each (see alternate and
	// the update's benchmark): what one side frees, the other's writes find at hand.
	type handTurn struct {
		pull, hop time.Duration
		cpu       float64
		size      int64
	}
	var ferryTurns []jobTurn
	var handTurns []handTurn
	rel, _ := filepath.Rel(j.home, logs)
	ferryRuns, handRuns := alternate(benchTurns, func() time.Duration {
		id := fmt.Sprintf("bench-logs-%d", time.Now().UnixNano())
		var job *contracts.Job
		meter := startCPUMeter()
		d := timeIt(func() {
			j.submit(b, "backup", "logs", "--id", id, "--from", "bench-customer", "--paths", rel+"/*.log", "--max-size", "0",
				"--to", "bench-operator")
			job = waitJob(b, j.js, id, 15*time.Minute)
		})
		cpu := meter.stop()
		if job.State != contracts.JobSucceeded {
			b.Fatalf("log backup %s: %+v", job.State, job.Failure)
		}
		fi, err := os.Stat(filepath.Join(delivered, job.Created.UTC().Format(contracts.BackupTimeFormat)+".tar.zst"))
		if err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(delivered)
		ferryTurns = append(ferryTurns, jobTurn{job: job, meter: meter, cpu: cpu, size: fi.Size()})
		return d
	}, func() time.Duration {
		// By hand: tar on the customer through ssh, zstd here (the helpdesk), scp onward.
		bundle := filepath.Join(b.TempDir(), "logs.tar.zst")
		toOperator := filepath.Join(j.op.dir, "logs.tar.zst") // removed with the bench dir
		var pull, hop time.Duration
		meter := startCPUMeter()
		d := timeIt(func() {
			start := time.Now()
			cmd := fmt.Sprintf("ssh -p %d %s %s %s | zstd -1 -T0 -q -o %s", j.cust.sshd.Port(), strings.Join(j.cust.sshOpts(), " "), j.cust.userAt(),
				remote.Quote("tar cf - -C "+remote.Quote(j.cust.dir)+" logs"), remote.Quote(bundle))
			runTool(b, "bash", "-o", "pipefail", "-c", cmd)
			pull = time.Since(start)
			start = time.Now()
			j.op.scp(b, j.op.sshd.Port(), bundle, j.op.remote(toOperator))
			hop = time.Since(start)
		})
		cpu := meter.stop()
		fi, err := os.Stat(toOperator)
		if err != nil {
			b.Fatal(err)
		}
		os.Remove(toOperator)
		os.Remove(bundle)
		handTurns = append(handTurns, handTurn{pull: pull, hop: hop, cpu: cpu, size: fi.Size()})
		return d
	})
	os.RemoveAll(logs)

	ferry, total := median(ferryRuns), median(handRuns)
	ft := ferryTurns[slices.Index(ferryRuns, ferry)]
	ht := handTurns[slices.Index(handRuns, total)]
	ratio := ferry.Seconds() / total.Seconds()
	report(b, fmt.Sprintf("log backup 2 GiB in %d files (text, generated in %s), loopback: ferry backup logs %s (bundle %.0f MiB = %.2f), ssh tar c | zstd -1 -T0 on the helpdesk %s + scp to operator %s = %s (bundle %.0f MiB = %.2f) (medians of %d alternating turns: ferry %s; by hand %s) → ratio %.2f (target ≤ 1.2)",
		benchLogFiles, secs(gen), secs(ferry), float64(ft.size)/(1<<20), float64(ft.size)/benchLogTotal,
		secs(ht.pull), secs(ht.hop), secs(total), float64(ht.size)/(1<<20), float64(ht.size)/benchLogTotal,
		benchTurns, runsText(ferryRuns), runsText(handRuns), ratio),
		ratio, "ratio-to-openssh")
	fmt.Printf("  log backup job steps of the median turn (wall, first start to end, and the machine's CPU time meanwhile): %s\n", jobSteps(ft.job, ft.meter))
	fmt.Printf("  CPU time of the whole machine (%d cores), median turns: ferry %.2f s, by hand %.2f s\n", runtime.NumCPU(), ft.cpu, ht.cpu)
}

// ---------------------------------------------------------------------------------
// helpers of the backup benchmarks

// benchJobs is every ferry service in this process on an embedded JetStream server,
// and two real sshds in the inventory: bench-customer and bench-operator.
type benchJobs struct {
	op, cust *benchHost
	js       jetstream.JetStream
	url      string
	secrets  string
	home     string
}

func startBenchJobs(b *testing.B) *benchJobs {
	b.Helper()
	ctx := context.Background()
	srv := bustest.Start(b, bus.Topology{})
	_, js := srv.Connect(b, "bench")
	secrets, staging := b.TempDir(), b.TempDir()
	hosts, err := inventory.Open(ctx, js)
	if err != nil {
		b.Fatal(err)
	}
	op := newBenchHost(b)
	cust := newBenchHost(b)
	for name, h := range map[string]*benchHost{"bench-operator": op, "bench-customer": cust} {
		sshtest.WriteCredential(b, secrets, name, map[string]string{sshdial.FilePrivateKey: string(h.key.PEM)})
		if err := hosts.Put(ctx, h.sshd.Host(name, name)); err != nil {
			b.Fatal(err)
		}
	}
	log := slog.New(slog.DiscardHandler)
	runBenchService(b, func(ctx context.Context) error {
		nc, _ := srv.Connect(b, "orchestrator")
		return orchestrator.Run(ctx, orchestrator.Config{}, orchestrator.Deps{NC: nc, Logger: log})
	})
	runBenchService(b, func(ctx context.Context) error {
		nc, _ := srv.Connect(b, "connector")
		return connector.Run(ctx, connector.Config{SecretsDir: secrets}, connector.Deps{NC: nc, Logger: log})
	})
	runBenchService(b, func(ctx context.Context) error {
		nc, _ := srv.Connect(b, "transfer")
		return transfer.Run(ctx, transfer.Config{StagingDir: staging, SecretsDir: secrets}, transfer.Deps{NC: nc, Logger: log})
	})
	runBenchService(b, func(ctx context.Context) error {
		nc, _ := srv.Connect(b, "archiver")
		return archiver.Run(ctx, archiver.Config{StagingDir: staging, SecretsDir: secrets}, archiver.Deps{NC: nc, Logger: log})
	})
	runBenchService(b, func(ctx context.Context) error {
		nc, _ := srv.Connect(b, "cleanup")
		return cleanup.Run(ctx, cleanup.Config{StagingDir: staging, SecretsDir: secrets}, cleanup.Deps{NC: nc, Logger: log})
	})
	// The CLI submits through the orchestrator's API, served once it has loaded the jobs.
	nc, _ := srv.Connect(b, "probe")
	defer nc.Close()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := nc.Request(contracts.SubjectAPIList, []byte(`{}`), time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the orchestrator's API did not come up")
		}
	}
	return &benchJobs{op: op, cust: cust, js: js, url: srv.URL, secrets: secrets, home: filepath.Dir(op.dir)}
}

// submit runs the ferry CLI (in this process) against the bus.
func (j *benchJobs) submit(b *testing.B, args ...string) {
	b.Helper()
	var out, errb strings.Builder
	env := map[string]string{"FERRY_NATS_URL": j.url}
	if code := run(context.Background(), args, &out, &errb, func(k string) string { return env[k] }); code != 0 {
		b.Fatalf("ferry %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	}
}

// removeEmpty removes the directories of rel (below the home) that are empty, deepest
// first: what the jobs created and nothing else.
func (j *benchJobs) removeEmpty(rel string) {
	for ; rel != "."; rel = filepath.Dir(rel) {
		os.Remove(filepath.Join(j.home, rel))
	}
}

type benchForward struct {
	port  int
	close func()
}

// sshForward starts ssh -N -L <free port>:127.0.0.1:<port> to e's sshd and returns once
// the local port accepts connections.
func (e *benchHost) sshForward(b *testing.B, port int) benchForward {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	local := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	args := append([]string{"-N", "-p", strconv.Itoa(e.sshd.Port()), "-o", "ExitOnForwardFailure=yes",
		"-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", local, port)}, e.sshOpts()...)
	cmd := exec.Command("ssh", append(args, e.userAt())...)
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() { cmd.Process.Kill(); <-exited }
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		select {
		case <-exited:
			b.Fatalf("ssh -L exited: %s", errb.String())
		default:
		}
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", local)); err == nil {
			c.Close()
			return benchForward{port: local, close: stop}
		}
		if time.Now().After(deadline) {
			stop()
			b.Fatalf("ssh -L: port %d did not open: %s", local, errb.String())
		}
	}
}

func queryInt(b *testing.B, s *dbtest.Server, db, sql string) int64 {
	b.Helper()
	out := s.Query(b, db, sql)
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		b.Fatalf("%s: %q", sql, out)
	}
	return n
}

// jobSteps lists the steps' wall times and, with a meter that ran meanwhile, the CPU
// time the machine spent during each.
func jobSteps(j *contracts.Job, m *cpuMeter) string {
	var steps []string
	for _, s := range j.Steps {
		if s.Started.IsZero() || s.Ended.IsZero() {
			continue
		}
		line := fmt.Sprintf("%s %s", s.Name, secs(s.Ended.Sub(s.Started)))
		if m != nil {
			line += fmt.Sprintf(" (CPU %.2f s)", m.between(s.Started, s.Ended))
		}
		steps = append(steps, line)
	}
	return strings.Join(steps, ", ")
}

// writeBenchLogs writes total bytes of deterministic log text into files app-NNN.log
// in dir, their sizes differing by at most a byte. Lines look like an HTTP service's
// access log: a timestamp, a level, a few choices from small sets, numbers, and 48
// random hex digits (request and trace ids), so zstd finds much but not everything.
func writeBenchLogs(b *testing.B, dir string, total int64, files int) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, files)
	sem := make(chan struct{}, runtime.NumCPU())
	for i := range files {
		size := total / int64(files)
		if int64(i) < total%int64(files) {
			size++
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs <- writeBenchLog(filepath.Join(dir, fmt.Sprintf("app-%03d.log", i)), size, uint64(i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}

func writeBenchLog(p string, size int64, seed uint64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var (
		rng     = rand.New(rand.NewPCG(seed, 7))
		w       = bufio.NewWriterSize(f, 1<<20)
		levels  = []string{"INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "DEBUG", "DEBUG", "WARN ", "ERROR"}
		methods = []string{"GET", "GET", "GET", "POST", "PUT", "DELETE"}
		paths   = []string{"/api/v2/orders/", "/api/v2/customers/", "/api/v2/invoices/", "/static/app.js?v=", "/health?probe=", "/api/v2/search?q="}
		msgs    = []string{"request done", "request done", "request done", "slow request", "upstream retry", "cache miss"}
		ts      = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(seed) * 24 * time.Hour)
		line    = make([]byte, 0, 512)
		n       int64
	)
	const hexd = "0123456789abcdef"
	for n < size {
		ts = ts.Add(time.Duration(rng.IntN(20_000)) * time.Microsecond)
		line = ts.AppendFormat(line[:0], "2006-01-02T15:04:05.000000Z07:00")
		line = append(line, ' ')
		line = append(line, levels[rng.IntN(len(levels))]...)
		line = append(line, ' ')
		line = append(line, msgs[rng.IntN(len(msgs))]...)
		line = append(line, " method="...)
		line = append(line, methods[rng.IntN(len(methods))]...)
		line = append(line, " path="...)
		line = append(line, paths[rng.IntN(len(paths))]...)
		line = strconv.AppendInt(line, int64(rng.IntN(100_000)), 10)
		line = append(line, " status="...)
		line = strconv.AppendInt(line, int64([]int{200, 200, 200, 200, 201, 204, 304, 404, 500}[rng.IntN(9)]), 10)
		line = append(line, " bytes="...)
		line = strconv.AppendInt(line, int64(rng.IntN(64<<10)), 10)
		line = append(line, " dur_ms="...)
		line = strconv.AppendFloat(line, float64(rng.IntN(500_000))/1000, 'f', 3, 64)
		line = append(line, " client=10."...)
		line = strconv.AppendInt(line, int64(rng.IntN(4)), 10)
		line = append(line, '.')
		line = strconv.AppendInt(line, int64(rng.IntN(256)), 10)
		line = append(line, '.')
		line = strconv.AppendInt(line, int64(rng.IntN(256)), 10)
		line = append(line, " req="...)
		for range 2 {
			v := rng.Uint64()
			for k := range 8 {
				line = append(line, hexd[v>>(k*4)&15])
			}
		}
		line = append(line, " trace="...)
		for range 4 {
			v := rng.Uint64()
			for k := range 8 {
				line = append(line, hexd[v>>(k*4)&15])
			}
		}
		line = append(line, '\n')
		m := min(int64(len(line)), size-n)
		if _, err := w.Write(line[:m]); err != nil {
			return err
		}
		n += m
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}
