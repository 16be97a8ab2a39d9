package demohost_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/demohost"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

func start(t *testing.T, root, state string) *demohost.Host {
	t.Helper()
	h, err := demohost.Start(demohost.Config{Root: root, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func dial(t *testing.T, h *demohost.Host, password string) (*ssh.Client, error) {
	t.Helper()
	key := h.PublicKey()
	return ssh.Dial("tcp", h.Addr(), &ssh.ClientConfig{
		User:            h.User(),
		Auth:            []ssh.AuthMethod{ssh.Password(password)},
		HostKeyCallback: ssh.FixedHostKey(key),
		Timeout:         5 * time.Second,
	})
}

func sftpClient(t *testing.T, h *demohost.Host) (*ssh.Client, *sftp.Client) {
	t.Helper()
	sc, err := dial(t, h, h.Password())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	c, err := sftp.NewClient(sc, sftp.UseConcurrentWrites(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return sc, c
}

func TestStatePersists(t *testing.T) {
	dir := t.TempDir()
	root, state := filepath.Join(dir, "root"), filepath.Join(dir, "state")
	h1, err := demohost.Start(demohost.Config{Root: root, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	key, pw := h1.AuthorizedKey(), h1.Password()
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{demohost.FileHostKey, demohost.FilePassword} {
		fi, err := os.Stat(filepath.Join(state, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v", f, err, fi.Mode())
		}
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v %v", err, fi.Mode())
	}
	h2 := start(t, root, state)
	if h2.AuthorizedKey() != key || h2.Password() != pw {
		t.Errorf("state changed across starts: %q/%q", key, h2.AuthorizedKey())
	}
	if !strings.HasPrefix(key, "ssh-ed25519 ") || len(pw) < 20 {
		t.Errorf("key %q, password length %d", key, len(pw))
	}
	// A state directory inside the served root is refused.
	if _, err := demohost.Start(demohost.Config{Root: dir, StateDir: state}); err == nil {
		t.Error("state inside root accepted")
	}
	// A password file others can read is refused.
	os.Chmod(filepath.Join(state, demohost.FilePassword), 0o644)
	if _, err := demohost.Start(demohost.Config{Root: root, StateDir: state}); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("readable password accepted: %v", err)
	}
}

func TestLogin(t *testing.T) {
	dir := t.TempDir()
	h := start(t, filepath.Join(dir, "root"), filepath.Join(dir, "state"))
	if _, err := dial(t, h, "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	sc, err := dial(t, h, h.Password())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	// Keepalives are answered (with a refusal, like OpenSSH).
	if ok, _, err := sc.SendRequest("keepalive@openssh.com", true, nil); err != nil || ok {
		t.Errorf("keepalive: ok %v, err %v", ok, err)
	}
	// No shell: exec is refused.
	s, err := sc.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.CombinedOutput("sha256sum /etc/passwd"); err == nil {
		t.Errorf("exec ran: %q", out)
	}
	s.Close()
	// No port forwarding.
	if c, err := sc.Dial("tcp", h.Addr()); err == nil {
		c.Close()
		t.Error("direct-tcpip accepted")
	}
}

func TestSFTP(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	h := start(t, root, filepath.Join(dir, "state"))
	_, c := sftpClient(t, h)

	for _, p := range []string{".", "/", "/opt/..", "../.."} {
		if got, err := c.RealPath(p); err != nil || got != "/" {
			t.Errorf("RealPath(%q) = %q, %v", p, got, err)
		}
	}
	if wd, err := c.Getwd(); err != nil || wd != "/" {
		t.Errorf("Getwd = %q, %v", wd, err)
	}

	if err := c.MkdirAll("/opt/app/releases"); err != nil {
		t.Fatal(err)
	}
	// A big file written with concurrent writes at offsets, then read back.
	data := make([]byte, 3<<20+12345)
	for i := range data {
		data[i] = byte(i * 7 >> 3)
	}
	f, err := c.OpenFile("/opt/app/releases/.upload.tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod(0o640); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(filepath.Join(root, "opt/app/releases/.upload.tmp"))
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("on disk: %d bytes, %v", len(onDisk), err)
	}
	if fi, err := c.Stat("opt/app/releases/.upload.tmp"); err != nil || fi.Size() != int64(len(data)) || fi.Mode().Perm() != 0o640 {
		t.Errorf("stat: %v %v", fi, err)
	}

	// rename does not replace; posix-rename does.
	writeFile(t, c, "/opt/app/releases/app.tar", "old")
	if err := c.Rename("/opt/app/releases/.upload.tmp", "/opt/app/releases/app.tar"); err == nil {
		t.Error("rename replaced an existing file")
	}
	if err := c.PosixRename("/opt/app/releases/.upload.tmp", "/opt/app/releases/app.tar"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("/opt/app/releases/app.tar", "/opt/app/releases/app-1.tar"); err != nil {
		t.Fatal(err)
	}
	rf, err := c.Open("/opt/app/releases/app-1.tar")
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(rf)
	rf.Close()
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back %d bytes: %v", len(back), err)
	}

	// readdir, lstat, setstat (times, truncate), remove, rmdir.
	writeFile(t, c, "/opt/app/releases/README", "hello")
	infos, err := c.ReadDir("/opt/app/releases")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, fi := range infos {
		names = append(names, fi.Name())
	}
	slices.Sort(names)
	if strings.Join(names, ",") != "README,app-1.tar" {
		t.Errorf("readdir: %v", names)
	}
	mtime := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := c.Truncate("/opt/app/releases/README", 2); err != nil {
		t.Fatal(err)
	}
	if err := c.Chtimes("/opt/app/releases/README", mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if fi, err := c.Lstat("/opt/app/releases/README"); err != nil || !fi.ModTime().Equal(mtime) || fi.Size() != 2 {
		t.Errorf("lstat: %v %v", fi, err)
	}
	if err := c.Remove("/opt/app/releases/README"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveDirectory("/opt/app/releases"); err == nil {
		t.Error("rmdir of a non-empty directory")
	}
	if err := c.Remove("/opt/app/releases/app-1.tar"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveDirectory("/opt/app/releases"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat("/opt/app/releases"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat of removed dir: %v", err)
	}

	// Many concurrent files on one connection.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			name := "/opt/par-" + string(rune('a'+i))
			f, err := c.Create(name)
			if err != nil {
				t.Error(err)
				return
			}
			f.ReadFrom(bytes.NewReader(data[:1<<20]))
			f.Close()
		})
	}
	wg.Wait()
	if infos, err := c.ReadDir("/opt"); err != nil || len(infos) != 9 {
		t.Errorf("readdir /opt: %d entries, %v", len(infos), err)
	}
}

func writeFile(t *testing.T, c *sftp.Client, name, content string) {
	t.Helper()
	f, err := c.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestConfinement(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	h := start(t, root, filepath.Join(dir, "state"))
	_, c := sftpClient(t, h)

	// Outside the root, next to it: a secret and the host's own state.
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Symlinks placed on the host (SFTP cannot create them): out of the root,
	// absolute and relative.
	os.MkdirAll(filepath.Join(root, "sub"), 0o755)
	os.WriteFile(filepath.Join(root, "sub", "inside"), []byte("inside"), 0o644)
	os.Symlink(secret, filepath.Join(root, "abs-link"))
	os.Symlink("../secret", filepath.Join(root, "rel-link"))
	os.Symlink(dir, filepath.Join(root, "dir-link"))
	os.Symlink("sub/inside", filepath.Join(root, "ok-link"))

	for _, p := range []string{"../../etc/passwd", "/etc/passwd", "/../../../../etc/passwd", "../secret", "../state/password"} {
		if _, err := c.Open(p); err == nil {
			t.Errorf("open %s: no error", p)
		}
	}
	// "../x" is cleaned to "/x": it lands inside the root, not next to it.
	writeFile(t, c, "../../escape", "x")
	if _, err := os.Stat(filepath.Join(root, "escape")); err != nil {
		t.Errorf("../../escape not inside the root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape")); err == nil {
		t.Error("../../escape written outside the root")
	}
	for _, p := range []string{"/abs-link", "/rel-link", "/dir-link/secret"} {
		if f, err := c.Open(p); err == nil {
			b, _ := io.ReadAll(f)
			f.Close()
			t.Errorf("read %s through a symlink: %q", p, b)
		} else if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("open %s: %v, want permission denied", p, err)
		}
		if _, err := c.Create(p); err == nil {
			t.Errorf("create %s through a symlink", p)
		}
		if _, err := c.Stat(p); err == nil {
			t.Errorf("stat %s followed a symlink out", p)
		}
	}
	if err := c.Chmod("/rel-link", 0o666); err == nil {
		t.Error("chmod through a symlink out of the root")
	}
	if err := c.PosixRename("/sub/inside", "/dir-link/moved"); err == nil {
		t.Error("rename out of the root through a symlink")
	}
	if _, err := c.ReadDir("/dir-link"); err == nil {
		t.Error("readdir out of the root through a symlink")
	}
	if fi, err := os.Stat(secret); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret changed: %v %v", fi, err)
	}
	// A link that stays inside works; links are readable, and creatable only inside.
	if f, err := c.Open("/ok-link"); err != nil {
		t.Errorf("open of a link inside the root: %v", err)
	} else {
		f.Close()
	}
	if fi, err := c.Lstat("/abs-link"); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("lstat of a link: %v %v", fi, err)
	}
	if target, err := c.ReadLink("/ok-link"); err != nil || target != "sub/inside" {
		t.Errorf("readlink = %q, %v", target, err)
	}
	for target, link := range map[string]string{"/etc/passwd": "/new-link", "../secret": "/up-link", "sub/../../secret": "/sub/back-link"} {
		if err := c.Symlink(target, link); err == nil {
			t.Errorf("symlink %s -> %s created", link, target)
		}
	}
	// A link leading inside the root is made (an update may hold one).
	if err := c.Symlink("../ok-link", "/sub/new-link"); err != nil {
		t.Errorf("symlink inside the root: %v", err)
	} else if target, err := c.ReadLink("/sub/new-link"); err != nil || target != "../ok-link" {
		t.Errorf("readlink of the new link = %q, %v", target, err)
	}
	if err := c.Link("/sub/inside", "/hard-link"); err == nil {
		t.Error("hard link created")
	}
	if err := c.RemoveDirectory("/"); err == nil {
		t.Error("rmdir of the root")
	}
}

func TestCloseEndsConnections(t *testing.T) {
	dir := t.TempDir()
	h, err := demohost.Start(demohost.Config{Root: filepath.Join(dir, "root"), StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	sc, c := sftpClient(t, h)
	done := make(chan error, 1)
	go func() { done <- sc.Wait() }()
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open after Close")
	}
	if _, err := c.Getwd(); err == nil {
		t.Error("sftp works after Close")
	}
	if _, err := dial(t, h, h.Password()); err == nil {
		t.Error("dial after Close")
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
