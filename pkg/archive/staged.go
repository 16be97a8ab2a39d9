package archive

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/staging"
)

// Artifacts in a job's staging directory: an artifact (archive or dump) named N lives
// beside its manifest ManifestName(N). Both are written under temporary names, synced
// and renamed into place, artifact first, so a manifest in place always describes a
// complete artifact. The services that write artifacts (archiver, transfer) share
// these helpers.

// MaxName bounds an artifact name so that it, its manifest's name and their temporary
// names fit a file name (255 bytes).
const MaxName = 200

// CheckName refuses artifact names that are not a plain file name the staging area can
// hold next to its manifest and temporary names.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("no artifact name")
	case len(name) > MaxName:
		return fmt.Errorf("artifact name of %d bytes: at most %d", len(name), MaxName)
	case strings.Contains(name, "/"):
		return fmt.Errorf("artifact name %q: a file name, not a path", name)
	case strings.HasSuffix(name, contracts.ManifestName("")):
		return fmt.Errorf("artifact name %q: reserved for manifests", name)
	}
	if _, err := SafePath(name); err != nil {
		return fmt.Errorf("artifact name: %w", err)
	}
	return nil
}

// TempSuffix returns a fresh suffix for the temporary names of an artifact.
func TempSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return ".tmp-" + hex.EncodeToString(b[:])
}

// Stage writes the artifact name into root with write, which returns its manifest,
// then the manifest: both under temporary names, synced, renamed into place (artifact
// first) and the directory synced. On failure neither temporary file is left.
func Stage(root *os.Root, name string, write func(io.Writer) (contracts.Manifest, error)) (m contracts.Manifest, err error) {
	suffix := TempSuffix()
	tmpArtifact, tmpManifest := name+suffix, contracts.ManifestName(name)+suffix
	defer func() {
		if err != nil {
			_ = root.Remove(tmpArtifact)
			_ = root.Remove(tmpManifest)
		}
	}()
	err = WriteSynced(root, tmpArtifact, func(w io.Writer) error {
		var werr error
		m, werr = write(w)
		return werr
	})
	if err != nil {
		return m, err
	}
	if err = WriteManifest(root, tmpManifest, m); err != nil {
		return m, err
	}
	if err = root.Rename(tmpArtifact, name); err != nil {
		return m, fmt.Errorf("staging: %w", err)
	}
	if err = root.Rename(tmpManifest, contracts.ManifestName(name)); err != nil {
		return m, fmt.Errorf("staging: %w", err)
	}
	return m, SyncDir(root)
}

// WriteManifest writes m as indented JSON into the new file name, synced.
func WriteManifest(root *os.Root, name string, m contracts.Manifest) error {
	return WriteSynced(root, name, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	})
}

// WriteSynced creates name in root (it must not exist), writes it through a buffer
// with write, and syncs and closes it.
func WriteSynced(root *os.Root, name string, write func(io.Writer) error) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	// Its writeback starts on the way, so the fsync at the end has little to wait for.
	bw := bufio.NewWriterSize(staging.NewWriteBehind(f, 0), 1<<20)
	if err := write(bw); err != nil {
		_ = f.Close()
		return err
	}
	err = bw.Flush()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("staging: writing %s: %w", name, err)
	}
	return nil
}

// SyncDir syncs root's directory, so the renames in it are durable.
func SyncDir(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("staging: syncing the staging directory: %w", err)
	}
	return nil
}

// Staged returns the manifest of an artifact written before under name, when it and
// its manifest are in place, the manifest is for this artifact, kind and compression,
// and the artifact's size and SHA-256 (hashed again) match it. Anything else is false:
// the artifact is to be written again (over what is there).
func Staged(ctx context.Context, root *os.Root, name, kind, comp string) (contracts.Manifest, bool, error) {
	var m contracts.Manifest
	mf, err := root.Open(contracts.ManifestName(name))
	if err != nil {
		return m, false, nil
	}
	defer func() { _ = mf.Close() }()
	if err := json.NewDecoder(bufio.NewReader(mf)).Decode(&m); err != nil {
		return m, false, nil
	}
	if m.Schema != contracts.SchemaManifest || m.Artifact.Name != name || m.Artifact.Compression != comp || m.Artifact.Kind != kind {
		return m, false, nil
	}
	af, err := root.Open(name)
	if err != nil {
		return m, false, nil
	}
	defer func() { _ = af.Close() }()
	fi, err := af.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != m.Artifact.Size {
		return m, false, nil
	}
	h := sha256.New()
	buf := make([]byte, copyBuffer)
	for {
		if err := ctx.Err(); err != nil {
			return m, false, err
		}
		n, err := af.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return m, false, fmt.Errorf("staging: reading %s: %w", name, err)
		}
	}
	return m, hex.EncodeToString(h.Sum(nil)) == m.Artifact.SHA256, nil
}

// Result is the step result of the artifact m describes.
func Result(m contracts.Manifest) contracts.ArtifactResult {
	return contracts.ArtifactResult{
		Name:     m.Artifact.Name,
		Manifest: contracts.ManifestName(m.Artifact.Name),
		Size:     m.Artifact.Size,
		SHA256:   m.Artifact.SHA256,
		Files:    len(m.Files),
	}
}
