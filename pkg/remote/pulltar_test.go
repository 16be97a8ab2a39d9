package remote

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// Many small files come through one tar stream, the large one over SFTP, and the
// staged tree is the host's, byte for byte, modes and times included — the same as a
// pull without exec lands. A second pull finds everything in place and moves nothing.
func TestPullManySmallFilesThroughTar(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	src := filepath.Join(e.dir, "many")
	for i := range 60 {
		write(t, filepath.Join(src, fmt.Sprintf("d%d", i%6), fmt.Sprintf("f%02d.txt", i)), int64(1+i*97))
	}
	write(t, filepath.Join(src, "odd name 'quoted'\n.txt"), 10)
	write(t, filepath.Join(src, "-dash.txt"), 10)
	write(t, filepath.Join(src, "big.bin"), 3<<20)
	os.Chmod(filepath.Join(src, "d1", "f01.txt"), 0o640)
	os.Chmod(filepath.Join(src, "d2", "f02.txt"), 0o775) // bits a 022 umask takes away at creation
	e.chown(e.dir)
	c := e.open(Options{})
	roots, _ := c.Roots(nil)
	ctx := context.Background()

	listed := 0
	var files []pullFile
	_ = c.walk(ctx, src, mustStat(t, c, src), func(rel string, fi os.FileInfo) error {
		if fi.Mode().IsRegular() {
			listed++
			files = append(files, pullFile{size: fi.Size()})
		}
		return nil
	})
	viaTar, viaSFTP := c.splitForTar(ctx, files)
	if len(viaTar) != 62 || len(viaSFTP) != 1 || listed != 63 {
		t.Fatalf("split: %d through tar, %d over SFTP of %d, want 62 and 1", len(viaTar), len(viaSFTP), listed)
	}

	into := t.TempDir()
	var prog Progress
	res, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, &prog)
	if err != nil {
		t.Fatal(err)
	}
	want := treeSums(t, src)
	got := treeSums(t, into)
	if len(got) != len(want) || res.Files != len(want) {
		t.Fatalf("landed %d files (result %d), want %d", len(got), res.Files, len(want))
	}
	for rel, sum := range want {
		if got[rel] != sum {
			t.Fatalf("%s: sha %s, want %s", rel, got[rel], sum)
		}
	}
	if prog.Done.Load() != res.Bytes || res.Sent != res.Bytes {
		t.Fatalf("progress %d, sent %d, bytes %d", prog.Done.Load(), res.Sent, res.Bytes)
	}
	fi, _ := os.Stat(filepath.Join(into, "d1", "f01.txt"))
	si, _ := os.Stat(filepath.Join(src, "d1", "f01.txt"))
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(si.ModTime().Truncate(time.Second)) {
		t.Fatalf("mode %v mtime %v, want 0640 and %v", fi.Mode(), fi.ModTime(), si.ModTime())
	}
	if fi, _ := os.Stat(filepath.Join(into, "d2", "f02.txt")); fi.Mode().Perm() != 0o775 {
		t.Fatalf("mode %v, want 0775", fi.Mode())
	}
	noParts(t, into)

	again, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
	if err != nil || again.Sent != 0 {
		t.Fatalf("second pull: sent %d, %v; want nothing sent", again.Sent, err)
	}

	// A file cut short (as by a crash while it landed: its time not yet set) is pulled
	// again, and only it.
	cut := filepath.Join(into, "d3", "f33.txt")
	if err := os.Truncate(cut, 100); err != nil {
		t.Fatal(err)
	}
	again, err = c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
	if want := int64(1 + 33*97); err != nil || again.Sent != want {
		t.Fatalf("pull after a cut file: sent %d, %v; want the %d bytes of that file", again.Sent, err, want)
	}
	if got := fileSHA(t, cut); got != want["d3/f33.txt"] {
		t.Fatalf("the cut file was not repaired")
	}
}

// A file removed between the listing and the tar run fails the pull naming it, and
// nothing from that run stays in staging.
func TestPullTarVanishedFile(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	src := filepath.Join(e.dir, "many")
	for i := range 20 {
		write(t, filepath.Join(src, fmt.Sprintf("f%02d.txt", i)), 100)
	}
	e.chown(e.dir)
	c := e.open(Options{})
	ctx := context.Background()
	var files []pullFile
	for i := range 20 {
		p := filepath.Join(src, fmt.Sprintf("f%02d.txt", i))
		fi, _ := os.Stat(p)
		files = append(files, pullFile{remote: p, rel: filepath.Base(p), size: 100, mtime: fi.ModTime(), mode: 0o644})
	}
	os.Remove(filepath.Join(src, "f07.txt"))
	into := t.TempDir()
	root, err := os.OpenRoot(into)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var sent atomic.Int64
	err = c.pullTar(ctx, root, files, nil, &sent)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "f07.txt") {
		t.Fatalf("vanished file: %v, want ErrNotFound naming f07.txt", err)
	}
	if left := treeSums(t, into); len(left) != 0 {
		t.Fatalf("left in staging after a failed tar run: %v", left)
	}
}

func mustStat(t *testing.T, c *Conn, p string) os.FileInfo {
	t.Helper()
	fi, err := c.sftp.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// noParts fails when a temporary name is left below dir.
func noParts(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(filepath.Base(p), ".ferry-part") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

// The umask is read without being set (umask(2) would change it for the whole
// process while it is read).
func TestProcessUmask(t *testing.T) {
	old := unix.Umask(0o027)
	defer unix.Umask(old)
	if got := processUmask(); got != 0o027 {
		t.Errorf("umask read as %#o, want 0027", got)
	}
}

// One probe learns whether the host runs commands, has OpenSSL and has GNU tar: a host
// whose tar is another one (here a script answering like bsdtar, first in the PATH of
// every session) gets its small files over SFTP, still complete.
func TestProbeTellsGNUTarApart(t *testing.T) {
	bin := t.TempDir()
	script := func(name, text string) string {
		p := filepath.Join(bin, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+text), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	script("tar", "echo 'bsdtar 3.6.2 - libarchive 3.6.2'\n")
	// sshd sets PATH itself; a forced command puts the fake tar first.
	wrapper := script("session", `case "$SSH_ORIGINAL_COMMAND" in internal-sftp) exec `+sshtest.SFTPServerPath+`;; esac
PATH=`+bin+`:$PATH; export PATH
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
`)
	for _, d := range []string{bin, filepath.Dir(bin)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		config  []string
		wantTar bool
	}{{"gnu-tar", nil, true}, {"other-tar", []string{"ForceCommand " + wrapper}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, sshtest.Options{Config: tc.config})
			src := filepath.Join(e.dir, "many")
			for i := range 20 {
				write(t, filepath.Join(src, fmt.Sprintf("f%02d.log", i)), 100)
			}
			e.chown(e.dir)
			c := e.open(Options{})
			ctx := context.Background()
			if !c.CanExec(ctx) {
				t.Fatal("the host runs no commands")
			}
			if got := c.canTar(ctx); got != tc.wantTar {
				t.Fatalf("canTar = %v, want %v", got, tc.wantTar)
			}
			roots, _ := c.Roots(nil)
			into := t.TempDir()
			res, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(src)}, Dir: into}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := treeSums(t, into); res.Files != 20 || len(got) != 20 {
				t.Fatalf("pulled %d files, %d landed; want 20", res.Files, len(got))
			}
		})
	}
}
