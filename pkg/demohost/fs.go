package demohost

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/pkg/sftp"
)

// handlers serve SFTP requests inside one directory through os.Root: every path is
// resolved beneath it, and a symbolic link that points outside is refused by the
// kernel-backed checks of os.Root, not by string matching.
type handlers struct {
	root *os.Root
}

func newHandlers(root *os.Root) sftp.Handlers {
	h := &handlers{root: root}
	return sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}
}

var (
	_ sftp.FileReader           = (*handlers)(nil)
	_ sftp.OpenFileWriter       = (*handlers)(nil)
	_ sftp.PosixRenameFileCmder = (*handlers)(nil)
	_ sftp.LstatFileLister      = (*handlers)(nil)
	_ sftp.ReadlinkFileLister   = (*handlers)(nil)
)

// rel turns a request path (absolute, cleaned by the request server against "/") into
// a name relative to the root; "/" is the root itself.
func rel(p string) string {
	p = strings.TrimLeft(path.Clean("/"+p), "/")
	if p == "" {
		return "."
	}
	return p
}

// fsErr gives os.Root's refusal of a path that leaves the root the status "permission
// denied" (os.Root reports it with an unexported error) and passes the rest through.
func fsErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		if _, ok := pe.Err.(syscall.Errno); !ok && strings.Contains(pe.Err.Error(), "escapes") {
			return &os.PathError{Op: pe.Op, Path: pe.Path, Err: syscall.EACCES}
		}
	}
	return err
}

// openFlags maps SFTP open flags to os flags. Append is not mapped to O_APPEND: the
// request server writes at explicit offsets (WriteAt), which O_APPEND forbids.
func openFlags(f sftp.FileOpenFlags) int {
	var flags int
	switch {
	case f.Read && (f.Write || f.Append):
		flags = os.O_RDWR
	case f.Write || f.Append:
		flags = os.O_WRONLY
	default:
		flags = os.O_RDONLY
	}
	if f.Creat {
		flags |= os.O_CREATE
	}
	if f.Trunc {
		flags |= os.O_TRUNC
	}
	if f.Excl {
		flags |= os.O_EXCL
	}
	return flags
}

func createMode(r *sftp.Request) os.FileMode {
	if r.AttrFlags().Permissions {
		return r.Attributes().FileMode().Perm()
	}
	return 0o644
}

// Fileread opens a file for reading.
func (h *handlers) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	f, err := h.root.Open(rel(r.Filepath))
	if err != nil {
		return nil, fsErr(err)
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: r.Filepath, Err: syscall.EISDIR}
	}
	return f, nil
}

// Filewrite opens a file for writing; *os.File's WriteAt lets the client write
// chunks concurrently at their offsets.
func (h *handlers) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	return h.openFile(r)
}

// OpenFile opens a file for reading and writing.
func (h *handlers) OpenFile(r *sftp.Request) (sftp.WriterAtReaderAt, error) {
	return h.openFile(r)
}

func (h *handlers) openFile(r *sftp.Request) (*os.File, error) {
	f, err := h.root.OpenFile(rel(r.Filepath), openFlags(r.Pflags()), createMode(r))
	if err != nil {
		return nil, fsErr(err)
	}
	return f, nil
}

// Filecmd runs setstat, rename, mkdir, rmdir, remove and symlink (a link leading inside
// the root only); hard links are refused.
func (h *handlers) Filecmd(r *sftp.Request) error {
	p := rel(r.Filepath)
	switch r.Method {
	case "Setstat":
		return fsErr(h.setstat(p, r))
	case "Rename":
		// SFTP v3 rename does not replace an existing target (OpenSSH's neither).
		if _, err := h.root.Lstat(rel(r.Target)); err == nil {
			return &os.PathError{Op: "rename", Path: r.Target, Err: syscall.EEXIST}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fsErr(err)
		}
		return fsErr(h.root.Rename(p, rel(r.Target)))
	case "Mkdir":
		return fsErr(h.root.Mkdir(p, 0o755))
	case "Rmdir":
		fi, err := h.root.Lstat(p)
		if err != nil {
			return fsErr(err)
		}
		if !fi.IsDir() {
			return &os.PathError{Op: "rmdir", Path: r.Filepath, Err: syscall.ENOTDIR}
		}
		if p == "." {
			return &os.PathError{Op: "rmdir", Path: r.Filepath, Err: syscall.EACCES}
		}
		return fsErr(h.root.Remove(p))
	case "Remove":
		fi, err := h.root.Lstat(p)
		if err != nil {
			return fsErr(err)
		}
		if fi.IsDir() {
			return &os.PathError{Op: "remove", Path: r.Filepath, Err: syscall.EISDIR}
		}
		return fsErr(h.root.Remove(p))
	case "Symlink":
		// A link is made only when it leads inside the root whatever other links do
		// (archive.CheckLink, with the root as the tree): os.Root keeps ferry's own
		// requests inside it, but the host's other users would follow the link.
		link := rel(r.Target)
		if err := archive.CheckLink(link, r.Filepath); err != nil {
			return &os.PathError{Op: "symlink", Path: r.Target, Err: syscall.EACCES}
		}
		return fsErr(h.root.Symlink(r.Filepath, link))
	case "Link":
		return &os.PathError{Op: "link", Path: r.Target, Err: syscall.EACCES}
	}
	return sftp.ErrSSHFxOpUnsupported
}

// PosixRename renames, replacing an existing target (posix-rename@openssh.com).
func (h *handlers) PosixRename(r *sftp.Request) error {
	return fsErr(h.root.Rename(rel(r.Filepath), rel(r.Target)))
}

func (h *handlers) setstat(p string, r *sftp.Request) error {
	flags := r.AttrFlags()
	attrs := r.Attributes()
	if flags.Size {
		f, err := h.root.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		err = f.Truncate(int64(attrs.Size))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if flags.Permissions {
		if err := h.root.Chmod(p, attrs.FileMode().Perm()); err != nil {
			return err
		}
	}
	if flags.Acmodtime {
		if err := h.root.Chtimes(p, time.Unix(int64(attrs.Atime), 0), time.Unix(int64(attrs.Mtime), 0)); err != nil {
			return err
		}
	}
	// Owner changes (UidGid) are ignored: the demo host has one user.
	return nil
}

// Filelist serves readdir and stat.
func (h *handlers) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	p := rel(r.Filepath)
	switch r.Method {
	case "List":
		d, err := h.root.Open(p)
		if err != nil {
			return nil, fsErr(err)
		}
		defer d.Close()
		entries, err := d.ReadDir(-1)
		if err != nil {
			return nil, fsErr(err)
		}
		infos := make([]os.FileInfo, 0, len(entries))
		for _, e := range entries {
			fi, err := e.Info()
			if err != nil {
				continue // removed meanwhile
			}
			infos = append(infos, fi)
		}
		return listerAt(infos), nil
	case "Stat":
		fi, err := h.root.Stat(p)
		if err != nil {
			return nil, fsErr(err)
		}
		return listerAt{fi}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

// Lstat stats without following a final symbolic link.
func (h *handlers) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	fi, err := h.root.Lstat(rel(r.Filepath))
	if err != nil {
		return nil, fsErr(err)
	}
	return listerAt{fi}, nil
}

// Readlink returns a link's target as stored.
func (h *handlers) Readlink(p string) (string, error) {
	t, err := h.root.Readlink(rel(p))
	return t, fsErr(err)
}

type listerAt []os.FileInfo

func (l listerAt) ListAt(dst []os.FileInfo, offset int64) (int, error) {
	if offset >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[offset:])
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}
