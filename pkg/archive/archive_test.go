package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// TestRoundTrip archives the sample tree, verifies the archive, extracts it into a
// fresh directory and finds the same tree (content, modes, mtimes to the second) and a
// manifest that describes exactly the files and the bytes written.
func TestRoundTrip(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, sampleTree, sampleEmptyDirs)
	want := snapshot(t, src)
	for _, comp := range []string{Zstd, Gzip} {
		t.Run(comp, func(t *testing.T) {
			created := time.Date(2024, 7, 1, 0, 0, 0, 0, time.UTC)
			data, m := writeArchive(t, src, Options{Name: "update.tar." + comp, Compression: comp, JobID: "job-1", Created: created})

			if m.Schema != contracts.SchemaManifest || m.JobID != "job-1" || !m.Created.Equal(created) || m.Empty {
				t.Errorf("manifest header %+v", m)
			}
			wantArt := contracts.ManifestArtifact{Name: "update.tar." + comp, Size: int64(len(data)), SHA256: sha256Hex(data), Compression: comp, Kind: KindArchive}
			if m.Artifact != wantArt {
				t.Errorf("artifact %+v, want %+v", m.Artifact, wantArt)
			}
			if !slices.IsSortedFunc(m.Files, func(a, b contracts.ManifestFile) int { return strings.Compare(a.Path, b.Path) }) {
				t.Error("manifest files not sorted by path")
			}
			if len(m.Files) != len(sampleTree) {
				t.Errorf("manifest has %d files, want %d", len(m.Files), len(sampleTree))
			}
			for _, f := range m.Files {
				n, ok := want[f.Path]
				if !ok || n.dir || n.size != f.Size || n.sha256 != f.SHA256 || uint32(n.perm) != f.Mode || n.mtime != f.MTime.Unix() {
					t.Errorf("manifest file %+v, tree has %+v", f, n)
				}
				if f.MTime.Nanosecond() != 0 {
					t.Errorf("%s: mtime %v not truncated to seconds", f.Path, f.MTime)
				}
			}

			// Every directory is listed, the empty ones too, with its mode and time.
			var dirs []string
			for p, n := range want {
				if n.dir {
					dirs = append(dirs, p)
				}
			}
			slices.Sort(dirs)
			if got := len(m.Dirs); got != len(dirs) || got < len(sampleEmptyDirs) {
				t.Errorf("manifest lists %d directories, the tree has %v", got, dirs)
			}
			for i, d := range m.Dirs {
				n := want[d.Path]
				if i < len(dirs) && d.Path != dirs[i] || !n.dir || uint32(n.perm) != d.Mode || n.mtime != d.MTime.Unix() {
					t.Errorf("manifest directory %+v, tree has %+v", d, n)
				}
			}

			if err := Verify(context.Background(), bytes.NewReader(data), m); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			dst := t.TempDir()
			if err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, dst), m); err != nil {
				t.Fatalf("Extract: %v", err)
			}
			got := snapshot(t, dst)
			for p, w := range want {
				if g, ok := got[p]; !ok || g != w {
					t.Errorf("%s: extracted %+v, want %+v", p, g, w)
				}
			}
			for p := range got {
				if _, ok := want[p]; !ok {
					t.Errorf("%s: extracted but not in the source", p)
				}
			}
		})
	}
}

// A link that points inside the tree is an entry of its own, listed in the manifest,
// and comes back as a link.
func TestLinksRoundTrip(t *testing.T) {
	src := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(src, "lib"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "lib", "libapp.so.1"), []byte("elf"), 0o755))
	must(t, os.Symlink("libapp.so.1", filepath.Join(src, "lib", "libapp.so")))
	must(t, os.Symlink("lib", filepath.Join(src, "current")))
	data, m := writeArchive(t, src, Options{})
	want := []contracts.ManifestLink{{Path: "current", Target: "lib"}, {Path: "lib/libapp.so", Target: "libapp.so.1"}}
	if !slices.Equal(m.Links, want) || len(m.Files) != 1 {
		t.Fatalf("manifest links %v, files %v; want links %v and one file", m.Links, m.Files, want)
	}
	dst := t.TempDir()
	if err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, dst), m); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	for _, l := range want {
		if got, err := os.Readlink(filepath.Join(dst, l.Path)); err != nil || got != l.Target {
			t.Errorf("%s: link to %q (%v), want %q", l.Path, got, err, l.Target)
		}
	}
	again, _ := writeArchive(t, dst, Options{})
	if !bytes.Equal(again, data) {
		t.Error("the extracted tree archives to other bytes")
	}
}

// TestCheckLink: a link's target must stay inside the tree, whatever other links do.
func TestCheckLink(t *testing.T) {
	for _, c := range []struct {
		path, target string
		ok           bool
	}{
		{"a", "b", true}, {"a/l", "../b", true}, {"a/b/l", "../../c/d", true}, {"a/l", "..", true}, {"a", ".", true},
		{"a/l", "../..", false}, {"l", "../x", false}, {"l", "/etc/passwd", false}, {"l", "", false},
		{"l", "a/../b", false}, {"l", "./b", false}, {"l", "b/", false}, {"l", `b\c`, false}, {"a/l", "x/../../..", false},
	} {
		if err := CheckLink(c.path, c.target); (err == nil) != c.ok || err != nil && !errors.Is(err, ErrUnsafe) {
			t.Errorf("CheckLink(%q, %q) = %v, want ok %v", c.path, c.target, err, c.ok)
		}
	}
}

// TestDeterministic: the same tree gives the same bytes, twice, from a copy in another
// directory, and whatever the zstd encoder's concurrency.
func TestDeterministic(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, mediumTree, sampleEmptyDirs)
	copyDir := filepath.Join(t.TempDir(), "elsewhere", "copy")
	makeTree(t, copyDir, mediumTree, sampleEmptyDirs)
	for _, comp := range []string{Zstd, Gzip} {
		t.Run(comp, func(t *testing.T) {
			first, m1 := writeArchive(t, src, Options{Compression: comp})
			again, m2 := writeArchive(t, src, Options{Compression: comp})
			copied, _ := writeArchive(t, copyDir, Options{Compression: comp})
			if !bytes.Equal(first, again) || m1.Artifact != m2.Artifact || !slices.Equal(m1.Files, m2.Files) {
				t.Error("two writes of the same tree differ")
			}
			if !bytes.Equal(first, copied) {
				t.Error("a copy of the tree in another directory gives other bytes")
			}
			if comp != Zstd {
				return
			}
			// -1: the library's default (GOMAXPROCS encoders).
			for _, c := range []int{-1, 1, 2, 4, 8} {
				got, _ := writeArchive(t, src, Options{Compression: comp, zstdConcurrency: c})
				if !bytes.Equal(first, got) {
					t.Errorf("zstd with concurrency %d gives other bytes than the default", c)
				}
			}
		})
	}
}

// TestTarHeaders checks what the archive's headers carry: sorted entries, directories
// and regular files only, uid/gid 0 without names, permission bits, whole-second
// mtimes, no access/change times, no PAX records; USTAR unless the name needs GNU.
func TestTarHeaders(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, mediumTree, sampleEmptyDirs)
	data, _ := writeArchive(t, src, Options{Compression: Gzip})
	dec, closeDec, err := decompressor(Gzip, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer closeDec()
	tr := tar.NewReader(dec)
	var names []string
	sawGNU := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, strings.TrimSuffix(h.Name, "/"))
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir {
			t.Errorf("%s: type %q", h.Name, h.Typeflag)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d/%d %q/%q", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if h.Mode&^0o777 != 0 {
			t.Errorf("%s: mode %o has more than permission bits", h.Name, h.Mode)
		}
		if h.ModTime.Nanosecond() != 0 || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: times %v %v %v", h.Name, h.ModTime, h.AccessTime, h.ChangeTime)
		}
		if len(h.PAXRecords) != 0 || h.Format&tar.FormatPAX != 0 {
			t.Errorf("%s: PAX (%v, %v)", h.Name, h.Format, h.PAXRecords)
		}
		ascii := strings.IndexFunc(h.Name, func(r rune) bool { return r > 127 }) < 0
		switch {
		case len(h.Name) <= 100 && ascii && h.Format != tar.FormatUSTAR:
			t.Errorf("%s: format %v, want USTAR", h.Name, h.Format)
		case h.Format == tar.FormatGNU:
			sawGNU = true
		}
	}
	if !sawGNU {
		t.Error("no GNU header: the 150-character and unicode names should need one")
	}
	if !slices.IsSorted(names) {
		t.Errorf("entries not sorted: %q", names)
	}
	if !slices.Contains(names, "empty-dir") || !slices.Contains(names, "data/"+longName) {
		t.Errorf("entries %q lack the empty directory or the long name", names)
	}
}

// TestEmptyTree: no files gives a valid archive with an empty, non-nil file list and
// Empty set; empty directories still travel.
func TestEmptyTree(t *testing.T) {
	for _, dirs := range [][]string{nil, {"only/empty"}} {
		src := t.TempDir()
		makeTree(t, src, nil, dirs)
		data, m := writeArchive(t, src, Options{Name: "logs.tar.zst"})
		if !m.Empty || m.Files == nil || len(m.Files) != 0 || m.Artifact.Size != int64(len(data)) || m.Artifact.Compression != Zstd {
			t.Errorf("manifest %+v", m)
		}
		dst := t.TempDir()
		if err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, dst), m); err != nil {
			t.Fatal(err)
		}
		if got := snapshot(t, dst); len(got) != 2*len(dirs) {
			t.Errorf("extracted %v", got)
		}
	}
}

// TestWriteRefuses: symbolic links (inside the tree or out of it), named pipes and
// names an extraction would refuse are not archived, with an error that names them.
func TestWriteRefuses(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{"symlink outside", func(t *testing.T, dir string) {
			must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "passwd")))
		}, `passwd is a symbolic link to "/etc/passwd", an absolute path: it leads outside the tree`},
		{"relative symlink outside", func(t *testing.T, dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
			must(t, os.Symlink("../../x", filepath.Join(dir, "sub", "up")))
		}, `sub/up is a symbolic link to "../../x", which leads outside the tree`},
		{"symlink not clean", func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "app.log"), []byte("x"), 0o644))
			must(t, os.Symlink("./app.log", filepath.Join(dir, "current")))
		}, `current is a symbolic link to "./app.log", not a clean path`},
		{"symlinked directory", func(t *testing.T, dir string) {
			must(t, os.Symlink(t.TempDir(), filepath.Join(dir, "elsewhere")))
		}, "elsewhere is a symbolic link"},
		{"named pipe", func(t *testing.T, dir string) {
			must(t, syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
		}, "fifo is a named pipe"},
		{"backslash", func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, `a\b`), nil, 0o644))
		}, `a\b: name is not portable`},
		{"control character", func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "a\nb"), nil, 0o644))
		}, "name is not portable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.setup(t, dir)
			var out bytes.Buffer
			_, err := Write(context.Background(), openRoot(t, dir), &out, Options{})
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Write = %v, want ErrUnsupported saying %q", err, c.want)
			}
			if out.Len() != 0 {
				t.Errorf("wrote %d bytes before refusing", out.Len())
			}
		})
	}
	_, err := Write(context.Background(), openRoot(t, t.TempDir()), io.Discard, Options{Compression: "xz"})
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("compression xz: %v", err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestProgress: progress counts input bytes up to the total, and ends with done == total.
func TestProgress(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, mediumTree, nil)
	var total int64
	for _, f := range mediumTree {
		total += f.size
	}
	var calls [][2]int64
	_, err := Write(context.Background(), openRoot(t, src), io.Discard, Options{Progress: func(d, tot int64) { calls = append(calls, [2]int64{d, tot}) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) < 10 {
		t.Fatalf("%d progress calls", len(calls))
	}
	for i, c := range calls {
		if c[1] != total || c[0] > total || (i > 0 && c[0] < calls[i-1][0]) {
			t.Fatalf("call %d: %v (total %d)", i, c, total)
		}
	}
	if last := calls[len(calls)-1]; last[0] != total {
		t.Errorf("last call %v", last)
	}
	// An empty tree still reports its end.
	calls = nil
	if _, err := Write(context.Background(), openRoot(t, t.TempDir()), io.Discard, Options{Progress: func(d, tot int64) { calls = append(calls, [2]int64{d, tot}) }}); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || calls[0] != [2]int64{0, 0} {
		t.Errorf("empty tree: %v", calls)
	}
}

// TestWriteCancelled: a cancelled context stops the write.
func TestWriteCancelled(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, mediumTree, nil)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Write(ctx, openRoot(t, src), io.Discard, Options{Progress: func(done, _ int64) {
		if done > 1<<20 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Write = %v, want context.Canceled", err)
	}
}

// TestWriteMemory archives a 256 MiB file (sparse: the disk is not the bottleneck) and
// checks that the heap stays small: nothing is held whole in memory. Under the race
// detector, which slows compression down some fifteen times, the file has 64 MiB: still
// twice the bound.
func TestWriteMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB")
	}
	size := int64(256 << 20)
	if raceEnabled {
		size = 64 << 20
	}
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "big.img"))
	must(t, err)
	must(t, f.Truncate(size))
	_, err = f.WriteAt([]byte("not only zeros"), size/3)
	must(t, err)
	must(t, f.Close())
	for _, comp := range []string{Zstd, Gzip} {
		t.Run(comp, func(t *testing.T) {
			peak := heapPeak(t, func() {
				m, err := Write(context.Background(), openRoot(t, src), io.Discard, Options{Compression: comp})
				must(t, err)
				if len(m.Files) != 1 || m.Files[0].Size != size {
					t.Errorf("files %+v", m.Files)
				}
			})
			t.Logf("%s: heap grew by at most %.1f MiB archiving %d MiB", comp, float64(peak)/(1<<20), size>>20)
			if peak > 32<<20 {
				t.Errorf("%s: heap grew by %d MiB while archiving %d MiB", comp, peak>>20, size>>20)
			}
		})
	}
}

// heapPeak runs f and returns the largest growth of HeapInuse seen while it ran.
func heapPeak(t testing.TB, f func()) uint64 {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > base {
				peak = max(peak, ms.HeapInuse-base)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	f()
	close(stop)
	<-done
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > base {
		peak = max(peak, ms.HeapInuse-base)
	}
	return peak
}
