package orchestrator

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// Policy says how often a step is tried and how long each attempt may take.
type Policy struct {
	Attempts   int           // total attempts, at least 1
	Backoff    time.Duration // delay before the second attempt, doubled each time
	MaxBackoff time.Duration
	Timeout    time.Duration // per attempt
}

// delay before attempt n+1 after attempt n failed.
func (p Policy) delay(n int) time.Duration {
	d := p.Backoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	if p.MaxBackoff > 0 && d > p.MaxBackoff {
		d = p.MaxBackoff
	}
	return d
}

// ArgsFunc builds a step's arguments from the job's request and the outputs of the
// steps before it.
type ArgsFunc func(req *contracts.JobRequest, job *contracts.Job) (any, error)

// StepDef is one step of a workflow.
type StepDef struct {
	Name    string
	Service contracts.Service
	Op      contracts.Op
	// Always marks a closing step: it runs whether the job succeeded, failed or was
	// cancelled.
	Always bool
	Policy Policy
	Args   ArgsFunc
}

// Workflow is the ordered steps of an action.
type Workflow struct {
	Steps []StepDef
}

// Workflows maps each action to its workflow.
type Workflows map[contracts.Action]Workflow

func (w Workflow) def(name string) (StepDef, bool) {
	for _, d := range w.Steps {
		if d.Name == name {
			return d, true
		}
	}
	return StepDef{}, false
}

// Policies used by the default workflows.
var (
	policyConnect = Policy{Attempts: 3, Backoff: 2 * time.Second, MaxBackoff: 30 * time.Second, Timeout: 2 * time.Minute}
	policyBytes   = Policy{Attempts: 5, Backoff: 5 * time.Second, MaxBackoff: time.Minute, Timeout: 6 * time.Hour}
	policyDump    = Policy{Attempts: 3, Backoff: 10 * time.Second, MaxBackoff: 2 * time.Minute, Timeout: 6 * time.Hour}
	policyPrune   = Policy{Attempts: 3, Backoff: 2 * time.Second, MaxBackoff: 30 * time.Second, Timeout: 5 * time.Minute}
	policyClosing = Policy{Attempts: 5, Backoff: time.Second, MaxBackoff: 30 * time.Second, Timeout: 5 * time.Minute}
)

// Staging names used between steps.
const stagingFiles = "files"

// Where backups land on the operator's computer (relative to the login's home) and how
// they are named: <dir>/<db>-<stamp>.dump and <dir>/<stamp>.tar.zst, stamp being the
// job's creation time in UTC (contracts.BackupTimeFormat). Prune relies on these names.
const (
	dumpSuffix = ".dump"
	logsSuffix = ".tar.zst"
)

func backupDir(customer string) string { return "ferry/backups/" + customer }
func logsDir(customer string) string   { return "ferry/logs/" + customer }
func stamp(j *contracts.Job) string    { return j.Created.UTC().Format(contracts.BackupTimeFormat) }

// DefaultWorkflows returns the three actions of the helpdesk as data, after the step
// lists of the source document (see DESIGN.md, "The three actions"). The closing steps
// (Always) run after success, failure and cancellation alike.
func DefaultWorkflows() Workflows {
	closing := closingSteps(nil)
	// prune keeps the newest backups ferry delivered; with keep 0 it succeeds at once.
	prune := func(args func(*contracts.JobRequest) contracts.PruneArgs) StepDef {
		return StepDef{Name: "prune", Service: contracts.ServiceCleanup, Op: contracts.OpPrune, Policy: policyPrune,
			Args: func(r *contracts.JobRequest, _ *contracts.Job) (any, error) { return args(r), nil }}
	}
	connect := func(name string, host func(*contracts.JobRequest) string) StepDef {
		return StepDef{Name: name, Service: contracts.ServiceConnector, Op: contracts.OpConnect, Policy: policyConnect,
			Args: func(r *contracts.JobRequest, _ *contracts.Job) (any, error) {
				return contracts.ConnectArgs{Host: host(r)}, nil
			}}
	}
	return Workflows{
		contracts.ActionUpdate: {Steps: append([]StepDef{
			connect("connect-operator", func(r *contracts.JobRequest) string { return r.Update.From }),
			{Name: "copy-to-home", Service: contracts.ServiceTransfer, Op: contracts.OpCopyRemote, Policy: policyBytes,
				Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
					return contracts.CopyRemoteArgs{Host: r.Update.From, Sources: r.Update.Files, DestDir: "ferry/updates/" + j.ID}, nil
				}},
			// The customer is connected before the bundle (the source connects after
			// step 4), so that the archive can travel on to it while it is made.
			connect("connect-customer", func(r *contracts.JobRequest) string { return r.Update.To }),
			// Steps 3 and 4 of the source, pull and archive, in one pass: the files
			// stream from the operator's PC into the archive (see the log backup's
			// bundle), and are staged as well only when the customer gets the tree.
			// An archive for the customer is forwarded as it is written: it lands
			// there under the push's temporary name, checked, and the push renames it.
			{Name: "bundle", Service: contracts.ServiceTransfer, Op: contracts.OpBundle, Policy: policyBytes,
				Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
					c := compression(r.Update.Compression)
					args := contracts.BundleArgs{Host: r.Update.From, Paths: []string{"ferry/updates/" + j.ID},
						Links: true, // an update comes as it is: its links inside the tree as links
						Name:  updateArchive(r, j), Compression: c}
					if r.Update.Unpack {
						args.Stage = stagingFiles
					} else {
						args.Forward = &contracts.ForwardTarget{Host: r.Update.To, DestDir: r.Update.Dest}
					}
					return args, nil
				}},
			{Name: "push", Service: contracts.ServiceTransfer, Op: contracts.OpPush, Policy: policyBytes,
				Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
					var art contracts.ArtifactResult
					if err := output(j, "bundle", &art); err != nil {
						return nil, err
					}
					return contracts.PushArgs{Host: r.Update.To, Artifact: art.Name, DestDir: r.Update.Dest, Unpack: r.Update.Unpack, Tree: stagingFiles,
						Forwarded: art.Forwarded}, nil
				}},
		}, closingSteps(updateLeftovers)...)},
		contracts.ActionDBBackup: {Steps: append([]StepDef{
			connect("connect-customer", func(r *contracts.JobRequest) string { return r.DBBackup.From }),
			{Name: "tunnel", Service: contracts.ServiceConnector, Op: contracts.OpTunnel, Policy: policyConnect,
				Args: func(r *contracts.JobRequest, _ *contracts.Job) (any, error) {
					d := r.DBBackup
					host, port := d.DBHost, d.DBPort
					if host == "" {
						host = "127.0.0.1"
					}
					if port == 0 {
						port = defaultPort(d.Engine)
					}
					return contracts.TunnelArgs{Host: d.From, Remote: net.JoinHostPort(host, strconv.Itoa(port))}, nil
				}},
			{Name: "dump", Service: contracts.ServiceArchiver, Op: contracts.OpDump, Policy: policyDump,
				Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
					var t contracts.TunnelResult
					if err := output(j, "tunnel", &t); err != nil {
						return nil, err
					}
					d := r.DBBackup
					return contracts.DumpArgs{Engine: dbEngine(d.Engine), Database: d.Database, Addr: t.Addr, User: d.DBUser,
						Credential: d.DBCredential, Name: d.Database + ".dump"}, nil
				}},
			connect("connect-operator", func(r *contracts.JobRequest) string { return r.DBBackup.To }),
			{Name: "deliver", Service: contracts.ServiceTransfer, Op: contracts.OpDeliver, Policy: policyBytes,
				Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
					var art contracts.ArtifactResult
					if err := output(j, "dump", &art); err != nil {
						return nil, err
					}
					d := r.DBBackup
					return contracts.DeliverArgs{Host: d.To, Artifact: art.Name, DestDir: backupDir(d.From),
						Name: d.Database + "-" + stamp(j) + dumpSuffix}, nil
				}},
			prune(func(r *contracts.JobRequest) contracts.PruneArgs {
				d := r.DBBackup
				return contracts.PruneArgs{Host: d.To, Dir: backupDir(d.From), Prefix: d.Database + "-", Suffix: dumpSuffix, Keep: d.Keep}
			}),
		}, closing...)},
		contracts.ActionLogBackup: {Steps: append([]StepDef{
			connect("connect-customer", func(r *contracts.JobRequest) string { return r.LogBackup.From }),
			// The logs stream from the customer straight into the bundle (tar.zst and
			// manifest) in staging, as ssh host tar c | zstd would: staging them first and
			// reading them back cost more than compressing them. See remote.Conn.Bundle.
			{Name: "bundle", Service: contracts.ServiceTransfer, Op: contracts.OpBundle, Policy: policyBytes,
				Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
					l := r.LogBackup
					return contracts.BundleArgs{Host: l.From, Paths: l.Paths, Since: l.Since, MaxSize: l.MaxSize, AllowEmpty: l.AllowEmpty,
						Name: "logs-" + j.ID + logsSuffix, Compression: "zstd"}, nil
				}},
			connect("connect-operator", func(r *contracts.JobRequest) string { return r.LogBackup.To }),
			{Name: "deliver", Service: contracts.ServiceTransfer, Op: contracts.OpDeliver, Policy: policyBytes,
				Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
					var art contracts.ArtifactResult
					if err := output(j, "bundle", &art); err != nil {
						return nil, err
					}
					l := r.LogBackup
					return contracts.DeliverArgs{Host: l.To, Artifact: art.Name, DestDir: logsDir(l.From), Name: stamp(j) + logsSuffix}, nil
				}},
			prune(func(r *contracts.JobRequest) contracts.PruneArgs {
				l := r.LogBackup
				return contracts.PruneArgs{Host: l.To, Dir: logsDir(l.From), Suffix: logsSuffix, Keep: l.Keep}
			}),
		}, closing...)},
	}
}

// closingSteps are the steps every job ends with, success, failure or cancel alike:
// its staging removed (with the leftovers on hosts that leftovers names, if set),
// its sessions closed.
func closingSteps(leftovers func(*contracts.JobRequest, *contracts.Job) []contracts.Leftover) []StepDef {
	return []StepDef{
		{Name: "remove-staging", Service: contracts.ServiceCleanup, Op: contracts.OpRemoveStaging, Always: true, Policy: policyClosing,
			Args: func(r *contracts.JobRequest, j *contracts.Job) (any, error) {
				var args contracts.RemoveStagingArgs
				if leftovers != nil {
					args.Leftovers = leftovers(r, j)
				}
				return args, nil
			}},
		{Name: "close", Service: contracts.ServiceConnector, Op: contracts.OpClose, Always: true, Policy: policyClosing,
			Args: func(*contracts.JobRequest, *contracts.Job) (any, error) { return contracts.CloseArgs{}, nil }},
	}
}

// updateLeftovers: an update whose push did not finish may have left temporary files
// in the customer's destination: the archive's and manifest's (a forward that
// landed, a push cut for good), or an unpacked tree's incoming directory. Without a
// session to the customer there can be none.
func updateLeftovers(r *contracts.JobRequest, j *contracts.Job) []contracts.Leftover {
	if r.Update == nil || !stepDone(j, "connect-customer") || stepDone(j, "push") {
		return nil
	}
	art := updateArchive(r, j)
	names := []string{contracts.TempName(art, j.ID), contracts.TempName(contracts.ManifestName(art), j.ID)}
	if r.Update.Unpack {
		names = []string{contracts.IncomingName(j.ID)}
	}
	return []contracts.Leftover{{Host: r.Update.To, Dir: r.Update.Dest, Names: names}}
}

// updateArchive is the name of an update's archive, in staging and on the customer.
func updateArchive(r *contracts.JobRequest, j *contracts.Job) string {
	return "update-" + j.ID + ".tar." + ext(compression(r.Update.Compression))
}

// stepDone reports whether step of j succeeded.
func stepDone(j *contracts.Job, step string) bool {
	i := stepIndex(j, step)
	return i >= 0 && j.Steps[i].State == contracts.StepDone
}

// output decodes the output of an earlier step of j.
func output(j *contracts.Job, step string, v any) error {
	for _, s := range j.Steps {
		if s.Name == step {
			if s.State != contracts.StepDone || len(s.Output) == 0 {
				return fmt.Errorf("step %q has no output", step)
			}
			if err := json.Unmarshal(s.Output, v); err != nil {
				return fmt.Errorf("output of step %q: %w", step, err)
			}
			return nil
		}
	}
	return fmt.Errorf("no step %q in job", step)
}

func compression(c string) string {
	if c == "" {
		return "zstd"
	}
	return c
}

func ext(c string) string {
	if c == "gzip" {
		return "gz"
	}
	return "zst"
}

func dbEngine(e string) string {
	if e == "" {
		return "postgres"
	}
	return e
}

func defaultPort(e string) int {
	if dbEngine(e) == "mysql" {
		return 3306
	}
	return 5432
}
