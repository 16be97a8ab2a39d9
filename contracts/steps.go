package contracts

import (
	"encoding/json"
	"strings"
	"time"
)

// Op is an operation of a worker service, the last token of its command subjects.
type Op string

// Operations of the connector.
const (
	OpConnect Op = "connect"
	OpTunnel  Op = "tunnel"
	OpClose   Op = "close"
)

// Operations of transfer.
const (
	OpCopyRemote Op = "copy-remote" // copy files on a remote host, server side
	OpPull       Op = "pull"        // remote host → staging
	OpPush       Op = "push"        // staging → customer server
	OpDeliver    Op = "deliver"     // staging → operator's home directory
	OpBundle     Op = "bundle"      // remote host → an archive in staging, streamed
)

// Operations of the archiver.
const (
	OpArchive Op = "archive" // tar + zstd/gzip with a SHA-256 manifest
	OpDump    Op = "dump"    // database dump through a tunnel
)

// Operations of cleanup.
const (
	OpRemoveStaging Op = "remove-staging"
	OpPrune         Op = "prune"
)

// Schema ids of the step messages.
const (
	SchemaStepCommand = "ferry.v1.step.command"
	SchemaStepEvent   = "ferry.v1.step.event"
	SchemaProgress    = "ferry.v1.step.progress"
)

// StepCommand asks a worker service to execute one attempt of one step of a job.
// It is published on CommandSubject(Service, Op) with Nats-Msg-Id CommandMsgID.
type StepCommand struct {
	Schema  string  `json:"schema"`
	JobID   string  `json:"job_id"`
	Action  Action  `json:"action"`
	Step    string  `json:"step"`
	Attempt int     `json:"attempt"`
	Service Service `json:"service"`
	Op      Op      `json:"op"`
	// Deadline is when the orchestrator stops waiting for this attempt; a worker that
	// receives the command later does not start it.
	Deadline time.Time `json:"deadline"`
	// Args are the operation's arguments (one of the *Args types below).
	Args json.RawMessage `json:"args,omitempty"`
}

// StepEventKind says what happened to a step attempt.
type StepEventKind string

// Step event kinds.
const (
	StepSucceeded StepEventKind = "succeeded"
	StepFailed    StepEventKind = "failed"
)

// StepEvent reports the end of one step attempt, on StepEventSubject(job).
type StepEvent struct {
	Schema  string        `json:"schema"`
	JobID   string        `json:"job_id"`
	Step    string        `json:"step"`
	Attempt int           `json:"attempt"`
	Service Service       `json:"service"`
	Op      Op            `json:"op"`
	Kind    StepEventKind `json:"kind"`
	// Error is set when Kind is failed.
	Error *StepError `json:"error,omitempty"`
	// Output is the operation's result (one of the *Result types below).
	Output json.RawMessage `json:"output,omitempty"`
	// Bytes moved or written by the step, when it moves bytes.
	Bytes    int64         `json:"bytes,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	Worker   string        `json:"worker,omitempty"`
	Time     time.Time     `json:"time"`
}

// Error codes of StepError.
const (
	CodeNotSupported   = "not_supported"   // the operation is not implemented by this version
	CodeInvalidCommand = "invalid_command" // a command that can never succeed (poison)
	CodeTimeout        = "timeout"
	CodeCancelled      = "cancelled"
	CodeUnreachable    = "unreachable"
	CodeAuth           = "auth_failed"
	CodeHostKey        = "host_key"
	CodeNotFound       = "not_found"
	CodeRemoteWrite    = "remote_write"
	CodeVerify         = "verify_failed"
	CodeInternal       = "internal"
)

// StepError is a failed step attempt. Message is for people and never holds a secret.
type StepError struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

func (e *StepError) Error() string { return e.Message }

// Progress reports bytes done of a long step, on ProgressSubject(job), at most a few
// times a second.
type Progress struct {
	Schema  string    `json:"schema"`
	JobID   string    `json:"job_id"`
	Step    string    `json:"step"`
	Attempt int       `json:"attempt"`
	File    string    `json:"file,omitempty"`
	Done    int64     `json:"done"`
	Total   int64     `json:"total"`
	Time    time.Time `json:"time"`
}

// ConnectArgs opens (or re-verifies) an SSH session to a host and records a lease.
type ConnectArgs struct {
	Host string `json:"host"`
}

// ConnectResult is the lease a connect step recorded.
type ConnectResult struct {
	Lease       string    `json:"lease"`
	Fingerprint string    `json:"fingerprint"`
	Expires     time.Time `json:"expires"`
}

// TunnelArgs forwards a listener on the connector to Remote (host:port as seen from Host).
type TunnelArgs struct {
	Host   string `json:"host"`
	Remote string `json:"remote"`
}

// TunnelResult says where the tunnel listens.
type TunnelResult struct {
	Addr string `json:"addr"`
}

// CloseArgs closes every lease, connection and tunnel of the job.
type CloseArgs struct{}

// CopyRemoteArgs copies Sources into DestDir on Host, server side where possible.
type CopyRemoteArgs struct {
	Host    string   `json:"host"`
	Sources []string `json:"sources"`
	DestDir string   `json:"dest_dir"`
}

// PullArgs copies files from Host into the job's staging area Into.
type PullArgs struct {
	Host       string   `json:"host"`
	Paths      []string `json:"paths"`
	Since      Duration `json:"since,omitempty"`
	MaxSize    Size     `json:"max_size,omitempty"`
	AllowEmpty bool     `json:"allow_empty,omitempty"`
	// Links carries the symbolic links of a tree that point inside it (as links) and
	// refuses the pull at one that leads out of it; without it links are skipped.
	Links bool   `json:"links,omitempty"`
	Into  string `json:"into"`
}

// BundleArgs takes the files Paths select on Host (as PullArgs does) into the archive
// Name with its manifest in the job's staging area: a pull and an archive in one pass,
// the files streamed from the host into the archive without being staged.
type BundleArgs struct {
	Host       string   `json:"host"`
	Paths      []string `json:"paths"`
	Since      Duration `json:"since,omitempty"`
	MaxSize    Size     `json:"max_size,omitempty"`
	AllowEmpty bool     `json:"allow_empty,omitempty"`
	// Links carries the symbolic links of a tree that point inside it, as PullArgs.Links.
	Links bool `json:"links,omitempty"`
	// Stage, when set, keeps the files too: they are pulled into this staging area of
	// the job and archived from there (an update delivered unpacked pushes that tree).
	Stage       string `json:"stage,omitempty"`
	Name        string `json:"name"`
	Compression string `json:"compression"`
	// Forward, when set, sends the archive on to the customer while it is made: it
	// lands there under the push's temporary name, verified, and the push step only
	// renames it (see Forwarded). Best effort: a forward that fails leaves the push
	// to do it all.
	Forward *ForwardTarget `json:"forward,omitempty"`
}

// ForwardTarget is where a bundle forwards its archive: Host's DestDir, as the push
// step that follows will have it.
type ForwardTarget struct {
	Host    string `json:"host"`
	DestDir string `json:"dest_dir"`
}

// Forwarded is an archive a bundle forwarded: complete on Host in Dir (resolved) under
// the push's temporary name, its Size and SHA-256 checked by the host as it landed,
// flushed, last modified at MTime (Unix seconds).
type Forwarded struct {
	Host   string `json:"host"`
	Dir    string `json:"dir"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	MTime  int64  `json:"mtime"`
}

// ArchiveArgs archives the staging area From of the job into Name with a manifest.
type ArchiveArgs struct {
	From        string `json:"from"`
	Name        string `json:"name"`
	Compression string `json:"compression"`
}

// ArtifactResult describes a file written to staging (archive, dump) and its manifest.
type ArtifactResult struct {
	Name     string `json:"name"`
	Manifest string `json:"manifest,omitempty"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
	Files    int    `json:"files,omitempty"`
	// Forwarded is set when a bundle forwarded the archive (BundleArgs.Forward).
	Forwarded *Forwarded `json:"forwarded,omitempty"`
}

// BytesMoved reports the artifact's size as the bytes the step wrote.
func (a ArtifactResult) BytesMoved() int64 { return a.Size }

// DumpArgs dumps a database through the tunnel at Addr into staging.
type DumpArgs struct {
	Engine     string `json:"engine"`
	Database   string `json:"database"`
	Addr       string `json:"addr"`
	User       string `json:"user,omitempty"`
	Credential string `json:"credential,omitempty"`
	Name       string `json:"name"`
}

// PushArgs sends a staged artifact and its manifest to DestDir on Host: temporary name,
// size and SHA-256 verified, then renamed into place. With Unpack the file tree staged
// in Tree lands instead, each file verified against the manifest.
type PushArgs struct {
	Host     string `json:"host"`
	Artifact string `json:"artifact"`
	DestDir  string `json:"dest_dir"`
	Unpack   bool   `json:"unpack,omitempty"`
	Tree     string `json:"tree,omitempty"`
	// Forwarded is the bundle's forward of the artifact, if it made one: found
	// unchanged on the host, it is renamed into place without being sent again.
	Forwarded *Forwarded `json:"forwarded,omitempty"`
}

// DeliverArgs sends a staged artifact to the operator's computer under DestDir/Name.
type DeliverArgs struct {
	Host     string `json:"host"`
	Artifact string `json:"artifact"`
	DestDir  string `json:"dest_dir"`
	Name     string `json:"name"`
}

// DeliveryResult says where a pushed or delivered file landed.
type DeliveryResult struct {
	Paths []string `json:"paths"`
	Bytes int64    `json:"bytes"`
}

// BytesMoved reports the bytes sent.
func (d DeliveryResult) BytesMoved() int64 { return d.Bytes }

// RemoveStagingArgs removes the job's staging area.
type RemoveStagingArgs struct {
	// Leftovers are temporary files of the job's own that it may have left on hosts
	// when it did not finish: the push's (or the bundle's forward's) ".part" files, an
	// unpacked tree's incoming directory.
	// They are removed too: what a host out of reach keeps is recorded as a
	// PendingLeftover and removed by cleanup's sweep once the host is back.
	Leftovers []Leftover `json:"leftovers,omitempty"`
}

// Leftover names temporary files of the job in Dir on Host; each name must be one of
// the job's temporary names (IsTempName).
type Leftover struct {
	Host  string   `json:"host"`
	Dir   string   `json:"dir"`
	Names []string `json:"names"`
}

// TempName is the temporary name under which job writes the file name on a host
// before it is verified and renamed into place: ".<name>.ferry-<job>.part".
func TempName(name, job string) string { return "." + name + ".ferry-" + job + ".part" }

// IncomingName is the directory in which job lands an unpacked tree on a host before
// it is switched into place.
func IncomingName(job string) string { return ".ferry-incoming-" + job }

// IsTempName reports whether p is a temporary name of job: a TempName or its
// IncomingName, a plain file name.
func IsTempName(p, job string) bool {
	if strings.ContainsAny(p, "/\\\x00") {
		return false
	}
	return p == IncomingName(job) ||
		len(p) > len(TempName("", job)) && strings.HasPrefix(p, ".") && strings.HasSuffix(p, ".ferry-"+job+".part")
}

// BackupTimeFormat is the UTC time in the names of delivered backups
// (<db>-<time>.dump, <time>.tar.zst): the job's creation time.
const BackupTimeFormat = "20060102T150405Z"

// PruneArgs keeps the newest Keep backups ferry delivered into Dir on Host and removes
// the older ones with their manifests. A backup is a regular file named
// Prefix + <BackupTimeFormat> + Suffix with a ferry manifest next to it that describes a
// file of its size; nothing else in Dir is ever touched. Keep 0 keeps everything.
type PruneArgs struct {
	Host   string `json:"host"`
	Dir    string `json:"dir"`
	Prefix string `json:"prefix"`
	Suffix string `json:"suffix,omitempty"`
	Keep   int    `json:"keep"`
}

// PruneResult lists the files a prune removed (paths on the host, manifests included)
// and how many backups it kept.
type PruneResult struct {
	Removed []string `json:"removed"`
	Kept    int      `json:"kept"`
}
