//go:build unix

package staging

import (
	"fmt"
	"syscall"
)

// Filesystem returns the size of the filesystem holding the staging area and the
// bytes on it available to an unprivileged user (as df shows them).
func (d *Dir) Filesystem() (size, avail uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.path, &st); err != nil {
		return 0, 0, fmt.Errorf("staging: statfs %s: %w", d.path, err)
	}
	bs := uint64(st.Bsize)
	return st.Blocks * bs, st.Bavail * bs, nil
}
