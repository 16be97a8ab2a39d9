package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/demohost"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The demo of `ferry dev --demo`: an operator PC and a customer server, each an
// in-process SSH/SFTP host on loopback, and an update pushed from one to the other.
const (
	demoOperator = "demo-operator"
	demoCustomer = "demo-customer"
	demoUpdate   = "updates/app-2.3.1"
	demoDest     = "/opt/app/releases"
	// demoSetupTimeout bounds waiting for the inventory bucket and the API.
	demoSetupTimeout = 30 * time.Second
)

// demoHost is one running demo host and its inventory entry.
type demoHost struct {
	*demohost.Host
	entry contracts.Host
}

// demoRoot is the directory a demo host serves as its "/" and home directory.
func demoRoot(dataDir, name string) string { return filepath.Join(dataDir, "demo", name) }

// demoState holds a demo host's key and password, apart from its files: out of
// reach of SFTP.
func demoState(dataDir, name string) string { return filepath.Join(dataDir, "demo-state", name) }

// startDemoHosts starts the two demo hosts and writes their passwords to the secrets
// directory as their credentials (<secrets>/<name>/password, 0600).
func startDemoHosts(dataDir, secretsDir string, log *slog.Logger) ([]*demoHost, error) {
	var hosts []*demoHost
	for _, name := range []string{demoOperator, demoCustomer} {
		h, err := demohost.Start(demohost.Config{
			Root: demoRoot(dataDir, name), StateDir: demoState(dataDir, name),
			Logger: log.With("host", name),
		})
		if err != nil {
			closeDemoHosts(hosts)
			return nil, fmt.Errorf("demo host %s: %w", name, err)
		}
		hosts = append(hosts, &demoHost{Host: h, entry: contracts.Host{
			Schema: contracts.SchemaHost, Name: name, Address: "127.0.0.1", Port: h.Port(), User: h.User(),
			Credential: name, HostKeys: []string{h.AuthorizedKey()}, Site: "demo",
		}})
		if err := writeSecret(filepath.Join(secretsDir, name), sshdial.FilePassword, h.Password()+"\n"); err != nil {
			closeDemoHosts(hosts)
			return nil, fmt.Errorf("demo host %s: credential: %w", name, err)
		}
	}
	return hosts, nil
}

func closeDemoHosts(hosts []*demoHost) {
	for _, h := range hosts {
		h.Close()
	}
}

// writeSecret replaces dir/name with content, mode 0600, in a 0700 directory.
func writeSecret(dir, name, content string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600)
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, name))
}

// seedOperator puts the update into the operator PC's home, unless it is there:
// a README, an 8 MiB binary of deterministic pseudo-random bytes, and a config dir.
// It returns the number of files and bytes of the update.
func seedOperator(root string) (files int, size int64, err error) {
	dir := filepath.Join(root, filepath.FromSlash(demoUpdate))
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := writeDemoUpdate(root, dir); err != nil {
			return 0, 0, fmt.Errorf("seeding %s: %w", dir, err)
		}
	} else if err != nil {
		return 0, 0, err
	}
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			files++
			size += fi.Size()
		}
		return err
	})
	return files, size, err
}

// writeDemoUpdate writes the update into a temporary directory and renames it into
// place, so an interrupted seed leaves nothing half-written behind.
func writeDemoUpdate(root, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".seed-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	var seed [32]byte
	copy(seed[:], "ferry demo update app-2.3.1")
	bin := make([]byte, 8<<20)
	rand.NewChaCha8(seed).Read(bin)
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"README.md", []byte("# app 2.3.1\n\nDemo update shipped by `ferry dev --demo`.\n\n" +
			"- bin/app: the application (8 MiB of deterministic pseudo-random bytes)\n" +
			"- config/: its default configuration\n"), 0o644},
		{"bin/app", bin, 0o755},
		{"config/app.conf", []byte("listen = 127.0.0.1:8080\nworkers = 4\nlog_level = info\n"), 0o644},
		{"config/logging.conf", []byte("[logging]\nfile = /var/log/app/app.log\nrotate = daily\n"), 0o644},
	}
	for _, f := range files {
		p := filepath.Join(tmp, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			return err
		}
	}
	return os.Rename(tmp, dir)
}

// registerDemoHosts puts the demo hosts into the inventory, once the orchestrator has
// provisioned its bucket.
func registerDemoHosts(ctx context.Context, nc *nats.Conn, hosts []*demoHost) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, demoSetupTimeout)
	defer cancel()
	store, err := inventory.Open(ctx, js)
	if err != nil {
		return fmt.Errorf("host inventory: %w", err)
	}
	for _, h := range hosts {
		if err := store.Put(ctx, h.entry); err != nil {
			return err
		}
	}
	return nil
}

// demoRequest is the update the demo submits, as `ferry update` would.
func demoRequest() contracts.JobRequest {
	return contracts.JobRequest{
		Schema: contracts.SchemaJobRequest, ID: uuid.NewString(), Action: contracts.ActionUpdate,
		Ticket: "DEMO", RequestedBy: "ferry dev --demo",
		Update: &contracts.UpdateRequest{From: demoOperator, Files: []string{demoUpdate}, To: demoCustomer, Dest: demoDest},
	}
}

// submitDemo submits req on the API subject the CLI uses, waiting for the
// orchestrator to answer.
func (a *app) submitDemo(ctx context.Context, nc *nats.Conn, req contracts.JobRequest) (string, error) {
	if err := req.Validate(); err != nil {
		return "", err
	}
	deadline := time.Now().Add(demoSetupTimeout)
	for {
		rep, err := request[contracts.SubmitReply](ctx, a, nc, contracts.SubjectAPISubmit, req, req.ID)
		switch {
		case err == nil && rep.Error != nil:
			return "", apiError(rep.Error)
		case err == nil:
			return rep.JobID, nil
		case ctx.Err() != nil:
			return "", ctx.Err()
		case time.Now().After(deadline):
			return "", err
		}
		// The orchestrator serves its API shortly after it starts.
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// runDemo sets the demo up once the services run, submits the update, follows it to
// its end and prints a summary. Problems are reported; ferry dev keeps running.
func (a *app) runDemo(ctx context.Context, nc *nats.Conn, con *console, o devOptions, hosts []*demoHost) {
	say := func(format string, args ...any) { con.Println(fmt.Sprintf(format, args...)) }
	problem := func(err error) {
		if ctx.Err() == nil {
			con.Println("demo: " + err.Error() + "\nferry dev keeps running.")
		}
	}

	say("\ndemo: two SSH/SFTP hosts on loopback (password login, pinned ed25519 host key, SFTP only, no shell):")
	for _, h := range hosts {
		say("  %-14s %-16s %s  files in %s", h.entry.Name, h.Addr(), h.Fingerprint(), h.Root())
	}
	opRoot, custRoot := hosts[0].Root(), hosts[1].Root()
	files, size, err := seedOperator(opRoot)
	if err != nil {
		problem(err)
		return
	}
	say("demo: the operator PC holds ~/%s (%d files, %s)", demoUpdate, files, humanBytes(size))
	if err := registerDemoHosts(ctx, nc, hosts); err != nil {
		problem(err)
		return
	}
	say("demo: %s and %s are in the inventory; credentials in %s/<name>/password", demoOperator, demoCustomer, o.secretsDir)

	destDir := filepath.Join(custRoot, filepath.FromSlash(strings.TrimPrefix(demoDest, "/")))
	before := listFiles(destDir)
	req := demoRequest()
	say("demo: ferry update --from %s --files %s --to %s --dest %s --wait", demoOperator, demoUpdate, demoCustomer, demoDest)
	start := time.Now()
	jobID, err := a.submitDemo(ctx, nc, req)
	if err != nil {
		problem(fmt.Errorf("submitting the update: %w", err))
		return
	}
	say("job %s submitted", jobID)
	werr := a.follow(ctx, nc, jobID, 0, con)
	if ctx.Err() != nil {
		return
	}
	took := time.Since(start)

	rep, err := request[contracts.JobReply](ctx, a, nc, contracts.SubjectAPIGet, contracts.GetRequest{JobID: jobID}, jobID)
	if err == nil && rep.Error != nil {
		err = apiError(rep.Error)
	}
	if err != nil || rep.Job == nil {
		problem(fmt.Errorf("reading job %s: %v", jobID, err))
		return
	}
	con.Println(demoSummary(rep.Job, took, werr, opRoot, destDir, before))
}

// demoSummary describes the finished job: its outcome, the step timings and where the
// files landed.
func demoSummary(j *contracts.Job, took time.Duration, werr error, opRoot, destDir string, before map[string]fileStamp) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\ndemo: job %s %s after %s\n", j.ID, strings.ToUpper(string(j.State)), fmtDuration(took))
	if j.Failure != nil {
		fmt.Fprintf(&b, "  FAILED at step %s: %s: %s\n", j.Failure.Step, j.Failure.Code, j.Failure.Message)
	} else if werr != nil && j.State != contracts.JobSucceeded {
		fmt.Fprintf(&b, "  %v\n", werr)
	}
	b.WriteString("\n")
	// TIME is the step's wall time, first start to end (retries and their waits
	// included); WORK the time its attempts took in the workers.
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  STEP\tSTATE\tATTEMPTS\tTIME\tWORK\tBYTES\tERROR")
	for _, s := range j.Steps {
		wall, work, bytes, e := "-", "-", "-", ""
		if !s.Started.IsZero() && !s.Ended.IsZero() {
			wall = fmtDuration(s.Ended.Sub(s.Started))
		}
		if s.Elapsed > 0 {
			work = fmtDuration(s.Elapsed)
		}
		if s.Bytes > 0 {
			bytes = humanBytes(s.Bytes)
		}
		if s.Error != nil {
			e = s.Error.Code
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.Name, s.State, s.Attempt, wall, work, bytes, e)
	}
	tw.Flush()

	if copyDir := filepath.Join(opRoot, "ferry", "updates", j.ID); exists(copyDir) {
		fmt.Fprintf(&b, "\n  copy on the operator PC (step copy-to-home): %s\n", copyDir)
	}
	fmt.Fprintf(&b, "\n  on the customer server, %s is %s\n", demoDest, destDir)
	after := listFiles(destDir)
	var names []string
	for name, st := range after {
		if old, ok := before[name]; !ok || old != st {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		b.WriteString("  no files landed there in this job\n")
	} else {
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
		for _, n := range names {
			fmt.Fprintf(tw, "    %s\t  %s\n", humanBytes(after[n].size), filepath.Join(destDir, n))
		}
		tw.Flush()
		switch older := len(after) - len(names); older {
		case 0:
		case 1:
			b.WriteString("  (and 1 file of earlier runs)\n")
		default:
			fmt.Fprintf(&b, "  (and %d files of earlier runs)\n", older)
		}
	}
	fmt.Fprintf(&b, "\n  ferry dev keeps running; explore from the repository root with:\n"+
		"    go run ./cmd/ferry job get %s\n    go run ./cmd/ferry job list\n    go run ./cmd/ferry host list\n  Stop it with Ctrl-C.", j.ID)
	return b.String()
}

// fileStamp tells files apart between two listings.
type fileStamp struct {
	size  int64
	mtime time.Time
}

// listFiles lists the regular files below dir by relative path; nil if there is none.
func listFiles(dir string) map[string]fileStamp {
	files := map[string]fileStamp{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		files[rel] = fileStamp{fi.Size(), fi.ModTime()}
		return nil
	})
	return files
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
