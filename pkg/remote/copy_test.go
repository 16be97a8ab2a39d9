package remote

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// The server-side copy gives the same result over exec (cp), on a host that allows
// SFTP only (ForceCommand internal-sftp) by its copy-data, and streamed through the
// client where the server has no copy-data.
func TestCopyExecAndSFTPOnly(t *testing.T) {
	for _, tc := range []struct {
		name     string
		config   []string
		wantExec bool
		copyData bool
	}{
		{"exec", nil, true, true},
		{"sftp-only", []string{"ForceCommand internal-sftp"}, false, true},
		{"sftp-only-streamed", []string{"ForceCommand internal-sftp"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			copyDataOK = tc.copyData
			var mu sync.Mutex // files are copied several at once
			var onHost []string
			testHookCopyData = func(src string) {
				mu.Lock()
				defer mu.Unlock()
				onHost = append(onHost, filepath.Base(src))
			}
			t.Cleanup(func() { copyDataOK, testHookCopyData = true, nil })
			e := newEnv(t, sshtest.Options{Config: tc.config})
			src := filepath.Join(e.dir, "updates")
			write(t, filepath.Join(src, "app", "bin", "app"), 300<<10)
			if err := os.Chmod(filepath.Join(src, "app", "bin", "app"), 0o751); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(src, "app", "lib", "a.jar"), 2<<20)
			write(t, filepath.Join(src, "app", "lib", "b.jar"), 1000)
			write(t, filepath.Join(src, "README.txt"), 100)
			write(t, filepath.Join(src, "NOTES.txt"), 0)
			if err := os.Symlink("lib/a.jar", filepath.Join(src, "app", "current.jar")); err != nil {
				t.Fatal(err)
			}
			e.chown(e.dir)
			c := e.open(Options{})
			if got := c.CanExec(context.Background()); got != tc.wantExec {
				t.Fatalf("CanExec = %v, want %v", got, tc.wantExec)
			}
			roots, _ := c.Roots(nil)
			dest := e.rel(filepath.Join(e.dir, "ferry", "updates", "job1"))
			res, err := c.Copy(context.Background(), roots, []string{e.rel(filepath.Join(src, "app")), e.rel(src) + "/*.txt"}, dest, nil)
			if err != nil {
				t.Fatal(err)
			}
			destAbs := filepath.Join(e.dir, "ferry", "updates", "job1")
			want := treeSums(t, src)
			got := treeSums(t, destAbs)
			if len(got) != len(want) {
				t.Fatalf("copied %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Fatalf("%s: copied sha %q, want %q", k, got[k], v)
				}
			}
			if l, err := os.Readlink(filepath.Join(destAbs, "app", "current.jar")); err != nil || l != "lib/a.jar" {
				t.Errorf("link copied as %q, %v", l, err)
			}
			if res.Bytes != 300<<10+2<<20+1000+100 || res.Files != 5 || len(res.Paths) != 3 {
				t.Errorf("result %+v", res)
			}
			checkFlushed(t, destAbs, 5) // the pull may read the copy after the host lost power
			if wantOnHost := !tc.wantExec && tc.copyData; wantOnHost != (len(onHost) == 5) || !wantOnHost && len(onHost) != 0 {
				t.Errorf("copied with copy-data: %v (want all five files: %v)", onHost, wantOnHost)
			}
			// Mode and modification time (whole seconds: SFTP version 3) come along.
			for _, rel := range []string{"app/bin/app", "app/lib/a.jar", "app/lib/b.jar", "README.txt"} {
				srcFi, err1 := os.Stat(filepath.Join(src, rel))
				dstFi, err2 := os.Stat(filepath.Join(destAbs, rel))
				if err1 != nil || err2 != nil || dstFi.Mode() != srcFi.Mode() || dstFi.ModTime().Unix() != srcFi.ModTime().Unix() {
					t.Errorf("%s: copied as %v (%v), source %v (%v)", rel, dstFi, err2, srcFi, err1)
				}
			}
			// Again: same result, no error (a redelivered command).
			if _, err := c.Copy(context.Background(), roots, []string{e.rel(filepath.Join(src, "app")), e.rel(src) + "/*.txt"}, dest, nil); err != nil {
				t.Fatal(err)
			}
			if got := treeSums(t, destAbs); len(got) != len(want) {
				t.Fatalf("after a second copy: %d files", len(got))
			}
		})
	}
}

// Missing sources and paths leaving the roots fail naming the path, before anything
// is copied.
func TestCopyRefusesMissingAndEscapingPaths(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	root := filepath.Join(e.dir, "root")
	write(t, filepath.Join(root, "ok.txt"), 10)
	write(t, filepath.Join(e.dir, "root2", "trap.txt"), 10)
	write(t, filepath.Join(e.dir, "outside", "secret.txt"), 10)
	if err := os.Symlink(filepath.Join(e.dir, "outside", "secret.txt"), filepath.Join(root, "link.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(e.dir, "outside"), filepath.Join(root, "linkdir")); err != nil {
		t.Fatal(err)
	}
	// A tree whose link leads out of what is copied.
	write(t, filepath.Join(root, "tree", "app.jar"), 10)
	if err := os.Symlink("../../outside/secret.txt", filepath.Join(root, "tree", "out")); err != nil {
		t.Fatal(err)
	}
	e.chown(e.dir)
	if err := os.Mkdir(filepath.Join(root, "locked"), 0o755); err != nil { // root's: not the login's
		t.Fatal(err)
	}
	c := e.open(Options{})
	roots, err := c.Roots([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	r := e.rel(root)
	for _, tc := range []struct {
		sources []string
		dest    string
		want    error
		names   string
	}{
		{[]string{r + "/ok.txt", r + "/missing.txt"}, r + "/dest", ErrNotFound, "missing.txt"},
		{[]string{r + "/*.zip"}, r + "/dest", ErrNotFound, "*.zip"},
		{[]string{r + "/ok.txt", r + "/../outside/secret.txt"}, r + "/dest", ErrOutsideRoots, "../outside/secret.txt"},
		{[]string{r + "/link.txt"}, r + "/dest", ErrOutsideRoots, "link.txt"},
		{[]string{r + "/link*"}, r + "/dest", ErrOutsideRoots, "link"},
		{[]string{e.rel(filepath.Join(e.dir, "root2", "trap.txt"))}, r + "/dest", ErrOutsideRoots, "root2/trap.txt"},
		{[]string{r + "/ok.txt"}, r + "/../root2/dest", ErrOutsideRoots, "root2/dest"},
		{[]string{r + "/ok.txt"}, r + "/linkdir/dest", ErrOutsideRoots, "linkdir/dest"},
		{[]string{r + "/ok.txt"}, r + "/locked/dest", ErrPermission, "remote write refused (permission denied): " + filepath.Join(root, "locked", "dest")},
		{[]string{r + "/tree"}, r + "/dest", ErrInvalidPath, "tree/out on the host is a symbolic link to \"../../outside/secret.txt\", which leads outside the tree"},
	} {
		_, err := c.Copy(context.Background(), roots, tc.sources, tc.dest, nil)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.names) {
			t.Errorf("copy %v to %s: %v, want %v naming %s", tc.sources, tc.dest, err, tc.want, tc.names)
		}
	}
	for _, p := range []string{filepath.Join(root, "dest"), filepath.Join(root, "locked", "dest"), filepath.Join(e.dir, "root2", "dest"), filepath.Join(e.dir, "outside", "dest")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists: something was copied", p)
		}
	}
}

// A destination the login may not write to fails the copy with ErrPermission naming
// the file, by copy-data and streamed alike.
func TestCopyRefusedByTheHost(t *testing.T) {
	for _, copyData := range []bool{true, false} {
		t.Run(map[bool]string{true: "copy-data", false: "streamed"}[copyData], func(t *testing.T) {
			copyDataOK = copyData
			t.Cleanup(func() { copyDataOK = true })
			e := newEnv(t, sshtest.Options{Config: []string{"ForceCommand internal-sftp"}})
			src := filepath.Join(e.dir, "updates", "app.bin")
			write(t, src, 64<<10)
			e.chown(e.dir)
			dest := filepath.Join(e.dir, "locked")
			if err := os.MkdirAll(dest, 0o755); err != nil { // root's: the login cannot write in it
				t.Fatal(err)
			}
			c := e.open(Options{})
			roots, _ := c.Roots(nil)
			_, err := c.Copy(context.Background(), roots, []string{e.rel(src)}, e.rel(dest), nil)
			if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), filepath.Join(dest, "app.bin")) {
				t.Errorf("copy into a directory the login may not write: %v, want ErrPermission naming the file", err)
			}
		})
	}
}
