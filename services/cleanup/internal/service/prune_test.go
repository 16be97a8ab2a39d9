package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/remote"
)

// localRemote is Remote on a local directory.
type localRemote struct{ removed []string }

func (l *localRemote) Resolve(dir string) (string, error) {
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s: %w", dir, remote.ErrNotFound)
		}
		return "", err
	}
	return filepath.EvalSymlinks(dir)
}

func (l *localRemote) ReadDir(dir string) ([]fs.FileInfo, error) {
	entries, err := os.ReadDir(dir)
	var out []fs.FileInfo
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		out = append(out, fi)
	}
	return out, err
}

func (l *localRemote) Open(name string) (io.ReadCloser, error) { return os.Open(name) }
func (l *localRemote) Remove(name string) error {
	l.removed = append(l.removed, filepath.Base(name))
	return os.Remove(name)
}
func (l *localRemote) RemoveAll(name string) error {
	l.removed = append(l.removed, name)
	return os.RemoveAll(name)
}
func (l *localRemote) Classify(err error) error { return err }

// deliver writes a backup and its manifest as ferry delivers them.
func deliver(t *testing.T, dir, name string, data string) {
	t.Helper()
	write(t, filepath.Join(dir, name), data)
	m := contracts.Manifest{Schema: contracts.SchemaManifest, JobID: "j",
		Artifact: contracts.ManifestArtifact{Name: "staged.tar.zst", Size: int64(len(data)), SHA256: "00", Kind: "archive"}}
	raw, _ := json.Marshal(m)
	write(t, filepath.Join(dir, contracts.ManifestName(name)), string(raw))
}

func write(t *testing.T, p, data string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func TestPruneKeepsNewestFerryBackupsOnly(t *testing.T) {
	dir := t.TempDir()
	// Four backups of erp, the oldest first; mtimes say the opposite, the names win.
	for i, ts := range []string{"20250101T000000Z", "20250102T000000Z", "20250103T000000Z", "20250104T000000Z"} {
		deliver(t, dir, "erp-"+ts+".dump", strings.Repeat("x", 10+i))
		mt := time.Now().Add(-time.Duration(i) * time.Hour)
		_ = os.Chtimes(filepath.Join(dir, "erp-"+ts+".dump"), mt, mt)
	}
	// Never touched: another database whose name starts like this one, files without a
	// manifest, with a manifest of another size or schema, a directory, a link, a
	// manifest of a backup that is still there but not ours.
	deliver(t, dir, "erp-old-20240101T000000Z.dump", "old")
	write(t, filepath.Join(dir, "erp-20240101T000000Z.dump"), "hand-made")
	write(t, filepath.Join(dir, "erp-20240102T000000Z.dump"), "wrong size")
	write(t, filepath.Join(dir, "erp-20240102T000000Z.dump.manifest.json"), `{"schema":"ferry.v1.manifest","artifact":{"size":3}}`)
	write(t, filepath.Join(dir, "erp-20240103T000000Z.dump"), "abc")
	write(t, filepath.Join(dir, "erp-20240103T000000Z.dump.manifest.json"), `{"schema":"other.v1","artifact":{"size":3}}`)
	write(t, filepath.Join(dir, "erp-20240104T000000Z.dump"), "abc")
	write(t, filepath.Join(dir, "erp-20240104T000000Z.dump.manifest.json"), `not json`)
	write(t, filepath.Join(dir, "erp-2024.dump"), "abc")
	write(t, filepath.Join(dir, "erp-2024.dump.manifest.json"), `{"schema":"ferry.v1.manifest","artifact":{"size":3}}`)
	if err := os.Mkdir(filepath.Join(dir, "erp-20240105T000000Z.dump"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("erp-20250101T000000Z.dump", filepath.Join(dir, "erp-20240106T000000Z.dump")); err != nil {
		t.Fatal(err)
	}
	deliver(t, dir, "erp-20240107T000000Z.dump", "linked")
	_ = os.Remove(filepath.Join(dir, "erp-20240107T000000Z.dump"))
	if err := os.Symlink("erp-20250101T000000Z.dump", filepath.Join(dir, "erp-20240107T000000Z.dump")); err != nil {
		t.Fatal(err)
	}
	before := names(t, dir)

	r := &localRemote{}
	res, err := prune(context.Background(), r, contracts.PruneArgs{Dir: dir, Prefix: "erp-", Suffix: ".dump", Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	gone := []string{"erp-20250101T000000Z.dump", "erp-20250101T000000Z.dump.manifest.json", "erp-20250102T000000Z.dump", "erp-20250102T000000Z.dump.manifest.json"}
	if res.Kept != 2 || len(res.Removed) != 4 {
		t.Errorf("result %+v", res)
	}
	for _, p := range res.Removed {
		if !slices.Contains(gone, filepath.Base(p)) || filepath.Dir(p) != dir {
			t.Errorf("removed %s", p)
		}
	}
	var want []string
	for _, n := range before {
		if !slices.Contains(gone, n) {
			want = append(want, n)
		}
	}
	if got := names(t, dir); !slices.Equal(got, want) {
		t.Errorf("left %v\nwant %v", got, want)
	}

	// Again: nothing more to do.
	r.removed = nil
	res, err = prune(context.Background(), r, contracts.PruneArgs{Dir: dir, Prefix: "erp-", Suffix: ".dump", Keep: 2})
	if err != nil || res.Kept != 2 || len(res.Removed) != 0 || len(r.removed) != 0 {
		t.Errorf("second prune: %+v, %v, removed %v", res, err, r.removed)
	}
}

func TestPruneLogsAndLeftovers(t *testing.T) {
	dir := t.TempDir()
	for _, ts := range []string{"20250101T000000Z", "20250102T000000Z", "20250103T000000Z"} {
		deliver(t, dir, ts+".tar.zst", "bundle-"+ts)
	}
	// An interrupted prune removed the oldest bundle but not its manifest; a newer
	// manifest without its bundle (a delivery lands the bundle first) is not old enough.
	deliver(t, dir, "20241231T000000Z.tar.zst", "bundle")
	_ = os.Remove(filepath.Join(dir, "20241231T000000Z.tar.zst"))
	deliver(t, dir, "20250104T000000Z.tar.zst", "bundle")
	_ = os.Remove(filepath.Join(dir, "20250104T000000Z.tar.zst"))
	write(t, filepath.Join(dir, "notes.txt"), "mine")
	write(t, filepath.Join(dir, ".20250105T000000Z.tar.zst.ferry-j.part"), "partial")

	res, err := prune(context.Background(), &localRemote{}, contracts.PruneArgs{Dir: dir, Suffix: ".tar.zst", Keep: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kept != 1 || len(res.Removed) != 5 {
		t.Errorf("result %+v", res)
	}
	want := []string{".20250105T000000Z.tar.zst.ferry-j.part", "20250103T000000Z.tar.zst", "20250103T000000Z.tar.zst.manifest.json",
		"20250104T000000Z.tar.zst.manifest.json", "notes.txt"}
	if got := names(t, dir); !slices.Equal(got, want) {
		t.Errorf("left %v\nwant %v", got, want)
	}
}

func TestPruneNothingToDo(t *testing.T) {
	// Keep 0 touches no host (there is no connector here).
	res, err := New(nil, Options{}).Prune(context.Background(), contracts.PruneArgs{Host: "h", Dir: "d", Keep: 0})
	if err != nil || res.Kept != 0 || len(res.Removed) != 0 {
		t.Errorf("keep 0: %+v, %v", res, err)
	}
	// A directory that does not exist yet holds nothing to prune.
	res, err = prune(context.Background(), &localRemote{}, contracts.PruneArgs{Dir: filepath.Join(t.TempDir(), "none"), Keep: 2})
	if err != nil || len(res.Removed) != 0 {
		t.Errorf("missing dir: %+v, %v", res, err)
	}
	for _, args := range []contracts.PruneArgs{{Dir: "d", Keep: -1}, {Keep: 1}, {Dir: "d", Prefix: "a/", Keep: 1}} {
		_, err := New(nil, Options{}).Prune(context.Background(), args)
		var se *contracts.StepError
		if !errors.As(err, &se) || se.Code != contracts.CodeInvalidCommand || se.Retryable {
			t.Errorf("%+v: %v, want permanent invalid_command", args, err)
		}
	}
}
