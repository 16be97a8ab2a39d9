package remote

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// Roots are the directories of a host that jobs may read from or write to, resolved
// on the host (symbolic links followed). A path is within a root when it is the root or
// lies below it, compared component by component: /home/ann2 is not within /home/ann.
type Roots struct {
	c     *Conn
	paths []string // resolved, absolute, cleaned
}

// Roots resolves a host's roots (absolute or "~/…"; empty means the login's home).
// A root that does not exist yet is kept as written (cleaned).
func (c *Conn) Roots(roots []string) (*Roots, error) {
	if len(roots) == 0 {
		roots = []string{"~"}
	}
	r := &Roots{c: c}
	for _, root := range roots {
		p, err := c.Abs(root)
		if err != nil {
			return nil, fmt.Errorf("root %q: %w", root, err)
		}
		if real, err := c.sftp.RealPath(p); err == nil {
			p = real
		} else if errors.Is(err, fs.ErrNotExist) || strings.Contains(err.Error(), "no such file") {
			// kept as written
		} else if e := connErr(c.ssh, err); e != nil {
			return nil, fmt.Errorf("resolving root %s: %w", p, e)
		}
		r.paths = append(r.paths, path.Clean(p))
	}
	return r, nil
}

// List returns the resolved roots.
func (r *Roots) List() []string { return append([]string(nil), r.paths...) }

// Contains reports whether the absolute, clean path p is one of the roots or below one.
func (r *Roots) Contains(p string) bool {
	for _, root := range r.paths {
		if within(p, root) {
			return true
		}
	}
	return false
}

// within compares whole path components: p is root or below it.
func within(p, root string) bool {
	if root == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == root || strings.HasPrefix(p, root+"/")
}

// Abs makes p absolute on the host: "~" and "~/…" and relative paths start at the
// login's home. It refuses empty paths and NUL bytes.
func (c *Conn) Abs(p string) (string, error) {
	switch {
	case p == "" || strings.ContainsRune(p, 0):
		return "", fmt.Errorf("%w: %q", ErrInvalidPath, p)
	case p == "~":
		return c.home, nil
	case strings.HasPrefix(p, "~/"):
		return path.Join(c.home, p[2:]), nil
	case strings.HasPrefix(p, "~"):
		return "", fmt.Errorf("%w: %q: only ~ (the login's home) is understood, not ~user", ErrInvalidPath, p)
	case path.IsAbs(p):
		return path.Clean(p), nil
	}
	return path.Join(c.home, p), nil
}

// ResolveExisting resolves an existing path (symbolic links followed) and checks it is
// within the roots. The error names p and wraps ErrNotFound or ErrOutsideRoots.
func (r *Roots) ResolveExisting(p string) (string, error) {
	abs, err := r.c.Abs(p)
	if err != nil {
		return "", err
	}
	if _, err := r.c.sftp.Stat(abs); err != nil {
		return "", r.c.pathErr("stat", p, err)
	}
	real, err := r.c.sftp.RealPath(abs)
	if err != nil {
		return "", r.c.pathErr("resolve", p, err)
	}
	if !r.Contains(real) {
		return "", fmt.Errorf("%s (resolves to %s) is %w %v", p, real, ErrOutsideRoots, r.paths)
	}
	return real, nil
}

// ResolveForWrite resolves a path that may not exist yet: its deepest existing ancestor
// is resolved on the host (symbolic links followed) and the missing components are
// appended, so creating them follows no link. The result must be within the roots.
func (r *Roots) ResolveForWrite(p string) (string, error) {
	abs, err := r.c.Abs(p)
	if err != nil {
		return "", err
	}
	var missing []string
	cur := abs
	for {
		if _, err := r.c.sftp.Stat(cur); err == nil {
			break
		} else if e := connErr(r.c.ssh, err); e != nil {
			return "", fmt.Errorf("stat %s: %w", cur, e)
		}
		if cur == "/" {
			break
		}
		missing = append([]string{path.Base(cur)}, missing...)
		cur = path.Dir(cur)
	}
	real, err := r.c.sftp.RealPath(cur)
	if err != nil {
		return "", r.c.pathErr("resolve", cur, err)
	}
	full := path.Join(append([]string{real}, missing...)...)
	if !r.Contains(full) {
		return "", fmt.Errorf("%s (resolves to %s) is %w %v", p, full, ErrOutsideRoots, r.paths)
	}
	return full, nil
}
