package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// ferry update through the CLI, with every service real, between two real sshd hosts:
// the operator's files are copied into its home, pulled, archived, pushed to the
// customer and verified; after the job nothing is left behind.
func TestSystemUpdate(t *testing.T) {
	s := startSystem(t, false)
	home, uid, gid := testHome(t)
	src := filepath.Join(home, "updates-"+t.Name())
	dest := filepath.Join(home, "dest-"+t.Name())
	t.Cleanup(func() { os.RemoveAll(src); os.RemoveAll(dest); os.RemoveAll(filepath.Join(home, "ferry")) })
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
		name := "update-up-archive.tar.zst"
		mdata, err := os.ReadFile(filepath.Join(dest, "archive", contracts.ManifestName(name)))
		if err != nil {
			t.Fatal(err)
		}
		var m contracts.Manifest
		if err := json.Unmarshal(mdata, &m); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(filepath.Join(dest, "archive", name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out := t.TempDir()
		root, _ := os.OpenRoot(out)
		defer root.Close()
		if err := archive.Extract(context.Background(), f, root, m); err != nil {
			t.Fatalf("the delivered archive does not verify: %v", err)
		}
		sameTree(t, filepath.Join(out, "app-2.3.1"), want)
		landed(t, filepath.Join(out, "app-2.3.1"))
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
