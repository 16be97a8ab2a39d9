package remote

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// A bundle is what a pull would stage, streamed instead into an archive as it comes
// off the wire: one `tar -c` run on the host sends every listed file, in the archive's
// order, and each goes straight into the sink, hashed and compressed there. Nothing is
// written to staging but the archive, as with `ssh host tar c | zstd`: staging 2 GiB of
// logs first and reading them back cost more than compressing them.

// Sink receives the entries of a bundle in path order (see pkg/archive's Writer).
type Sink interface {
	Dir(p string, perm fs.FileMode, mtime time.Time) error
	// Link adds the symbolic link p to target (checked by the listing: see PullSpec.Links).
	Link(p, target string) error
	// File adds p of size bytes read from r; it reads exactly size bytes.
	File(ctx context.Context, p string, size int64, perm fs.FileMode, mtime time.Time, r io.Reader) error
}

// Listing is the files a pull or bundle takes from the host, listed once: their
// paths below the bundle's root, sizes, modes and modification times.
type Listing struct {
	files []pullFile
	dirs  []pullDir  // sorted by path (see list)
	links []pullLink // sorted by path; only with PullSpec.Links
	// Bytes is the sum of the listed sizes: what the bundle reads.
	Bytes int64
}

// List lists what spec selects on the host (spec.Dir is not used), as Pull does: a
// missing path or an empty result is ErrNotFound unless spec.AllowEmpty.
func (c *Conn) List(ctx context.Context, roots *Roots, spec PullSpec) (*Listing, error) {
	if len(spec.Paths) == 0 {
		return nil, fmt.Errorf("%w: no paths to bundle", ErrInvalidPath)
	}
	return c.list(ctx, roots, spec)
}

// CanStream reports whether Bundle can stream from the host: it runs commands and has
// GNU tar. Where it cannot (an SFTP-only login), pull the files to staging and archive
// them there instead.
func (c *Conn) CanStream(ctx context.Context) bool { return c.canTar(ctx) }

type bundleEntry struct {
	path  string
	file  *pullFile   // set for a file
	link  *pullLink   // set for a link; neither for a directory
	mtime time.Time   // a directory's
	perm  fs.FileMode // a directory's
}

// bundleEntries returns the directories holding l's files, the files and the links,
// sorted by path as archives are. A directory has the mode and time a pull stages it
// with (see pullDir), so that a bundle has the bytes of an archive of what a pull
// stages.
func bundleEntries(l *Listing) []bundleEntry {
	entries := make([]bundleEntry, 0, len(l.dirs)+len(l.files)+len(l.links))
	for _, d := range l.dirs {
		entries = append(entries, bundleEntry{path: d.rel, mtime: d.mtime, perm: d.perm()})
	}
	for i := range l.links {
		entries = append(entries, bundleEntry{path: l.links[i].rel, link: &l.links[i]})
	}
	for i := range l.files {
		entries = append(entries, bundleEntry{path: l.files[i].rel, file: &l.files[i]})
	}
	slices.SortFunc(entries, func(a, b bundleEntry) int { return strings.Compare(a.path, b.path) })
	return entries
}

// Bundle streams the listed files from the host into sink, in path order, through one
// `tar -c` run on the host (CanStream must hold); directories and links come from the
// listing. The stream is not trusted: each
// member must be the next file asked for, a regular file, and at least its listed
// size; a file growing meanwhile is taken up to its listed size, one that vanished or
// shrank fails the bundle. Result.Sent is the bytes of files read.
func (c *Conn) Bundle(ctx context.Context, l *Listing, sink Sink, prog *Progress) (res Result, err error) {
	res = Result{Bytes: l.Bytes, Files: len(l.files)}
	prog.setTotal(l.Bytes)
	entries := bundleEntries(l)
	if len(l.files) == 0 {
		for _, e := range entries {
			if err := e.add(sink); err != nil {
				return res, err
			}
		}
		return res, nil
	}
	if !c.canTar(ctx) {
		return res, errors.New("bundle: the host runs no GNU tar over exec")
	}
	var list bytes.Buffer
	member := func(f *pullFile) string { return strings.TrimPrefix(f.remote, "/") }
	for _, e := range entries {
		if e.file != nil {
			list.WriteString(member(e.file))
			list.WriteByte(0)
		}
	}

	s, err := c.ssh.NewSession()
	if err != nil {
		return res, wrapConn(c.ssh, "exec", err)
	}
	defer s.Close()
	var stderr limitedBuffer
	s.Stdin, s.Stderr = &list, &stderr
	stdout, err := s.StdoutPipe()
	if err != nil {
		return res, wrapConn(c.ssh, "exec", err)
	}
	// As in pullTar: names from stdin, NUL-separated, relative to /; a file linked
	// twice comes whole both times.
	if err := s.Start("tar -C / --null --no-recursion --no-unquote --verbatim-files-from --hard-dereference -T - -cf -"); err != nil {
		return res, wrapConn(c.ssh, "exec", err)
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()

	var sent atomic.Int64
	defer func() { res.Sent = sent.Load() }()
	tr := tar.NewReader(stdout)
	for i, e := range entries {
		if e.file == nil {
			if err := e.add(sink); err != nil {
				return res, err
			}
			continue
		}
		f := e.file
		vanished := func() error {
			return fmt.Errorf("%s vanished while being bundled (tar said: %s): %w", f.remote, firstLine(stderr.String(), member(f)), ErrNotFound)
		}
		hdr, err := tr.Next()
		switch {
		case err == io.EOF:
			return res, c.tarErr(ctx, vanished())
		case err != nil:
			return res, c.tarErr(ctx, fmt.Errorf("tar stream from the host: %w (tar said: %s)", err, stderr.String()))
		case hdr.Name != member(f):
			if slices.ContainsFunc(entries[i+1:], func(l bundleEntry) bool { return l.file != nil && member(l.file) == hdr.Name }) {
				return res, vanished()
			}
			return res, fmt.Errorf("%w: tar on the host sent %q where %q was due", ErrInvalidPath, hdr.Name, member(f))
		case hdr.Typeflag != tar.TypeReg:
			return res, fmt.Errorf("%w: tar on the host sent %q as type %q, not a regular file", ErrInvalidPath, hdr.Name, hdr.Typeflag)
		case hdr.Size < f.size:
			return res, fmt.Errorf("%s shrank to %d bytes while being bundled (listed %d)", f.remote, hdr.Size, f.size)
		}
		r := &sizedReader{r: &memberReader{r: io.LimitReader(tr, f.size), name: f.remote}, size: f.size, prog: prog, sent: &sent}
		if err := sink.File(ctx, f.rel, f.size, f.mode, f.mtime, r); err != nil {
			return res, c.tarErr(ctx, err)
		}
	}
	if hdr, err := tr.Next(); err != io.EOF {
		if err == nil {
			return res, fmt.Errorf("%w: tar on the host sent %q, which was not asked for", ErrInvalidPath, hdr.Name)
		}
		return res, c.tarErr(ctx, fmt.Errorf("tar stream from the host: %w (tar said: %s)", err, stderr.String()))
	}
	_, _ = io.Copy(io.Discard, stdout)
	err = s.Wait()
	var exit interface{ ExitStatus() int }
	// GNU tar exits 1 when a file changed while it was read: a growing log, taken up
	// to its listed size. Anything else (2: a file shrank and was padded, or could
	// not be read) fails the bundle.
	if err != nil && !(errors.As(err, &exit) && exit.ExitStatus() == 1) {
		if terr := c.tarErr(ctx, err); terr != err {
			return res, terr
		}
		return res, fmt.Errorf("tar on the host: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return res, nil
}

// add adds a directory or link entry to sink.
func (e bundleEntry) add(sink Sink) error {
	if e.link != nil {
		return sink.Link(e.path, e.link.target)
	}
	return sink.Dir(e.path, e.perm, e.mtime)
}

// memberReader reads a member of a tar stream, up to its listed size. The stream
// ending early is the connection or the host's tar dying (tar pads a file that
// shrinks), so it is said so, not passed on as an EOF the archive would take for a
// file that shrank.
type memberReader struct {
	r    io.Reader
	name string
}

func (m *memberReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("the tar stream from the host ended inside %s: %w", m.name, err)
	}
	return n, err
}
