package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"golang.org/x/sys/unix"
)

// env is a real sshd and a directory of the test user's home to play in.
type env struct {
	t    *testing.T
	sshd *sshtest.Server
	cred *sshdial.Credential
	dir  string // below the test user's home, owned by it
	uid  int
	gid  int
}

func newEnv(t *testing.T, opts sshtest.Options) *env {
	t.Helper()
	sshd := sshtest.Start(t, opts)
	secrets := t.TempDir()
	sshtest.WriteCredential(t, secrets, "cred", map[string]string{sshdial.FilePassword: sshd.User().Password})
	cred, err := sshdial.LoadCredential(secrets, "cred")
	if err != nil {
		t.Fatal(err)
	}
	u, err := user.Lookup(sshd.User().Name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp(u.HomeDir, "remote-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, sshd: sshd, cred: cred, dir: dir, uid: uid, gid: gid}
	e.chown(dir)
	return e
}

// dial opens a connection as the test user.
func (e *env) dial() *sshdial.Client {
	e.t.Helper()
	c, err := sshdial.Dial(context.Background(), e.sshd.Host("h", "cred"), sshdial.Options{Credential: e.cred, Timeout: 10 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) open(opts Options) *Conn {
	e.t.Helper()
	c, err := Open(e.dial(), opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// chown gives everything below p to the test user.
func (e *env) chown(p string) {
	e.t.Helper()
	err := filepath.WalkDir(p, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, e.uid, e.gid)
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// write creates a file (and its directories) with random content of size bytes.
func write(t *testing.T, p string, size int64) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// treeSums maps every regular file below dir (slash-separated relative path) to its
// SHA-256, skipping ferry's temporary names.
func treeSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out[filepath.ToSlash(rel)] = fileSHA(t, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkFlushed fails unless the files below dir (files of them, when files ≥ 0) have no
// page that is dirty or under writeback: they are on stable storage.
func checkFlushed(t *testing.T, dir string, files int) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		n++
		if st := cachestat(t, p); st.Dirty+st.Writeback > 0 {
			t.Errorf("%s: %d pages dirty, %d under writeback", p, st.Dirty, st.Writeback)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files >= 0 && n != files {
		t.Fatalf("%d files below %s, want %d", n, dir, files)
	}
}

// cachedBytes is how much of the file p is in the page cache.
func cachedBytes(t *testing.T, p string) int64 {
	t.Helper()
	return int64(cachestat(t, p).Cache) * int64(os.Getpagesize())
}

// cachestat reads the page-cache state of the file p (cachestat(2), Linux 6.5); the
// test is skipped without it, or on a tmpfs (its pages are never written to a disk
// nor dropped).
func cachestat(t *testing.T, p string) unix.Cachestat_t {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skip("a tmpfs: its pages are never written to a disk nor dropped")
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Cachestat_t
	err = unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0) // length 0: the whole file
	if errors.Is(err, unix.ENOSYS) {
		t.Skip("no cachestat(2) on this kernel")
	}
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// appendWhile appends lines to the file p until the returned func is called; it
// returns once the first lines are in, and the func once the last are.
func appendWhile(t *testing.T, p string) (stop func()) {
	t.Helper()
	quit := make(chan struct{})
	var appended atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Error(err)
			appended.Store(-1)
			return
		}
		defer f.Close()
		chunk := bytes.Repeat([]byte("appended line\n"), 4096)
		for {
			select {
			case <-quit:
				return
			default:
			}
			n, _ := f.Write(chunk)
			appended.Add(int64(n))
			time.Sleep(time.Millisecond)
		}
	}()
	for appended.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	return func() {
		time.Sleep(20 * time.Millisecond)
		close(quit)
		<-done
	}
}

// pullCut pulls the file src (of size bytes) into into over a connection of its own,
// closed once about half has arrived. The pull must fail with ErrConnection, keep a
// temporary file to resume and leave nothing under the final name; pullCut returns
// the temporary file's size and how much had arrived.
func (e *env) pullCut(opts Options, src, into string, size int64) (part, arrived int64) {
	t := e.t
	t.Helper()
	client := e.dial()
	c, err := Open(client, opts)
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := c.Roots(nil)
	prog := &Progress{}
	go func() {
		for prog.Done.Load() < size/2 {
			time.Sleep(time.Millisecond)
		}
		client.Close()
	}()
	_, err = c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, prog)
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("cut pull: %v, want ErrConnection", err)
	}
	name := filepath.Base(src)
	fi, err := os.Stat(filepath.Join(into, partName(name)))
	if err != nil {
		t.Fatalf("no temporary file to resume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(into, name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("final name exists after a cut pull")
	}
	return fi.Size(), prog.Done.Load()
}

// pullResume pulls src into into again after pullCut left part bytes: the retry must
// send exactly the rest and land the file whole.
func (e *env) pullResume(opts Options, src, into string, size, part int64) {
	t := e.t
	t.Helper()
	c := e.open(opts)
	roots, _ := c.Roots(nil)
	res, err := c.Pull(context.Background(), roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("temporary file had %d, retry sent %d of %d", part, res.Sent, size)
	if res.Sent != size-part {
		t.Errorf("retry sent %d of %d bytes, want the %d missing", res.Sent, size, size-part)
	}
	if got, want := fileSHA(t, filepath.Join(into, filepath.Base(src))), fileSHA(t, src); got != want {
		t.Fatalf("pulled SHA-256 %s, want %s", got, want)
	}
}
