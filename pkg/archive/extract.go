package archive

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// SafePath checks that name is a portable, relative, contained slash-separated path and
// returns it. It compares whole components, never string prefixes: it refuses the empty
// path, a leading "/", any empty, "." or ".." component, a backslash, a NUL or other
// control character, and invalid UTF-8. The error wraps ErrUnsafe.
func SafePath(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w: %q: %w", ErrUnsafe, name, errors.New(why))
	}
	switch {
	case name == "":
		return bad("empty path")
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	case strings.HasPrefix(name, "/"):
		return bad("absolute path")
	case strings.ContainsRune(name, '\\'):
		return bad("backslash in path")
	case strings.ContainsFunc(name, unicode.IsControl):
		return bad("control character in path")
	}
	for c := range strings.SplitSeq(name, "/") {
		switch c {
		case "":
			return bad("empty path component")
		case ".", "..":
			return bad(fmt.Sprintf("%q component", c))
		}
	}
	return name, nil
}

// LinkError says why a symbolic link does not point inside its tree. It wraps ErrUnsafe;
// its message names the link, its target and the reason, and nothing else, so that
// callers can put it behind their own words.
type LinkError struct {
	Path, Target, Why string
}

func (e *LinkError) Error() string {
	return fmt.Sprintf("%s is a symbolic link to %q, %s", e.Path, e.Target, e.Why)
}

func (e *LinkError) Unwrap() error { return ErrUnsafe }

// CheckLink checks that the symbolic link p (a SafePath) with the target target points
// inside the tree p belongs to, whatever the other links of the tree are: target must
// be relative and clean (path.Clean leaves it as it is), with no backslash or control
// character, and its ".." components, which only a clean path's leading run can hold,
// may climb to the tree's root but not above it. A link such as "x/../y", or through
// another link and back up, is refused: the kernel would resolve ".." from where that
// link leads, not from where the name stands. The error is a *LinkError.
func CheckLink(p, target string) error {
	bad := func(why string) error { return &LinkError{Path: p, Target: target, Why: why} }
	switch {
	case target == "":
		return bad("an empty target")
	case !utf8.ValidString(target) || strings.ContainsRune(target, '\\') || strings.ContainsFunc(target, unicode.IsControl):
		return bad("not a portable path")
	case path.IsAbs(target):
		return bad("an absolute path: it leads outside the tree")
	case path.Clean(target) != target:
		return bad("not a clean path")
	}
	up := 0
	for c := range strings.SplitSeq(target, "/") {
		if c != ".." {
			break
		}
		up++
	}
	if depth := strings.Count(p, "/"); up > depth {
		return bad("which leads outside the tree")
	}
	return nil
}

// Verify reads the archive r (compressed as the manifest says; zstd when it does not
// say) and checks it against
// m without writing anything: the same set of entries, each file's size, mode and
// SHA-256, and, when the manifest has them, the artifact's size and SHA-256. Entries
// that Extract would refuse are refused here too.
func Verify(ctx context.Context, r io.Reader, m contracts.Manifest) error {
	return read(ctx, r, m, nil)
}

// Extract unpacks the archive r into dest, checking it against m as Verify does. It
// creates only directories and regular files, each file under a temporary name first
// and renamed into place once its size and SHA-256 match the manifest; a file or a
// non-directory that already exists in dest is an error, never overwritten. Modes and
// mtimes come from the archive (directories get theirs at the end).
//
// Containment does not rest on name checks alone: every access goes through dest, an
// os.Root. When Extract fails part of the tree may be in dest already (never a file
// that did not verify); extract into a fresh directory and drop it on error.
func Extract(ctx context.Context, r io.Reader, dest *os.Root, m contracts.Manifest) error {
	if dest == nil {
		return errors.New("archive: no destination")
	}
	return read(ctx, r, m, &extractor{root: dest})
}

// zstdMaxWindow bounds the decoder's memory against hostile input; ferry writes
// zstdWindow.
const zstdMaxWindow = 64 << 20

func decompressor(comp string, r io.Reader) (io.Reader, func(), error) {
	switch comp {
	case Zstd, "":
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return nil, nil, fmt.Errorf("archive: zstd: %w", err)
		}
		return d, d.Close, nil
	case Gzip:
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: gzip: %w", ErrMismatch, err)
		}
		return g, func() { _ = g.Close() }, nil
	default:
		return nil, nil, fmt.Errorf("%w: compression %q", ErrUnsupported, comp)
	}
}

// hashReader hashes and counts what is read through it.
type hashReader struct {
	r io.Reader
	h *hashCounter
}

func (h hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	_, _ = h.h.Write(p[:n])
	return n, err
}

// read walks the archive, checking every entry against m, and hands files and
// directories to x when it is not nil.
func read(ctx context.Context, r io.Reader, m contracts.Manifest, x *extractor) (err error) {
	want := make(map[string]contracts.ManifestFile, len(m.Files))
	for _, f := range m.Files {
		if _, err := SafePath(f.Path); err != nil {
			return fmt.Errorf("archive: manifest: %w", err)
		}
		if _, dup := want[f.Path]; dup {
			return fmt.Errorf("%w: the manifest lists %s twice", ErrMismatch, f.Path)
		}
		want[f.Path] = f
	}
	// Manifests written before ferry listed directories have none: then a directory
	// entry is checked only for its place, else against its listing too.
	wantDirs := make(map[string]contracts.ManifestDir, len(m.Dirs))
	for _, d := range m.Dirs {
		if _, err := SafePath(d.Path); err != nil {
			return fmt.Errorf("archive: manifest: %w", err)
		}
		if _, dup := wantDirs[d.Path]; dup {
			return fmt.Errorf("%w: the manifest lists %s twice", ErrMismatch, d.Path)
		}
		if _, dup := want[d.Path]; dup {
			return fmt.Errorf("%w: the manifest lists %s as a file and as a directory", ErrMismatch, d.Path)
		}
		wantDirs[d.Path] = d
	}
	wantLinks := make(map[string]string, len(m.Links))
	for _, l := range m.Links {
		if _, err := SafePath(l.Path); err != nil {
			return fmt.Errorf("archive: manifest: %w", err)
		}
		if err := CheckLink(l.Path, l.Target); err != nil {
			return fmt.Errorf("archive: manifest: %w", err)
		}
		_, file := want[l.Path]
		_, dir := wantDirs[l.Path]
		_, dup := wantLinks[l.Path]
		if file || dir || dup {
			return fmt.Errorf("%w: the manifest lists %s twice", ErrMismatch, l.Path)
		}
		wantLinks[l.Path] = l.Target
	}

	raw := hashReader{r: r, h: newHashCounter(io.Discard)}
	dec, closeDec, err := decompressor(m.Artifact.Compression, raw)
	if err != nil {
		return err
	}
	defer closeDec()
	if x != nil {
		defer func() {
			if ferr := x.finish(); err == nil {
				err = ferr
			}
		}()
	}
	tr := tar.NewReader(dec)
	kinds := map[string]bool{} // path → is a directory (named or implied by a deeper entry)
	named := map[string]bool{} // paths that had an entry of their own
	buf := make([]byte, copyBuffer)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: reading tar: %w", ErrMismatch, err)
		}
		name := hdr.Name
		switch hdr.Typeflag {
		case tar.TypeDir:
			name = strings.TrimSuffix(name, "/")
		case tar.TypeReg, tar.TypeSymlink:
		default:
			return fmt.Errorf("%w: %q is a %s; only regular files, directories and symbolic links inside the tree are accepted", ErrUnsafe, hdr.Name, tarTypeName(hdr.Typeflag))
		}
		p, err := SafePath(name)
		if err != nil {
			return err
		}
		isDir := hdr.Typeflag == tar.TypeDir
		if named[p] {
			return fmt.Errorf("%w: %s appears twice", ErrUnsafe, p)
		}
		if wasDir, ok := kinds[p]; ok && wasDir != isDir {
			return fmt.Errorf("%w: %s is both a file and a directory", ErrUnsafe, p)
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if wasDir, ok := kinds[d]; ok && !wasDir {
				return fmt.Errorf("%w: %s lies below the file %s", ErrUnsafe, p, d)
			}
			kinds[d] = true
		}
		named[p], kinds[p] = true, isDir

		perm := fs.FileMode(hdr.Mode) & fs.ModePerm
		if isDir {
			if _, ok := want[p]; ok {
				return fmt.Errorf("%w: %s is a directory in the archive and a file in the manifest", ErrMismatch, p)
			}
			if len(wantDirs) > 0 {
				md, ok := wantDirs[p]
				switch {
				case !ok:
					return fmt.Errorf("%w: the directory %s is not in the manifest", ErrMismatch, p)
				case uint32(perm) != md.Mode:
					return fmt.Errorf("%w: the directory %s has mode %#o, the manifest says %#o", ErrMismatch, p, perm, md.Mode)
				}
			}
			if x != nil {
				if err := x.dir(p, perm, hdr.ModTime); err != nil {
					return err
				}
			}
			continue
		}
		if hdr.Typeflag == tar.TypeSymlink {
			if err := CheckLink(p, hdr.Linkname); err != nil {
				return fmt.Errorf("archive: %w", err)
			}
			switch target, ok := wantLinks[p]; {
			case !ok:
				return fmt.Errorf("%w: the symbolic link %s is not in the manifest", ErrMismatch, p)
			case target != hdr.Linkname:
				return fmt.Errorf("%w: the symbolic link %s leads to %q, the manifest says %q", ErrMismatch, p, hdr.Linkname, target)
			}
			if x != nil {
				if err := x.link(p, hdr.Linkname); err != nil {
					return err
				}
			}
			continue
		}
		mf, ok := want[p]
		switch {
		case !ok:
			return fmt.Errorf("%w: %s is not in the manifest", ErrMismatch, p)
		case hdr.Size != mf.Size:
			return fmt.Errorf("%w: %s has %d bytes, the manifest says %d", ErrMismatch, p, hdr.Size, mf.Size)
		case uint32(perm) != mf.Mode:
			return fmt.Errorf("%w: %s has mode %#o, the manifest says %#o", ErrMismatch, p, perm, mf.Mode)
		}
		if x != nil {
			err = x.file(ctx, p, tr, mf, hdr.ModTime, buf)
		} else {
			err = check(ctx, p, tr, mf, io.Discard, buf)
		}
		if err != nil {
			return err
		}
	}
	for _, f := range m.Files {
		if !named[f.Path] {
			return fmt.Errorf("%w: %s is in the manifest but not in the archive", ErrMismatch, f.Path)
		}
	}
	for _, l := range m.Links {
		if !named[l.Path] {
			return fmt.Errorf("%w: the symbolic link %s is in the manifest but not in the archive", ErrMismatch, l.Path)
		}
	}
	for _, d := range m.Dirs {
		if !named[d.Path] || !kinds[d.Path] {
			return fmt.Errorf("%w: the directory %s is in the manifest but not in the archive", ErrMismatch, d.Path)
		}
	}
	// The rest of the tar stream may only be padding; then the artifact as a whole.
	if err := drainZeros(dec, buf); err != nil {
		return err
	}
	if _, err := io.CopyBuffer(io.Discard, raw, buf); err != nil {
		return fmt.Errorf("archive: reading: %w", err)
	}
	a := m.Artifact
	if a.SHA256 != "" {
		if got := hex.EncodeToString(raw.h.h.Sum(nil)); got != a.SHA256 || raw.h.n != a.Size {
			return fmt.Errorf("%w: the archive has %d bytes with SHA-256 %s, the manifest says %d bytes with %s",
				ErrMismatch, raw.h.n, got, a.Size, a.SHA256)
		}
	}
	return nil
}

func drainZeros(r io.Reader, buf []byte) error {
	for {
		n, err := r.Read(buf)
		if slices.ContainsFunc(buf[:n], func(b byte) bool { return b != 0 }) {
			return fmt.Errorf("%w: data after the end of the tar", ErrMismatch)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: after the end of the tar: %w", ErrMismatch, err)
		}
	}
}

// check copies exactly mf.Size bytes of the entry p from r to w and compares their
// SHA-256 with the manifest's.
func check(ctx context.Context, p string, r io.Reader, mf contracts.ManifestFile, w io.Writer, buf []byte) error {
	h := sha256.New()
	var n int64
	for n < mf.Size {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := buf[:min(int64(len(buf)), mf.Size-n)]
		m, err := io.ReadFull(r, chunk)
		h.Write(chunk[:m])
		if _, werr := w.Write(chunk[:m]); werr != nil {
			return fmt.Errorf("archive: writing %s: %w", p, werr)
		}
		n += int64(m)
		if err != nil {
			return fmt.Errorf("%w: %s: reading: %w", ErrMismatch, p, err)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != mf.SHA256 {
		return fmt.Errorf("%w: %s has SHA-256 %s, the manifest says %s", ErrMismatch, p, got, mf.SHA256)
	}
	return nil
}

func tarTypeName(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symbolic link"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "named pipe"
	case tar.TypeGNUSparse:
		return "sparse file"
	default:
		return fmt.Sprintf("tar entry of type %q", t)
	}
}

// extractor writes verified entries below root.
type extractor struct {
	root *os.Root
	dirs []dirMeta
}

type dirMeta struct {
	path  string
	perm  fs.FileMode
	mtime time.Time
}

func (x *extractor) dir(p string, perm fs.FileMode, mtime time.Time) error {
	if fi, err := x.root.Lstat(p); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("archive: %s exists in the destination and is not a directory", p)
		}
	} else if err := x.root.MkdirAll(p, 0o700); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	x.dirs = append(x.dirs, dirMeta{path: p, perm: perm, mtime: mtime})
	return nil
}

// place makes the directory p goes in and checks that nothing has its name yet: an
// extraction never replaces what the destination holds.
func (x *extractor) place(p string) error {
	if dir := path.Dir(p); dir != "." {
		if err := x.root.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("archive: %w", err)
		}
	}
	if _, err := x.root.Lstat(p); err == nil {
		return fmt.Errorf("archive: %s exists in the destination already", p)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}

// link makes the symbolic link p to target (checked with CheckLink): through the root,
// so that nothing written later follows it out.
func (x *extractor) link(p, target string) error {
	if err := x.place(p); err != nil {
		return err
	}
	if err := x.root.Symlink(target, p); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}

func (x *extractor) file(ctx context.Context, p string, r io.Reader, mf contracts.ManifestFile, mtime time.Time, buf []byte) error {
	if err := x.place(p); err != nil {
		return err
	}
	// Not derived from the entry's name, which may be as long as a name can be.
	tmp := path.Join(path.Dir(p), ".ferry-tmp-"+randomSuffix())
	f, err := x.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	err = check(ctx, p, r, mf, f, buf)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("archive: writing %s: %w", p, cerr)
	}
	if err == nil {
		err = x.root.Chmod(tmp, fs.FileMode(mf.Mode))
	}
	if err == nil {
		err = x.root.Chtimes(tmp, mtime, mtime)
	}
	if err == nil {
		err = x.root.Rename(tmp, p)
	}
	if err != nil {
		_ = x.root.Remove(tmp)
		return err
	}
	return nil
}

// finish gives the directories their modes and mtimes, deepest first, so that neither
// a read-only directory nor a later entry gets in the way.
func (x *extractor) finish() error {
	var first error
	for _, d := range slices.Backward(x.dirs) {
		if err := x.root.Chmod(d.path, d.perm); err != nil && first == nil {
			first = fmt.Errorf("archive: %w", err)
		}
		if err := x.root.Chtimes(d.path, d.mtime, d.mtime); err != nil && first == nil {
			first = fmt.Errorf("archive: %w", err)
		}
	}
	return first
}

// randomSuffix names temporary files.
func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
