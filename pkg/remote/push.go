package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/staging"
	"github.com/pkg/sftp"
)

// ErrMismatch: a file landed on the host differs from what was sent (retryable: the
// temporary file is removed and a retry sends it again).
var ErrMismatch = errors.New("landed file differs from what was sent")

// Upload is one local file to land on the host as Dir/Name.
type Upload struct {
	Local  string      // local path
	Dir    string      // remote directory, absolute and resolved (see Roots.ResolveForWrite)
	Name   string      // final name in Dir
	Size   int64       // expected size
	SHA256 string      // expected SHA-256, hex
	Mode   fs.FileMode // permission bits to set, 0 to leave the default
	// Tag makes the temporary name unique to its writer: ".<Name>.ferry-<Tag>.part".
	Tag string
	// Landed, when set, is what a forward (see StartForward) left under the temporary
	// name: if it matches Size and SHA256 and the host's file still has its size and
	// modification time, Put renames it into place without sending or hashing it again.
	Landed *Landed
}

// TempName is the temporary name of u in u.Dir.
func (u Upload) TempName() string { return contracts.TempName(u.Name, u.Tag) }

// Put lands u on the host: it is written to its temporary name, its size and SHA-256
// are checked against u (the local file while it is read, the remote file after it was
// written: sha256sum over exec, else read back), and it is then renamed into place with
// posix-rename. The final name exists only when complete and verified.
//
// A file already in place with the expected size and SHA-256 is left alone. A temporary
// file left by an interrupted attempt is resumed from its longest verified prefix.
// A refused write removes the temporary file and fails with ErrRemoteWrite; a staged
// file that does not match u fails with ErrVerify; a lost connection keeps the
// temporary file for the retry.
func (c *Conn) Put(ctx context.Context, u Upload, prog *Progress, sent *atomic.Int64) error {
	final := path.Join(u.Dir, u.Name)
	part := path.Join(u.Dir, u.TempName())
	if u.Tag == "" || strings.ContainsAny(u.Name+u.Tag, "/\x00") || u.Name == "." || u.Name == ".." {
		return fmt.Errorf("%w: upload %q (tag %q)", ErrInvalidPath, u.Name, u.Tag)
	}
	local, err := os.Open(u.Local)
	if err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	defer local.Close()
	if fi, err := local.Stat(); err != nil {
		return fmt.Errorf("staging: %w", err)
	} else if fi.Size() != u.Size {
		return fmt.Errorf("%w: staged %s is %d bytes, its manifest says %d", ErrVerify, u.Local, fi.Size(), u.Size)
	}

	// Already in place (a redelivered command)?
	if fi, err := c.sftp.Stat(final); err == nil && fi.Mode().IsRegular() && fi.Size() == u.Size {
		sum, err := c.SHA256(ctx, final, -1)
		if err != nil && errors.Is(err, ErrConnection) {
			return err
		}
		if err == nil && sum == u.SHA256 {
			prog.add(u.Size)
			_ = c.sftp.Remove(part)
			return nil
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		if e := connErr(c.ssh, err); e != nil {
			return fmt.Errorf("stat %s: %w", final, e)
		}
	}

	if l := u.Landed; l != nil && l.Size == u.Size && l.SHA256 == u.SHA256 {
		fi, err := c.sftp.Stat(part)
		if err == nil && fi.Mode().IsRegular() && fi.Size() == l.Size && fi.ModTime().Unix() == l.MTime {
			prog.add(u.Size)
			return c.place(part, final, u)
		}
		if e := connErr(c.ssh, err); e != nil {
			return fmt.Errorf("stat %s: %w", part, e)
		}
	}

	offset, err := c.resumeOffset(ctx, local, part, u.Size)
	if err != nil {
		return err
	}
	flags := os.O_WRONLY | os.O_CREATE
	if offset == 0 {
		flags |= os.O_TRUNC
	}
	out, err := c.sftp.OpenFile(part, flags)
	if err != nil {
		return c.failWrite(part, err)
	}
	if offset > 0 {
		if err := out.Truncate(offset); err != nil {
			out.Close()
			return c.failWrite(part, err)
		}
	}
	if _, err := out.Seek(offset, io.SeekStart); err != nil {
		out.Close()
		return c.failWrite(part, err)
	}
	if _, err := local.Seek(offset, io.SeekStart); err != nil {
		out.Close()
		return fmt.Errorf("staging: %w", err)
	}
	prog.add(offset)
	var fol *follower
	if u.Size-offset >= followMin {
		if fol = c.follow(ctx, part); fol != nil {
			defer fol.close()
		}
	}
	var n int64
	if c.useLanes(u.Size - offset) {
		n, err = c.sendLanes(ctx, out, part, local, offset, u.Size, fol, prog, sent)
	} else {
		n, err = sendFrom(out, local, offset, u.Size, fol, prog, sent)
	}
	if err != nil {
		out.Close()
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Path == u.Local {
			return fmt.Errorf("staging: %w", err)
		}
		return c.failWrite(part, err)
	}
	// On stable storage before it can be renamed: else a power loss on the host soon
	// after could leave a torn file under the final name. (The host's hashing of the
	// last segment runs meanwhile.)
	if err := c.syncFile(out); err != nil {
		out.Close()
		return c.failWrite(part, err)
	}
	if err := out.Close(); err != nil {
		return c.failWrite(part, err)
	}
	if offset+n != u.Size {
		_ = c.sftp.Remove(part)
		return fmt.Errorf("%w: staged %s changed while being sent", ErrVerify, u.Local)
	}
	// The host's copy is checked against the manifest; only when it differs is the
	// staged file hashed too, to tell a bad staging (permanent) from a bad landing.
	if err := c.verifyLanded(ctx, part, u, fol); err != nil {
		if errors.Is(err, ErrMismatch) {
			if _, serr := local.Seek(0, io.SeekStart); serr == nil {
				h := sha256.New()
				if _, herr := io.Copy(h, local); herr == nil {
					if got := hex.EncodeToString(h.Sum(nil)); got != u.SHA256 {
						return fmt.Errorf("%w: staged %s has SHA-256 %s, its manifest says %s", ErrVerify, u.Local, got, u.SHA256)
					}
				}
			}
		}
		return err
	}
	return c.place(part, final, u)
}

// place gives the verified temporary file part u's mode and renames it to final.
func (c *Conn) place(part, final string, u Upload) error {
	if u.Mode != 0 {
		if err := c.sftp.Chmod(part, u.Mode.Perm()); err != nil {
			return c.failWrite(part, err)
		}
	}
	if err := c.rename(part, final); err != nil {
		return err
	}
	c.syncDir(u.Dir)
	return nil
}

// canSync reports whether the server flushes a file to stable storage on request
// (OpenSSH's fsync@openssh.com). Without it a landed file is left to the host's
// writeback.
func (c *Conn) canSync() bool {
	v, ok := c.sftp.HasExtension("fsync@openssh.com")
	return ok && v == "1"
}

// syncFile flushes an open remote file to stable storage where the server can.
func (c *Conn) syncFile(f *sftp.File) error {
	if !c.canSync() {
		return nil
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	return nil
}

// syncDir flushes a remote directory, so that a rename into it survives a power loss
// of the host. The file renamed was flushed before, so at worst the rename is lost
// and the retry finds the file under its temporary name: best effort, errors ignored.
func (c *Conn) syncDir(dir string) {
	if !c.canSync() {
		return
	}
	d, err := c.sftp.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}

// syncTree flushes a landed tree to stable storage before it is switched into place:
// one syncfs of its file system (sync -f) where commands run, as fsync file by file
// would queue thousands of flushes one after another in the SFTP server; else each
// file through SFTP.
func (c *Conn) syncTree(ctx context.Context, dir string, paths []string) error {
	if c.CanExec(ctx) {
		// sync -f is coreutils ≥ 8.24; elsewhere a whole sync does it.
		if err := c.run(ctx, "sync -f -- "+Quote(dir)+" 2>/dev/null || sync", nil, nil); err != nil {
			return fmt.Errorf("sync %s: %w", dir, err)
		}
		return nil
	}
	if !c.canSync() {
		return nil
	}
	return c.each(ctx, len(paths), func(i int) error {
		f, err := c.sftp.OpenFile(paths[i], os.O_WRONLY)
		if err != nil {
			return c.writeErr(paths[i], err)
		}
		defer f.Close()
		return c.syncFile(f)
	})
}

// verify checks the size and SHA-256 of a remote file, removing it when it differs.
func (c *Conn) verify(ctx context.Context, p string, size int64, sum string) error {
	fi, err := c.sftp.Stat(p)
	if err != nil {
		return c.pathErr("stat", p, err)
	}
	if fi.Size() != size {
		_ = c.sftp.Remove(p)
		return fmt.Errorf("%w: %s is %d bytes on the host, expected %d", ErrMismatch, p, fi.Size(), size)
	}
	got, err := c.SHA256(ctx, p, -1)
	if err != nil {
		return err
	}
	if got != sum {
		_ = c.sftp.Remove(p)
		return fmt.Errorf("%w: %s has SHA-256 %s on the host, expected %s", ErrMismatch, p, got, sum)
	}
	return nil
}

// sendFrom writes local from offset to size into out (positioned at offset), keeping
// pkg/sftp's concurrent writes. With a follower it goes in followSegment pieces, and
// the host hashes each piece once all its writes are acknowledged (a follower that
// fails shows in its sum; verifyLanded then checks the file afresh).
func sendFrom(out *sftp.File, local *os.File, offset, size int64, fol *follower, prog *Progress, sent *atomic.Int64) (int64, error) {
	rd := staging.NewReadOnce(local, offset)
	if fol == nil {
		// sizedReader tells ReadFrom how much remains: it keeps the concurrent writes.
		return out.ReadFrom(&sizedReader{r: rd, size: size - offset, prog: prog, sent: sent})
	}
	fol.feed(offset)
	var n int64
	for pos := offset; pos < size; {
		seg := min(followSegment, size-pos)
		m, err := out.ReadFrom(&sizedReader{r: io.LimitReader(rd, seg), size: seg, prog: prog, sent: sent})
		n += m
		pos += m
		if err != nil || m < seg {
			return n, err
		}
		fol.feed(pos)
	}
	return n, nil
}

// verifyLanded checks the landed temporary file against u: with the hash its follower
// computed while the file was written, else (no follower, or it failed) by hashing it
// on the host now. A file that differs is removed.
func (c *Conn) verifyLanded(ctx context.Context, part string, u Upload, fol *follower) error {
	if fol != nil {
		sum, err := fol.sum(ctx)
		if err == nil && fol.fed == u.Size {
			fi, err := c.sftp.Stat(part)
			if err != nil {
				return c.pathErr("stat", part, err)
			}
			if fi.Size() != u.Size || sum != u.SHA256 {
				_ = c.sftp.Remove(part)
				return fmt.Errorf("%w: %s is %d bytes with SHA-256 %s on the host, expected %d bytes with %s", ErrMismatch, part, fi.Size(), sum, u.Size, u.SHA256)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cerr := c.ssh.Err(); cerr != nil {
			return fmt.Errorf("hashing %s on the host: %w", part, &connectionError{err: cerr})
		}
	}
	return c.verify(ctx, part, u.Size, u.SHA256)
}

// rename moves a verified temporary file over its final name atomically.
func (c *Conn) rename(from, to string) error {
	err := c.sftp.PosixRename(from, to)
	if err != nil && connErr(c.ssh, err) == nil {
		if _, ok := c.sftp.HasExtension("posix-rename@openssh.com"); !ok {
			// No atomic replace on this server: the final name is briefly absent.
			_ = c.sftp.Remove(to)
			err = c.sftp.Rename(from, to)
		}
	}
	if err != nil {
		return c.pathErr("rename "+from+" to", to, err)
	}
	return nil
}

// failWrite removes the temporary file after a refused write (disk full) and wraps
// the error; after a lost connection it keeps the file for the retry to resume.
func (c *Conn) failWrite(part string, err error) error {
	werr := c.writeErr(part, err)
	if !errors.Is(werr, ErrConnection) {
		_ = c.sftp.Remove(part)
	}
	return werr
}

// resumeOffset picks where an upload to part resumes: the longest of (the part's size,
// that size less the writes that may have been in flight, 0) whose remote prefix has
// the same SHA-256 as the local file's.
func (c *Conn) resumeOffset(ctx context.Context, local *os.File, part string, size int64) (int64, error) {
	fi, err := c.sftp.Stat(part)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 || fi.Size() > size {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			if e := connErr(c.ssh, err); e != nil {
				return 0, fmt.Errorf("stat %s: %w", part, e)
			}
		}
		return 0, nil
	}
	window := int64(c.opts.MaxPacket) * int64(c.opts.RequestsPerFile)
	candidates := []int64{fi.Size()}
	if fi.Size() > window {
		candidates = append(candidates, fi.Size()-window)
	}
	candidates = append(candidates, c.laneCandidates(fi.Size(), size)...)
	slices.Sort(candidates)
	slices.Reverse(candidates)
	candidates = slices.Compact(candidates)
	for _, n := range candidates {
		h := sha256.New()
		if _, err := local.Seek(0, io.SeekStart); err != nil {
			return 0, fmt.Errorf("staging: %w", err)
		}
		if _, err := io.CopyN(h, local, n); err != nil {
			return 0, fmt.Errorf("staging: %w", err)
		}
		want := hex.EncodeToString(h.Sum(nil))
		got, err := c.SHA256(ctx, part, n)
		if err != nil {
			if errors.Is(err, ErrConnection) {
				return 0, err
			}
			break
		}
		if got == want {
			return n, nil
		}
	}
	return 0, nil
}

// PutTree lands the staged tree m describes in dir (absolute, resolved): every file of
// m.Files (paths relative to localDir, slash-separated) is uploaded below
// dir/.ferry-incoming-<tag>/ and verified against its size and SHA-256, every link of
// m.Links made there (each pointing inside the tree); the files and every directory of
// m.Dirs, empty ones too, take their listed modes and times; then
// each top-level entry is moved into place with posix-rename — a directory by renaming
// the old one aside, the new one in, and removing the old — so a half-delivered tree is
// never visible under its final names. A tree already in place and verified is left
// alone.
func (c *Conn) PutTree(ctx context.Context, localDir, dir, tag string, m contracts.Manifest, prog *Progress, sent *atomic.Int64) error {
	if tag == "" || strings.ContainsAny(tag, "/\x00") {
		return fmt.Errorf("%w: tag %q", ErrInvalidPath, tag)
	}
	files := m.Files
	var total int64
	for _, f := range files {
		total += f.Size
	}
	linkPaths := pathsOf(m.Links, func(l contracts.ManifestLink) string { return l.Path })
	all := slices.Concat(pathsOf(files, func(f contracts.ManifestFile) string { return f.Path }),
		pathsOf(m.Dirs, func(d contracts.ManifestDir) string { return d.Path }), linkPaths)
	tops := map[string]bool{}
	for _, p := range all {
		if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") || strings.ContainsRune(p, 0) {
			return fmt.Errorf("%w: manifest entry %q is not a relative, clean path", ErrVerify, p)
		}
		top, _, _ := strings.Cut(p, "/")
		if strings.HasPrefix(top, ".ferry-") {
			return fmt.Errorf("%w: manifest entry %q uses a name ferry reserves", ErrVerify, p)
		}
		tops[top] = true
	}
	for _, l := range m.Links {
		if err := archive.CheckLink(l.Path, l.Target); err != nil {
			return fmt.Errorf("%w: %v", ErrVerify, err)
		}
	}
	// Nothing lands through a link: no entry lies below one.
	for _, p := range all {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if slices.Contains(linkPaths, d) {
				return fmt.Errorf("%w: manifest entry %q lies below the symbolic link %q", ErrVerify, p, d)
			}
		}
	}
	prog.setTotal(total)
	incoming := path.Join(dir, contracts.IncomingName(tag))

	if _, err := c.sftp.Stat(incoming); errors.Is(err, fs.ErrNotExist) {
		// A redelivered command whose first delivery finished: verify what is in place.
		if ok, err := c.treeInPlace(ctx, dir, m); err != nil {
			return err
		} else if ok {
			prog.add(total)
			return nil
		}
	}
	if err := c.sftp.MkdirAll(incoming); err != nil {
		return c.writeErr(incoming, err)
	}
	made := map[string]bool{}
	for _, d := range m.Dirs {
		made[d.Path] = true
	}
	for _, p := range all {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			made[d] = true
		}
	}
	mk := slices.Sorted(maps.Keys(made)) // parents first
	for _, d := range mk {
		p := path.Join(incoming, d)
		if err := c.sftp.Mkdir(p); err != nil {
			if fi, serr := c.sftp.Stat(p); serr != nil || !fi.IsDir() {
				return c.failTree(incoming, c.writeErr(p, err))
			}
		}
	}

	for _, l := range m.Links {
		p := path.Join(incoming, l.Path)
		if target, err := c.sftp.ReadLink(p); err == nil && target == l.Target {
			continue // made by an earlier attempt
		}
		_ = c.sftp.Remove(p)
		if err := c.sftp.Symlink(l.Target, p); err != nil {
			return c.failTree(incoming, c.writeErr(p, err))
		}
	}

	upload := func(i int, force bool) error {
		f := files[i]
		remote := path.Join(incoming, f.Path)
		if !force {
			if fi, err := c.sftp.Stat(remote); err == nil && fi.Size() == f.Size {
				prog.add(f.Size) // sent by an earlier attempt; verified below
				return nil
			}
		}
		release, err := c.admit(ctx, f.Size)
		if err != nil {
			return err
		}
		defer release()
		return c.sendWhole(filepath.Join(localDir, filepath.FromSlash(f.Path)), remote, f, prog, sent)
	}
	if err := c.each(ctx, len(files), func(i int) error { return upload(i, false) }); err != nil {
		return c.failTree(incoming, err)
	}
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = path.Join(incoming, f.Path)
	}
	for try := 0; ; try++ {
		sums, err := c.sha256Many(ctx, paths)
		if err != nil {
			return c.failTree(incoming, err)
		}
		var bad []int
		for i, f := range files {
			if sums[i] != f.SHA256 {
				bad = append(bad, i)
			}
		}
		if len(bad) == 0 {
			break
		}
		if try > 0 {
			return c.failTree(incoming, fmt.Errorf("%w: %s has SHA-256 %s on the host, expected %s", ErrMismatch, paths[bad[0]], sums[bad[0]], files[bad[0]].SHA256))
		}
		if err := c.each(ctx, len(bad), func(j int) error { return upload(bad[j], true) }); err != nil {
			return c.failTree(incoming, err)
		}
	}
	if err := c.setTreeAttrs(ctx, incoming, m); err != nil {
		return c.failTree(incoming, err)
	}
	if err := c.syncTree(ctx, incoming, paths); err != nil {
		return c.failTree(incoming, err)
	}

	names := make([]string, 0, len(tops))
	for n := range tops {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		src, dst := path.Join(incoming, n), path.Join(dir, n)
		sfi, err := c.sftp.Lstat(src)
		if err != nil {
			return c.pathErr("stat", src, err)
		}
		dfi, derr := c.sftp.Lstat(dst)
		if sfi.Mode().IsRegular() && (derr != nil || !dfi.IsDir()) {
			if err := c.rename(src, dst); err != nil {
				return err
			}
			continue
		}
		old := path.Join(dir, ".ferry-old-"+tag+"-"+n)
		if _, err := c.sftp.Lstat(old); err == nil {
			if err := c.removeAll(ctx, old); err != nil {
				return err
			}
		}
		if derr == nil {
			if err := c.sftp.PosixRename(dst, old); err != nil {
				return c.pathErr("rename "+dst+" to", old, err)
			}
		}
		if err := c.sftp.PosixRename(src, dst); err != nil {
			return c.pathErr("rename "+src+" to", dst, err)
		}
		if derr == nil {
			if err := c.removeAll(ctx, old); err != nil {
				return err
			}
		}
	}
	if err := c.removeAll(ctx, incoming); err != nil {
		return err
	}
	c.syncDir(dir)
	return nil
}

// setTreeAttrs gives the files and directories below incoming the modes and times m
// lists (a zero mode or time is left as the host made it): the files several at once,
// then the directories deepest first, once nothing changes in them.
func (c *Conn) setTreeAttrs(ctx context.Context, incoming string, m contracts.Manifest) error {
	set := func(p string, mode uint32, mtime time.Time) error {
		p = path.Join(incoming, p)
		if mode != 0 {
			if err := c.sftp.Chmod(p, fs.FileMode(mode).Perm()); err != nil {
				return c.writeErr(p, err)
			}
		}
		if !mtime.IsZero() {
			if err := c.sftp.Chtimes(p, mtime, mtime); err != nil {
				return c.writeErr(p, err)
			}
		}
		return nil
	}
	err := c.each(ctx, len(m.Files), func(i int) error {
		return set(m.Files[i].Path, m.Files[i].Mode, m.Files[i].MTime)
	})
	if err != nil {
		return err
	}
	dirs := slices.SortedFunc(slices.Values(m.Dirs), func(a, b contracts.ManifestDir) int { return strings.Compare(b.Path, a.Path) })
	for _, d := range dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := set(d.Path, d.Mode, d.MTime); err != nil {
			return err
		}
	}
	return nil
}

// pathsOf returns the path of each of a manifest's entries.
func pathsOf[E any](entries []E, path func(E) string) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = path(e)
	}
	return out
}

// failTree removes the incoming directory after a refused write (its files would be
// sent again anyway), keeping it after a lost connection so the retry resumes.
func (c *Conn) failTree(incoming string, err error) error {
	if errors.Is(err, ErrRemoteWrite) {
		_ = c.sftp.RemoveAll(incoming)
	}
	return err
}

// treeInPlace reports whether every directory of m is in dir and every file with its
// size and SHA-256.
func (c *Conn) treeInPlace(ctx context.Context, dir string, m contracts.Manifest) (bool, error) {
	files := m.Files
	if len(files) == 0 {
		return false, nil
	}
	// lost is the error of a check that could not be made: only a lost connection
	// counts, anything else means "not in place".
	lost := func(op, p string, err error) error {
		if e := connErr(c.ssh, err); e != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s %s: %w", op, p, e)
		}
		return nil
	}
	for _, l := range m.Links {
		p := path.Join(dir, l.Path)
		if target, err := c.sftp.ReadLink(p); err != nil || target != l.Target {
			return false, lost("readlink", p, err)
		}
	}
	for _, d := range m.Dirs {
		p := path.Join(dir, d.Path)
		if fi, err := c.sftp.Stat(p); err != nil || !fi.IsDir() {
			return false, lost("stat", p, err)
		}
	}
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = path.Join(dir, f.Path)
		if fi, err := c.sftp.Stat(paths[i]); err != nil || fi.Size() != f.Size {
			return false, lost("stat", paths[i], err)
		}
	}
	sums, err := c.sha256Many(ctx, paths)
	if err != nil {
		return false, nil //nolint:nilerr // not verifiable: send it again
	}
	for i, f := range files {
		if sums[i] != f.SHA256 {
			return false, nil
		}
	}
	return true, nil
}

// sendWhole uploads one local file to remote (truncating it), checking the local
// bytes against f as they are read.
func (c *Conn) sendWhole(localPath, remote string, f contracts.ManifestFile, prog *Progress, sent *atomic.Int64) error {
	local, err := os.Open(localPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s is in the manifest but not staged", ErrVerify, f.Path)
		}
		return fmt.Errorf("staging: %w", err)
	}
	defer local.Close()
	if fi, err := local.Stat(); err != nil {
		return fmt.Errorf("staging: %w", err)
	} else if fi.Size() != f.Size {
		return fmt.Errorf("%w: staged %s is %d bytes, its manifest says %d", ErrVerify, f.Path, fi.Size(), f.Size)
	}
	out, err := c.sftp.OpenFile(remote, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return c.writeErr(remote, err)
	}
	h := sha256.New()
	_, err = out.ReadFrom(&sizedReader{r: io.TeeReader(local, h), size: f.Size, prog: prog, sent: sent})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return c.writeErr(remote, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("%w: staged %s has SHA-256 %s, its manifest says %s", ErrVerify, f.Path, got, f.SHA256)
	}
	return nil
}

// removeAll removes a remote tree: rm -rf over exec when allowed, else through SFTP.
func (c *Conn) removeAll(ctx context.Context, p string) error {
	if c.CanExec(ctx) {
		if err := c.run(ctx, "rm -rf -- "+Quote(p), nil, nil); err != nil {
			return fmt.Errorf("removing %s: %w", p, err)
		}
		return nil
	}
	if err := c.sftp.RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return c.pathErr("removing", p, err)
	}
	return nil
}
