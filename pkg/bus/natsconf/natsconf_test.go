package natsconf_test

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/bus/natsconf"
	"github.com/nats-io/nats-server/v2/server"
)

var update = flag.Bool("update", false, "rewrite the generated NATS configuration in deployments/nats/")

// deployDir is deployments/nats/ of the repository.
var deployDir = filepath.Join("..", "..", "..", "deployments", "nats")

// TestFilesUpToDate fails when the permissions or the configurations changed and
// deployments/nats/ was not regenerated (make natsconf, or go test ./bus/natsconf -run
// FilesUpToDate -update in pkg/).
func TestFilesUpToDate(t *testing.T) {
	for _, f := range natsconf.Files() {
		file := filepath.Join(deployDir, f.Name)
		if *update {
			if err := os.MkdirAll(deployDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, []byte(f.Content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s: %v (run make natsconf)", file, err)
		}
		if string(got) != f.Content {
			t.Errorf("%s is stale: run make natsconf and commit the result", file)
		}
	}
}

// TestConfigParses reads every generated node configuration with nats-server's own
// parser and checks that each user's permissions arrive as written: subjects that
// start with '$' are strings, not variable references, and the passwords come from
// the environment.
func TestConfigParses(t *testing.T) {
	dir, _, passwords := bustest.SecureFiles(t)
	for _, node := range append([]string{natsconf.SingleNodeFile}, clusterFiles()...) {
		opts, err := server.ProcessConfigFile(filepath.Join(dir, node))
		if err != nil {
			t.Fatalf("%s: %v", node, err)
		}
		if !opts.JetStream || opts.TLSConfig == nil || !opts.TLSHandshakeFirst || opts.Port != natsconf.ClientPort || opts.HTTPPort != natsconf.MonitorPort {
			t.Errorf("%s: jetstream %v, tls %v, port %d, http %d", node, opts.JetStream, opts.TLSConfig != nil, opts.Port, opts.HTTPPort)
		}
		if node == natsconf.SingleNodeFile && !opts.SyncAlways {
			t.Errorf("%s: JetStream does not sync every write (sync_interval: always)", node)
		}
		if node != natsconf.SingleNodeFile && (opts.Cluster.Port != natsconf.ClusterPort || len(opts.Routes) != 3 || opts.Cluster.TLSConfig == nil) {
			t.Errorf("%s: cluster port %d, routes %v, route TLS %v", node, opts.Cluster.Port, opts.Routes, opts.Cluster.TLSConfig != nil)
		}
		users := natsconf.Users()
		if len(opts.Users) != len(users) {
			t.Fatalf("%s: %d users, want %d", node, len(opts.Users), len(users))
		}
		for i, u := range users {
			got := opts.Users[i]
			if got.Username != u.Name || got.Password != passwords[u.Name] {
				t.Errorf("%s: user %d is %q (password from %s: %v)", node, i, got.Username, u.PasswordEnv(), got.Password == passwords[u.Name])
				continue
			}
			p := got.Permissions
			if !slices.Equal(p.Publish.Allow, u.Perms.PublishAllow) || !slices.Equal(p.Publish.Deny, u.Perms.PublishDeny) ||
				!slices.Equal(p.Subscribe.Allow, u.Perms.SubscribeAllow) || !slices.Equal(p.Subscribe.Deny, u.Perms.SubscribeDeny) ||
				(p.Response != nil) != u.Perms.AllowResponses {
				t.Errorf("%s: permissions of %s parsed as %+v %+v %+v, want %+v", node, u.Name, p.Publish, p.Subscribe, p.Response, u.Perms)
			}
		}
	}
}

func clusterFiles() []string {
	var fs []string
	for _, n := range natsconf.ClusterNodes {
		fs = append(fs, natsconf.ClusterNodeFile(n))
	}
	return fs
}

// readsHosts reports whether a publish permission reads or writes the hosts bucket
// (creating and updating its stream, the provisioner's part, does neither).
func readsHosts(subject string) bool {
	kv := "KV_" + contracts.BucketHosts
	for _, p := range []string{"$KV." + contracts.BucketHosts + ".", "$JS.API.DIRECT.GET." + kv, "$JS.API.STREAM.MSG.GET." + kv,
		"$JS.API.STREAM.INFO." + kv, "$JS.API.CONSUMER.CREATE." + kv, "$JS.FC." + kv} {
		if strings.HasPrefix(subject, p) {
			return true
		}
	}
	return strings.Contains(subject, "."+kv+".") && strings.HasPrefix(subject, "$JS.FC.")
}

// TestLeastPrivilege checks the rules the permissions must keep, whatever changes.
func TestLeastPrivilege(t *testing.T) {
	hostReaders := []string{string(contracts.ServiceConnector), string(contracts.ServiceTransfer), string(contracts.ServiceCleanup), natsconf.UserAdmin}
	users := natsconf.Users()
	var names []string
	for _, u := range users {
		names = append(names, u.Name)
		p := u.Perms
		for _, list := range [][]string{p.PublishAllow, p.SubscribeAllow} {
			for _, s := range list {
				if !server.IsValidSubject(s) {
					t.Errorf("%s: %q is not a valid subject", u.Name, s)
				}
				for _, broad := range []string{">", "$JS.>", "$JS.API.>", "$KV.>", "ferry.>", "ferry.v1.>", "_INBOX.>", "$JS.ACK.>"} {
					if s == broad {
						t.Errorf("%s may use %q", u.Name, s)
					}
				}
			}
		}
		for _, s := range p.PublishAllow {
			if strings.Contains(s, ".DELETE.") && !strings.HasPrefix(s, "$JS.API.CONSUMER.DELETE.") ||
				strings.Contains(s, ".PURGE.") {
				t.Errorf("%s may delete or purge: %q", u.Name, s)
			}
			if (strings.HasPrefix(s, "$JS.API.STREAM.CREATE.") || strings.HasPrefix(s, "$JS.API.STREAM.UPDATE.")) && u.Name != string(contracts.ServiceOrchestrator) {
				t.Errorf("%s may create or update streams: %q", u.Name, s)
			}
			for _, st := range []string{contracts.StreamJobs, contracts.StreamCommands} {
				if strings.HasPrefix(s, "$JS.API.CONSUMER.CREATE."+st+".") && u.Name != string(contracts.ServiceOrchestrator) {
					t.Errorf("%s may create consumers on %s: %q", u.Name, st, s)
				}
			}
			if readsHosts(s) && !slices.Contains(hostReaders, u.Name) {
				t.Errorf("%s may reach the hosts bucket: %q", u.Name, s)
			}
		}
		if !slices.Contains(p.SubscribeAllow, "_INBOX_"+u.Name+".>") {
			t.Errorf("%s has no inbox of its own", u.Name)
		}
		if !slices.Contains(p.PublishDeny, "$JS.API.STREAM.DELETE.>") {
			t.Errorf("%s: stream deletion not denied", u.Name)
		}
	}
	for _, s := range append([]contracts.Service{contracts.ServiceOrchestrator}, contracts.Workers...) {
		if !slices.Contains(names, string(s)) {
			t.Errorf("no NATS user for service %s", s)
		}
	}
	for _, want := range []string{natsconf.UserHelpdesk, natsconf.UserAdmin} {
		if !slices.Contains(names, want) {
			t.Errorf("no NATS user %s", want)
		}
	}
	arch, _ := natsconf.Lookup(string(contracts.ServiceArchiver))
	for _, s := range arch.Perms.PublishAllow {
		if strings.Contains(s, "KV") && !strings.Contains(s, "KV_"+contracts.BucketJobs) {
			t.Errorf("archiver reaches a bucket other than job records (read-only): %q", s)
		}
	}
	hd, _ := natsconf.Lookup(natsconf.UserHelpdesk)
	for _, s := range hd.Perms.PublishAllow {
		if strings.HasPrefix(s, "ferry.") && s != contracts.SubjectJobSubmit && s != contracts.SubjectAPISubmit {
			t.Errorf("helpdesk may publish %q", s)
		}
	}
}
