//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// chaosData makes the steps long enough to be caught mid-way: a 256 MiB update on the
// operator's PC, about 220 MiB of logs on the customer and a table of about 150 MB in its
// database. Made once.
var chaosData = sync.OnceValue(func() error {
	steps := []struct {
		svc string
		cmd string
	}{
		{"operator-pc", "install -d -o operator -g operator /home/operator/big && " +
			"head -c 268435456 /dev/urandom > /home/operator/big/app.bin && chown operator /home/operator/big/app.bin"},
		{"customer", "install -d -o customer -g customer /var/log/app/big && for i in $(seq 1 16); do " +
			"head -c 10485760 /dev/urandom | base64 > /var/log/app/big/app-$i.log; done && chown -R customer /var/log/app/big"},
		{"customer", `su postgres -c "psql -q -d shop -c 'CREATE TABLE IF NOT EXISTS big AS SELECT g AS id, md5(g::text) || md5((g+1)::text) AS v FROM generate_series(1, 1500000) g' -c 'ALTER TABLE big OWNER TO ferry'"`},
	}
	for _, s := range steps {
		if _, err := st.execErr(s.svc, "sh", "-c", s.cmd); err != nil {
			return err
		}
	}
	return nil
})

// action is one of the three actions as the chaos tests submit it.
type action struct {
	name   string
	submit func(id string) []string
	// delivered lists what the job left on its target, for the exactly-once check.
	delivered func(t testing.TB, j contracts.Job) []string
	// during names, per service, the step to kill it in when it is not the service's
	// own: the connector holds the tunnel a dump runs through.
	during map[string]string
	// idle names the services that run no step of the action, and why.
	idle map[string]string
}

var actions = []action{
	{
		name: "update",
		submit: func(id string) []string {
			return []string{"update", "--id", id, "--from", "operator-pc", "--files", "big/app.bin", "--to", "customer", "--dest", "/opt/app/releases"}
		},
		delivered: func(t testing.TB, j contracts.Job) []string {
			return matching(st.exec(t, "customer", "ls", "-a", "/opt/app/releases"), j.ID)
		},
		idle: map[string]string{"archiver": "the update streams into the bundle in transfer's bundle step"},
	},
	{
		name: "db-backup",
		submit: func(id string) []string {
			return []string{"backup", "db", "--id", id, "--from", "customer", "--db", "shop", "--db-user", "ferry",
				"--db-credential", "customer-db", "--to", "operator-pc"}
		},
		delivered: func(t testing.TB, j contracts.Job) []string {
			return matching(st.exec(t, "operator-pc", "ls", "-a", "/home/operator/ferry/backups/customer"), j.Created.UTC().Format(contracts.BackupTimeFormat))
		},
		during: map[string]string{"connector": "dump"},
	},
	{
		name: "log-backup",
		submit: func(id string) []string {
			return []string{"backup", "logs", "--id", id, "--from", "customer", "--paths", "/var/log/app/big/*.log", "--to", "operator-pc"}
		},
		delivered: func(t testing.TB, j contracts.Job) []string {
			return matching(st.exec(t, "operator-pc", "ls", "-a", "/home/operator/ferry/logs/customer"), j.Created.UTC().Format(contracts.BackupTimeFormat))
		},
		idle: map[string]string{"archiver": "the logs stream into the bundle in transfer's bundle step"},
	},
}

// matching returns the names of a listing that contain s.
func matching(listing, s string) []string {
	var out []string
	for _, n := range strings.Fields(listing) {
		if strings.Contains(n, s) {
			out = append(out, n)
		}
	}
	return out
}

// checkDelivery fails unless the job left exactly its artifact and manifest, no
// temporary file.
func checkDelivery(t testing.TB, a action, j contracts.Job) {
	t.Helper()
	got := a.delivered(t, j)
	if len(got) != 2 {
		t.Fatalf("%s delivered %v, want the artifact and its manifest, once", j.ID, got)
	}
	for _, n := range got {
		if strings.Contains(n, ".part") || strings.HasPrefix(n, ".") {
			t.Fatalf("%s left a temporary file on the target: %s", j.ID, n)
		}
	}
}

// Each service's container is killed (SIGKILL) while each action has a step of that
// service in flight (the orchestrator: while any step is), then started again: every
// job ends succeeded with exactly one delivery, and nothing is left behind.
func TestChaosKillServices(t *testing.T) {
	if err := chaosData(); err != nil {
		t.Fatal(err)
	}
	for _, a := range actions {
		for _, svc := range Services {
			t.Run(a.name+"/"+svc, func(t *testing.T) {
				if why, ok := a.idle[svc]; ok {
					t.Skipf("%s runs no step of %s: %s", svc, a.name, why)
				}
				id := fmt.Sprintf("chaos-%s-%s-%d", a.name, svc, time.Now().UnixNano())
				container := st.container(t, svc)
				// The cleanup's and the connector's own steps take milliseconds:
				// polling could miss them. Their container is frozen first, so the
				// step is caught dispatched and unfinished, and killed so (not when
				// the kill is meant for another step, as the connector's during a dump).
				if (svc == "cleanup" || svc == "connector") && a.during[svc] == "" {
					docker(t, "pause", container)
				}
				if _, err := st.cli(context.Background(), "helpdesk", a.submit(id)...); err != nil {
					t.Fatal(err)
				}
				step := waitStep(t, id, svc, a.during[svc])
				docker(t, "kill", container)
				t.Logf("killed %s during step %s", svc, step)
				time.Sleep(time.Second)
				docker(t, "start", container)
				j := st.waitJob(t, id, 5*time.Minute)
				if j.State != contracts.JobSucceeded {
					t.Fatalf("%s after killing %s during %s: %s: %+v", a.name, svc, step, j.State, j.Failure)
				}
				checkDelivery(t, a, j)
				if err := st.waitHealthy(context.Background()); err != nil {
					t.Fatal(err)
				}
				st.nothingLeft(t)
			})
		}
	}
}

// waitStep waits until a step of svc is running (the orchestrator: any step but a
// connector's; with name set: the step of that name) and returns its name.
func waitStep(t testing.TB, id, svc, name string) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if j, err := st.readJob(id); err == nil {
			if j.State.Final() {
				t.Fatalf("job %s ended (%s) before a step of %s ran", id, j.State, svc)
			}
			for _, s := range j.Steps {
				if s.State != contracts.StepRunning {
					continue
				}
				switch {
				case name != "":
					if s.Name == name {
						return s.Name
					}
				case string(s.Service) == svc, svc == "orchestrator" && s.Service != contracts.ServiceConnector:
					return s.Name
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no step of %s ran within 2 minutes", svc)
	return ""
}

// The customer's network is cut while the archive travels to it (the bundle step
// forwards it as it is made) and restored 20 s later: the forward rides the outage
// out or the push resumes what it left, and the job succeeds; the final name never
// holds a partial file.
func TestChaosNetworkCut(t *testing.T) {
	a := actions[0]
	id, reconnect := cutWhileForwarding(t, "chaos-netcut")
	stop := watchFinal(t, "customer", "/opt/app/releases/update-"+id+".tar.zst")
	time.Sleep(20 * time.Second)
	reconnect()
	j := st.waitJob(t, id, 5*time.Minute)
	if bad := stop(); bad != "" {
		t.Fatal(bad)
	}
	if j.State != contracts.JobSucceeded {
		t.Fatalf("after a 20 s network cut: %s: %+v", j.State, j.Failure)
	}
	// The cut hit the bytes on their way: the bundle, which waits for a stalled
	// forward until its connection is known dead, took the outage at least.
	bundle, push := stepNamed(j, "bundle"), stepNamed(j, "push")
	if took := bundle.Ended.Sub(bundle.Started); took < 15*time.Second {
		t.Errorf("bundle took %s: the 20 s cut did not hit the forward", took)
	} else {
		t.Logf("bundle took %s, push %s in %d attempt(s)", took.Round(time.Second), push.Ended.Sub(push.Started).Round(time.Second), push.Attempt)
	}
	checkDelivery(t, a, j)
	st.nothingLeft(t)
}

// cutWhileForwarding submits an update of the chaos data, waits until its archive
// is arriving on the customer (the bundle's forward: the push's temporary file
// grows there) and disconnects the customer from its network; reconnect undoes it.
func cutWhileForwarding(t testing.TB, prefix string) (id string, reconnect func()) {
	t.Helper()
	if err := chaosData(); err != nil {
		t.Fatal(err)
	}
	id = fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	if _, err := st.cli(context.Background(), "helpdesk", actions[0].submit(id)...); err != nil {
		t.Fatal(err)
	}
	part := "/opt/app/releases/" + contracts.TempName("update-"+id+".tar.zst", id)
	for {
		if out, err := st.execErr("customer", "stat", "-c", "%s", part); err == nil && strings.TrimSpace(out) != "0" {
			break
		}
		if j := st.job(t, id); j.State.Final() || stepNamed(j, "push").State != contracts.StepPending {
			t.Fatalf("job %s (push %s) before its archive arrived on the customer", j.State, stepNamed(j, "push").State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	network := project + "_customer-site"
	customer := st.container(t, "customer")
	docker(t, "network", "disconnect", network, customer)
	t.Log("customer disconnected while the archive arrived")
	return id, func() { docker(t, "network", "connect", "--alias", "customer", network, customer) }
}

// watchFinal samples the size of a file on a target until stop is called and reports
// any moment at which the final name held something other than the whole file.
func watchFinal(t testing.TB, svc, p string) (stop func() string) {
	done := make(chan struct{})
	var sizes []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			out, err := st.execErr(svc, "stat", "-c", "%s", p)
			if err == nil {
				sizes = append(sizes, strings.TrimSpace(out))
			}
		}
	}()
	return func() string {
		close(done)
		wg.Wait()
		final, err := st.execErr(svc, "stat", "-c", "%s", p)
		if err != nil {
			return fmt.Sprintf("%s is not there: %v", p, err)
		}
		for _, s := range sizes {
			if s != strings.TrimSpace(final) {
				return fmt.Sprintf("%s held %s bytes before it held all %s", p, s, strings.TrimSpace(final))
			}
		}
		return ""
	}
}

func stepNamed(j contracts.Job, name string) contracts.Step {
	for _, s := range j.Steps {
		if s.Name == name {
			return s
		}
	}
	return contracts.Step{}
}

// The whole stack is restarted with jobs in flight: they resume and succeed.
func TestChaosStackRestart(t *testing.T) {
	if err := chaosData(); err != nil {
		t.Fatal(err)
	}
	ids := map[string]action{}
	for i, a := range actions {
		id := fmt.Sprintf("chaos-restart-%d-%d", i, time.Now().UnixNano())
		if _, err := st.cli(context.Background(), "helpdesk", a.submit(id)...); err != nil {
			t.Fatal(err)
		}
		ids[id] = a
	}
	time.Sleep(2 * time.Second)
	ctx := context.Background()
	if _, err := st.compose(ctx, "stop", "-t", "20"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.compose(ctx, "up", "-d"); err != nil {
		t.Fatal(err)
	}
	if err := st.waitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	for id, a := range ids {
		j := st.waitJob(t, id, 5*time.Minute)
		if j.State != contracts.JobSucceeded {
			t.Errorf("%s after a stack restart: %s: %+v", id, j.State, j.Failure)
			continue
		}
		checkDelivery(t, a, j)
	}
	st.nothingLeft(t)
}

// The customer's network is cut while the archive arrives and stays cut until the
// push has spent its retries: the job fails at the push with an error that says the
// host is unreachable and the final name never appears. The customer is back while
// the job closes: its temporary file is removed then, and nothing of the job is left.
func TestChaosLongOutage(t *testing.T) {
	a := actions[0]
	id, reconnect := cutWhileForwarding(t, "chaos-outage")
	for deadline := time.Now().Add(15 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		j := st.job(t, id)
		if stepNamed(j, "push").State == contracts.StepFailedS || j.State.Final() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the push did not fail within 15 minutes: %s", j.State)
		}
	}
	reconnect()
	j := st.waitJob(t, id, 5*time.Minute)
	if j.State != contracts.JobFailed || j.Failure == nil || j.Failure.Step != "push" {
		t.Fatalf("after an outage longer than the retries: %s: %+v, want failed at push", j.State, j.Failure)
	}
	t.Logf("failed as expected: %s", j.Failure.Message)
	msg := strings.ToLower(j.Failure.Message)
	if !strings.Contains(msg, "cannot reach") && !strings.Contains(msg, "unreachable") && !strings.Contains(msg, "connection") && !strings.Contains(msg, "timeout") && !strings.Contains(msg, "timed out") {
		t.Errorf("the failure does not say the host was unreachable: %s", j.Failure.Message)
	}
	if got := a.delivered(t, j); len(got) != 0 {
		t.Errorf("left on the customer after the failed push: %v", got)
	}
	st.nothingLeft(t)
}

// The customer stays cut until the job has ended: remove-staging cannot reach it for
// the 30 s it is given, so the archive's temporary file stays on the customer,
// recorded. Once the customer is back, cleanup's sweep (every 5 s in this stack)
// removes it on a connection of its own, which it closes.
func TestChaosOutageOutlastsTheJob(t *testing.T) {
	a := actions[0]
	id, reconnect := cutWhileForwarding(t, "chaos-outlast")
	connected := false
	defer func() {
		if !connected {
			reconnect()
		}
	}()
	j := st.waitJob(t, id, 15*time.Minute)
	if j.State != contracts.JobFailed || j.Failure == nil || j.Failure.Step != "push" {
		t.Fatalf("with the customer cut to the end: %s: %+v, want failed at push", j.State, j.Failure)
	}
	left := a.delivered(t, j)
	if len(left) == 0 {
		t.Fatal("nothing of the job on the customer while it was cut: the sweep has nothing to prove here")
	}
	t.Logf("left on the customer while it was cut: %v", left)
	removed := st.metric(t, "cleanup", "ferry_host_leftovers_removed_total")
	reconnect()
	connected = true
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		left = a.delivered(t, j)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still on the customer two minutes after it came back: %v", left)
		}
	}
	if got := st.metric(t, "cleanup", "ferry_host_leftovers_removed_total"); got != removed+1 {
		t.Errorf("ferry_host_leftovers_removed_total went from %v to %v, want one more", removed, got)
	}
	st.nothingLeft(t)
}

// Three NATS nodes: one is killed during a batch of 50 jobs; all 50 succeed, none lost
// or duplicated; the node is started again and the cluster heals. This test replaces
// the single-node stack with the cluster: it stays last in this file, which go test
// runs in order.
func TestChaosClusterNodeLoss(t *testing.T) {
	st.down()
	st.cluster = true
	if err := st.up(context.Background()); err != nil {
		t.Fatal(err)
	}
	const n = 50
	ids := make([]string, n)
	base := time.Now().UnixNano()
	for i := range ids {
		ids[i] = fmt.Sprintf("chaos-cluster-%d-%02d", base, i)
		if _, err := st.cli(context.Background(), "helpdesk", "update", "--id", ids[i], "--from", "operator-pc",
			"--files", "updates/app-2.3.1/README.md", "--to", "customer", "--dest", "/opt/app/releases"); err != nil {
			t.Fatal(err)
		}
		if i == n/3 {
			docker(t, "kill", st.container(t, "nats-2"))
			t.Log("killed nats-2")
		}
	}
	for _, id := range ids {
		j := st.waitJob(t, id, 5*time.Minute)
		if j.State != contracts.JobSucceeded {
			t.Errorf("%s: %s: %+v", id, j.State, j.Failure)
		}
	}
	listing := st.exec(t, "customer", "ls", "-a", "/opt/app/releases")
	for _, id := range ids {
		if got := matching(listing, id); len(got) != 2 {
			t.Errorf("%s delivered %v, want one archive and its manifest", id, got)
		}
	}
	docker(t, "start", st.container(t, "nats-2"))
	// Healed: the full health check passes only when the node's JetStream assets
	// (meta group, streams, consumers) are current with the cluster.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := st.execErr("nats-2", "curl", "-fsS", "http://127.0.0.1:8222/healthz")
		if err == nil && strings.Contains(out, "ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-2 did not rejoin the cluster: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	st.nothingLeft(t)
}
