package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/remote"
	"github.com/ferrydesk/ferry/pkg/session"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Remote is the directory access prune needs on a host: an SFTP session in service,
// a local directory in tests. Paths are absolute on the host; ReadDir and Stat do not
// follow symbolic links.
type Remote interface {
	// Resolve resolves an existing directory (symbolic links followed) within the host's
	// roots; a missing one wraps remote.ErrNotFound, one outside remote.ErrOutsideRoots.
	Resolve(dir string) (string, error)
	ReadDir(dir string) ([]fs.FileInfo, error)
	Open(name string) (io.ReadCloser, error)
	Remove(name string) error
	// RemoveAll removes name and everything below it; a missing name is no error.
	RemoveAll(name string) error
	// Classify turns an error of the methods above into a step error.
	Classify(err error) error
}

// Connector opens Remote on a host under the job's session lease.
type Connector interface {
	Connect(ctx context.Context, job, host string) (Remote, error)
}

// maxManifest bounds the manifest prune reads (it decodes only its head, but a manifest
// of a big tree is long).
const maxManifest = 256 << 20

// Prune keeps the newest args.Keep backups ferry delivered into args.Dir on args.Host and
// removes the older ones with their manifests. A backup is a regular file named
// Prefix + <time> + Suffix (time in contracts.BackupTimeFormat) with a manifest next to
// it (<name>.manifest.json, schema ferry.v1.manifest) whose artifact size is the file's:
// files ferry did not write, or whose manifest does not match, are never touched.
// Backups are ordered by the time in their names, then by modification time. A manifest
// left alone by an interrupted prune (its backup gone) older than every kept backup is
// removed too. Keep 0 keeps everything and touches no host. Removing what is gone
// already is no error, so the step can be repeated.
func (c *cleanup) Prune(ctx context.Context, args contracts.PruneArgs) (contracts.PruneResult, error) {
	res := contracts.PruneResult{Removed: []string{}}
	switch {
	case args.Keep < 0:
		return res, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("cleanup prune: keep %d is negative", args.Keep))
	case args.Keep == 0:
		return res, nil
	case args.Dir == "":
		return res, worker.Permanent(contracts.CodeInvalidCommand, errors.New("cleanup prune: no dir"))
	case strings.ContainsAny(args.Prefix+args.Suffix, "/\x00"):
		return res, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("cleanup prune: prefix %q and suffix %q must not hold '/'", args.Prefix, args.Suffix))
	}
	if c.connector == nil {
		return res, worker.ErrNotSupported(contracts.ServiceCleanup, contracts.OpPrune)
	}
	job := worker.JobID(ctx)
	if !contracts.ValidID(job) {
		return res, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("cleanup prune: %q is not a job id", job))
	}
	r, err := c.connector.Connect(ctx, job, args.Host)
	if err != nil {
		return res, err
	}
	return prune(ctx, r, args)
}

// backup is one backup ferry delivered.
type backup struct {
	name  string
	time  time.Time
	mtime time.Time
}

func prune(ctx context.Context, r Remote, args contracts.PruneArgs) (contracts.PruneResult, error) {
	res := contracts.PruneResult{Removed: []string{}}
	log := logctx.From(ctx)
	dir, err := r.Resolve(args.Dir)
	if errors.Is(err, remote.ErrNotFound) {
		log.Info("nothing to prune: no such directory", "dir", args.Dir)
		return res, nil
	}
	if err != nil {
		return res, r.Classify(err)
	}
	entries, err := r.ReadDir(dir)
	if err != nil {
		return res, r.Classify(fmt.Errorf("listing %s: %w", dir, err))
	}
	files := map[string]fs.FileInfo{} // regular files
	names := map[string]bool{}        // every entry
	for _, e := range entries {
		names[e.Name()] = true
		if e.Mode().IsRegular() {
			files[e.Name()] = e
		}
	}
	stampOf := func(name string) (time.Time, bool) {
		mid, ok := strings.CutPrefix(name, args.Prefix)
		if !ok {
			return time.Time{}, false
		}
		if mid, ok = strings.CutSuffix(mid, args.Suffix); !ok {
			return time.Time{}, false
		}
		t, err := time.Parse(contracts.BackupTimeFormat, mid)
		if err != nil || t.Format(contracts.BackupTimeFormat) != mid {
			return time.Time{}, false
		}
		return t, true
	}
	// manifest reports whether name is a ferry manifest of an artifact of size (any
	// size when size < 0).
	manifest := func(name string, size int64) (bool, error) {
		if _, ok := files[name]; !ok {
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		f, err := r.Open(path.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, r.Classify(fmt.Errorf("reading %s: %w", path.Join(dir, name), err))
		}
		defer func() { _ = f.Close() }()
		var head struct {
			Schema   string                     `json:"schema"`
			Artifact contracts.ManifestArtifact `json:"artifact"`
		}
		if err := json.NewDecoder(io.LimitReader(f, maxManifest)).Decode(&head); err != nil {
			var se *json.SyntaxError
			var te *json.UnmarshalTypeError
			if errors.As(err, &se) || errors.As(err, &te) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return false, nil // not a manifest ferry wrote
			}
			return false, r.Classify(fmt.Errorf("reading %s: %w", path.Join(dir, name), err))
		}
		return head.Schema == contracts.SchemaManifest && (size < 0 || head.Artifact.Size == size), nil
	}

	var backups, orphans []backup
	for name, fi := range files {
		if base, ok := strings.CutSuffix(name, contracts.ManifestName("")); ok {
			// A manifest whose backup is gone: an interrupted prune left it.
			if t, ok := stampOf(base); ok && !names[base] {
				if ours, err := manifest(name, -1); err != nil {
					return res, err
				} else if ours {
					orphans = append(orphans, backup{name: name, time: t, mtime: fi.ModTime()})
				}
			}
			continue
		}
		t, ok := stampOf(name)
		if !ok {
			continue
		}
		ours, err := manifest(contracts.ManifestName(name), fi.Size())
		if err != nil {
			return res, err
		}
		if !ours {
			log.Debug("not pruned: no matching ferry manifest", "file", path.Join(dir, name))
			continue
		}
		backups = append(backups, backup{name: name, time: t, mtime: fi.ModTime()})
	}
	sort.Slice(backups, func(i, j int) bool { // newest first
		a, b := backups[i], backups[j]
		if !a.time.Equal(b.time) {
			return a.time.After(b.time)
		}
		if !a.mtime.Equal(b.mtime) {
			return a.mtime.After(b.mtime)
		}
		return a.name > b.name
	})
	remove := func(name string) error {
		p := path.Join(dir, name)
		if err := r.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return r.Classify(fmt.Errorf("removing %s: %w", p, err))
		}
		res.Removed = append(res.Removed, p)
		return nil
	}
	res.Kept = min(len(backups), args.Keep)
	for _, b := range backups[res.Kept:] {
		// The backup first: a manifest left alone is small and removed by a later prune.
		if err := remove(b.name); err != nil {
			return res, err
		}
		if err := remove(contracts.ManifestName(b.name)); err != nil {
			return res, err
		}
		log.Info("old backup pruned", "file", path.Join(dir, b.name), "time", b.time)
	}
	if res.Kept == args.Keep && res.Kept > 0 {
		oldest := backups[res.Kept-1].time
		for _, o := range orphans {
			if o.time.Before(oldest) {
				if err := remove(o.name); err != nil {
					return res, err
				}
			}
		}
	}
	return res, nil
}

// sftpRemote is Remote over an SFTP session of the job's lease.
type sftpRemote struct {
	client *sshdial.Client
	conn   *remote.Conn
	roots  *remote.Roots
}

func (s *sftpRemote) Resolve(dir string) (string, error) {
	p, err := s.roots.ResolveExisting(dir)
	if err != nil {
		return "", err
	}
	return p, nil
}

func (s *sftpRemote) ReadDir(dir string) ([]fs.FileInfo, error) { return s.conn.SFTP().ReadDir(dir) }
func (s *sftpRemote) Remove(name string) error                  { return s.conn.SFTP().Remove(name) }
func (s *sftpRemote) RemoveAll(name string) error {
	err := s.conn.SFTP().RemoveAll(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
func (s *sftpRemote) Open(name string) (io.ReadCloser, error) { return s.conn.SFTP().Open(name) }

func (s *sftpRemote) Classify(err error) error {
	var se *contracts.StepError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case s.client.Err() != nil:
		return worker.Retryable(contracts.CodeUnreachable, fmt.Errorf("%v (%w)", err, s.client.Err()))
	case errors.Is(err, remote.ErrConnection):
		return worker.Retryable(contracts.CodeUnreachable, err)
	case errors.Is(err, remote.ErrOutsideRoots), errors.Is(err, remote.ErrInvalidPath), errors.Is(err, fs.ErrPermission):
		return worker.Permanent(contracts.CodeInvalidCommand, err)
	}
	return session.Classify(err)
}

// HostDialer opens Remote on a host outside any job's session: the leftovers sweep
// runs after the job ended and its leases were revoked. done closes the connection.
type HostDialer interface {
	Open(ctx context.Context, host string) (r Remote, done func(), err error)
}

// DirectDialer dials a host of the inventory, its key checked against the inventory's
// pinned keys and known_hosts as the connect step checks it, for one use.
type DirectDialer struct {
	Dialer *session.Dialer
}

// Open dials host and opens an SFTP session within its roots.
func (d *DirectDialer) Open(ctx context.Context, host string) (Remote, func(), error) {
	h, err := d.Dialer.Host(ctx, host)
	if err != nil {
		return nil, nil, err
	}
	client, err := d.Dialer.Dial(ctx, host, "")
	if err != nil {
		return nil, nil, err
	}
	s := &sftpRemote{client: client}
	done := func() { _ = client.Close() }
	if s.conn, err = remote.Open(client, remote.Options{}); err != nil {
		done()
		return nil, nil, s.Classify(err)
	}
	done = func() { _ = s.conn.Close(); _ = client.Close() }
	if s.roots, err = s.conn.Roots(h.Roots); err != nil {
		done()
		return nil, nil, s.Classify(err)
	}
	return s, done, nil
}

// LeaseConnector dials hosts under the job's lease and keeps one SFTP session per
// connection.
type LeaseConnector struct {
	Dialer *session.Dialer
	Conns  *remote.Conns
}

// Connect returns the directory access of the job's session on host, within the
// host's roots.
func (l *LeaseConnector) Connect(ctx context.Context, job, host string) (Remote, error) {
	if !contracts.ValidID(host) {
		return nil, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("%q is not a host name", host))
	}
	h, err := l.Dialer.Host(ctx, host)
	if err != nil {
		return nil, err
	}
	client, _, err := l.Dialer.Client(ctx, job, host)
	if err != nil {
		return nil, err
	}
	s := &sftpRemote{client: client}
	if s.conn, err = l.Conns.Get(client); err != nil {
		return nil, s.Classify(err)
	}
	if s.roots, err = s.conn.Roots(h.Roots); err != nil {
		return nil, s.Classify(err)
	}
	return s, nil
}
