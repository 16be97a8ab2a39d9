//go:build !unix

package staging

import "errors"

// Filesystem is not measured on this platform.
func (d *Dir) Filesystem() (size, avail uint64, err error) {
	return 0, 0, errors.New("staging: filesystem size not available on this platform")
}
