package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/staging"
)

// PullSpec says what Pull copies from the host and where it lands.
type PullSpec struct {
	// Paths are files, directories or globs; relative ones start at the login's home.
	// A directory lands as its contents; a file, and every glob match, under its name.
	Paths []string
	// Since, when set, keeps only files modified within it (by the host's clock).
	Since time.Duration
	// MaxSize, when set, caps the total bytes: the newest files that fit are pulled,
	// the others skipped.
	MaxSize int64
	// AllowEmpty makes missing paths, globs matching nothing and an empty result
	// a success.
	AllowEmpty bool
	// Links carries the symbolic links of a tree that point inside it, as links (see
	// archive.CheckLink), and refuses the pull, naming the link, at one that leads
	// out; without it links are skipped. A path named in Paths is always followed.
	Links bool
	// Dir is the local directory the files land in (created if needed).
	Dir string
}

type pullFile struct {
	remote string
	rel    string // slash-separated, below Dir
	size   int64  // as listed: a file growing meanwhile is pulled up to this size
	mtime  time.Time
	mode   fs.FileMode
}

// pullDir is a directory on the host that is pulled: its staged copy takes
// its permission bits (with the owner's rwx added: staging must stay writable and
// removable) and its modification time, once the files are in, so that an archive
// of the staged tree does not carry the time it was staged.
type pullDir struct {
	rel   string
	mtime time.Time
	mode  fs.FileMode
}

// perm is the staged directory's mode.
func (d pullDir) perm() fs.FileMode { return d.mode | 0o700 }

// pullLink is a symbolic link on the host that is pulled as a link.
type pullLink struct {
	rel    string
	target string
}

// Pull copies files from the host into spec.Dir, relative structure preserved, several
// files at once; many small files come in one tar stream where the host has GNU tar
// (see pullTar), a large one from `cat` where the host runs commands and the link is
// short (see streamFile), over SFTP lanes where it is long (see pullLanes). Each file
// is written to a temporary name (".<name>.ferry-part") and renamed when complete; a
// retry skips files already in place (same size and modification time) and resumes a
// partial file from its verified prefix. Result.Paths are the landed files relative to
// spec.Dir, slash-separated.
func (c *Conn) Pull(ctx context.Context, roots *Roots, spec PullSpec, prog *Progress) (Result, error) {
	var res Result
	if len(spec.Paths) == 0 {
		return res, fmt.Errorf("%w: no paths to pull", ErrInvalidPath)
	}
	l, err := c.list(ctx, roots, spec)
	if err != nil {
		return res, err
	}
	files := l.files

	if err := os.MkdirAll(spec.Dir, 0o750); err != nil {
		return res, fmt.Errorf("staging: %w", err)
	}
	root, err := os.OpenRoot(spec.Dir)
	if err != nil {
		return res, fmt.Errorf("staging: %w", err)
	}
	defer root.Close()
	for _, d := range l.dirs {
		if err := root.MkdirAll(filepath.FromSlash(d.rel), 0o750); err != nil {
			return res, fmt.Errorf("staging: %w", err)
		}
	}
	for _, ln := range l.links {
		if err := stageLink(root, ln); err != nil {
			return res, err
		}
	}
	res.Bytes = l.Bytes
	prog.setTotal(res.Bytes)
	var sent atomic.Int64
	viaTar, viaSFTP := c.splitForTar(ctx, files)
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	tarDone := make(chan struct{})
	go func() {
		defer close(tarDone)
		if len(viaTar) > 0 {
			if err := c.pullTar(pctx, root, viaTar, prog, &sent); err != nil {
				cancel(err)
			}
		}
	}()
	if err := c.each(pctx, len(viaSFTP), func(i int) error {
		return c.pullOne(pctx, root, viaSFTP[i], prog, &sent)
	}); err != nil {
		cancel(err)
	}
	<-tarDone
	err = context.Cause(pctx) // the first failure, or the caller's cancellation
	res.Sent = sent.Load()
	if err != nil {
		return res, err
	}
	// Deepest first: a directory's time is set once nothing changes in it.
	for _, d := range slices.Backward(l.dirs) {
		p := filepath.FromSlash(d.rel)
		if err := root.Chmod(p, d.perm()); err != nil {
			return res, fmt.Errorf("staging: %w", err)
		}
		if err := root.Chtimes(p, d.mtime, d.mtime); err != nil {
			return res, fmt.Errorf("staging: %w", err)
		}
	}
	if err := staging.Flush(spec.Dir); err != nil {
		return res, fmt.Errorf("staging: %w", err)
	}
	for _, f := range files {
		res.Paths = append(res.Paths, f.rel)
	}
	res.Files = len(files)
	return res, nil
}

// linkErr is ErrInvalidPath for the link hostPath that archive.CheckLink refused.
func linkErr(hostPath string, err error) error {
	var le *archive.LinkError
	if errors.As(err, &le) {
		return fmt.Errorf("%w: %s on the host is a symbolic link to %q, %s", ErrInvalidPath, hostPath, le.Target, le.Why)
	}
	return fmt.Errorf("%w: %s: %v", ErrInvalidPath, hostPath, err)
}

// stageLink makes the symbolic link ln in root, replacing whatever an earlier attempt
// left under its name.
func stageLink(root *os.Root, ln pullLink) error {
	p := filepath.FromSlash(ln.rel)
	if fi, err := root.Lstat(p); err == nil {
		if fi.Mode()&fs.ModeSymlink != 0 {
			if t, err := root.Readlink(p); err == nil && t == ln.target {
				return nil
			}
		}
		if err := root.RemoveAll(p); err != nil {
			return fmt.Errorf("staging: %w", err)
		}
	}
	if err := root.Symlink(ln.target, p); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	return nil
}

// list expands spec's paths on the host into the regular files to pull, filtered by
// Since and MaxSize and sorted by their path below spec.Dir. Links inside a tree are
// not followed: with spec.Links they are listed as links, else skipped; two entries
// that would land on one path are refused. The directories
// listed, sorted by path, are every one that holds a listed file and, unless Since or
// MaxSize filtered the files, every other one walked too: a tree comes whole, its empty
// directories with it.
func (c *Conn) list(ctx context.Context, roots *Roots, spec PullSpec) (*Listing, error) {
	srcs, err := c.expand(ctx, roots, spec.Paths, spec.AllowEmpty)
	if err != nil {
		return nil, err
	}
	var files []pullFile
	var links []pullLink
	byRel := map[string]string{}
	dirs := map[string]pullDir{}
	for _, s := range srcs {
		base := s.name
		if s.info.IsDir() && !hasMeta(s.given) {
			base = "" // a directory named directly lands as its contents
		}
		err := c.walk(ctx, s.real, s.info, func(rel string, fi fs.FileInfo) error {
			if fi.Mode()&fs.ModeSymlink != 0 {
				// Never followed: it may lead anywhere. Carried as a link when it
				// stays inside what is pulled, else skipped or refused.
				if !spec.Links {
					return nil
				}
				r, p := path.Join(base, rel), path.Join(s.real, rel)
				target, err := c.sftp.ReadLink(p)
				if err != nil {
					return c.pathErr("readlink", p, err)
				}
				if err := archive.CheckLink(r, target); err != nil {
					return linkErr(p, err)
				}
				if other, dup := byRel[r]; dup {
					return fmt.Errorf("%w: %s and %s would both be staged as %s", ErrInvalidPath, other, p, r)
				}
				byRel[r] = p
				links = append(links, pullLink{rel: r, target: target})
				return nil
			}
			if fi.IsDir() {
				if r := path.Join(base, rel); r != "" {
					dirs[r] = pullDir{rel: r, mtime: fi.ModTime(), mode: fi.Mode().Perm()}
				}
				return nil
			}
			if !fi.Mode().IsRegular() {
				return nil
			}
			r := path.Join(base, rel)
			if r == "" || r == "." {
				r = s.name
			}
			p := path.Join(s.real, rel)
			if other, dup := byRel[r]; dup && other != p {
				return fmt.Errorf("%w: %s and %s would both be staged as %s", ErrInvalidPath, other, p, r)
			}
			byRel[r] = p
			files = append(files, pullFile{remote: p, rel: r, size: fi.Size(), mtime: fi.ModTime(), mode: fi.Mode().Perm()})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	files = filterFiles(files, spec.Since, spec.MaxSize, time.Now())
	if len(files) == 0 && !spec.AllowEmpty {
		what := strings.Join(spec.Paths, ", ")
		if spec.Since > 0 {
			what += fmt.Sprintf(" (modified within %s)", spec.Since)
		}
		return nil, fmt.Errorf("%s: no file to pull: %w", what, ErrNotFound)
	}
	l := &Listing{files: files, links: links}
	held := map[string]bool{}
	hold := func(rel string, mtime time.Time) { // the directories above a listed entry
		for d := path.Dir(rel); d != "." && !held[d]; d = path.Dir(d) {
			held[d] = true
			meta, ok := dirs[d]
			if !ok { // not walked (each is, so far): a fixed rule, the same for pull and bundle
				meta = pullDir{rel: d, mtime: mtime, mode: 0o755}
			}
			l.dirs = append(l.dirs, meta)
		}
	}
	for _, f := range files {
		l.Bytes += f.size
		hold(f.rel, f.mtime)
	}
	for _, ln := range links {
		hold(ln.rel, time.Unix(0, 0))
	}
	slices.SortFunc(l.links, func(a, b pullLink) int { return strings.Compare(a.rel, b.rel) })
	if spec.Since == 0 && spec.MaxSize == 0 {
		for r, meta := range dirs {
			if !held[r] {
				l.dirs = append(l.dirs, meta)
			}
		}
	}
	slices.SortFunc(l.dirs, func(a, b pullDir) int { return strings.Compare(a.rel, b.rel) })
	return l, nil
}

// filterFiles keeps the files modified within since (when set) and, when maxSize is
// set, the newest files that fit in it; the result is sorted by path.
func filterFiles(files []pullFile, since time.Duration, maxSize int64, now time.Time) []pullFile {
	var out []pullFile
	for _, f := range files {
		if since > 0 && f.mtime.Before(now.Add(-since)) {
			continue
		}
		out = append(out, f)
	}
	if maxSize > 0 {
		sort.SliceStable(out, func(i, j int) bool { return out[i].mtime.After(out[j].mtime) })
		var total int64
		kept := out[:0]
		for _, f := range out {
			if total+f.size <= maxSize {
				total += f.size
				kept = append(kept, f)
			}
		}
		out = kept
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out
}

func partName(rel string) string {
	dir, name := path.Split(rel)
	return path.Join(dir, "."+name+".ferry-part")
}

func (c *Conn) pullOne(ctx context.Context, root *os.Root, f pullFile, prog *Progress, sent *atomic.Int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	final := filepath.FromSlash(f.rel)
	if inPlace(root, f) {
		prog.add(f.size) // pulled by an earlier attempt
		return nil
	}
	release, err := c.admit(ctx, f.size)
	if err != nil {
		return err
	}
	defer release()
	part := filepath.FromSlash(partName(f.rel))
	var offset int64
	if fi, err := root.Stat(part); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 && fi.Size() <= f.size && c.CanExec(ctx) {
		// Resume: keep the local prefix if it is what the host has.
		local, lerr := localPrefixSHA256(root, part, fi.Size())
		remote, rerr := c.SHA256(ctx, f.remote, fi.Size())
		if rerr != nil && errors.Is(rerr, ErrConnection) {
			return rerr
		}
		if lerr == nil && rerr == nil && local == remote {
			offset = fi.Size()
		}
	}
	out, err := root.OpenFile(part, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	defer out.Close()
	if err := out.Truncate(offset); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if _, err := out.Seek(offset, io.SeekStart); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	prog.add(offset)
	if rest := f.size - offset; rest > 0 {
		var err error
		switch {
		case c.useLanes(rest):
			err = c.pullLanes(ctx, f, out, offset, prog, sent)
		case c.useStream(ctx, rest):
			err = c.streamFile(ctx, f, out, offset, prog, sent)
		default:
			err = c.readFile(f, out, offset, prog, sent)
		}
		if err != nil {
			return err
		}
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if err := root.Chmod(part, f.mode|0o600); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if err := root.Chtimes(part, f.mtime, f.mtime); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if err := root.Rename(part, final); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	return nil
}

// readFile writes f from offset up to its listed size into out, read over the Conn's
// SFTP session. A file growing meanwhile is captured up to its listed size.
func (c *Conn) readFile(f pullFile, out *os.File, offset int64, prog *Progress, sent *atomic.Int64) error {
	in, err := c.sftp.Open(f.remote)
	if err != nil {
		return c.pathErr("open", f.remote, err)
	}
	defer in.Close()
	if _, err := in.Seek(offset, io.SeekStart); err != nil {
		return c.pathErr("seek", f.remote, err)
	}
	wb := staging.NewWriteBehind(out, offset)
	w := &limitWriter{w: &countingWriter{w: wb, prog: prog, sent: sent}, n: f.size - offset}
	// The source's WriteTo keeps pkg/sftp's concurrent reads.
	if _, err := in.WriteTo(w); err != nil && !errors.Is(err, errLimit) {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("staging: %w", err)
		}
		return c.pathErr("reading", f.remote, err)
	}
	if w.n > 0 {
		return shrank(f, f.size-w.n)
	}
	if err := wb.Done(); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	return nil
}

// shrank is the error for f found at size bytes, fewer than listed, while pulled.
func shrank(f pullFile, size int64) error {
	return fmt.Errorf("%s shrank to %d bytes while being pulled (listed %d)", f.remote, size, f.size)
}

// inPlace reports whether f was pulled by an earlier attempt: its place below root
// holds a regular file of the listed size and modification time (set last).
func inPlace(root *os.Root, f pullFile) bool {
	fi, err := root.Stat(filepath.FromSlash(f.rel))
	return err == nil && fi.Mode().IsRegular() && fi.Size() == f.size && fi.ModTime().Equal(f.mtime)
}

// localPrefixSHA256 hashes the first n bytes of a file below root.
func localPrefixSHA256(root *os.Root, name string, n int64) (string, error) {
	f, err := root.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
