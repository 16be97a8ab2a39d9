// Package staging is the area where the byte-moving services keep a job's files
// between pulling and pushing them: one directory per job, <root>/<job-id>/.
//
// The default implementation is a local directory (one host, or a volume shared by
// transfer, archiver and cleanup). Every access goes through an os.Root, so no job id,
// file name or symbolic link can reach outside the staging root.
package staging

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ferrydesk/ferry/contracts"
)

// Staging is a job-partitioned scratch area.
type Staging interface {
	// Dir returns the absolute path of the job's staging directory, creating it if it
	// does not exist yet.
	Dir(job string) (string, error)
	// Remove deletes the job's staging directory and everything in it. A job with no
	// staging directory is removed already: that is success.
	Remove(ctx context.Context, job string) error
	// List returns the ids of the jobs that have a staging directory, sorted.
	List(ctx context.Context) ([]string, error)
	// Usage returns the bytes held by the regular files in the staging area.
	Usage(ctx context.Context) (int64, error)
}

// ErrInvalidJob is returned for a job id that is not contracts.ValidID: it could name
// a path outside the job's own directory.
var ErrInvalidJob = errors.New("staging: not a valid job id")

// Dir is a Staging in a local directory.
type Dir struct {
	path string
	root *os.Root
}

var _ Staging = (*Dir)(nil)

// NewDir opens (creating it if needed, mode 0750) the staging root at path. Close it
// when done.
func NewDir(path string) (*Dir, error) {
	if path == "" {
		return nil, errors.New("staging: no directory configured")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("staging: creating %s: %w", abs, err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}
	return &Dir{path: abs, root: root}, nil
}

// Path is the staging root.
func (d *Dir) Path() string { return d.path }

// Close releases the staging root.
func (d *Dir) Close() error { return d.root.Close() }

func checkJob(job string) error {
	if !contracts.ValidID(job) {
		return fmt.Errorf("%w: %q", ErrInvalidJob, job)
	}
	return nil
}

// Dir implements Staging.
func (d *Dir) Dir(job string) (string, error) {
	if err := checkJob(job); err != nil {
		return "", err
	}
	if err := d.root.Mkdir(job, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("staging: creating directory of job %s: %w", job, err)
	}
	fi, err := d.root.Lstat(job)
	if err != nil {
		return "", fmt.Errorf("staging: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("staging: %s in %s is not a directory", job, d.path)
	}
	return filepath.Join(d.path, job), nil
}

// Remove implements Staging.
func (d *Dir) Remove(ctx context.Context, job string) error {
	if err := checkJob(job); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// RemoveAll inside the root removes a symbolic link itself, never its target, and
	// succeeds when the directory does not exist.
	if err := d.root.RemoveAll(job); err != nil {
		return fmt.Errorf("staging: removing directory of job %s: %w", job, err)
	}
	return nil
}

// List implements Staging. Entries that are not directories named by a valid job id
// (stray files, temporary names) are left out.
func (d *Dir) List(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(d.root.FS(), ".")
	if err != nil {
		return nil, fmt.Errorf("staging: listing %s: %w", d.path, err)
	}
	var jobs []string
	for _, e := range entries {
		if e.IsDir() && contracts.ValidID(e.Name()) {
			jobs = append(jobs, e.Name())
		}
	}
	return jobs, nil
}

// Usage implements Staging. Symbolic links are not followed. Files that vanish while
// it walks (a job being removed) are skipped.
func (d *Dir) Usage(ctx context.Context) (int64, error) {
	var total int64
	err := fs.WalkDir(d.root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		total += fi.Size()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("staging: measuring %s: %w", d.path, err)
	}
	return total, nil
}
