package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/archive"
	"github.com/ferrydesk/ferry/pkg/dbdump"
	"github.com/ferrydesk/ferry/pkg/logctx"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/worker"
)

// Dump dumps the database args.Database through the tunnel at args.Addr into
// <staging>/<job>/<Name>, with its manifest <Name>.manifest.json (kind pg-dump or
// mysql-dump, no files).
//
// The password is read from <secrets>/<Credential>/password (0600 enforced) and reaches
// the dump tool only through a private 0600 passfile or option file. The tool writes a
// temporary name; only when it exited with status 0 and the dump reads back whole
// (pg_restore to /dev/null; the mysqldump trailer) is it hashed, synced and renamed
// into place, manifest last. A dump under its final name is therefore always complete
// and verified. When both exist already and match (hashed again), the step returns them
// untouched: a redelivered command does no harm; a second delivery arriving while the
// first still dumps is deferred.
//
// Failures say which: a rejected password (auth_failed) and an unknown database
// (not_found) fail for good; a closed port or a tunnel that dropped mid-dump
// (unreachable) and a dump that does not verify (verify_failed) are retryable.
func (a *archiver) Dump(ctx context.Context, args contracts.DumpArgs) (contracts.ArtifactResult, error) {
	job := worker.JobID(ctx)
	if !contracts.ValidID(job) {
		return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand,
			fmt.Errorf("archiver dump: %q is not a job id", job))
	}
	return a.dump(ctx, job, args)
}

func (a *archiver) dump(ctx context.Context, job string, args contracts.DumpArgs) (contracts.ArtifactResult, error) {
	target, err := checkDumpArgs(args)
	if err != nil {
		return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeInvalidCommand, fmt.Errorf("archiver dump: %w", err))
	}
	root, err := a.jobRoot(job)
	if err != nil {
		return contracts.ArtifactResult{}, err
	}
	defer func() { _ = root.Close() }()
	log := logctx.From(ctx).With("engine", string(target.Engine), "database", args.Database, "addr", args.Addr)

	unlock, err := lockName(root, args.Name)
	if err != nil {
		return contracts.ArtifactResult{}, err
	}
	defer unlock()

	kind := target.Engine.Kind()
	if m, ok, err := archive.Staged(ctx, root, args.Name, kind, ""); err != nil {
		return contracts.ArtifactResult{}, err
	} else if ok {
		log.Info("dump exists already and matches its manifest; not dumped again", "name", args.Name, "sha256", m.Artifact.SHA256)
		return archive.Result(m), nil
	}

	if args.Credential != "" {
		if target.Password, err = dbdump.LoadPassword(a.secretsDir, args.Credential); err != nil {
			return contracts.ArtifactResult{}, worker.Permanent(contracts.CodeAuth, fmt.Errorf("database credential: %w", err))
		}
	}

	m, err := a.writeDump(ctx, root, root.Name(), job, args.Name, target)
	if err != nil {
		log.Warn("database dump failed", "name", args.Name, "error", err)
		return contracts.ArtifactResult{}, dumpError(err)
	}
	worker.ReportProgress(ctx, args.Name, m.Artifact.Size, m.Artifact.Size)
	log.Info("database dumped", "name", args.Name, "size", m.Artifact.Size, "sha256", m.Artifact.SHA256)
	return archive.Result(m), nil
}

// checkDumpArgs refuses arguments that can never succeed and returns the target
// (without its password).
func checkDumpArgs(args contracts.DumpArgs) (dbdump.Target, error) {
	if err := archive.CheckName(args.Name); err != nil {
		return dbdump.Target{}, err
	}
	if strings.HasPrefix(args.Name, ".") {
		return dbdump.Target{}, fmt.Errorf("artifact name %q: must not start with '.'", args.Name)
	}
	engine, err := dbdump.ParseEngine(args.Engine)
	if err != nil {
		return dbdump.Target{}, err
	}
	if args.Credential != "" && !contracts.ValidCredentialRef(args.Credential) {
		return dbdump.Target{}, fmt.Errorf("credential %q is not a credential reference", args.Credential)
	}
	t := dbdump.Target{Engine: engine, Addr: args.Addr, Database: args.Database, User: args.User}
	if err := t.Check(); err != nil {
		return dbdump.Target{}, err
	}
	return t, nil
}

// writeDump dumps into a temporary name, verifies and hashes the dump, writes the
// manifest under a temporary name, and renames both into place (dump first).
func (a *archiver) writeDump(ctx context.Context, root *os.Root, dir, job, name string, t dbdump.Target) (m contracts.Manifest, err error) {
	suffix := archive.TempSuffix()
	tmpDump, tmpManifest := name+suffix, contracts.ManifestName(name)+suffix
	defer func() {
		if err != nil {
			_ = root.Remove(tmpDump)
			_ = root.Remove(tmpManifest)
		}
	}()
	// Created here (exclusively, inside the root), so the tool writes a fresh regular
	// file of ours.
	f, err := root.OpenFile(tmpDump, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return m, fmt.Errorf("archiver: %w", err)
	}
	if err = f.Close(); err != nil {
		return m, fmt.Errorf("archiver: %w", err)
	}
	path := filepath.Join(dir, tmpDump)
	err = a.dumper.Dump(ctx, t, path, func(done int64) { worker.ReportProgress(ctx, name, done, 0) })
	if err != nil {
		return m, err
	}
	// Dump verified it (read back whole while it was written); hash what landed.
	size, sum, err := hashAndSync(ctx, root, tmpDump)
	if err != nil {
		return m, err
	}
	m = contracts.Manifest{
		Schema: contracts.SchemaManifest, JobID: job, Created: a.now().UTC(),
		Artifact: contracts.ManifestArtifact{Name: name, Size: size, SHA256: sum, Kind: t.Engine.Kind()},
		Files:    []contracts.ManifestFile{},
	}
	if err = archive.WriteManifest(root, tmpManifest, m); err != nil {
		return m, err
	}
	if err = root.Rename(tmpDump, name); err != nil {
		return m, fmt.Errorf("archiver: %w", err)
	}
	if err = root.Rename(tmpManifest, contracts.ManifestName(name)); err != nil {
		return m, fmt.Errorf("archiver: %w", err)
	}
	return m, archive.SyncDir(root)
}

// hashAndSync returns the size and SHA-256 of name and syncs it to disk.
func hashAndSync(ctx context.Context, root *os.Root, name string) (int64, string, error) {
	f, err := root.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, "", fmt.Errorf("archiver: %w", err)
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var size int64
	for {
		if err := ctx.Err(); err != nil {
			return 0, "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		size += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, "", fmt.Errorf("archiver: reading %s: %w", name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return 0, "", fmt.Errorf("archiver: syncing %s: %w", name, err)
	}
	return size, hex.EncodeToString(h.Sum(nil)), nil
}

// lockName takes an exclusive lock for dumping into name (a lock file next to it), so
// that a command delivered again while the first delivery still dumps waits instead of
// racing it to the final names; it defers the command when the lock is held.
func lockName(root *os.Root, name string) (func(), error) {
	f, err := root.OpenFile("."+name+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("archiver: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, worker.Defer(10*time.Second, fmt.Errorf("a dump into %s is in progress already", name))
		}
		return nil, fmt.Errorf("archiver: locking %s: %w", name, err)
	}
	return func() { _ = f.Close() }, nil
}

// dumpError turns a dbdump or credential error into the step's error.
func dumpError(err error) error {
	var se *contracts.StepError
	switch {
	case errors.As(err, &se):
		return err
	case errors.Is(err, dbdump.ErrInvalid):
		return worker.Permanent(contracts.CodeInvalidCommand, err)
	case errors.Is(err, dbdump.ErrAuth), errors.Is(err, sshdial.ErrCredential):
		return worker.Permanent(contracts.CodeAuth, err)
	case errors.Is(err, dbdump.ErrNoDatabase):
		return worker.Permanent(contracts.CodeNotFound, err)
	case errors.Is(err, dbdump.ErrUnreachable), errors.Is(err, dbdump.ErrConnectionLost):
		return worker.Retryable(contracts.CodeUnreachable, err)
	case errors.Is(err, dbdump.ErrIncomplete):
		return worker.Retryable(contracts.CodeVerify, err)
	case errors.Is(err, dbdump.ErrTool):
		return worker.Permanent(contracts.CodeInternal, err)
	}
	return err
}
