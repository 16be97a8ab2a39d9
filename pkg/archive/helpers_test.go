package archive

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// logData writes n bytes of log-like, semi-compressible data (zstd takes it to about a
// quarter) generated from seed.
func logData(w io.Writer, n int64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	levels := []string{"INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"}
	paths := []string{"/api/v1/tickets", "/api/v1/hosts", "/healthz", "/api/v1/jobs/submit", "/static/app.js", "/login"}
	bw := bufio.NewWriterSize(w, 64<<10)
	line := make([]byte, 0, 256)
	t := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	var written int64
	for written < n {
		t = t.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		line = t.AppendFormat(line[:0], time.RFC3339Nano)
		line = append(line, ' ')
		line = append(line, levels[rng.IntN(len(levels))]...)
		line = append(line, " request id="...)
		line = strconv.AppendUint(line, rng.Uint64(), 16)
		line = append(line, " path="...)
		line = append(line, paths[rng.IntN(len(paths))]...)
		line = append(line, " took="...)
		line = strconv.AppendInt(line, int64(rng.IntN(5000)), 10)
		line = append(line, "ms status="...)
		line = strconv.AppendInt(line, int64(200+rng.IntN(4)*100), 10)
		line = append(line, '\n')
		if rem := n - written; int64(len(line)) > rem {
			line = line[:rem]
		}
		if _, err := bw.Write(line); err != nil {
			return err
		}
		written += int64(len(line))
	}
	return bw.Flush()
}

// longName is a single path component of 150 characters.
var longName = strings.Repeat("long-name-", 14) + "0123456789.txt"

// treeFile is one file of a generated tree.
type treeFile struct {
	path string
	size int64 // generated content of this size
	perm fs.FileMode
	// repeat makes the content a 16 KiB block of log data repeated, each copy stamped
	// with its index: big and cheap to compress for zstd and gzip alike (the race
	// detector slows compression down some fifteen times).
	repeat bool
}

// repeatedData writes n bytes: a 16 KiB block of log data, again and again, each copy
// starting with its index.
func repeatedData(w io.Writer, n int64, seed uint64) error {
	var block bytes.Buffer
	if err := logData(&block, 16<<10, seed); err != nil {
		return err
	}
	b := block.Bytes()
	for i := int64(0); n > 0; i++ {
		copy(b, fmt.Sprintf("%016x", i))
		k := min(n, int64(len(b)))
		if _, err := w.Write(b[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// smallTree has nested directories, an empty file, a 150-character name, unicode
// names and several modes.
var smallTree = []treeFile{
	{path: "README.txt", size: 1200, perm: 0o644},
	{path: "bin/run.sh", size: 300, perm: 0o755},
	{path: "data/empty.dat", size: 0, perm: 0o600},
	{path: "data/nested/deeper/deepest/leaf.txt", size: 42, perm: 0o444},
	{path: "data/" + longName, size: 1000, perm: 0o644},
	{path: "docs/übersicht-日本語.md", size: 5000, perm: 0o644},
	{path: "docs/ünïcödé/ファイル.txt", size: 77, perm: 0o664},
	{path: "a-b", size: 1, perm: 0o644},       // sorts before a/ …
	{path: "a/b/c.txt", size: 3, perm: 0o644}, // … which holds a file
}

// mediumTree adds 3 MiB of log data (many zstd blocks) to smallTree.
var mediumTree = append(slices.Clip(smallTree), treeFile{path: "data/app.log", size: 3 << 20, perm: 0o640})

// sampleTree adds a 20 MiB file to smallTree.
var sampleTree = append(slices.Clip(smallTree), treeFile{path: "data/big.log", size: 20 << 20, perm: 0o640, repeat: true})

// sampleEmptyDirs are directories without files in sampleTree.
var sampleEmptyDirs = []string{"empty-dir", "data/nested/empty"}

var baseTime = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

// makeTree writes files (and the empty directories) below dir, every entry with its
// own mtime (with a fraction of a second, which archives drop), directories last so
// their mtimes hold.
func makeTree(t testing.TB, dir string, files []treeFile, emptyDirs []string) {
	t.Helper()
	for i, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f.path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		gen := logData
		if f.repeat {
			gen = repeatedData
		}
		if err := gen(w, f.size, uint64(i)+1); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.perm); err != nil {
			t.Fatal(err)
		}
		mt := baseTime.Add(time.Duration(i)*time.Hour + 123456789*time.Nanosecond)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range emptyDirs {
		if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(d)), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != dir {
			dirs = append(dirs, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range slices.Backward(dirs) {
		mt := baseTime.Add(-time.Duration(i+1)*time.Minute + 5e8)
		if err := os.Chtimes(d, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
}

// openRoot opens dir as an os.Root closed at the end of the test.
func openRoot(t testing.TB, dir string) *os.Root {
	t.Helper()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// writeArchive archives dir into a byte slice.
func writeArchive(t testing.TB, dir string, opts Options) ([]byte, contracts.Manifest) {
	t.Helper()
	var buf bytes.Buffer
	m, err := Write(context.Background(), openRoot(t, dir), &buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), m
}

// node is what compareTrees compares of one entry.
type node struct {
	dir    bool
	perm   fs.FileMode
	mtime  int64
	size   int64
	sha256 string
}

// snapshot describes the tree below dir by relative slash path.
func snapshot(t testing.TB, dir string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n := node{dir: d.IsDir(), perm: fi.Mode().Perm(), mtime: fi.ModTime().Unix()}
		if !fi.Mode().IsDir() && !fi.Mode().IsRegular() {
			t.Errorf("%s: unexpected type %v", rel, fi.Mode().Type())
		}
		if fi.Mode().IsRegular() {
			n.size = fi.Size()
			n.sha256 = fileSHA256(t, p)
		}
		out[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func fileSHA256(t testing.TB, p string) string {
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

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
