package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/bus/natsconf"
	"github.com/ferrydesk/ferry/services/archiver"
	"github.com/ferrydesk/ferry/services/cleanup"
	"github.com/ferrydesk/ferry/services/connector"
	"github.com/ferrydesk/ferry/services/orchestrator"
	"github.com/ferrydesk/ferry/services/transfer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestSecuredStack runs the real services against a NATS server started from the
// generated, secured configuration (deployments/nats/nats.conf: TLS, one user per
// service with least-privilege permissions), each service with a connection of its
// own as its own user, like the compose stack. The admin adds the demo hosts with
// `ferry host add`; the helpdesk submits an update with `ferry update --wait` (API and
// job watch) and a log backup on the jobs stream, following its events. Both jobs
// succeed, and the server sees not one permission violation.
func TestSecuredStack(t *testing.T) {
	srv := bustest.StartSecure(t)
	dataDir := t.TempDir()
	secrets, staging := filepath.Join(dataDir, "secrets"), filepath.Join(dataDir, "staging")
	for _, d := range []string{secrets, staging} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.DiscardHandler)

	// Each service connects as itself, over TLS, like a service binary does.
	connect := func(user string) *nats.Conn {
		nc, _ := bustest.ConnectAs(t, srv.Config(t, user))
		return nc
	}
	runService := func(name string, f func(ctx context.Context, nc *nats.Conn) error) {
		nc := connect(name)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f(ctx, nc) }()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: %v", name, err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("%s did not stop", name)
			}
		})
	}
	runService("orchestrator", func(ctx context.Context, nc *nats.Conn) error {
		return orchestrator.Run(ctx, orchestrator.Config{Provision: true}, orchestrator.Deps{NC: nc, Logger: log})
	})
	runService("connector", func(ctx context.Context, nc *nats.Conn) error {
		return connector.Run(ctx, connector.Config{SecretsDir: secrets, DrainTimeout: 5 * time.Second}, connector.Deps{NC: nc, Logger: log})
	})
	runService("transfer", func(ctx context.Context, nc *nats.Conn) error {
		return transfer.Run(ctx, transfer.Config{StagingDir: staging, SecretsDir: secrets, DrainTimeout: 5 * time.Second}, transfer.Deps{NC: nc, Logger: log})
	})
	runService("archiver", func(ctx context.Context, nc *nats.Conn) error {
		return archiver.Run(ctx, archiver.Config{StagingDir: staging, SecretsDir: secrets, DrainTimeout: 5 * time.Second}, archiver.Deps{NC: nc, Logger: log})
	})
	runService("cleanup", func(ctx context.Context, nc *nats.Conn) error {
		return cleanup.Run(ctx, cleanup.Config{StagingDir: staging, SecretsDir: secrets, DrainTimeout: 5 * time.Second}, cleanup.Deps{NC: nc, Logger: log})
	})

	// The demo hosts of `ferry dev --demo`, their passwords in the secrets directory.
	hosts, err := startDemoHosts(dataDir, secrets, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeDemoHosts(hosts) })
	opRoot, custRoot := hosts[0].Root(), hosts[1].Root()
	if _, _, err := seedOperator(opRoot); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(custRoot, "var", "log", "app")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		line := strings.Repeat(fmt.Sprintf("GET /item/%d 200\n", i), 1000)
		if err := os.WriteFile(filepath.Join(logDir, fmt.Sprintf("app-%d.log", i)), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The operator's CLI as admin, and as the helpdesk system, each password read from
	// a file as a mounted secret would be.
	cliEnv := func(user string) map[string]string {
		cfg := srv.Config(t, user)
		pw := filepath.Join(t.TempDir(), user+".password")
		if err := os.WriteFile(pw, []byte(cfg.Password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return map[string]string{"FERRY_NATS_URL": cfg.URL, "FERRY_NATS_USER": cfg.User,
			"FERRY_NATS_PASSWORD_FILE": pw, "FERRY_NATS_CA": cfg.CAFile}
	}
	admin, helpdesk := cliEnv(natsconf.UserAdmin), cliEnv(natsconf.UserHelpdesk)

	// The orchestrator provisions the buckets at start; the admin waits for them.
	for _, h := range hosts {
		e := h.entry
		var r result
		waitFor(t, 20*time.Second, "ferry host add "+e.Name, func() bool {
			r = ferry(t, admin, "--timeout", "2s", "host", "add", e.Name, "--address", e.Address, "--port", strconv.Itoa(e.Port),
				"--user", e.User, "--credential", e.Credential, "--host-key", e.HostKeys[0], "--site", e.Site)
			return r.code == 0 || !strings.Contains(r.stderr, "orchestrator")
		})
		if r.code != 0 {
			t.Fatalf("ferry host add %s as admin: %d %s", e.Name, r.code, r.stderr)
		}
	}
	if r := ferry(t, admin, "host", "list"); r.code != 0 || !strings.Contains(r.stdout, demoOperator) || !strings.Contains(r.stdout, demoCustomer) {
		t.Fatalf("ferry host list as admin: %d %s %s", r.code, r.stdout, r.stderr)
	}
	// The helpdesk may not touch the inventory.
	if r := ferry(t, helpdesk, "--timeout", "2s", "host", "list"); r.code == 0 {
		t.Errorf("ferry host list as helpdesk succeeded: %s", r.stdout)
	}

	// The helpdesk submits the update through the API and follows it to its end.
	waitFor(t, 20*time.Second, "the job API", func() bool {
		return ferry(t, helpdesk, "--timeout", "1s", "update", "--id", "sec-update", "--from", demoOperator,
			"--files", demoUpdate, "--to", demoCustomer, "--dest", demoDest).code == 0
	})
	if r := ferry(t, helpdesk, "job", "watch", "sec-update"); r.code != 0 {
		t.Fatalf("ferry job watch as helpdesk: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	landed := filepath.Join(custRoot, strings.TrimPrefix(demoDest, "/"), "update-sec-update.tar.zst")
	if _, err := os.Stat(landed); err != nil {
		t.Errorf("the update did not land: %v", err)
	}

	// The helpdesk submits a log backup the durable way, on the jobs stream, and reads
	// its job events.
	hnc := connect(natsconf.UserHelpdesk)
	events, err := hnc.SubscribeSync(contracts.JobEventSubject("sec-logs"))
	if err == nil {
		err = hnc.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	req := contracts.JobRequest{
		Schema: contracts.SchemaJobRequest, ID: "sec-logs", Action: contracts.ActionLogBackup, Ticket: "HD-1",
		LogBackup: &contracts.LogBackupRequest{From: demoCustomer, Paths: []string{"/var/log/app/*.log"}, To: demoOperator, Keep: 2},
	}
	hjs, _ := jetstream.New(hnc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Publish(ctx, hjs, contracts.SubjectJobSubmit, req, req.ID, req.ID); err != nil {
		t.Fatalf("helpdesk submitting on the jobs stream: %v", err)
	}
	var last contracts.JobEvent
	for deadline := time.Now().Add(60 * time.Second); last.Kind != contracts.EventFinished && last.Kind != contracts.EventRejected; {
		msg, err := events.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("log backup: no end (last event %+v): %v", last, err)
		}
		if err := json.Unmarshal(msg.Data, &last); err != nil {
			t.Fatal(err)
		}
	}
	if last.State != contracts.JobSucceeded {
		t.Fatalf("log backup ended %s: %+v %+v", last.State, last.Error, last.Failure)
	}

	// The admin reads both jobs through the API.
	for _, id := range []string{"sec-update", "sec-logs"} {
		r := ferry(t, admin, "-o", "json", "job", "get", id)
		var j contracts.Job
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &j) != nil || j.State != contracts.JobSucceeded {
			t.Errorf("ferry job get %s as admin: %d %s %s", id, r.code, r.stdout, r.stderr)
		}
	}
	if r := ferry(t, admin, "job", "list"); r.code != 0 || !strings.Contains(r.stdout, "sec-logs") {
		t.Errorf("ferry job list as admin: %d %s %s", r.code, r.stdout, r.stderr)
	}

	// Only the helpdesk's refused `host list` may have been a violation.
	for _, v := range srv.Violations() {
		if !strings.Contains(v, "KV_"+contracts.BucketHosts) {
			t.Errorf("permission violation: %s", v)
		}
	}
}
