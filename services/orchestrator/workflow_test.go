package orchestrator

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// stepNames lists the steps of an action's default workflow, closing steps marked.
func stepNames(a contracts.Action) []string {
	var names []string
	for _, d := range DefaultWorkflows()[a].Steps {
		n := string(d.Service) + "." + string(d.Op) + ":" + d.Name
		if d.Always {
			n += "!"
		}
		names = append(names, n)
	}
	return names
}

func TestBackupWorkflowSteps(t *testing.T) {
	cases := map[contracts.Action][]string{
		// The dump step writes <db>.dump and its manifest itself: no archive step.
		contracts.ActionDBBackup: {"connector.connect:connect-customer", "connector.tunnel:tunnel", "archiver.dump:dump",
			"connector.connect:connect-operator", "transfer.deliver:deliver", "cleanup.prune:prune",
			"cleanup.remove-staging:remove-staging!", "connector.close:close!"},
		// The update's files stream from the operator's PC into the bundle (the
		// source's pull and archive in one pass).
		contracts.ActionUpdate: {"connector.connect:connect-operator", "transfer.copy-remote:copy-to-home",
			"connector.connect:connect-customer", "transfer.bundle:bundle", "transfer.push:push",
			"cleanup.remove-staging:remove-staging!", "connector.close:close!"},
		// The logs stream from the customer into the bundle: no pull, no archive step.
		contracts.ActionLogBackup: {"connector.connect:connect-customer", "transfer.bundle:bundle",
			"connector.connect:connect-operator", "transfer.deliver:deliver", "cleanup.prune:prune",
			"cleanup.remove-staging:remove-staging!", "connector.close:close!"},
	}
	for a, want := range cases {
		if got := stepNames(a); !reflect.DeepEqual(got, want) {
			t.Errorf("%s steps:\n got %v\nwant %v", a, got, want)
		}
	}
}

// args builds the arguments of step in action's default workflow for req, with the
// given outputs of earlier steps.
func args[T any](t *testing.T, a contracts.Action, step string, req *contracts.JobRequest, job *contracts.Job) T {
	t.Helper()
	d, ok := DefaultWorkflows()[a].def(step)
	if !ok {
		t.Fatalf("%s has no step %s", a, step)
	}
	v, err := d.Args(req, job)
	if err != nil {
		t.Fatalf("%s/%s: %v", a, step, err)
	}
	got, ok := v.(T)
	if !ok {
		t.Fatalf("%s/%s args are %T", a, step, v)
	}
	return got
}

func doneStep(name string, out any) contracts.Step {
	raw, _ := json.Marshal(out)
	return contracts.Step{Name: name, State: contracts.StepDone, Output: raw}
}

func TestDBBackupArgs(t *testing.T) {
	created := time.Date(2025, 3, 7, 23, 4, 5, 0, time.FixedZone("CET", 3600))
	req := &contracts.JobRequest{Action: contracts.ActionDBBackup, DBBackup: &contracts.DBBackupRequest{
		From: "cust-1", Database: "erp", Engine: "mysql", DBUser: "bk", DBCredential: "cust-1-db", To: "op-pc", Keep: 3}}
	job := &contracts.Job{ID: "j1", Created: created, Steps: []contracts.Step{
		doneStep("tunnel", contracts.TunnelResult{Addr: "127.0.0.1:40001"}),
		doneStep("dump", contracts.ArtifactResult{Name: "erp.dump", Manifest: "erp.dump.manifest.json", Size: 10}),
	}}
	if got := args[contracts.TunnelArgs](t, contracts.ActionDBBackup, "tunnel", req, job); got.Remote != "127.0.0.1:3306" || got.Host != "cust-1" {
		t.Errorf("tunnel args %+v", got)
	}
	dump := args[contracts.DumpArgs](t, contracts.ActionDBBackup, "dump", req, job)
	if want := (contracts.DumpArgs{Engine: "mysql", Database: "erp", Addr: "127.0.0.1:40001", User: "bk", Credential: "cust-1-db", Name: "erp.dump"}); dump != want {
		t.Errorf("dump args %+v, want %+v", dump, want)
	}
	deliver := args[contracts.DeliverArgs](t, contracts.ActionDBBackup, "deliver", req, job)
	if want := (contracts.DeliverArgs{Host: "op-pc", Artifact: "erp.dump", DestDir: "ferry/backups/cust-1", Name: "erp-20250307T220405Z.dump"}); deliver != want {
		t.Errorf("deliver args %+v, want %+v", deliver, want)
	}
	prune := args[contracts.PruneArgs](t, contracts.ActionDBBackup, "prune", req, job)
	if want := (contracts.PruneArgs{Host: "op-pc", Dir: "ferry/backups/cust-1", Prefix: "erp-", Suffix: ".dump", Keep: 3}); prune != want {
		t.Errorf("prune args %+v, want %+v", prune, want)
	}
}

func TestUpdateArgs(t *testing.T) {
	for _, unpack := range []bool{false, true} {
		req := &contracts.JobRequest{Action: contracts.ActionUpdate, Update: &contracts.UpdateRequest{
			From: "op-pc", Files: []string{"updates/app-2.3.1", "notes/*.txt"}, To: "cust-1", Dest: "/opt/app", Unpack: unpack, Compression: "gzip"}}
		job := &contracts.Job{ID: "j3", Steps: []contracts.Step{
			doneStep("bundle", contracts.ArtifactResult{Name: "update-j3.tar.gz", Size: 10,
				Forwarded: &contracts.Forwarded{Host: "cust-1", Dir: "/opt/app", Size: 10, SHA256: "ab", MTime: 1}}),
		}}
		cp := args[contracts.CopyRemoteArgs](t, contracts.ActionUpdate, "copy-to-home", req, job)
		if !reflect.DeepEqual(cp, contracts.CopyRemoteArgs{Host: "op-pc", Sources: req.Update.Files, DestDir: "ferry/updates/j3"}) {
			t.Errorf("copy args %+v", cp)
		}
		// The files are staged only for a customer that gets the tree; an archive for
		// the customer is forwarded to it while it is made.
		want := contracts.BundleArgs{Host: "op-pc", Paths: []string{"ferry/updates/j3"}, Links: true, Name: "update-j3.tar.gz", Compression: "gzip"}
		if unpack {
			want.Stage = "files"
		} else {
			want.Forward = &contracts.ForwardTarget{Host: "cust-1", DestDir: "/opt/app"}
		}
		if got := args[contracts.BundleArgs](t, contracts.ActionUpdate, "bundle", req, job); !reflect.DeepEqual(got, want) {
			t.Errorf("unpack %v: bundle args %+v, want %+v", unpack, got, want)
		}
		push := args[contracts.PushArgs](t, contracts.ActionUpdate, "push", req, job)
		want2 := contracts.PushArgs{Host: "cust-1", Artifact: "update-j3.tar.gz", DestDir: "/opt/app", Unpack: unpack, Tree: "files",
			Forwarded: &contracts.Forwarded{Host: "cust-1", Dir: "/opt/app", Size: 10, SHA256: "ab", MTime: 1}}
		if !reflect.DeepEqual(push, want2) {
			t.Errorf("push args %+v, want %+v", push, want2)
		}
	}
}

func TestLogBackupArgs(t *testing.T) {
	created := time.Date(2025, 3, 7, 22, 4, 5, 999, time.UTC)
	req := &contracts.JobRequest{Action: contracts.ActionLogBackup, LogBackup: &contracts.LogBackupRequest{
		From: "cust-1", Paths: []string{"/var/log/app/*.log*"}, Since: contracts.Duration(48 * time.Hour), MaxSize: 1 << 20,
		AllowEmpty: true, To: "op-pc"}}
	job := &contracts.Job{ID: "j2", Created: created, Steps: []contracts.Step{
		doneStep("bundle", contracts.ArtifactResult{Name: "logs-j2.tar.zst", Size: 10}),
	}}
	bundle := args[contracts.BundleArgs](t, contracts.ActionLogBackup, "bundle", req, job)
	if !reflect.DeepEqual(bundle, contracts.BundleArgs{Host: "cust-1", Paths: []string{"/var/log/app/*.log*"}, Since: contracts.Duration(48 * time.Hour),
		MaxSize: 1 << 20, AllowEmpty: true, Name: "logs-j2.tar.zst", Compression: "zstd"}) {
		t.Errorf("bundle args %+v", bundle)
	}
	deliver := args[contracts.DeliverArgs](t, contracts.ActionLogBackup, "deliver", req, job)
	if want := (contracts.DeliverArgs{Host: "op-pc", Artifact: "logs-j2.tar.zst", DestDir: "ferry/logs/cust-1", Name: "20250307T220405Z.tar.zst"}); deliver != want {
		t.Errorf("deliver args %+v, want %+v", deliver, want)
	}
	// Keep 0 still has a prune step: it keeps everything.
	prune := args[contracts.PruneArgs](t, contracts.ActionLogBackup, "prune", req, job)
	if want := (contracts.PruneArgs{Host: "op-pc", Dir: "ferry/logs/cust-1", Suffix: ".tar.zst"}); prune != want {
		t.Errorf("prune args %+v, want %+v", prune, want)
	}
}

// An update whose push did not finish has its temporary files on the customer removed
// by the closing step: the archive's and manifest's, or the unpacked tree's incoming
// directory. A finished push, or no session to the customer, leaves nothing to remove.
func TestUpdateLeftovers(t *testing.T) {
	connected := doneStep("connect-customer", contracts.ConnectResult{})
	failed := contracts.Step{Name: "push", State: contracts.StepFailedS}
	for _, tc := range []struct {
		name   string
		unpack bool
		steps  []contracts.Step
		want   []contracts.Leftover
	}{
		{"push failed", false, []contracts.Step{connected, failed}, []contracts.Leftover{{Host: "cust-1", Dir: "/opt/app",
			Names: []string{".update-j4.tar.zst.ferry-j4.part", ".update-j4.tar.zst.manifest.json.ferry-j4.part"}}}},
		{"unpack cancelled", true, []contracts.Step{connected, {Name: "push", State: contracts.StepCancelled}},
			[]contracts.Leftover{{Host: "cust-1", Dir: "/opt/app", Names: []string{".ferry-incoming-j4"}}}},
		{"push done", false, []contracts.Step{connected, doneStep("push", contracts.DeliveryResult{})}, nil},
		{"never connected", false, []contracts.Step{{Name: "connect-customer", State: contracts.StepFailedS}, {Name: "push", State: contracts.StepSkipped}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &contracts.JobRequest{Action: contracts.ActionUpdate, Update: &contracts.UpdateRequest{
				From: "op-pc", Files: []string{"app"}, To: "cust-1", Dest: "/opt/app", Unpack: tc.unpack}}
			job := &contracts.Job{ID: "j4", Steps: tc.steps}
			got := args[contracts.RemoveStagingArgs](t, contracts.ActionUpdate, "remove-staging", req, job)
			if !reflect.DeepEqual(got.Leftovers, tc.want) {
				t.Errorf("leftovers %+v, want %+v", got.Leftovers, tc.want)
			}
			for _, l := range got.Leftovers {
				for _, n := range l.Names {
					if !contracts.IsTempName(n, job.ID) {
						t.Errorf("%q is not a temporary name of the job: cleanup would refuse it", n)
					}
				}
			}
		})
	}
}
