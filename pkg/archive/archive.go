// Package archive writes and reads ferry's archives: a deterministic tar of a staged
// tree, compressed with zstd or gzip, described by a contracts.Manifest that lists every
// file with its size, mode and SHA-256 and the archive itself with its size and SHA-256.
//
// Everything is streamed: Write reads each input file once (hashing it on the way into
// the tar) and hashes the compressed bytes on the way out; Extract and Verify hash each
// entry and the compressed stream while reading. No file is ever held whole in memory.
//
// # The archive format
//
// The same tree gives the same bytes, whoever writes it and however often:
//
//   - entries are the tree's directories, regular files and symbolic links, sorted by
//     their slash-separated path (byte order; a directory comes before what it holds);
//   - each header has uid and gid 0, no user or group names, mode = the permission bits,
//     mtime = the file's own mtime truncated to whole seconds, no access or change time;
//   - a symbolic link is never followed, and is an entry only when it points inside the
//     tree (see CheckLink): mode 0777, its target as the link name, mtime 0 (a link's
//     own time is not carried: neither SFTP nor os.Root can set one);
//   - headers are USTAR where the entry fits (ASCII name of up to 100 bytes, or up to 255
//     split at a slash; size under 8 GiB) and GNU otherwise (GNU long-name records for
//     long or non-ASCII names, base-256 sizes); never PAX, so no extended records that
//     carry times or ids;
//   - zstd (the default) is a sequence of independent frames, one per 2 MiB of the tar
//     stream, compressed several at once (one per CPU, at most four) and written in
//     order, with options spelled out, not left to library defaults that could follow
//     the machine: fastest level, checksum on; each frame's bytes depend only on its
//     input, so the archive does not depend on the concurrency (the tests compare 1, 2,
//     4, 8 and the default);
//     gzip has no name, no comment, a zero mtime and the default level. The bytes are
//     stable for one version of github.com/klauspost/compress; another version may
//     compress differently (manifests and checks never depend on that).
//
// Paths must be portable: valid UTF-8, no backslash, no control character, no empty,
// "." or ".." component (see SafePath). A tree with any other kind of entry is refused
// with ErrUnsupported: a symbolic link that leads out of the tree, devices, sockets,
// pipes. ferry stages a pulled update as it was, its links inside the tree as links; a
// link leading out of a staged tree is an error to look at, not something to follow or
// drop silently.
package archive

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compressions of an archive, as named in contracts.ArchiveArgs and the manifest.
const (
	Zstd = "zstd"
	Gzip = "gzip"
)

// KindArchive is the contracts.ManifestArtifact kind of an archive.
const KindArchive = "archive"

// Errors that say why an archive cannot be written or is refused. They are wrapped with
// the path concerned; test with errors.Is.
var (
	// ErrUnsupported: the tree holds an entry an archive does not carry (a symbolic
	// link leading out of it, a device, a name that is not portable) or the compression
	// is unknown.
	ErrUnsupported = errors.New("archive: unsupported")
	// ErrUnsafe: an archive entry could land outside its destination or is not a
	// plain file, directory or link inside the tree (absolute path, "..", backslash, a
	// link leading out, duplicate).
	ErrUnsafe = errors.New("archive: unsafe entry")
	// ErrMismatch: the archive does not match its manifest (an entry missing or extra,
	// a size, mode or SHA-256 that differs, the artifact's size or SHA-256).
	ErrMismatch = errors.New("archive: does not match its manifest")
	// ErrShrank: a file gave fewer bytes than its size while it was archived.
	ErrShrank = errors.New("file shrank while archived")
)

// Options of Write.
type Options struct {
	// Name is the artifact's file name, recorded in the manifest.
	Name string
	// Compression is Zstd (the default when empty) or Gzip.
	Compression string
	// JobID and Created are recorded in the manifest (Created defaults to now).
	JobID   string
	Created time.Time
	// Progress, when set, is called as input bytes are archived: done of total, the
	// sum of the sizes of the tree's files. The last call has done == total.
	Progress func(done, total int64)

	// zstdConcurrency overrides how many zstd frames are compressed at once (tests).
	zstdConcurrency int
}

// copyBuffer is the size of the chunks files are copied in.
const copyBuffer = 256 << 10

// entry is one directory or regular file of the tree being archived.
type entry struct {
	path  string // slash-separated, relative
	dir   bool
	perm  fs.FileMode
	mtime time.Time
	size  int64
	link  string // the target of a symbolic link ("" for a file or directory)
}

// Write writes a deterministic, compressed tar of the tree under src to w and returns
// its manifest: the files in archive order and the artifact (named opts.Name) with the
// size and SHA-256 of the bytes written to w. The tree's root itself is not an entry.
//
// Each input file is read once. A tree that holds anything but directories and regular
// files, or a non-portable name, is refused with ErrUnsupported before anything is
// written. A file that changes size while it is archived fails the write.
func Write(ctx context.Context, src *os.Root, w io.Writer, opts Options) (contracts.Manifest, error) {
	if _, err := ParseCompression(opts.Compression); err != nil {
		return contracts.Manifest{}, err
	}
	entries, total, err := scan(ctx, src)
	if err != nil {
		return contracts.Manifest{}, err
	}
	aw, err := NewWriter(w, total, opts)
	if err != nil {
		return contracts.Manifest{}, err
	}
	for _, e := range entries {
		switch {
		case e.dir:
			err = aw.Dir(e.path, e.perm, e.mtime)
		case e.link != "":
			err = aw.Link(e.path, e.link)
		default:
			err = addFile(ctx, aw, src, e)
		}
		if err != nil {
			aw.Abort()
			return contracts.Manifest{}, err
		}
	}
	return aw.Close()
}

// ParseCompression returns the compression c names: Zstd for "" (the default), Zstd
// or Gzip; anything else is ErrUnsupported.
func ParseCompression(c string) (string, error) {
	switch c {
	case "":
		return Zstd, nil
	case Zstd, Gzip:
		return c, nil
	}
	return "", fmt.Errorf("%w: compression %q (want zstd or gzip)", ErrUnsupported, c)
}

// Writer writes an archive entry by entry, for sources that are not a local tree (a
// stream from a remote host): the caller adds directories and files in the archive's
// order (sorted by path, see the package comment) and Close returns the manifest.
// Nothing is held in memory beyond a copy buffer and the zstd frames in flight.
type Writer struct {
	opts  Options
	comp  string
	out   *hashCounter
	zw    io.WriteCloser
	tw    *tar.Writer
	buf   []byte
	files []contracts.ManifestFile
	dirs  []contracts.ManifestDir
	links []contracts.ManifestLink
	last  string
	done  int64
	total int64
	err   error // the first failure: the archive is unusable after it
}

// NewWriter starts an archive written to w. total is the sum of the sizes of the
// files that will be added, for opts.Progress.
func NewWriter(w io.Writer, total int64, opts Options) (*Writer, error) {
	comp, err := ParseCompression(opts.Compression)
	if err != nil {
		return nil, err
	}
	out := newHashCounter(w)
	var zw io.WriteCloser
	switch comp {
	case Zstd:
		zw, err = newFrameWriter(out, opts.zstdConcurrency,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderCRC(true),
			zstd.WithWindowSize(zstdWindow))
	case Gzip:
		var gw *gzip.Writer
		gw, err = gzip.NewWriterLevel(out, gzip.DefaultCompression)
		if err == nil {
			gw.Header = gzip.Header{OS: 255} // no name, no comment, zero mtime
		}
		zw = gw
	}
	if err != nil {
		return nil, fmt.Errorf("archive: %s encoder: %w", comp, err)
	}
	return &Writer{opts: opts, comp: comp, out: out, zw: zw, tw: tar.NewWriter(zw), buf: make([]byte, copyBuffer), total: total,
		files: []contracts.ManifestFile{}}, nil
}

// next checks that p may come next: a portable path after every path added so far.
func (aw *Writer) next(p string) error {
	if aw.err != nil {
		return aw.err
	}
	if _, err := SafePath(p); err != nil {
		return fmt.Errorf("%w: %s: name is not portable: %v", ErrUnsupported, p, errors.Unwrap(err))
	}
	if aw.last != "" && p <= aw.last {
		return fmt.Errorf("%w: %s added after %s: entries go in path order, each once", ErrUnsupported, p, aw.last)
	}
	aw.last = p
	return nil
}

// fail records the first failure and returns it.
func (aw *Writer) fail(err error) error {
	if aw.err == nil {
		aw.err = err
	}
	return err
}

// Dir adds the directory p (slash-separated, relative).
func (aw *Writer) Dir(p string, perm fs.FileMode, mtime time.Time) error {
	if err := aw.next(p); err != nil {
		return err
	}
	e := entry{path: p, dir: true, perm: perm.Perm(), mtime: seconds(mtime)}
	if err := aw.tw.WriteHeader(header(e)); err != nil {
		return aw.fail(fmt.Errorf("archive: %s: %w", p, err))
	}
	aw.dirs = append(aw.dirs, contracts.ManifestDir{Path: p, Mode: uint32(e.perm), MTime: e.mtime})
	return nil
}

// Link adds the symbolic link p to target, which must point inside the tree
// (CheckLink).
func (aw *Writer) Link(p, target string) error {
	if err := aw.next(p); err != nil {
		return err
	}
	if err := CheckLink(p, target); err != nil {
		return aw.fail(fmt.Errorf("%w: %w", ErrUnsupported, err))
	}
	if err := aw.tw.WriteHeader(header(entry{path: p, perm: 0o777, mtime: time.Unix(0, 0).UTC(), link: target})); err != nil {
		return aw.fail(fmt.Errorf("archive: %s: %w", p, err))
	}
	aw.links = append(aw.links, contracts.ManifestLink{Path: p, Target: target})
	return nil
}

// File adds the regular file p of size bytes, read from r, and hashes it on the way.
// r must give size bytes; it is not read past them. A shorter r fails the archive.
func (aw *Writer) File(ctx context.Context, p string, size int64, perm fs.FileMode, mtime time.Time, r io.Reader) error {
	if err := aw.next(p); err != nil {
		return err
	}
	e := entry{path: p, perm: perm.Perm(), mtime: seconds(mtime), size: size}
	if err := aw.tw.WriteHeader(header(e)); err != nil {
		return aw.fail(fmt.Errorf("archive: %s: %w", p, err))
	}
	h := sha256.New()
	var n int64
	for n < size {
		if err := ctx.Err(); err != nil {
			return aw.fail(err)
		}
		chunk := aw.buf[:min(int64(len(aw.buf)), size-n)]
		m, err := io.ReadFull(r, chunk)
		if m > 0 {
			h.Write(chunk[:m])
			if _, werr := aw.tw.Write(chunk[:m]); werr != nil {
				return aw.fail(fmt.Errorf("archive: %s: %w", p, werr))
			}
			n += int64(m)
			aw.done += int64(m)
			if aw.opts.Progress != nil {
				aw.opts.Progress(aw.done, aw.total)
			}
		}
		if err != nil {
			// The reader's own end, not an error that wraps one (a stream that broke).
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return aw.fail(fmt.Errorf("archive: %s shrank from %d to %d bytes while it was archived: %w", p, size, n, ErrShrank))
			}
			return aw.fail(fmt.Errorf("archive: reading %s: %w", p, err))
		}
	}
	aw.files = append(aw.files, contracts.ManifestFile{
		Path:   p,
		Size:   size,
		Mode:   uint32(e.perm),
		SHA256: hex.EncodeToString(h.Sum(nil)),
		MTime:  e.mtime,
	})
	return nil
}

// Abort ends an archive that will not be completed, freeing its compressors.
func (aw *Writer) Abort() {
	_ = aw.fail(errors.New("archive: aborted"))
	_ = aw.zw.Close()
}

// Close finishes the archive and returns its manifest.
func (aw *Writer) Close() (contracts.Manifest, error) {
	if aw.err != nil {
		_ = aw.zw.Close()
		return contracts.Manifest{}, aw.err
	}
	aw.err = errors.New("archive: closed")
	if err := aw.tw.Close(); err != nil {
		_ = aw.zw.Close()
		return contracts.Manifest{}, fmt.Errorf("archive: closing tar: %w", err)
	}
	if err := aw.zw.Close(); err != nil {
		return contracts.Manifest{}, fmt.Errorf("archive: closing %s stream: %w", aw.comp, err)
	}
	if aw.opts.Progress != nil && (aw.done != aw.total || aw.total == 0) {
		aw.opts.Progress(aw.total, aw.total)
	}
	created := aw.opts.Created
	if created.IsZero() {
		created = time.Now()
	}
	return contracts.Manifest{
		Schema:  contracts.SchemaManifest,
		JobID:   aw.opts.JobID,
		Created: created.UTC(),
		Artifact: contracts.ManifestArtifact{
			Name:        aw.opts.Name,
			Size:        aw.out.n,
			SHA256:      hex.EncodeToString(aw.out.h.Sum(nil)),
			Compression: aw.comp,
			Kind:        KindArchive,
		},
		Files: aw.files,
		Dirs:  aw.dirs,
		Links: aw.links,
		Empty: len(aw.files) == 0,
	}, nil
}

// zstdWindow is the encoder's window: a frame's whole input (spelled out so the output
// does not change with a library default).
const zstdWindow = zstdFrame

// scan lists the tree under src, sorted by path, and the total size of its files. It
// refuses what an archive does not carry before anything is written.
func scan(ctx context.Context, src *os.Root) ([]entry, int64, error) {
	var entries []entry
	var total int64
	err := fs.WalkDir(src.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("archive: reading %s: %w", p, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		if _, err := SafePath(p); err != nil {
			return fmt.Errorf("%w: %s: name is not portable: %v", ErrUnsupported, p, errors.Unwrap(err))
		}
		switch t := d.Type(); {
		case t == fs.ModeSymlink:
			target, err := src.Readlink(p)
			if err != nil {
				return fmt.Errorf("archive: %w", err)
			}
			if err := CheckLink(p, target); err != nil {
				return fmt.Errorf("%w: %w", ErrUnsupported, err)
			}
			entries = append(entries, entry{path: p, link: target})
			return nil
		case t != 0 && t != fs.ModeDir:
			return fmt.Errorf("%w: %s is a %s; archives hold regular files, directories and links inside the tree only", ErrUnsupported, p, typeName(t))
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("archive: %s: %w", p, err)
		}
		e := entry{path: p, dir: d.IsDir(), perm: fi.Mode().Perm(), mtime: seconds(fi.ModTime())}
		if !e.dir {
			e.size = fi.Size()
			total += e.size
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.path, b.path) })
	return entries, total, nil
}

func typeName(t fs.FileMode) string {
	switch {
	case t&fs.ModeNamedPipe != 0:
		return "named pipe"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeCharDevice != 0:
		return "character device"
	case t&fs.ModeDevice != 0:
		return "device"
	default:
		return "special file (" + t.String() + ")"
	}
}

// seconds truncates t to whole seconds (toward the past, also before 1970), in UTC.
func seconds(t time.Time) time.Time { return time.Unix(t.Unix(), 0).UTC() }

// tarFormat lets the tar writer pick USTAR where it can encode the header and GNU
// otherwise; PAX is never chosen.
const tarFormat = tar.FormatUSTAR | tar.FormatGNU

func header(e entry) *tar.Header {
	h := &tar.Header{
		Name:    e.path,
		Mode:    int64(e.perm),
		ModTime: e.mtime,
		Format:  tarFormat,
	}
	switch {
	case e.dir:
		h.Typeflag = tar.TypeDir
		h.Name += "/"
	case e.link != "":
		h.Typeflag = tar.TypeSymlink
		h.Linkname = e.link
	default:
		h.Typeflag = tar.TypeReg
		h.Size = e.size
	}
	return h
}

// addFile adds the regular file e of src, reading it once. The open file is the
// truth: its size, mode and mtime go into the header.
func addFile(ctx context.Context, aw *Writer, src *os.Root, e entry) error {
	f, err := src.Open(e.path)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s changed into a %s while it was archived", ErrUnsupported, e.path, typeName(fi.Mode().Type()))
	}
	// read once: its pages are dropped behind (see pkg/staging)
	return aw.File(ctx, e.path, fi.Size(), fi.Mode().Perm(), fi.ModTime(), staging.NewReadOnce(f, 0))
}

// hashCounter hashes and counts what passes through it to w.
type hashCounter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func newHashCounter(w io.Writer) *hashCounter { return &hashCounter{w: w, h: sha256.New()} }

func (c *hashCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}
