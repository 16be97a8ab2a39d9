package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/ferrydesk/ferry/pkg/archive"
)

// source is one resolved source of a copy or pull.
type source struct {
	given string      // as the command named it (pattern or path)
	path  string      // absolute, unresolved (a glob match, or the given path made absolute)
	real  string      // resolved on the host, within the roots
	name  string      // base name of path
	info  os.FileInfo // of real
}

// hasMeta reports whether p holds glob metacharacters.
func hasMeta(p string) bool { return strings.ContainsAny(p, `*?[\`) }

// expand resolves paths and globs to sources, each checked against the roots. A path
// that does not exist or a glob matching nothing fails with ErrNotFound naming it,
// unless allowMissing.
func (c *Conn) expand(ctx context.Context, roots *Roots, given []string, allowMissing bool) ([]source, error) {
	var out []source
	seen := map[string]bool{}
	for _, g := range given {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		abs, err := c.Abs(g)
		if err != nil {
			return nil, err
		}
		matches := []string{abs}
		if hasMeta(abs) {
			if matches, err = c.sftp.Glob(abs); err != nil {
				return nil, fmt.Errorf("%w: glob %q: %v", ErrInvalidPath, g, err)
			}
			if cerr := c.ssh.Err(); cerr != nil {
				return nil, fmt.Errorf("glob %s: %w", g, &connectionError{err: cerr})
			}
			if len(matches) == 0 {
				if allowMissing {
					continue
				}
				return nil, fmt.Errorf("%s: no file matches: %w", g, ErrNotFound)
			}
		}
		for _, m := range matches {
			real, err := roots.ResolveExisting(m)
			if errors.Is(err, ErrNotFound) && allowMissing {
				continue
			}
			if err != nil {
				if m != g && !strings.Contains(err.Error(), g) {
					err = fmt.Errorf("%s: %w", g, err)
				}
				return nil, err
			}
			if seen[real] {
				continue
			}
			seen[real] = true
			fi, err := c.sftp.Stat(real)
			if err != nil {
				return nil, c.pathErr("stat", m, err)
			}
			out = append(out, source{given: g, path: m, real: real, name: path.Base(m), info: fi})
		}
	}
	return out, nil
}

// walk calls fn for root and, when it is a directory, everything below it, in lexical
// order of the paths (a directory before what it holds). Symbolic links are reported,
// never followed. rel is the path below root ("" for root itself).
//
// The directories are listed FilesInFlight at a time: on a long link a tree of many
// directories costs a few round trips per level, not per directory.
func (c *Conn) walk(ctx context.Context, root string, fi os.FileInfo, fn func(rel string, fi os.FileInfo) error) error {
	type entry struct {
		rel string
		fi  os.FileInfo
	}
	all := []entry{{"", fi}}
	if fi.IsDir() {
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		var (
			mu  sync.Mutex
			wg  sync.WaitGroup
			sem = make(chan struct{}, c.opts.FilesInFlight)
		)
		var list func(rel string)
		list = func(rel string) {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			dir := path.Join(root, rel)
			entries, err := c.sftp.ReadDirContext(ctx, dir)
			<-sem
			if err != nil {
				cancel(c.pathErr("listing", dir, err))
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, e := range entries {
				child := path.Join(rel, e.Name())
				all = append(all, entry{child, e})
				if e.IsDir() { // Lstat information: a link to a directory is not one
					wg.Add(1)
					go list(child)
				}
			}
		}
		wg.Add(1)
		go list("")
		wg.Wait()
		if err := context.Cause(ctx); err != nil {
			return err
		}
		sort.Slice(all, func(i, j int) bool { return all[i].rel < all[j].rel })
	}
	for _, e := range all {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(e.rel, e.fi); err != nil {
			return err
		}
	}
	return nil
}

// Copy copies sources (paths or globs; relative ones start at the login's home) into
// destDir on the host, each under its own name, directories recursively: with cp over
// an exec session when the host allows commands, else through SFTP: by the server
// itself where it offers copy-data (OpenSSH 9.0 and later), else streamed through this
// client (read and written remotely). Every source must exist, every path resolve within roots and every
// symbolic link inside a tree lead inside what is copied (archive.CheckLink; links are
// copied as links), or nothing is copied. Copying again overwrites what an earlier copy
// left.
//
// The streamed fallback moves every byte through this client twice.
func (c *Conn) Copy(ctx context.Context, roots *Roots, sources []string, destDir string, prog *Progress) (Result, error) {
	var res Result
	if len(sources) == 0 {
		return res, fmt.Errorf("%w: no sources to copy", ErrInvalidPath)
	}
	srcs, err := c.expand(ctx, roots, sources, false)
	if err != nil {
		return res, err
	}
	dest, err := roots.ResolveForWrite(destDir)
	if err != nil {
		return res, err
	}
	names := map[string]string{}
	for _, s := range srcs {
		if other, dup := names[s.name]; dup {
			return res, fmt.Errorf("%w: %s and %s would both be copied to %s", ErrInvalidPath, other, s.path, path.Join(dest, s.name))
		}
		names[s.name] = s.path
		if within(dest, s.real) {
			return res, fmt.Errorf("%w: the destination %s is inside the source %s", ErrInvalidPath, destDir, s.given)
		}
	}
	// Measure first: the result reports what landed.
	type item struct {
		src, dst string
		fi       os.FileInfo
		target   string // a link's, read once while measuring
	}
	var items []item
	for _, s := range srcs {
		err := c.walk(ctx, s.real, s.info, func(rel string, fi os.FileInfo) error {
			it := item{src: path.Join(s.real, rel), dst: path.Join(dest, s.name, rel), fi: fi}
			if fi.Mode()&fs.ModeSymlink != 0 {
				// Copied as a link, so it must lead inside what is copied (the pull
				// that follows carries it as a link): refused here, before a byte moves.
				var err error
				if it.target, err = c.sftp.ReadLink(it.src); err != nil {
					return c.pathErr("readlink", it.src, err)
				}
				if err := archive.CheckLink(path.Join(s.name, rel), it.target); err != nil {
					return linkErr(it.src, err)
				}
			}
			items = append(items, it)
			if fi.Mode().IsRegular() {
				res.Bytes += fi.Size()
				res.Files++
			}
			return nil
		})
		if err != nil {
			return res, err
		}
		res.Paths = append(res.Paths, path.Join(dest, s.name))
	}
	prog.setTotal(res.Bytes)
	if err := c.sftp.MkdirAll(dest); err != nil {
		return res, c.writeErr(dest, err)
	}

	if c.CanExec(ctx) {
		var cmd strings.Builder
		cmd.WriteString("cp -R -H -p --")
		for _, s := range srcs {
			cmd.WriteString(" " + Quote(s.path))
		}
		cmd.WriteString(" " + Quote(dest+"/"))
		// On disk before the step reports the copy made: the pull may read it after
		// the host lost power (sync -f is coreutils ≥ 8.24; elsewhere a whole sync).
		cmd.WriteString(" && { sync -f -- " + Quote(dest) + " 2>/dev/null || sync; }")
		if err := c.run(ctx, cmd.String(), nil, nil); err != nil {
			var ce *CommandError
			if errors.As(err, &ce) && (strings.Contains(ce.Stderr, "No space left") || strings.Contains(ce.Stderr, "quota")) {
				return res, fmt.Errorf("%w: copying into %s: %s", ErrRemoteWrite, dest, ce.Stderr)
			}
			if errors.As(err, &ce) && strings.Contains(ce.Stderr, "Permission denied") {
				return res, fmt.Errorf("%w: copying into %s: %s", ErrPermission, dest, ce.Stderr)
			}
			return res, fmt.Errorf("cp into %s: %w", dest, err)
		}
		prog.add(res.Bytes)
		res.Sent = res.Bytes
		return res, nil
	}

	// SFTP: directories and links first (in walk order), then the files, several at once.
	var files []item
	for _, it := range items {
		switch {
		case it.fi.IsDir():
			if err := c.sftp.Mkdir(it.dst); err != nil {
				if fi, serr := c.sftp.Stat(it.dst); serr != nil || !fi.IsDir() {
					return res, c.writeErr(it.dst, err)
				}
			}
		case it.fi.Mode()&fs.ModeSymlink != 0:
			_ = c.sftp.Remove(it.dst)
			if err := c.sftp.Symlink(it.target, it.dst); err != nil {
				return res, c.writeErr(it.dst, err)
			}
		case it.fi.Mode().IsRegular():
			files = append(files, it)
		}
	}
	// On the host where its SFTP server copies (copy-data), else through this client.
	var onHost *rawSFTP
	if _, ok := c.sftp.HasExtension("copy-data"); ok && copyDataOK && len(files) > 0 {
		if onHost, err = c.openRawSFTP(ctx); err != nil {
			if e := connErr(c.ssh, err); e != nil {
				return res, fmt.Errorf("copying into %s: %w", dest, e)
			}
			onHost = nil
		} else {
			defer onHost.close()
		}
	}
	err = c.each(ctx, len(files), func(i int) error {
		if onHost != nil {
			return c.copyOnHost(ctx, onHost, files[i].src, files[i].dst, files[i].fi, prog)
		}
		release, err := c.admit(ctx, files[i].fi.Size())
		if err != nil {
			return err
		}
		defer release()
		return c.copyFile(files[i].src, files[i].dst, files[i].fi, prog)
	})
	if err != nil {
		return res, err
	}
	for _, it := range items {
		if it.fi.IsDir() {
			_ = c.sftp.Chmod(it.dst, it.fi.Mode().Perm())
			_ = c.sftp.Chtimes(it.dst, it.fi.ModTime(), it.fi.ModTime())
		}
	}
	res.Sent = res.Bytes
	return res, nil
}

// copyFile copies one remote file to another through this client, keeping both sides'
// concurrent fast paths (the source's WriteTo feeds the destination's ReadFrom).
func (c *Conn) copyFile(src, dst string, fi os.FileInfo, prog *Progress) error {
	in, err := c.sftp.Open(src)
	if err != nil {
		return c.pathErr("open", src, err)
	}
	defer in.Close()
	out, err := c.sftp.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return c.writeErr(dst, err)
	}
	var n int64
	var readErr error
	if fi.Size() <= int64(c.opts.MaxPacket) {
		n, err = in.WriteTo(out)
	} else {
		pr, pw := io.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, readErr = in.WriteTo(pw)
			pw.CloseWithError(readErr)
		}()
		n, err = out.ReadFromWithConcurrency(pr, c.opts.RequestsPerFile)
		pr.CloseWithError(io.ErrClosedPipe)
		<-done
	}
	prog.add(n)
	if err == nil && readErr == nil {
		err = c.syncFile(out)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if readErr != nil && !errors.Is(readErr, io.ErrClosedPipe) {
		return c.pathErr("read", src, readErr)
	}
	if err != nil {
		return c.writeErr(dst, err)
	}
	_ = c.sftp.Chmod(dst, fi.Mode().Perm())
	_ = c.sftp.Chtimes(dst, fi.ModTime(), fi.ModTime())
	return nil
}
