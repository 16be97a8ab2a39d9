package main

// Throughput benchmarks: ferry against OpenSSH's own tools, measured in the same run
// against the same real sshd (pkg/sshtest), each figure printed as one line with its
// ratio and target. They report; they do not assert. `make bench` runs them with
// -benchtime 1x (each figure is one timed run of each side):
//
//	cd cmd/ferry && go test -run '^$' -bench 'OpenSSH' -benchtime 1x -timeout 45m .
//
// Both sides use aes128-gcm@openssh.com and the same ed25519 key; every wall time
// includes the side's SSH handshake (OpenSSH tools: a new process and connection;
// ferry: sshdial.Dial and the SFTP session). The 10 ms RTT link is pkg/delayproxy on
// loopback, 5 ms each way, in front of sshd; both sides connect to the proxy.
//
// Data: pseudo-random bytes (ChaCha8) in 4 KiB blocks, one block in four repeating one
// of the 256 blocks before it, so zstd finds some but not much (the update's archive
// keeps 0.97 of it).

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/delayproxy"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"github.com/ferrydesk/ferry/services/archiver"
	"github.com/ferrydesk/ferry/services/cleanup"
	"github.com/ferrydesk/ferry/services/connector"
	"github.com/ferrydesk/ferry/services/orchestrator"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	benchBig       = 1 << 30 // 1 GiB
	benchCipher    = "aes128-gcm@openssh.com"
	benchOneWay    = 5 * time.Millisecond // delay each way: RTT 10 ms
	benchSmallN    = 5000
	benchSmallSize = 4 << 10
	benchSmallDirs = 50
)

// ---------------------------------------------------------------------------------
// 1 GiB, one hop: Pull / Put as the transfer step does them, against sftp get / scp.

func BenchmarkOpenSSHOneHop1GiB(b *testing.B) {
	benchFacts()
	e := newBenchHost(b)
	src := filepath.Join(e.dir, "src.bin")
	sum := writeBenchData(b, src, benchBig, 1)
	e.chown(e.dir)
	local := filepath.Join(b.TempDir(), "local.bin")
	if err := os.Link(src, local); err != nil { // same bytes, no second GiB on disk
		copyFile(b, src, local)
	}
	dest := filepath.Join(e.dir, "dest")
	mkdirOwned(b, e, dest)

	for _, link := range []struct {
		name, label string
		delay       time.Duration
	}{{"loopback", "loopback", 0}, {"rtt10ms", "10 ms RTT", benchOneWay}} {
		b.Run(link.name, func(b *testing.B) {
			port := e.sshd.Port()
			if link.delay > 0 {
				p, err := delayproxy.Start(e.sshd.Addr(), link.delay)
				if err != nil {
					b.Fatal(err)
				}
				port = p.Port()
				defer p.Close()
			}
			b.Run("pull", func(b *testing.B) { // ferry Pull vs sftp get
				ferryRuns, sftpRuns := alternate(benchTurns, func() time.Duration {
					into := filepath.Join(b.TempDir(), "pull")
					d := timeIt(func() {
						if res := e.ferryPull(b, port, src, into); res.Bytes != benchBig {
							b.Fatalf("ferry pulled %d bytes", res.Bytes)
						}
					})
					checkSize(b, filepath.Join(into, "src.bin"), benchBig)
					os.RemoveAll(into)
					return d
				}, func() time.Duration {
					got := filepath.Join(b.TempDir(), "sftp.bin")
					d := timeIt(func() { e.sftpBatch(b, port, fmt.Sprintf("get %s %s\n", src, got)) })
					checkSize(b, got, benchBig)
					os.Remove(got)
					return d
				})
				ferry, sftp := median(ferryRuns), median(sftpRuns)
				ratio := sftp.Seconds() / ferry.Seconds()
				report(b, fmt.Sprintf("transfer pull 1 GiB, %s: ferry %s, sftp get %s (medians of %d alternating turns: ferry %s; sftp %s) → ratio %.2f (target ≥ 1.0)",
					link.label, mbps(benchBig, ferry), mbps(benchBig, sftp), benchTurns, runsText(ferryRuns), runsText(sftpRuns), ratio), ratio)
			})
			b.Run("push", func(b *testing.B) { // ferry Put (temp name, sha256sum on the host, rename) vs scp
				// Put drops the pages it has sent from the cache (staged data is read
				// once): each turn of either side starts with the file cached.
				ferryRuns, scpRuns := alternate(benchTurns, func() time.Duration {
					readAll(b, local)
					d := timeIt(func() {
						c := e.ferry(b, port)
						defer c.close()
						var sent atomic.Int64
						err := c.conn.Put(context.Background(), remote.Upload{Local: local, Dir: dest, Name: "ferry.bin", Size: benchBig, SHA256: sum, Tag: "bench"}, &remote.Progress{}, &sent)
						if err != nil {
							b.Fatal(err)
						}
					})
					checkSize(b, filepath.Join(dest, "ferry.bin"), benchBig)
					os.Remove(filepath.Join(dest, "ferry.bin"))
					return d
				}, func() time.Duration {
					readAll(b, local)
					d := timeIt(func() { e.scp(b, port, local, e.remote(filepath.Join(dest, "scp.bin"))) })
					checkSize(b, filepath.Join(dest, "scp.bin"), benchBig)
					os.Remove(filepath.Join(dest, "scp.bin"))
					return d
				})
				ferry, scp := median(ferryRuns), median(scpRuns)
				ratio := scp.Seconds() / ferry.Seconds()
				report(b, fmt.Sprintf("transfer push 1 GiB, %s: ferry %s (incl. sha256sum on the host and fsync), scp %s (medians of %d alternating turns: ferry %s; scp %s) → ratio %.2f (target ≥ 1.0)",
					link.label, mbps(benchBig, ferry), mbps(benchBig, scp), benchTurns, runsText(ferryRuns), runsText(scpRuns), ratio), ratio)
			})
		})
	}
}

// ---------------------------------------------------------------------------------
// 5,000 files of 4 KiB at 10 ms RTT: ferry Pull vs sftp get -r vs ssh tar c | tar x.

func BenchmarkOpenSSHSmallFiles(b *testing.B) {
	benchFacts()
	e := newBenchHost(b)
	tree := filepath.Join(e.dir, "small")
	rng := rand.NewChaCha8([32]byte{2})
	buf := make([]byte, benchSmallSize)
	for i := range benchSmallN {
		p := filepath.Join(tree, fmt.Sprintf("d%02d", i%benchSmallDirs), fmt.Sprintf("f%04d", i))
		if i < benchSmallDirs {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		rng.Read(buf)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	e.chown(e.dir)
	p, err := delayproxy.Start(e.sshd.Addr(), benchOneWay)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	port := p.Port()

	// ferry and tar take turns and the medians are compared (see alternate).
	ferryRuns, tarRuns := alternate(benchTurns, func() time.Duration {
		into := filepath.Join(b.TempDir(), "ferry")
		d := timeIt(func() {
			if res := e.ferryPull(b, port, tree, into); res.Files != benchSmallN {
				b.Fatalf("ferry pulled %d files", res.Files)
			}
		})
		checkFiles(b, into, benchSmallN)
		return d
	}, func() time.Duration {
		tarDir := b.TempDir()
		d := timeIt(func() {
			cmd := fmt.Sprintf("ssh -p %d %s %s %s | tar xf - -C %s", port, strings.Join(e.sshOpts(), " "), e.userAt(),
				remote.Quote("tar cf - -C "+remote.Quote(e.dir)+" small"), remote.Quote(tarDir))
			runTool(b, "bash", "-o", "pipefail", "-c", cmd)
		})
		checkFiles(b, tarDir, benchSmallN)
		return d
	})
	ferry, tarD := median(ferryRuns), median(tarRuns)

	// sftp moves one file at a time (about 4 round trips each): 5,000 files take ~4 min
	// at 10 ms RTT. With FERRY_BENCH_QUICK=1 it gets 5 of the 50 directories (500
	// files) in one session and its time is scaled by 10 (within 3 % of the full run).
	sftpDirs, what := benchSmallDirs, "sftp get -r"
	if os.Getenv("FERRY_BENCH_QUICK") != "" {
		sftpDirs, what = benchSmallDirs/10, "sftp get -r (500 files measured, ×10)"
	}
	sftpDir := b.TempDir()
	var batch strings.Builder
	for d := range sftpDirs {
		name := fmt.Sprintf("d%02d", d)
		fmt.Fprintf(&batch, "get -r %s %s\n", filepath.Join(tree, name), filepath.Join(sftpDir, name))
	}
	sftpD := timeIt(func() { e.sftpBatch(b, port, batch.String()) })
	checkFiles(b, sftpDir, benchSmallN/benchSmallDirs*sftpDirs)
	sftpD = sftpD * time.Duration(benchSmallDirs) / time.Duration(sftpDirs)

	report(b, fmt.Sprintf("pull 5,000 × 4 KiB (%d dirs), 10 ms RTT: ferry %s, %s %s → ferry %.1f× faster (target ≥ 10×)",
		benchSmallDirs, secs(ferry), what, secs(sftpD), sftpD.Seconds()/ferry.Seconds()), sftpD.Seconds()/ferry.Seconds(), "x-faster-than-sftp")
	report(b, fmt.Sprintf("pull 5,000 × 4 KiB (%d dirs), 10 ms RTT: ferry %s, ssh tar c | tar x %s (medians of %d turns each: ferry %s, tar %s) → ratio %.2f (target ≤ 1.5)",
		benchSmallDirs, secs(ferry), secs(tarD), benchTurns, runsText(ferryRuns), runsText(tarRuns), ferry.Seconds()/tarD.Seconds()), ferry.Seconds()/tarD.Seconds(), "ratio-to-tar")
}

// ---------------------------------------------------------------------------------
// The whole update of a 1 GiB file, as a real job: orchestrator, connector, archiver
// and cleanup in this process on an embedded JetStream server, the transfer service
// as its own process (cmd/transfer), two real sshds (operator PC, customer). Against
// scp operator → here + scp here → customer. Also the transfer process's peak RSS.

func BenchmarkOpenSSHUpdate1GiB(b *testing.B) {
	benchFacts()
	ctx := context.Background()
	bin := filepath.Join(b.TempDir(), "transfer")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ferrydesk/ferry/services/transfer/cmd/transfer").CombinedOutput(); err != nil {
		b.Fatalf("go build transfer: %v\n%s", err, out)
	}

	srv := bustest.Start(b, bus.Topology{})
	_, js := srv.Connect(b, "bench")
	secrets, staging := b.TempDir(), b.TempDir()
	hosts, err := inventory.Open(ctx, js)
	if err != nil {
		b.Fatal(err)
	}
	op := newBenchHost(b) // operator PC; holds the update
	cust := &benchHost{b: b, sshd: sshtest.Start(b, sshtest.Options{}), key: op.key, keyFile: op.keyFile, cred: op.cred, uid: op.uid, gid: op.gid, dir: op.dir}
	cust.sshd.Authorize(op.key.Public())
	for name, s := range map[string]*sshtest.Server{"operator-pc": op.sshd, "customer": cust.sshd} {
		sshtest.WriteCredential(b, secrets, name, map[string]string{sshdial.FilePrivateKey: string(op.key.PEM)})
		if err := hosts.Put(ctx, s.Host(name, name)); err != nil {
			b.Fatal(err)
		}
	}
	src := filepath.Join(op.dir, "update", "app.bin")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		b.Fatal(err)
	}
	writeBenchData(b, src, benchBig, 3)
	dest := filepath.Join(op.dir, "dest") // on the customer (same home: one machine)
	mkdirOwned(b, op, dest)
	op.chown(op.dir)
	home := filepath.Dir(op.dir)

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
		nc, _ := srv.Connect(b, "archiver")
		return archiver.Run(ctx, archiver.Config{StagingDir: staging, SecretsDir: secrets}, archiver.Deps{NC: nc, Logger: log})
	})
	runBenchService(b, func(ctx context.Context) error {
		nc, _ := srv.Connect(b, "cleanup")
		return cleanup.Run(ctx, cleanup.Config{StagingDir: staging, SecretsDir: secrets}, cleanup.Deps{NC: nc, Logger: log})
	})
	transferLog := filepath.Join(b.TempDir(), "transfer.log")
	logf, err := os.Create(transferLog)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	tp := exec.Command(bin)
	tp.Env = append(os.Environ(), "FERRY_NATS_URL="+srv.URL, "FERRY_STAGING_DIR="+staging, "FERRY_SECRETS_DIR="+secrets,
		"FERRY_HTTP_ADDR=127.0.0.1:0", "FERRY_LOG_LEVEL=warn")
	tp.Stdout, tp.Stderr = logf, logf
	if err := tp.Start(); err != nil {
		b.Fatal(err)
	}
	stopped := false
	stopTransfer := func() {
		if !stopped {
			stopped = true
			tp.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { tp.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				tp.Process.Kill()
				<-done
			}
		}
	}
	defer stopTransfer()

	// The same update on loopback (the target) and with both hosts behind a link of
	// 10 ms RTT, where the links rather than the CPU set the pace: there the archive's
	// forward to the customer while it is made (see the bundle step) shows.
	for _, link := range []struct {
		name, label string
		delay       time.Duration
	}{{"loopback", "loopback", 0}, {"rtt10ms", "10 ms RTT", benchOneWay}} {
		b.Run(link.name, func(b *testing.B) {
			opPort, custPort := op.sshd.Port(), cust.sshd.Port()
			if link.delay > 0 {
				for _, pp := range []*int{&opPort, &custPort} {
					p, err := delayproxy.Start("127.0.0.1:"+strconv.Itoa(*pp), link.delay)
					if err != nil {
						b.Fatal(err)
					}
					defer p.Close()
					*pp = p.Port()
				}
			}
			for name, h := range map[string]struct {
				s    *sshtest.Server
				port int
			}{"operator-pc": {op.sshd, opPort}, "customer": {cust.sshd, custPort}} {
				e := h.s.Host(name, name)
				e.Port = h.port
				if err := hosts.Put(ctx, e); err != nil {
					b.Fatal(err)
				}
			}
			// Ferry's job and the two scp hops take benchTurns turns each, alternating, each
			// turn settled first (see alternate and settle).
			type ferryTurn struct {
				job      *contracts.Job
				meter    *cpuMeter
				cpu      float64
				artifact int64
			}
			type scpTurn struct {
				hop1, hop2 time.Duration
				cpu        float64
			}
			var ferryTurns []ferryTurn
			var scpTurns []scpTurn
			rel, _ := filepath.Rel(home, src)
			ferryRuns, scpRuns := alternate(benchTurns, func() time.Duration {
				id := fmt.Sprintf("bench-update-%d", time.Now().UnixNano())
				defer func() { // copy-to-home lands in ~/ferry/updates/<job> on the operator PC
					os.RemoveAll(filepath.Join(home, "ferry", "updates", id))
					os.Remove(filepath.Join(home, "ferry", "updates"))
					os.Remove(filepath.Join(home, "ferry"))
				}()
				req := contracts.JobRequest{Schema: contracts.SchemaJobRequest, ID: id, Action: contracts.ActionUpdate,
					Update: &contracts.UpdateRequest{From: "operator-pc", Files: []string{rel}, To: "customer", Dest: dest}}
				syscall.Sync()
				meter := startCPUMeter()
				start := time.Now()
				if err := bus.Publish(ctx, js, contracts.SubjectJobSubmit, req, id, id); err != nil {
					b.Fatal(err)
				}
				job := waitJob(b, js, id, 10*time.Minute)
				d := time.Since(start)
				cpu := meter.stop()
				if job.State != contracts.JobSucceeded {
					stopTransfer()
					out, _ := os.ReadFile(transferLog)
					b.Fatalf("update %s: %+v\ntransfer log:\n%s", job.State, job.Failure, out)
				}
				var art contracts.ArtifactResult
				for _, s := range job.Steps {
					if s.Name == "bundle" {
						json.Unmarshal(s.Output, &art)
					}
				}
				fi, err := os.Stat(filepath.Join(dest, art.Name))
				if err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(dest)
				mkdirOwned(b, op, dest)
				ferryTurns = append(ferryTurns, ferryTurn{job: job, meter: meter, cpu: cpu, artifact: fi.Size()})
				return d
			}, func() time.Duration {
				// The same bytes with scp: operator PC → this machine → customer.
				here := filepath.Join(b.TempDir(), "app.bin")
				syscall.Sync()
				meter := startCPUMeter()
				hop1 := timeIt(func() { op.scp(b, opPort, op.remote(src), here) })
				checkSize(b, here, benchBig)
				hop2 := timeIt(func() { cust.scp(b, custPort, here, cust.remote(filepath.Join(dest, "app.bin"))) })
				cpu := meter.stop()
				checkSize(b, filepath.Join(dest, "app.bin"), benchBig)
				os.Remove(here)
				os.Remove(filepath.Join(dest, "app.bin"))
				scpTurns = append(scpTurns, scpTurn{hop1: hop1, hop2: hop2, cpu: cpu})
				return hop1 + hop2
			})

			ferry, scp := median(ferryRuns), median(scpRuns)
			ft := ferryTurns[slices.Index(ferryRuns, ferry)]
			st := scpTurns[slices.Index(scpRuns, scp)]
			target := " (target ≤ 1.15)"
			if link.delay > 0 {
				target = " (no target: for comparison)"
			}
			report(b, fmt.Sprintf("update 1 GiB (copy-to-home → bundle: pull + archive zstd, forwarded → push), %s: ferry %s, scp operator→helpdesk %s + scp helpdesk→customer %s = %s (medians of %d alternating turns: ferry %s; scp + scp %s) → ratio %.2f%s",
				link.label, secs(ferry), secs(st.hop1), secs(st.hop2), secs(scp), benchTurns, runsText(ferryRuns), runsText(scpRuns), ferry.Seconds()/scp.Seconds(), target), ferry.Seconds()/scp.Seconds(), "ratio-to-scp")
			fmt.Printf("  update job steps of the median turn (wall, first start to end, and the machine's CPU time meanwhile): %s; archive %.1f MiB = %.2f of the input\n",
				jobSteps(ft.job, ft.meter), float64(ft.artifact)/(1<<20), float64(ft.artifact)/benchBig)
			fmt.Printf("  CPU time of the whole machine (%d cores), median turns: ferry %.2f s, scp + scp %.2f s\n", runtime.NumCPU(), ft.cpu, st.cpu)
		})
	}
	hwm, rss := procStatus(tp.Process.Pid, "VmHWM"), procStatus(tp.Process.Pid, "VmRSS")
	stopTransfer()
	report(b, fmt.Sprintf("transfer service peak RSS during the 1 GiB updates (own process, VmHWM): %.1f MiB (VmRSS after: %.1f MiB) (target ≤ 64 MiB)",
		float64(hwm)/(1<<10), float64(rss)/(1<<10)), float64(hwm)/(1<<10), "MiB-peak-rss")
}

// ---------------------------------------------------------------------------------
// helpers

var benchFactsOnce sync.Once

// benchFacts prints the machine facts line once per run.
func benchFacts() {
	benchFactsOnce.Do(func() {
		out, _ := exec.Command("ssh", "-V").CombinedOutput()
		fmt.Printf("machine: %d cores, %s %s/%s, %s; cipher %s; data: ChaCha8 pseudo-random, 1 in 4 of its 4 KiB blocks repeating one of the previous 256 (its zstd ratio is printed with the update)\n",
			runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH, strings.TrimSpace(string(out)), benchCipher)
	})
}

// report prints one figure and records its ratio (or value) as a benchmark metric.
func report(b *testing.B, line string, value float64, unit ...string) {
	b.Helper()
	fmt.Println(line)
	u := "ratio"
	if len(unit) > 0 {
		u = unit[0]
	}
	b.ReportMetric(value, u)
	b.ReportMetric(0, "ns/op") // the default ns/op would be the whole body, both sides
}

// benchHost is a real sshd for the test user, a key both ferry and the OpenSSH tools
// log in with, and a directory in the test user's home (removed afterwards).
type benchHost struct {
	b        *testing.B
	sshd     *sshtest.Server
	key      sshtest.ClientKey
	keyFile  string
	cred     *sshdial.Credential
	dir      string
	uid, gid int
}

func newBenchHost(b *testing.B) *benchHost {
	b.Helper()
	e := &benchHost{b: b, sshd: sshtest.Start(b, sshtest.Options{})}
	e.key = sshtest.NewClientKey(b, sshtest.KeyEd25519, "")
	e.sshd.Authorize(e.key.Public())
	e.keyFile = filepath.Join(b.TempDir(), "id_ed25519")
	if err := os.WriteFile(e.keyFile, e.key.PEM, 0o600); err != nil {
		b.Fatal(err)
	}
	secrets := b.TempDir()
	sshtest.WriteCredential(b, secrets, "bench", map[string]string{sshdial.FilePrivateKey: string(e.key.PEM)})
	var err error
	if e.cred, err = sshdial.LoadCredential(secrets, "bench"); err != nil {
		b.Fatal(err)
	}
	u, err := user.Lookup(e.sshd.User().Name)
	if err != nil {
		b.Fatal(err)
	}
	e.uid, _ = strconv.Atoi(u.Uid)
	e.gid, _ = strconv.Atoi(u.Gid)
	if e.dir, err = os.MkdirTemp(u.HomeDir, "ferry-bench-"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(e.dir) })
	e.chown(e.dir)
	return e
}

func (e *benchHost) chown(p string) {
	e.b.Helper()
	err := filepath.WalkDir(p, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, e.uid, e.gid)
	})
	if err != nil {
		e.b.Fatal(err)
	}
}

func mkdirOwned(b *testing.B, e *benchHost, dir string) {
	b.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	e.chown(dir)
}

type ferryConn struct {
	client *sshdial.Client
	conn   *remote.Conn
}

func (c ferryConn) close() { c.conn.Close(); c.client.Close() }

// ferry dials sshd (or the proxy in front of it, on port) with the key and opens the
// SFTP session with the transfer service's defaults.
func (e *benchHost) ferry(b *testing.B, port int) ferryConn {
	b.Helper()
	h := e.sshd.Host("bench", "bench")
	h.Port = port
	c, err := sshdial.Dial(context.Background(), h, sshdial.Options{Credential: e.cred, Timeout: 20 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	conn, err := remote.Open(c, remote.Options{})
	if err != nil {
		c.Close()
		b.Fatal(err)
	}
	return ferryConn{client: c, conn: conn}
}

// ferryPull pulls path into dir as the transfer step does: a new connection (its
// handshake counted, like the OpenSSH tools'), Pull, close.
func (e *benchHost) ferryPull(b *testing.B, port int, path, dir string) remote.Result {
	b.Helper()
	c := e.ferry(b, port)
	defer c.close()
	roots, err := c.conn.Roots(nil)
	if err != nil {
		b.Fatal(err)
	}
	res, err := c.conn.Pull(context.Background(), roots, remote.PullSpec{Paths: []string{path}, Dir: dir}, &remote.Progress{})
	if err != nil {
		b.Fatal(err)
	}
	return res
}

func (e *benchHost) sshOpts() []string {
	return []string{"-F", "/dev/null", "-i", e.keyFile, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-c", benchCipher}
}

func (e *benchHost) userAt() string { return e.sshd.User().Name + "@127.0.0.1" }

func (e *benchHost) remote(p string) string { return e.userAt() + ":" + p }

func (e *benchHost) scp(b *testing.B, port int, from, to string) {
	b.Helper()
	runTool(b, "scp", append(append([]string{"-q", "-P", strconv.Itoa(port)}, e.sshOpts()...), from, to)...)
}

func (e *benchHost) sftpBatch(b *testing.B, port int, batch string) {
	b.Helper()
	f := filepath.Join(b.TempDir(), "batch")
	if err := os.WriteFile(f, []byte(batch), 0o600); err != nil {
		b.Fatal(err)
	}
	runTool(b, "sftp", append(append([]string{"-q", "-P", strconv.Itoa(port), "-b", f}, e.sshOpts()...), e.userAt())...)
}

func runTool(b *testing.B, name string, args ...string) {
	b.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// timeIt times f, after flushing dirty pages so that the writeback of an earlier
// run's gigabyte does not land in this one.
func timeIt(f func()) time.Duration {
	syscall.Sync()
	start := time.Now()
	f()
	return time.Since(start)
}

// benchTurns is how many turns ferry and the OpenSSH tool each take at a one-hop
// figure (see alternate).
const benchTurns = 3

// alternate runs ferry and ref in turns, n times each, ferry first, and returns their
// times; every turn starts settled (see settle). A single run of either side varies
// by up to 2× on this machine, so the figures compare the medians of the turns.
func alternate(n int, ferry, ref func() time.Duration) (ferryRuns, refRuns []time.Duration) {
	for range n {
		settle()
		ferryRuns = append(ferryRuns, ferry())
		settle()
		refRuns = append(refRuns, ref())
	}
	return ferryRuns, refRuns
}

// settleFor is how long a turn waits, caches dropped, before it starts: longer than
// the guest's free page reporting waits (2 s) before it hands free memory back to
// the host.
const settleFor = 3 * time.Second

// settle puts the machine in the same state before every turn. On this VM a page is
// cheap to fill when it was freed a moment ago and several times dearer once the
// guest has reported it free to the host (virtio-balloon free page reporting): a turn
// that follows one which freed a gigabyte runs on warm pages, one that follows a turn
// which dropped its pages as it went (ferry's staging and pushes do) on cold ones.
// So each turn starts after dirty pages are flushed, the page cache is dropped (as
// root; else it stays) and the freed memory has been reported: every side starts with
// no warm page at hand but those it frees itself.
func settle() {
	syscall.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0)
	time.Sleep(settleFor)
}

// median returns the middle of ds (the upper middle of an even count).
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func runsText(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = secs(d)
	}
	return strings.Join(parts, ", ")
}

func mbps(n int64, d time.Duration) string {
	return fmt.Sprintf("%.1f MB/s (%s)", float64(n)/d.Seconds()/1e6, secs(d))
}

func secs(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// writeBenchData writes size bytes of the benchmark data to p and returns their SHA-256.
func writeBenchData(b *testing.B, p string, size int64, seed uint64) string {
	b.Helper()
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rng := rand.NewChaCha8(key)
	pick := rand.New(rand.NewPCG(seed, 42))
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 4<<20)
	const blk, ring = 4 << 10, 256
	recent := make([]byte, ring*blk)
	for i, n := 0, int64(0); n < size; i, n = i+1, n+blk {
		slot := recent[(i%ring)*blk : (i%ring+1)*blk]
		if i >= ring && pick.IntN(4) == 0 {
			j := pick.IntN(ring)
			copy(slot, recent[j*blk:(j+1)*blk])
		} else {
			rng.Read(slot)
		}
		if _, err := w.Write(slot[:min(blk, size-n)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// readAll reads p through, so that it is in the page cache.
func readAll(b *testing.B, p string) {
	b.Helper()
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		b.Fatal(err)
	}
}

func copyFile(b *testing.B, from, to string) {
	b.Helper()
	in, err := os.Open(from)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
}

func checkSize(b *testing.B, p string, size int64) {
	b.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	if fi.Size() != size {
		b.Fatalf("%s: %d bytes, want %d", p, fi.Size(), size)
	}
}

func checkFiles(b *testing.B, dir string, want int) {
	b.Helper()
	n := 0
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	if n != want {
		b.Fatalf("%s: %d files, want %d", dir, n, want)
	}
}

// cpuMeter samples the machine's busy CPU time (see machineBusy) every 20 ms from its
// start until stop, so that a run's CPU time, and that of each of a job's steps, can
// be printed beside the wall time: on a machine of few cores the work a run costs
// decides its wall time as much as its overlap does.
type cpuMeter struct {
	mu      sync.Mutex
	samples []cpuSample
	done    chan struct{}
	stopped chan struct{}
}

type cpuSample struct {
	at   time.Time
	busy float64 // seconds
}

func startCPUMeter() *cpuMeter {
	m := &cpuMeter{done: make(chan struct{}), stopped: make(chan struct{})}
	m.sample()
	go func() {
		defer close(m.stopped)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.done:
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *cpuMeter) sample() {
	s := cpuSample{at: time.Now(), busy: machineBusy()}
	m.mu.Lock()
	m.samples = append(m.samples, s)
	m.mu.Unlock()
}

// stop ends the sampling and returns the CPU seconds used since the start.
func (m *cpuMeter) stop() float64 {
	close(m.done)
	<-m.stopped
	m.sample()
	return m.samples[len(m.samples)-1].busy - m.samples[0].busy
}

// between returns the CPU seconds used from the first sample at or after from to the
// first at or after to.
func (m *cpuMeter) between(from, to time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	at := func(t time.Time) float64 {
		i := sort.Search(len(m.samples), func(i int) bool { return !m.samples[i].at.Before(t) })
		return m.samples[min(i, len(m.samples)-1)].busy
	}
	return at(to) - at(from)
}

// machineBusy is the CPU time the machine has run anything since boot, in seconds:
// user, nice, system, irq and softirq of /proc/stat's first line. Not idle or iowait;
// not steal (the hypervisor ran someone else); not guest, already inside user.
func machineBusy() float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n") // cpu user nice system idle iowait irq softirq steal guest guest_nice
	f := strings.Fields(line)
	var busy float64
	for _, i := range []int{1, 2, 3, 6, 7} {
		if i < len(f) {
			n, _ := strconv.ParseFloat(f[i], 64)
			busy += n
		}
	}
	return busy / 100 // USER_HZ
}

// procStatus returns a "kB" field of /proc/<pid>/status, in KiB.
func procStatus(pid int, field string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for l := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return -1
}

func runBenchService(b *testing.B, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	b.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			b.Error("service did not stop")
		}
	})
}

// waitJob polls the job record until the job has ended.
func waitJob(b *testing.B, js jetstream.JetStream, id string, timeout time.Duration) *contracts.Job {
	b.Helper()
	kv, err := js.KeyValue(context.Background(), contracts.BucketJobs)
	if err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		e, err := kv.Get(context.Background(), id)
		if err != nil {
			continue
		}
		var j contracts.Job
		if err := json.Unmarshal(e.Value(), &j); err == nil && j.State.Final() {
			return &j
		}
	}
	b.Fatalf("job %s did not end within %s", id, timeout)
	return nil
}
