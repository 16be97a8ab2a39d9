package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// ferry update through the CLI, with every service real, between two real sshd hosts:
// the operator's files are copied into its home, pulled, archived, pushed to the
// customer and verified; after the job nothing is left behind.
func TestSystemUpdate(t *testing.T) {
	s := startSystem(t, false)
	home, uid, gid := testHome(t)
	src := filepath.Join(home, "updates-"+t.Name())
	dest := filepath.Join(home, "dest-"+t.Name())
	clean := func() { os.RemoveAll(src); os.RemoveAll(dest); os.RemoveAll(filepath.Join(home, "ferry")) }
	clean() // what a run killed mid-way left in the shared home
	t.Cleanup(clean)
	want := map[string][]byte{"app.jar": random(t, 3<<20), "conf/app.yaml": []byte("level: info\n"), "README": []byte("2.3.1\n")}
	for name, data := range want {
		p := filepath.Join(src, "app-2.3.1", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// An empty directory is part of the update too, and times and modes travel.
	cache := filepath.Join(src, "app-2.3.1", "var", "cache")
	if err := os.MkdirAll(cache, 0o750); err != nil {
		t.Fatal(err)
	}
	stamp := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
	for _, p := range []string{cache, filepath.Join(src, "app-2.3.1", "app.jar")} {
		if err := os.Chtimes(p, stamp, stamp); err != nil {
			t.Fatal(err)
		}
	}
	// A link inside the update comes as a link; one leading out of it stops the job.
	if err := os.Symlink("../app.jar", filepath.Join(src, "app-2.3.1", "conf", "current.jar")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(src, "bad"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bad", "app.jar"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "bad", "passwd")); err != nil {
		t.Fatal(err)
	}
	chownTree(t, src, uid, gid)
	env := map[string]string{"FERRY_NATS_URL": s.srv.URL}
	// landed checks the empty directory and the file whose time was set, below tree.
	landed := func(t *testing.T, tree string) {
		t.Helper()
		if got, err := os.Readlink(filepath.Join(tree, "conf", "current.jar")); err != nil || got != "../app.jar" {
			t.Errorf("conf/current.jar landed as a link to %q (%v), want ../app.jar", got, err)
		}
		for p, mode := range map[string]os.FileMode{"var/cache": 0o750 | os.ModeDir, "app.jar": 0o644} {
			fi, err := os.Stat(filepath.Join(tree, filepath.FromSlash(p)))
			if err != nil || fi.Mode() != mode || !fi.ModTime().Equal(stamp) {
				t.Errorf("%s landed as %v (%v), want %v from %v", p, fi, err, mode, stamp)
			}
		}
	}

	t.Run("archive", func(t *testing.T) {
		r := ferry(t, env, "update", "--id", "up-archive", "--from", "operator-pc", "--files", filepath.Base(src)+"/app-2.3.1",
			"--to", "customer", "--dest", dest+"/archive", "--wait")
		if r.code != 0 {
			t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		m, out := extractDelivered(t, filepath.Join(dest, "archive"), "update-up-archive.tar.zst")
		sameTree(t, filepath.Join(out, "app-2.3.1"), want)
		landed(t, filepath.Join(out, "app-2.3.1"))
		// The archive went on to the customer while it was made: the bundle says
		// so, and the push only renamed it (no temporary file left).
		var art contracts.ArtifactResult
		for _, st := range s.wait("up-archive").Steps {
			if st.Name == "bundle" {
				json.Unmarshal(st.Output, &art)
			}
		}
		if fw := art.Forwarded; fw == nil || fw.Host != "customer" || fw.Dir != filepath.Join(dest, "archive") || fw.SHA256 != m.Artifact.SHA256 {
			t.Errorf("bundle's forward: %+v, want the archive (%s) forwarded to customer:%s", fw, m.Artifact.SHA256, filepath.Join(dest, "archive"))
		}
		if left, _ := filepath.Glob(filepath.Join(dest, "archive", ".*")); len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
		s.nothingLeft("up-archive")
	})

	// The same files give the same archive, job after job: nothing of when or where
	// they were copied and staged goes into it (directories keep their host's times).
	t.Run("same files, same archive", func(t *testing.T) {
		var sums []string
		for _, id := range []string{"up-same-1", "up-same-2"} {
			r := ferry(t, env, "update", "--id", id, "--from", "operator-pc", "--files", filepath.Base(src)+"/app-2.3.1",
				"--to", "customer", "--dest", dest+"/same", "--wait")
			if r.code != 0 {
				t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			data, err := os.ReadFile(filepath.Join(dest, "same", "update-"+id+".tar.zst"))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			sums = append(sums, hex.EncodeToString(sum[:]))
			time.Sleep(1100 * time.Millisecond) // a staged directory's own time would differ
		}
		if sums[0] != sums[1] {
			t.Fatalf("two updates of the same files gave archives %s and %s", sums[0], sums[1])
		}
	})

	t.Run("unpack", func(t *testing.T) {
		r := ferry(t, env, "update", "--id", "up-unpack", "--from", "operator-pc", "--files", filepath.Base(src)+"/app-2.3.1",
			"--to", "customer", "--dest", dest+"/tree", "--unpack", "--wait")
		if r.code != 0 {
			t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		sameTree(t, filepath.Join(dest, "tree", "app-2.3.1"), want)
		landed(t, filepath.Join(dest, "tree", "app-2.3.1"))
		if left, _ := filepath.Glob(filepath.Join(dest, "tree", ".ferry-*")); len(left) != 0 {
			t.Fatalf("left behind: %v", left)
		}
		s.nothingLeft("up-unpack")
	})

	t.Run("missing source", func(t *testing.T) {
		r := ferry(t, env, "update", "--id", "up-missing", "--from", "operator-pc", "--files", "no-such-dir/x",
			"--to", "customer", "--dest", dest+"/never", "--wait")
		if r.code != 1 || !strings.Contains(r.stderr, "no-such-dir/x") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(dest, "never")); err == nil {
			t.Fatal("something was sent")
		}
		s.nothingLeft("up-missing")
	})

	t.Run("link leading out", func(t *testing.T) {
		r := ferry(t, env, "update", "--id", "up-link-out", "--from", "operator-pc", "--files", filepath.Base(src)+"/bad",
			"--to", "customer", "--dest", dest+"/never", "--wait")
		if r.code != 1 || !strings.Contains(r.stderr, "bad/passwd") || !strings.Contains(r.stderr, "leads outside the tree") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(dest, "never")); err == nil {
			t.Fatal("something was sent")
		}
		s.nothingLeft("up-link-out")
	})

	t.Run("escaping path", func(t *testing.T) {
		r := ferry(t, env, "update", "--id", "up-escape", "--from", "operator-pc", "--files", "/etc/passwd",
			"--to", "customer", "--dest", dest+"/never", "--wait")
		if r.code != 1 || !strings.Contains(r.stderr, "/etc/passwd") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		s.nothingLeft("up-escape")
	})
}

func testHome(t *testing.T) (string, int, int) {
	t.Helper()
	u, err := user.Lookup("ferrytest")
	if err != nil {
		sshtest.Unavailable(t, "no ferrytest user (sshtest creates it when running as root)")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return u.HomeDir, uid, gid
}

func chownTree(t *testing.T, dir string, uid, gid int) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sameTree(t *testing.T, dir string, want map[string][]byte) {
	t.Helper()
	n := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err // directories and links are checked on their own
		}
		rel, _ := filepath.Rel(dir, p)
		got, _ := os.ReadFile(p)
		if !bytes.Equal(got, want[filepath.ToSlash(rel)]) {
			t.Errorf("%s differs", rel)
		}
		n++
		return nil
	})
	if err != nil || n != len(want) {
		t.Fatalf("tree %s: %d files, want %d (%v)", dir, n, len(want), err)
	}
}

// An update whose push fails or is cancelled after the bundle forwarded the archive
// (or after a push left its incoming tree) leaves nothing on the customer: the closing
// step removes the job's temporary files there over a real SSH session, and only
// those. (Transfer is played: it leaves what a landed forward or a cut push leaves.)
func TestSystemUpdateLeavesNoTemporaryFiles(t *testing.T) {
	s := startSystem(t, true)
	home, uid, gid := testHome(t)
	dest := filepath.Join(home, "dest-leftovers")
	os.RemoveAll(dest)
	t.Cleanup(func() { os.RemoveAll(dest) })
	mkfile := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("bytes"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The customer's own dotfile and another job's temporary file are never touched.
	keep := []string{filepath.Join(dest, ".app.conf"), filepath.Join(dest, contracts.TempName("update-other.tar.zst", "other"))}
	for _, p := range keep {
		mkfile(p)
	}
	chownTree(t, dest, uid, gid)
	defer s.on("bundle", nil)
	defer s.on("push", nil)

	for _, tc := range []struct {
		name           string
		unpack, cancel bool
	}{{"push failed", false, false}, {"unpack cancelled", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			id := "up-left-" + map[bool]string{false: "failed", true: "cancelled"}[tc.cancel]
			art := "update-" + id + ".tar.zst"
			left := []string{filepath.Join(dest, contracts.TempName(art, id)), filepath.Join(dest, contracts.TempName(contracts.ManifestName(art), id))}
			if tc.unpack {
				left = []string{filepath.Join(dest, contracts.IncomingName(id), "app", "app.jar")}
			}
			s.on("bundle", func(context.Context, contracts.StepCommand) (worker.Result, error) {
				for _, p := range left {
					mkfile(p)
				}
				chownTree(t, dest, uid, gid)
				return worker.Result{Output: contracts.ArtifactResult{Name: art, Size: 5, SHA256: "00"}}, nil
			})
			started := make(chan struct{})
			s.on("push", func(ctx context.Context, _ contracts.StepCommand) (worker.Result, error) {
				if tc.cancel {
					close(started)
					<-ctx.Done()
					return worker.Result{}, ctx.Err()
				}
				return worker.Result{}, worker.Permanent(contracts.CodeRemoteWrite, errors.New("remote write failed (disk full?)"))
			})
			req := contracts.JobRequest{Schema: contracts.SchemaJobRequest, ID: id, Action: contracts.ActionUpdate,
				Update: &contracts.UpdateRequest{From: "operator-pc", Files: []string{"app"}, To: "customer", Dest: dest, Unpack: tc.unpack}}
			if err := bus.Publish(context.Background(), s.js, contracts.SubjectJobSubmit, req, id, id); err != nil {
				t.Fatal(err)
			}
			want := contracts.JobFailed
			if tc.cancel {
				want = contracts.JobCancelled
				<-started
				if err := bus.Publish(context.Background(), s.js, contracts.CancelRequestSubject(id),
					contracts.CancelRequest{Schema: contracts.SchemaCancel, JobID: id}, id+"/cancel", id); err != nil {
					t.Fatal(err)
				}
			}
			if j := s.wait(id); j.State != want {
				t.Fatalf("job %s: %+v, want %s", j.State, j.Failure, want)
			}
			for _, p := range left {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left on the customer (%v)", p, err)
				}
			}
			if _, err := os.Stat(filepath.Join(dest, contracts.IncomingName(id))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("incoming directory left on the customer (%v)", err)
			}
			for _, p := range keep {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("%s, not the job's, is gone: %v", p, err)
				}
			}
			s.nothingLeft(id)
		})
	}
}

// A customer that is out of reach when the failed job's remove-staging runs keeps the
// job's temporary files: they are recorded, and cleanup's sweep removes them once the
// customer answers again, on a connection it closes. A record naming a file that is
// not a job's temporary file is refused and dropped, the file left alone.
func TestSystemUpdateLeftoversOnAHostOutOfReach(t *testing.T) {
	s := startSystem(t, true)
	customer := s.hosts["customer"]
	home, uid, gid := testHome(t)
	dest := filepath.Join(home, "dest-out-of-reach")
	os.RemoveAll(dest)
	t.Cleanup(func() { os.RemoveAll(dest) })
	if err := os.MkdirAll(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(dest, ".app.conf")
	if err := os.WriteFile(own, []byte("the customer's"), 0o644); err != nil {
		t.Fatal(err)
	}
	const id = "up-out-of-reach"
	art := "update-" + id + ".tar.zst"
	left := []string{filepath.Join(dest, contracts.TempName(art, id)), filepath.Join(dest, contracts.TempName(contracts.ManifestName(art), id))}
	defer s.on("bundle", nil)
	defer s.on("push", nil)
	s.on("bundle", func(context.Context, contracts.StepCommand) (worker.Result, error) {
		for _, p := range left {
			if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
				return worker.Result{}, err
			}
		}
		chownTree(t, dest, uid, gid)
		return worker.Result{Output: contracts.ArtifactResult{Name: art, Size: 5, SHA256: "00"}}, nil
	})
	s.on("push", func(context.Context, contracts.StepCommand) (worker.Result, error) {
		customer.Down()
		return worker.Result{}, worker.Permanent(contracts.CodeUnreachable, errors.New("cannot reach customer:22"))
	})
	t.Cleanup(customer.Up) // for the other tests' cleanup, should this one stop early

	req := contracts.JobRequest{Schema: contracts.SchemaJobRequest, ID: id, Action: contracts.ActionUpdate,
		Update: &contracts.UpdateRequest{From: "operator-pc", Files: []string{"app"}, To: "customer", Dest: dest}}
	if err := bus.Publish(context.Background(), s.js, contracts.SubjectJobSubmit, req, id, id); err != nil {
		t.Fatal(err)
	}
	if j := s.wait(id); j.State != contracts.JobFailed {
		t.Fatalf("job %s: %+v, want failed", j.State, j.Failure)
	}
	s.nothingLeft(id)

	// Out of reach: the files are still there, and recorded.
	ctx := context.Background()
	kv, err := s.js.KeyValue(ctx, contracts.BucketLeftovers)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, contracts.LeaseKey(id, "customer"))
	if err != nil {
		t.Fatalf("no record of the leftovers: %v", err)
	}
	var rec contracts.PendingLeftover
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Schema != contracts.SchemaPendingLeftover || rec.JobID != id || rec.Host != "customer" ||
		rec.Dir != dest || len(rec.Names) != 2 || rec.Reason == "" {
		t.Errorf("record %s (%v)", e.Value(), err)
	}
	for _, p := range left {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s gone while the customer was down? %v", p, err)
		}
	}
	forged, _ := json.Marshal(contracts.PendingLeftover{Schema: contracts.SchemaPendingLeftover, JobID: "job-forged", Since: time.Now(),
		Leftover: contracts.Leftover{Host: "customer", Dir: dest, Names: []string{".app.conf"}}})
	if _, err := kv.Put(ctx, contracts.LeaseKey("job-forged", "customer"), forged); err != nil {
		t.Fatal(err)
	}

	// Back: the sweep (every 2 s here) removes them and forgets both records.
	customer.Up()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var there []string
		for _, p := range left {
			if _, err := os.Stat(p); err == nil {
				there = append(there, p)
			}
		}
		keys, _ := kv.ListKeys(ctx)
		var recs []string
		for k := range keys.Keys() {
			recs = append(recs, k)
		}
		if len(there) == 0 && len(recs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the customer came back: files %v, records %v", there, recs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if b, err := os.ReadFile(own); err != nil || string(b) != "the customer's" {
		t.Errorf("%s, not the job's, changed: %q, %v", own, b, err)
	}
	// The sweep's connection is closed once it is done.
	for deadline := time.Now().Add(10 * time.Second); len(customer.ConnectionPIDs()) != 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("connections left open on the customer: %v", customer.ConnectionPIDs())
		}
	}
}

// An operator's PC that allows SFTP only (ForceCommand internal-sftp): the copy into
// its home is made by its SFTP server (copy-data), the bundle pulls over SFTP, and the
// update lands on the customer as from any other PC.
func TestSystemUpdateFromAnSFTPOnlyPC(t *testing.T) {
	s := startSystem(t, false)
	locked := sshtest.Start(t, sshtest.Options{SFTPOnly: true, SFTPLog: true, SFTPLogLevel: "DEBUG1"})
	sshtest.WriteCredential(t, s.secrets, "locked-pc", map[string]string{sshdial.FilePassword: locked.User().Password})
	hosts, err := inventory.Open(context.Background(), s.js)
	if err != nil {
		t.Fatal(err)
	}
	if err := hosts.Put(context.Background(), locked.Host("locked-pc", "locked-pc")); err != nil {
		t.Fatal(err)
	}
	home, uid, gid := testHome(t)
	src := filepath.Join(home, "updates-"+t.Name())
	dest := filepath.Join(home, "dest-"+t.Name())
	const id = "up-sftp-only"
	copied := filepath.Join(home, "ferry", "updates", id, "app")
	clean := func() { os.RemoveAll(src); os.RemoveAll(dest); os.RemoveAll(filepath.Dir(copied)) }
	clean()
	t.Cleanup(clean)
	want := map[string][]byte{"app.jar": random(t, 2<<20), "conf/app.yaml": []byte("level: info\n")}
	for name, data := range want {
		p := filepath.Join(src, "app", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	chownTree(t, src, uid, gid)

	r := ferry(t, map[string]string{"FERRY_NATS_URL": s.srv.URL}, "update", "--id", id, "--from", "locked-pc",
		"--files", filepath.Base(src)+"/app", "--to", "customer", "--dest", dest, "--wait")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	sameTree(t, copied, want) // the seed's step 2: the copy in the operator's home
	// Copied by the server: a copy-data request for each file, and no write request
	// on the PC at all (the bundle only reads there).
	log := locked.SFTPLogText()
	if n := strings.Count(log, ": copy-data from "); n != 2 || strings.Contains(log, ": write ") {
		t.Errorf("%d copy-data requests (want 2), writes: %v; sftp-server's log:\n%s", n, strings.Contains(log, ": write "), log)
	}
	_, out := extractDelivered(t, dest, "update-"+id+".tar.zst")
	sameTree(t, filepath.Join(out, "app"), want)
	s.nothingLeft(id)
}

// extractDelivered reads the archive name and its manifest delivered into dir,
// extracts the archive into a new directory, verifying every file against the
// manifest, and returns the manifest and that directory.
func extractDelivered(t *testing.T, dir, name string) (contracts.Manifest, string) {
	t.Helper()
	var m contracts.Manifest
	raw, err := os.ReadFile(filepath.Join(dir, contracts.ManifestName(name)))
	if err != nil {
		t.Fatalf("no manifest: %v", err)
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.Schema != contracts.SchemaManifest {
		t.Fatalf("manifest %s: %v", raw, err)
	}
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := t.TempDir()
	root, err := os.OpenRoot(out)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := archive.Extract(context.Background(), f, root, m); err != nil {
		t.Fatalf("the delivered %s does not verify: %v", name, err)
	}
	return m, out
}
