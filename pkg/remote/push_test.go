package remote

import (
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// watch polls p until stop and reports every size it saw under that name that is not
// want (the final name must only ever hold the complete file).
func watch(p string, want int64) (stop func() []int64) {
	var bad []int64
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if fi, err := os.Stat(p); err == nil && fi.Size() != want {
				bad = append(bad, fi.Size())
			}
			select {
			case <-quit:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	return func() []int64 { close(quit); <-done; return bad }
}

func upload(t *testing.T, local, dir, name, tag string) Upload {
	fi, err := os.Stat(local)
	if err != nil {
		t.Fatal(err)
	}
	return Upload{Local: local, Dir: dir, Name: name, Size: fi.Size(), SHA256: fileSHA(t, local), Tag: tag}
}

// The final name appears only once the file is complete and verified; a corrupt
// staged file never lands; landing it again sends nothing.
func TestPutVerifiesBeforeRename(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config []string
		follow bool // hash on the host while writing, in 4 MiB segments
		python bool // the follower in Python, else the shell pipeline
	}{
		{"exec", nil, false, false},
		{"exec-follow-python", nil, true, true},
		{"exec-follow-shell", nil, true, false},
		{"sftp-only", []string{"ForceCommand internal-sftp"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.follow {
				withFollower(t, tc.python)
			}
			e := newEnv(t, sshtest.Options{Config: tc.config})
			local := filepath.Join(t.TempDir(), "update.tar.zst")
			write(t, local, 24<<20)
			dest := filepath.Join(e.dir, "dest")
			if err := os.Mkdir(dest, 0o755); err != nil {
				t.Fatal(err)
			}
			e.chown(dest)
			c := e.open(Options{})
			u := upload(t, local, dest, "update.tar.zst", "job1")
			final := filepath.Join(dest, u.Name)
			stop := watch(final, u.Size)
			var sent atomic.Int64
			start := time.Now()
			err := c.Put(context.Background(), u, nil, &sent)
			took := time.Since(start)
			if bad := stop(); len(bad) > 0 {
				t.Fatalf("the final name held sizes %v before the file was complete", bad)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fileSHA(t, final); got != u.SHA256 {
				t.Fatalf("landed sha %s, want %s", got, u.SHA256)
			}
			if _, err := os.Stat(filepath.Join(dest, u.TempName())); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temporary file left: %v", err)
			}
			t.Logf("put %d bytes in %s (%.1f MB/s, race detector on)", u.Size, took, float64(u.Size)/took.Seconds()/1e6)

			sent.Store(0)
			if err := c.Put(context.Background(), u, nil, &sent); err != nil || sent.Load() != 0 {
				t.Fatalf("again: %v, sent %d, want nothing sent", err, sent.Load())
			}

			// Corrupt the staged file: same size, one byte changed.
			u2 := u
			u2.Name = "other.tar.zst"
			f, _ := os.OpenFile(local, os.O_WRONLY, 0)
			f.WriteAt([]byte{0xff ^ readByte(t, local, 1000)}, 1000)
			f.Close()
			err = c.Put(context.Background(), u2, nil, &sent)
			if !errors.Is(err, ErrVerify) {
				t.Fatalf("corrupt staged file: %v, want ErrVerify", err)
			}
			for _, n := range []string{u2.Name, u2.TempName()} {
				if _, err := os.Stat(filepath.Join(dest, n)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s exists after a failed verification", n)
				}
			}
		})
	}
}

func readByte(t *testing.T, p string, off int64) byte {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	return b[0]
}

// A push cut at about half resumes from the verified prefix of its temporary file: the
// retry sends about the other half.
func TestPutResumesAfterConnectionLoss(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	local := filepath.Join(t.TempDir(), "big.bin")
	const size = 64 << 20
	write(t, local, size)
	dest := filepath.Join(e.dir, "dest")
	os.Mkdir(dest, 0o755)
	e.chown(dest)
	u := upload(t, local, dest, "big.bin", "job1")

	client := e.dial()
	c, err := Open(client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	prog := &Progress{}
	go func() {
		for prog.Done.Load() < size/2 {
			time.Sleep(time.Millisecond)
		}
		client.Close()
	}()
	var sent1 atomic.Int64
	err = c.Put(context.Background(), u, prog, &sent1)
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("cut push: %v, want ErrConnection", err)
	}
	fi, err := os.Stat(filepath.Join(dest, u.TempName()))
	if err != nil {
		t.Fatalf("no temporary file to resume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dest, u.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("final name exists after a cut push")
	}

	c2 := e.open(Options{})
	var sent2 atomic.Int64
	if err := c2.Put(context.Background(), u, nil, &sent2); err != nil {
		t.Fatal(err)
	}
	t.Logf("first attempt sent %d, temporary file had %d, retry sent %d of %d", sent1.Load(), fi.Size(), sent2.Load(), size)
	window := int64(DefaultMaxPacket * DefaultRequestsPerFile) // writes that may have been in flight
	// (The server may still have written what was in flight after the stat above.)
	if sent2.Load() == 0 || sent2.Load() > size-fi.Size()+window || sent2.Load() > size*3/4 {
		t.Errorf("retry sent %d of %d bytes: it did not resume", sent2.Load(), size)
	}
	if got := fileSHA(t, filepath.Join(dest, u.Name)); got != u.SHA256 {
		t.Fatalf("landed sha %s, want %s", got, u.SHA256)
	}
}

// A full disk fails the push with "remote write failed (disk full?)", removes the
// temporary file and leaves the files already there alone.
func TestPutDiskFull(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	dest := filepath.Join(e.dir, "small")
	os.Mkdir(dest, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dest).CombinedOutput(); err != nil {
		sshtest.Unavailable(t, "mounting a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dest).Run() })
	write(t, filepath.Join(dest, "previous.tar.zst"), 1<<20)
	e.chown(dest)
	before := fileSHA(t, filepath.Join(dest, "previous.tar.zst"))
	local := filepath.Join(t.TempDir(), "update.tar.zst")
	write(t, local, 8<<20)
	c := e.open(Options{})
	u := upload(t, local, dest, "update.tar.zst", "job1")
	var sent atomic.Int64
	err := c.Put(context.Background(), u, nil, &sent)
	if !errors.Is(err, ErrRemoteWrite) || !strings.Contains(err.Error(), "remote write failed (disk full?)") || !strings.Contains(err.Error(), dest) {
		t.Fatalf("got %v", err)
	}
	t.Log(err)
	entries, _ := os.ReadDir(dest)
	if len(entries) != 1 || entries[0].Name() != "previous.tar.zst" {
		t.Fatalf("left in the directory: %v", entries)
	}
	if fileSHA(t, filepath.Join(dest, "previous.tar.zst")) != before {
		t.Fatal("the previous file changed")
	}
}

// A directory the login may not write to fails the push as a refused write that says
// so, not as a full disk; nothing lands.
func TestPutPermissionDenied(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	dest := filepath.Join(e.dir, "root-owned")
	if err := os.Mkdir(dest, 0o755); err != nil { // left to root: not the login's
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "update.tar.zst")
	write(t, local, 1<<20)
	c := e.open(Options{})
	var sent atomic.Int64
	err := c.Put(context.Background(), upload(t, local, dest, "update.tar.zst", "job1"), nil, &sent)
	if !errors.Is(err, ErrPermission) || !errors.Is(err, ErrRemoteWrite) || !strings.Contains(err.Error(), "permission denied") ||
		strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), dest) {
		t.Fatalf("got %v, want a refused write saying permission denied", err)
	}
	if entries, _ := os.ReadDir(dest); len(entries) != 0 {
		t.Fatalf("left in the directory: %v", entries)
	}
}

// An unpacked tree lands in place of the previous version, each file verified, with no
// incoming directory left; landing it again sends nothing.
func TestPutTreeReplacesPreviousVersion(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config []string
		follow bool // hash on the host while writing, in 4 MiB segments
		python bool // the follower in Python, else the shell pipeline
	}{
		{"exec", nil, false, false},
		{"exec-follow-python", nil, true, true},
		{"exec-follow-shell", nil, true, false},
		{"sftp-only", []string{"ForceCommand internal-sftp"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.follow {
				withFollower(t, tc.python)
			}
			e := newEnv(t, sshtest.Options{Config: tc.config})
			dest := filepath.Join(e.dir, "opt-app")
			write(t, filepath.Join(dest, "app", "old-only.txt"), 10)
			write(t, filepath.Join(dest, "app", "bin", "run"), 10)
			write(t, filepath.Join(dest, "keep.txt"), 10)
			e.chown(e.dir)
			tree := t.TempDir()
			var m contracts.Manifest
			mtime := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
			for p, size := range map[string]int64{"app/bin/run": 5000, "app/lib/x.jar": 3 << 20, "app/etc/conf": 0, "VERSION": 6} {
				write(t, filepath.Join(tree, filepath.FromSlash(p)), size)
				m.Files = append(m.Files, contracts.ManifestFile{Path: p, Size: size, Mode: 0o750, SHA256: fileSHA(t, filepath.Join(tree, filepath.FromSlash(p))), MTime: mtime})
			}
			// Directories as the archive lists them: an empty one lands too, and each
			// takes its mode and time.
			dirs := map[string]uint32{"app": 0o755, "app/bin": 0o711, "app/etc": 0o700, "app/lib": 0o755, "app/var": 0o755, "app/var/cache": 0o770}
			for _, p := range slices.Sorted(maps.Keys(dirs)) {
				m.Dirs = append(m.Dirs, contracts.ManifestDir{Path: p, Mode: dirs[p], MTime: mtime.Add(time.Hour)})
			}
			// Links inside the tree land as links.
			m.Links = []contracts.ManifestLink{{Path: "CURRENT", Target: "app/lib/x.jar"}, {Path: "app/lib/x-latest.jar", Target: "x.jar"}}
			c := e.open(Options{})
			var sent atomic.Int64
			if err := c.PutTree(context.Background(), tree, dest, "job1", m, nil, &sent); err != nil {
				t.Fatal(err)
			}
			for _, l := range m.Links {
				if got, err := os.Readlink(filepath.Join(dest, filepath.FromSlash(l.Path))); err != nil || got != l.Target {
					t.Errorf("%s landed as a link to %q (%v), want %q", l.Path, got, err, l.Target)
				}
			}
			for p, mode := range dirs {
				fi, err := os.Stat(filepath.Join(dest, filepath.FromSlash(p)))
				if err != nil || !fi.IsDir() || uint32(fi.Mode().Perm()) != mode || !fi.ModTime().Equal(mtime.Add(time.Hour)) {
					t.Errorf("directory %s landed as %v (%v), want mode %#o, time %v", p, fi, err, mode, mtime.Add(time.Hour))
				}
			}
			for _, f := range m.Files {
				if fi, _ := os.Stat(filepath.Join(dest, filepath.FromSlash(f.Path))); fi == nil || !fi.ModTime().Equal(mtime) {
					t.Errorf("%s: time not applied: %v", f.Path, fi)
				}
			}
			got := treeSums(t, dest)
			want := treeSums(t, tree)
			want["keep.txt"] = got["keep.txt"]
			if len(got) != len(want) {
				t.Fatalf("landed %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: sha %q, want %q", k, got[k], v)
				}
			}
			entries, _ := os.ReadDir(dest)
			for _, en := range entries {
				if strings.HasPrefix(en.Name(), ".ferry-") {
					t.Errorf("left behind: %s", en.Name())
				}
			}
			if fi, _ := os.Stat(filepath.Join(dest, "app", "bin", "run")); fi == nil || fi.Mode().Perm() != 0o750 {
				t.Errorf("mode not applied: %v", fi)
			}
			sent.Store(0)
			if err := c.PutTree(context.Background(), tree, dest, "job1", m, nil, &sent); err != nil || sent.Load() != 0 {
				t.Fatalf("again: %v, sent %d", err, sent.Load())
			}
		})
	}
}

// A manifest whose links lead out of the tree, or that would land an entry through a
// link, is refused before anything is sent.
func TestPutTreeRefusesBadLinks(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	dest := filepath.Join(e.dir, "opt-app")
	e.chown(e.dir)
	tree := t.TempDir()
	write(t, filepath.Join(tree, "a", "f"), 10)
	f := contracts.ManifestFile{Path: "a/f", Size: 10, SHA256: fileSHA(t, filepath.Join(tree, "a", "f"))}
	c := e.open(Options{})
	for name, links := range map[string][]contracts.ManifestLink{
		"leads out":       {{Path: "a/l", Target: "../../etc/passwd"}},
		"absolute":        {{Path: "l", Target: "/etc"}},
		"entry below one": {{Path: "a", Target: "b"}},
	} {
		var sent atomic.Int64
		err := c.PutTree(context.Background(), tree, dest, "job1", contracts.Manifest{Files: []contracts.ManifestFile{f}, Links: links}, nil, &sent)
		if !errors.Is(err, ErrVerify) || sent.Load() != 0 {
			t.Errorf("%s: %v (sent %d), want ErrVerify before sending", name, err, sent.Load())
		}
		if _, err := os.Stat(dest); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %s was made", name, dest)
		}
	}
}

// A file pushed with a follower leaves the host's page cache as it found it: what
// landed was flushed and dropped behind the hash.
func TestPutDropsLandedPagesOnTheHost(t *testing.T) {
	for _, follower := range []string{"python", "shell"} {
		t.Run(follower, func(t *testing.T) {
			withFollower(t, follower == "python")
			e := newEnv(t, sshtest.Options{})
			dest := filepath.Join(e.dir, "dest")
			if err := os.Mkdir(dest, 0o755); err != nil {
				t.Fatal(err)
			}
			e.chown(dest)
			local := filepath.Join(t.TempDir(), "update.tar.zst")
			write(t, local, 40<<20)
			u := upload(t, local, dest, "update.tar.zst", "job1")
			var sent atomic.Int64
			if err := e.open(Options{}).Put(context.Background(), u, nil, &sent); err != nil {
				t.Fatal(err)
			}
			final := filepath.Join(dest, u.Name)
			checkFlushed(t, dest, 1)
			if n := cachedBytes(t, final); n > 1<<20 {
				t.Errorf("%d bytes of the 40 MiB landed are still in the host's page cache", n)
			}
			if got := fileSHA(t, final); got != u.SHA256 { // (reads it into the cache again)
				t.Fatalf("landed sha %s, want %s", got, u.SHA256)
			}
		})
	}
}

// A landed file is flushed to the host's disk before it is renamed into place, and its
// directory after, so that a power loss of the host cannot leave a torn file under its
// final name. sftp-server's own log shows the order of the operations.
func TestPutFlushesBeforeRename(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sftpOnly bool
	}{{"exec", false}, {"sftp-only", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, sshtest.Options{SFTPLog: true, SFTPOnly: tc.sftpOnly})
			c := e.open(Options{})
			if c.CanExec(context.Background()) == tc.sftpOnly {
				t.Fatalf("CanExec = %v on a host with SFTPOnly %v", !tc.sftpOnly, tc.sftpOnly)
			}
			dest := filepath.Join(e.dir, "dest")
			if err := os.Mkdir(dest, 0o755); err != nil {
				t.Fatal(err)
			}
			e.chown(dest)

			local := filepath.Join(t.TempDir(), "update.tar.zst")
			write(t, local, 3<<20)
			u := upload(t, local, dest, "update.tar.zst", "job1")
			var sent atomic.Int64
			if err := c.Put(context.Background(), u, nil, &sent); err != nil {
				t.Fatal(err)
			}
			part, final := filepath.Join(dest, u.TempName()), filepath.Join(dest, u.Name)
			inOrder(t, e.sshd.SFTPLogText(),
				`fsync "`+part+`"`,
				`posix-rename old "`+part+`" new "`+final+`"`,
				`fsync "`+dest+`"`)

			// A tree: every file flushed before the first switch into place.
			tree := t.TempDir()
			var files []contracts.ManifestFile
			for p, size := range map[string]int64{"bin/app": 64 << 10, "bin/app.conf": 100} {
				write(t, filepath.Join(tree, filepath.FromSlash(p)), size)
				files = append(files, contracts.ManifestFile{Path: p, Size: size, SHA256: fileSHA(t, filepath.Join(tree, filepath.FromSlash(p)))})
			}
			logged := len(e.sshd.SFTPLogText())
			if err := c.PutTree(context.Background(), tree, dest, "job2", contracts.Manifest{Files: files}, nil, &sent); err != nil {
				t.Fatal(err)
			}
			incoming := filepath.Join(dest, ".ferry-incoming-job2")
			log := e.sshd.SFTPLogText()[logged:]
			switchIn := `posix-rename old "` + filepath.Join(incoming, "bin") + `" new "` + filepath.Join(dest, "bin") + `"`
			if tc.sftpOnly { // file by file through SFTP; with commands, one sync -f (not in this log)
				for _, f := range files {
					inOrder(t, log, `fsync "`+filepath.Join(incoming, f.Path)+`"`, switchIn)
				}
			}
			inOrder(t, log, switchIn, `fsync "`+dest+`"`)
			// With commands the tree was flushed by one sync -f, which this log does not
			// show: the host is this machine, so its page cache does.
			checkFlushed(t, dest, 3)
			for _, f := range files {
				if got := fileSHA(t, filepath.Join(dest, f.Path)); got != f.SHA256 {
					t.Errorf("%s: sha %s, want %s", f.Path, got, f.SHA256)
				}
			}
		})
	}
}

// inOrder fails unless each of want occurs in log after the one before it.
func inOrder(t *testing.T, log string, want ...string) {
	t.Helper()
	rest := log
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("sftp-server log lacks %q after the operations before it; log:\n%s", w, log)
		}
		rest = rest[i+len(w):]
	}
}
