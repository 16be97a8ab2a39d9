package contracts

import "time"

// SchemaManifest is the schema id of Manifest.
const SchemaManifest = "ferry.v1.manifest"

// Manifest describes an archive or dump that ferry wrote: every file with its size, mode
// and SHA-256, and the artifact itself. It travels next to the artifact as
// "<artifact>.manifest.json", so the receiver can verify both.
type Manifest struct {
	Schema  string    `json:"schema"`
	JobID   string    `json:"job_id"`
	Created time.Time `json:"created"`
	// Artifact is the archive (or dump) the manifest describes.
	Artifact ManifestArtifact `json:"artifact"`
	// Files are the archive's entries in archive order (sorted by path). Empty for a dump.
	Files []ManifestFile `json:"files"`
	// Dirs are the archive's directories in archive order, each with the mode and time
	// a tree unpacked from it gives them; an empty directory of an update is one. Absent
	// for a dump, and in manifests written before ferry listed them.
	Dirs []ManifestDir `json:"dirs,omitempty"`
	// Links are the archive's symbolic links in archive order, each pointing inside the
	// tree (see archive.CheckLink).
	Links []ManifestLink `json:"links,omitempty"`
	// Empty says no file matched (log backups with allow_empty).
	Empty bool `json:"empty,omitempty"`
}

// ManifestArtifact is the artifact a manifest describes.
type ManifestArtifact struct {
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`                // hex
	Compression string `json:"compression,omitempty"` // zstd, gzip, or empty
	Kind        string `json:"kind"`                  // archive, pg-dump, mysql-dump
}

// ManifestFile is one entry of an archive.
type ManifestFile struct {
	Path   string    `json:"path"` // slash-separated, relative, contained
	Size   int64     `json:"size"`
	Mode   uint32    `json:"mode"` // permission bits
	SHA256 string    `json:"sha256"`
	MTime  time.Time `json:"mtime"`
}

// ManifestDir is one directory of an archive.
type ManifestDir struct {
	Path  string    `json:"path"` // slash-separated, relative, contained
	Mode  uint32    `json:"mode"` // permission bits
	MTime time.Time `json:"mtime"`
}

// ManifestLink is one symbolic link of an archive.
type ManifestLink struct {
	Path   string `json:"path"`   // slash-separated, relative, contained
	Target string `json:"target"` // relative, as the link holds it
}

// ManifestName is the name of the manifest of artifact.
func ManifestName(artifact string) string { return artifact + ".manifest.json" }
