package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/klauspost/compress/zstd"
)

// craftEntry is one entry of a hand-made tar.
type craftEntry struct {
	name     string
	typ      byte
	link     string
	body     string
	mode     int64
	unlisted bool // leave it out of the manifest
}

func file(name, body string) craftEntry {
	return craftEntry{name: name, typ: tar.TypeReg, body: body, mode: 0o644}
}

func dir(name string) craftEntry { return craftEntry{name: name, typ: tar.TypeDir, mode: 0o755} }

// craft builds a zstd-compressed tar of entries and a manifest that matches it: every
// regular file listed once with its real size, mode and SHA-256 (so that only the
// entry's shape can be refused) and the artifact's size and SHA-256. It returns false
// when archive/tar cannot even encode the entries.
func craft(t testing.TB, entries []craftEntry, trailer []byte) ([]byte, contracts.Manifest, bool) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	m := contracts.Manifest{Schema: contracts.SchemaManifest, Files: []contracts.ManifestFile{}}
	listed := map[string]bool{}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: baseTime}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, m, false
		}
		if e.typ == tar.TypeSymlink && !e.unlisted {
			m.Links = append(m.Links, contracts.ManifestLink{Path: e.name, Target: e.link})
		}
		if e.typ != tar.TypeReg {
			continue
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			return nil, m, false
		}
		if !e.unlisted && !listed[e.name] {
			listed[e.name] = true
			sum := sha256.Sum256([]byte(e.body))
			m.Files = append(m.Files, contracts.ManifestFile{Path: e.name, Size: int64(len(e.body)), Mode: uint32(e.mode & 0o777),
				SHA256: hex.EncodeToString(sum[:]), MTime: baseTime})
		}
	}
	if err := tw.Close(); err != nil {
		return nil, m, false
	}
	tarBuf.Write(trailer)
	var out bytes.Buffer
	zw, err := zstd.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	m.Artifact = contracts.ManifestArtifact{Name: "x.tar.zst", Size: int64(out.Len()), SHA256: sha256Hex(out.Bytes()), Compression: Zstd, Kind: KindArchive}
	return out.Bytes(), m, true
}

// sandbox is a destination directory next to a directory an escape would reach.
type sandbox struct {
	base, dest, outside string
}

func newSandbox(t testing.TB) sandbox {
	t.Helper()
	base := t.TempDir()
	s := sandbox{base: base, dest: filepath.Join(base, "dest"), outside: filepath.Join(base, "outside")}
	must(t, os.Mkdir(s.dest, 0o755))
	must(t, os.Mkdir(s.outside, 0o755))
	must(t, os.WriteFile(filepath.Join(s.outside, "sentinel"), []byte("keep"), 0o644))
	return s
}

// check fails the test when anything appeared outside dest, or when dest holds a link
// leading out of it, a temporary file or a name an archive may not carry.
func (s sandbox) check(t testing.TB) {
	t.Helper()
	for _, d := range []struct {
		dir  string
		want []string
	}{{s.base, []string{"dest", "outside"}}, {s.outside, []string{"sentinel"}}} {
		entries, err := os.ReadDir(d.dir)
		must(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != strings.Join(d.want, ",") {
			t.Fatalf("%s holds %q, want %q", d.dir, names, d.want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(s.outside, "sentinel")); err != nil || string(b) != "keep" {
		t.Fatalf("sentinel changed: %q %v", b, err)
	}
	err := filepath.WalkDir(s.dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == s.dest {
			return err
		}
		rel, _ := filepath.Rel(s.dest, p)
		if d.Type() == fs.ModeSymlink {
			target, err := os.Readlink(p)
			must(t, err)
			if err := CheckLink(filepath.ToSlash(rel), target); err != nil {
				t.Fatalf("dest holds a link leading out: %v", err)
			}
		} else if !d.Type().IsRegular() && !d.IsDir() {
			t.Fatalf("dest holds %s of type %v", rel, d.Type())
		}
		if _, err := SafePath(filepath.ToSlash(rel)); err != nil {
			t.Fatalf("dest holds %s: %v", rel, err)
		}
		if strings.Contains(d.Name(), ".tmp-") {
			t.Fatalf("dest holds a temporary file %s", rel)
		}
		return nil
	})
	must(t, err)
}

// TestExtractRefusesHostileTars: entries that could land outside the destination or are
// not plain files and directories are refused, by Extract and by Verify, and nothing
// appears outside the destination.
func TestExtractRefusesHostileTars(t *testing.T) {
	cases := []struct {
		name    string
		entries []craftEntry
		want    error
	}{
		{"dotdot", []craftEntry{file("../evil", "x")}, ErrUnsafe},
		{"dotdot into sibling", []craftEntry{file("../outside/sentinel", "pwned")}, ErrUnsafe},
		{"dotdot inside", []craftEntry{dir("a/"), file("a/../../evil", "x")}, ErrUnsafe},
		{"dotdot at end", []craftEntry{dir("a/..")}, ErrUnsafe},
		{"absolute", []craftEntry{file("/tmp/evil", "x")}, ErrUnsafe},
		{"absolute dir", []craftEntry{dir("/tmp/")}, ErrUnsafe},
		{"backslash", []craftEntry{file(`a\b`, "x")}, ErrUnsafe},
		{"backslash dotdot", []craftEntry{file(`..\evil`, "x")}, ErrUnsafe},
		{"dot", []craftEntry{dir("./")}, ErrUnsafe},
		{"dot prefix", []craftEntry{file("./a", "x")}, ErrUnsafe},
		{"double slash", []craftEntry{file("a//b", "x")}, ErrUnsafe},
		{"control character", []craftEntry{file("a\x1b[2Jb", "x")}, ErrUnsafe},
		{"symlink escape", []craftEntry{{name: "link", typ: tar.TypeSymlink, link: "../outside"}, file("link/evil", "x")}, ErrUnsafe},
		{"symlink absolute", []craftEntry{{name: "etc", typ: tar.TypeSymlink, link: "/etc"}}, ErrUnsafe},
		{"symlink climbing out", []craftEntry{dir("a/"), {name: "a/l", typ: tar.TypeSymlink, link: "../../x"}}, ErrUnsafe},
		{"symlink not clean", []craftEntry{dir("a/"), {name: "l", typ: tar.TypeSymlink, link: "a/../a"}}, ErrUnsafe},
		{"symlink back up through a link", []craftEntry{dir("a/"), {name: "a/l1", typ: tar.TypeSymlink, link: ".."},
			{name: "a/l2", typ: tar.TypeSymlink, link: "l1/../.."}}, ErrUnsafe},
		{"symlink backslash", []craftEntry{{name: "l", typ: tar.TypeSymlink, link: `..\x`}}, ErrUnsafe},
		{"below a symlink", []craftEntry{dir("d/"), {name: "l", typ: tar.TypeSymlink, link: "d"}, file("l/x", "x")}, ErrUnsafe},
		{"unlisted symlink", []craftEntry{file("a", "x"), {name: "b", typ: tar.TypeSymlink, link: "a", unlisted: true}}, ErrMismatch},
		{"hardlink outside", []craftEntry{{name: "passwd", typ: tar.TypeLink, link: "/etc/passwd"}}, ErrUnsafe},
		{"hardlink inside", []craftEntry{file("a", "x"), {name: "b", typ: tar.TypeLink, link: "a"}}, ErrUnsafe},
		{"character device", []craftEntry{{name: "null", typ: tar.TypeChar, mode: 0o666}}, ErrUnsafe},
		{"fifo", []craftEntry{{name: "fifo", typ: tar.TypeFifo, mode: 0o644}}, ErrUnsafe},
		{"duplicate file", []craftEntry{file("dup", "x"), file("dup", "y")}, ErrUnsafe},
		{"duplicate dir", []craftEntry{dir("d/"), dir("d/")}, ErrUnsafe},
		{"file then below it", []craftEntry{file("f", "x"), file("f/child", "y")}, ErrUnsafe},
		{"below then file", []craftEntry{file("f/child", "y"), file("f", "x")}, ErrUnsafe},
		{"dir then file", []craftEntry{dir("f/"), {name: "f", typ: tar.TypeReg, body: "x", mode: 0o644, unlisted: true}}, ErrUnsafe},
		{"dir listed as file", []craftEntry{dir("f/"), file("f", "x")}, ErrMismatch},
		{"unlisted file", []craftEntry{file("a", "x"), {name: "extra", typ: tar.TypeReg, body: "y", mode: 0o644, unlisted: true}}, ErrMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data, m, ok := craft(t, c.entries, nil)
			if !ok {
				t.Fatal("archive/tar cannot write these entries")
			}
			if err := Verify(context.Background(), bytes.NewReader(data), m); !errors.Is(err, c.want) {
				t.Errorf("Verify = %v, want %v", err, c.want)
			}
			s := newSandbox(t)
			err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, s.dest), m)
			if !errors.Is(err, c.want) {
				t.Errorf("Extract = %v, want %v", err, c.want)
			}
			s.check(t)
		})
	}
}

// TestExtractRefusesMismatch: an archive that differs from its manifest in any way
// fails, and no file that did not verify lands under its name.
func TestExtractRefusesMismatch(t *testing.T) {
	good := []craftEntry{dir("d/"), file("d/a.txt", "alpha"), file("b.txt", "bravo"), {name: "cur", typ: tar.TypeSymlink, link: "d/a.txt"}}
	cases := []struct {
		name    string
		trailer []byte
		edit    func(m *contracts.Manifest, data []byte) []byte
		absent  string // a file that must not be in dest afterwards
	}{
		{"missing from archive", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Files = append(m.Files, contracts.ManifestFile{Path: "zzz", Size: 1, Mode: 0o644, SHA256: sha256Hex([]byte("z"))})
			return d
		}, ""},
		{"size", nil, func(m *contracts.Manifest, d []byte) []byte { m.Files[0].Size++; return d }, "d/a.txt"},
		{"sha256", nil, func(m *contracts.Manifest, d []byte) []byte { m.Files[1].SHA256 = sha256Hex([]byte("other")); return d }, "b.txt"},
		{"mode", nil, func(m *contracts.Manifest, d []byte) []byte { m.Files[0].Mode = 0o600; return d }, "d/a.txt"},
		{"listed as file, is a dir", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Files = append(m.Files, contracts.ManifestFile{Path: "d", Size: 0, Mode: 0o755, SHA256: sha256Hex(nil)})
			return d
		}, ""},
		{"listed twice", nil, func(m *contracts.Manifest, d []byte) []byte { m.Files = append(m.Files, m.Files[0]); return d }, ""},
		{"unsafe manifest path", nil, func(m *contracts.Manifest, d []byte) []byte { m.Files[0].Path = "../d/a.txt"; return d }, ""},
		{"artifact sha256", nil, func(m *contracts.Manifest, d []byte) []byte { m.Artifact.SHA256 = sha256Hex(nil); return d }, ""},
		{"artifact size", nil, func(m *contracts.Manifest, d []byte) []byte { m.Artifact.Size--; return d }, ""},
		{"data after the tar", []byte("sneaky trailing data"), func(m *contracts.Manifest, d []byte) []byte { return d }, ""},
		{"corrupt stream", nil, func(m *contracts.Manifest, d []byte) []byte {
			c := bytes.Clone(d)
			c[len(c)/2] ^= 0xff
			return c
		}, ""},
		{"truncated stream", nil, func(m *contracts.Manifest, d []byte) []byte { return d[:len(d)-10] }, ""},
		{"wrong compression", nil, func(m *contracts.Manifest, d []byte) []byte { m.Artifact.Compression = Gzip; return d }, ""},
		{"symlink target", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Links = []contracts.ManifestLink{{Path: "cur", Target: "b.txt"}}
			return d
		}, "cur"},
		{"symlink missing from archive", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Links = append(m.Links, contracts.ManifestLink{Path: "other", Target: "b.txt"})
			return d
		}, ""},
		{"directory mode", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Dirs = []contracts.ManifestDir{{Path: "d", Mode: 0o700}}
			return d
		}, ""},
		{"directory not in the manifest", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Dirs = []contracts.ManifestDir{{Path: "a", Mode: 0o755}}
			return d
		}, ""},
		{"directory missing from archive", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Dirs = []contracts.ManifestDir{{Path: "d", Mode: 0o755}, {Path: "e", Mode: 0o755}}
			return d
		}, ""},
		{"listed as file and directory", nil, func(m *contracts.Manifest, d []byte) []byte {
			m.Dirs = []contracts.ManifestDir{{Path: "b.txt", Mode: 0o755}, {Path: "d", Mode: 0o755}}
			return d
		}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data, m, ok := craft(t, good, c.trailer)
			if !ok {
				t.Fatal("craft")
			}
			data = c.edit(&m, data)
			if err := Verify(context.Background(), bytes.NewReader(data), m); err == nil {
				t.Error("Verify accepted it")
			}
			s := newSandbox(t)
			if err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, s.dest), m); err == nil {
				t.Error("Extract accepted it")
			}
			s.check(t)
			if c.absent != "" {
				if _, err := os.Lstat(filepath.Join(s.dest, c.absent)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s is in dest although it did not verify (%v)", c.absent, err)
				}
			}
		})
	}
	// A manifest that lists the directories as they are is fine.
	data, m, _ := craft(t, good, nil)
	m.Dirs = []contracts.ManifestDir{{Path: "d", Mode: 0o755}}
	if err := Verify(context.Background(), bytes.NewReader(data), m); err != nil {
		t.Errorf("listed directories: %v", err)
	}
	// Trailing zeros (tar padding to a record) are fine.
	data, m, _ = craft(t, good, make([]byte, 9*512))
	if err := Verify(context.Background(), bytes.NewReader(data), m); err != nil {
		t.Errorf("padding: %v", err)
	}
}

// Links that stay inside the tree come as links, through the root; nothing is written
// through them.
func TestExtractLinks(t *testing.T) {
	entries := []craftEntry{dir("d/"), file("d/a", "alpha"), {name: "d/cur", typ: tar.TypeSymlink, link: "a"},
		{name: "d/up", typ: tar.TypeSymlink, link: ".."}, {name: "top", typ: tar.TypeSymlink, link: "d/cur"}}
	data, m, ok := craft(t, entries, nil)
	if !ok {
		t.Fatal("craft")
	}
	if err := Verify(context.Background(), bytes.NewReader(data), m); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	s := newSandbox(t)
	if err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, s.dest), m); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	s.check(t)
	for p, want := range map[string]string{"d/cur": "a", "d/up": "..", "top": "d/cur"} {
		if got, err := os.Readlink(filepath.Join(s.dest, p)); err != nil || got != want {
			t.Errorf("%s: link to %q (%v), want %q", p, got, err, want)
		}
	}
	if got, err := os.ReadFile(filepath.Join(s.dest, "top")); err != nil || string(got) != "alpha" {
		t.Errorf("top reads %q (%v)", got, err)
	}
}

// TestExtractKeepsExisting: a file that exists in the destination is not overwritten.
func TestExtractKeepsExisting(t *testing.T) {
	data, m, _ := craft(t, []craftEntry{dir("d/"), file("d/a.txt", "alpha")}, nil)
	s := newSandbox(t)
	must(t, os.Mkdir(filepath.Join(s.dest, "d"), 0o755))
	must(t, os.WriteFile(filepath.Join(s.dest, "d", "a.txt"), []byte("mine"), 0o644))
	if err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, s.dest), m); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("Extract = %v, want an error about the existing file", err)
	}
	if b, _ := os.ReadFile(filepath.Join(s.dest, "d", "a.txt")); string(b) != "mine" {
		t.Errorf("existing file overwritten: %q", b)
	}
	// A symbolic link planted in the destination is not followed out of it.
	s = newSandbox(t)
	must(t, os.Symlink("../outside", filepath.Join(s.dest, "d")))
	if err := Extract(context.Background(), bytes.NewReader(data), openRoot(t, s.dest), m); err == nil {
		t.Error("Extract through a planted link succeeded")
	}
	must(t, os.Remove(filepath.Join(s.dest, "d")))
	s.check(t)
}

// TestSafePath lists names that must pass and names that must not.
func TestSafePath(t *testing.T) {
	for _, ok := range []string{"a", "a/b", "a.b/c..d", "..a", "a..", "...", "übersicht/日本語.txt", "a b", longName, "-", "a:b"} {
		if _, err := SafePath(ok); err != nil {
			t.Errorf("SafePath(%q) = %v, want ok", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "/", "/a", "a/", "a//b", "./a", "a/.", "a/./b", "../a", "a/..", "a/../b",
		`a\b`, `..\a`, `\a`, "a\x00b", "a\nb", "a\x7fb", "\xff", "a/\xc3"} {
		if _, err := SafePath(bad); !errors.Is(err, ErrUnsafe) {
			t.Errorf("SafePath(%q) = %v, want ErrUnsafe", bad, err)
		}
	}
}

// FuzzSafePath: whatever SafePath accepts stays below any base it is joined to, whole
// component by whole component, and is already clean.
func FuzzSafePath(f *testing.F) {
	for _, s := range []string{"a", "a/b", "../a", "a/../../b", "/abs", `a\b`, "a//b", "./a", "a/.", "...", "..a/b..", "日本/語", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := SafePath(name)
		if err != nil {
			if !errors.Is(err, ErrUnsafe) {
				t.Fatalf("error %v does not wrap ErrUnsafe", err)
			}
			return
		}
		if p != name || path.Clean(p) != p || !filepath.IsLocal(p) || strings.ContainsAny(p, "\\\x00") {
			t.Fatalf("SafePath accepted %q", name)
		}
		const base = "/srv/staging/job"
		joined := filepath.Join(base, p)
		rel, err := filepath.Rel(base, joined)
		if err != nil || rel != p || !strings.HasPrefix(joined, base+"/") {
			t.Fatalf("%q escapes %s: %s", name, base, joined)
		}
		for c := range strings.SplitSeq(p, "/") {
			if c == "" || c == "." || c == ".." {
				t.Fatalf("SafePath accepted %q with component %q", name, c)
			}
		}
	})
}

// FuzzExtract extracts hand-made tars of two entries (the first one's name, type and
// link chosen by the fuzzer) with a manifest that matches their files: whatever
// happens, nothing lands outside the destination and the destination holds only
// directories and regular files with safe names.
func FuzzExtract(f *testing.F) {
	f.Add("../evil", byte(tar.TypeReg), "", "x", "b")
	f.Add("/abs", byte(tar.TypeReg), "", "x", "b")
	f.Add(`a\b`, byte(tar.TypeReg), "", "x", "b")
	f.Add("link", byte(tar.TypeSymlink), "../outside", "", "link/evil")
	f.Add("link", byte(tar.TypeSymlink), "/", "", "link/tmp/evil")
	f.Add("hl", byte(tar.TypeLink), "../outside/sentinel", "", "hl")
	f.Add("d/", byte(tar.TypeDir), "", "", "d/../../evil")
	f.Add("a", byte(tar.TypeReg), "", "x", "a")
	f.Add("a", byte(tar.TypeReg), "", "x", "a/b")
	f.Add("ok/dir/", byte(tar.TypeDir), "", "", "ok/dir/file")
	f.Fuzz(func(t *testing.T, name string, typ byte, link, body, second string) {
		entries := []craftEntry{{name: name, typ: typ, link: link, body: body, mode: 0o644}, file(second, "second")}
		data, m, ok := craft(t, entries, nil)
		if !ok {
			return
		}
		s := newSandbox(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = Extract(ctx, bytes.NewReader(data), openRoot(t, s.dest), m)
		s.check(t)
	})
}
