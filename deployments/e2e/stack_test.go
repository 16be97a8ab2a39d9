//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"golang.org/x/crypto/ssh"
)

// Ports on the host's loopback, away from a stack a developer may run by hand.
const (
	natsPort       = 14222
	natsPort2      = 14223
	natsPort3      = 14224
	prometheusPort = 19090
	project        = "ferry-e2e"
	serviceUID     = 10001 // the services' user in the images
	natsUID        = 10002
)

// Services are ferry's five service containers.
var Services = []string{"orchestrator", "connector", "transfer", "archiver", "cleanup"}

// stack is the compose project under test and the CLI that drives it.
type stack struct {
	root    string   // the repository
	work    string   // this run's keys and secrets
	cluster bool     // docker-compose.cluster.yml too
	extra   []string // more compose files (absolute paths)
	ferry   string   // the CLI, built for this run
}

var st *stack

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return 1, err
	}
	work, err := os.MkdirTemp("", "ferry-e2e-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(work)
	st = &stack{root: root, work: work}
	if err := st.prepare(); err != nil {
		return 1, err
	}
	st.down() // what an interrupted run may have left, volumes included
	if err := st.up(context.Background()); err != nil {
		st.logs(os.Stderr)
		st.down()
		return 1, err
	}
	code := m.Run()
	if code != 0 {
		st.logs(os.Stderr)
	}
	if os.Getenv("FERRY_E2E_KEEP") != "1" {
		st.down()
	}
	return code, nil
}

// prepare builds the CLI, makes the NATS certificates and passwords (make certs), an
// SSH key for the services, host keys for the targets (pinned in the inventory, so
// nothing is trusted on first use) and the customer database's password.
func (s *stack) prepare() error {
	s.ferry = filepath.Join(s.work, "ferry")
	if out, err := s.cmd("go", "build", "-o", s.ferry, "./cmd/ferry").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/ferry: %v\n%s", err, out)
	}
	certs := s.cmd("scripts/certs.sh")
	certs.Env = append(os.Environ(), fmt.Sprintf("NATS_UID=%d", natsUID), fmt.Sprintf("SERVICE_UID=%d", serviceUID))
	if out, err := certs.CombinedOutput(); err != nil {
		return fmt.Errorf("scripts/certs.sh: %v\n%s", err, out)
	}

	keys := filepath.Join(s.work, "keys")
	secrets := filepath.Join(s.work, "secrets")
	client, err := newKey()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"keys/authorized_keys": ssh.MarshalAuthorizedKey(client.pub),
		"keys/db_password":     []byte(randomWord() + "\n"),
	}
	for _, host := range []string{"operator-pc", "customer"} {
		hk, err := newKey()
		if err != nil {
			return err
		}
		files["keys/"+host+"/ssh_host_ed25519_key"] = hk.pem
		files["keys/"+host+"/ssh_host_ed25519_key.pub"] = ssh.MarshalAuthorizedKey(hk.pub)
		files["secrets/"+host+"/private_key"] = client.pem
	}
	files["secrets/customer-db/password"] = files["keys/db_password"]
	for name, data := range files {
		p := filepath.Join(s.work, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return err
		}
	}
	// The services (uid 10001) read their secrets; the targets' entrypoint reads keys
	// as root. Both directories must be reachable by the daemon's bind mounts.
	if err := os.Chmod(s.work, 0o755); err != nil {
		return err
	}
	os.Chmod(keys, 0o755)
	for _, d := range []string{"operator-pc", "customer"} {
		os.Chmod(filepath.Join(keys, d), 0o755)
		os.Chmod(filepath.Join(keys, d, "ssh_host_ed25519_key.pub"), 0o644)
	}
	os.Chmod(filepath.Join(keys, "authorized_keys"), 0o644)
	return filepath.Walk(secrets, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, serviceUID, serviceUID)
	})
}

type key struct {
	pub ssh.PublicKey
	pem []byte
}

func newKey() (key, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return key{}, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return key{}, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return key{}, err
	}
	return key{pub: sp, pem: pem.EncodeToMemory(block)}, nil
}

func randomWord() string {
	b := make([]byte, 12)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// cmd runs in the repository.
func (s *stack) cmd(name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Dir = s.root
	return c
}

// composeEnv is docker-compose's environment for this run.
func (s *stack) composeEnv() []string {
	return append(os.Environ(),
		"COMPOSE_PROJECT_NAME="+project,
		"COMPOSE_PROFILES=e2e",
		"FERRY_SSH_SECRETS="+filepath.Join(s.work, "secrets"),
		"FERRY_E2E_KEYS="+filepath.Join(s.work, "keys"),
		"FERRY_NATS_PORT="+strconv.Itoa(natsPort),
		"FERRY_NATS_PORT_2="+strconv.Itoa(natsPort2),
		"FERRY_NATS_PORT_3="+strconv.Itoa(natsPort3),
		"FERRY_PROMETHEUS_PORT="+strconv.Itoa(prometheusPort),
		"FERRY_LOG_LEVEL=debug",
		"FERRY_CLEANUP_SWEEP_EVERY=5s", // TestChaosOutageOutlastsTheJob
	)
}

// compose runs docker-compose on the project and returns its combined output.
func (s *stack) compose(ctx context.Context, args ...string) (string, error) {
	files := []string{"-f", "docker-compose.yml"}
	if s.cluster {
		files = append(files, "-f", "docker-compose.cluster.yml")
	}
	for _, f := range s.extra {
		files = append(files, "-f", f)
	}
	c := exec.CommandContext(ctx, "docker-compose", append(files, args...)...)
	c.Dir = s.root
	c.Env = s.composeEnv()
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// up starts the stack and waits until every container is healthy, then registers the
// two targets in the host inventory with their pinned host keys.
func (s *stack) up(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, err := s.compose(ctx, "up", "-d", "--remove-orphans"); err != nil {
		return err
	}
	if err := s.waitHealthy(ctx); err != nil {
		return err
	}
	if err := s.addHosts(ctx); err != nil {
		return err
	}
	// Healthy containers are connected ones; the orchestrator serves the jobs API once
	// it has provisioned the streams (a fresh three-node cluster takes a few seconds).
	var err error
	for i := 0; i < 60; i++ {
		if _, err = s.cli(ctx, "admin", "job", "list"); err == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("the jobs API does not answer: %w", err)
}

// down removes the project, its volumes included.
func (s *stack) down() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := s.compose(ctx, "down", "-v", "--remove-orphans", "-t", "10"); err != nil {
		fmt.Fprintln(os.Stderr, out)
	}
}

// logs writes every container's log (the last lines) to w.
func (s *stack) logs(w io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, _ := s.compose(ctx, "logs", "--no-color", "--tail", "200")
	io.WriteString(w, out)
}

// containers maps each service of the project to its container id.
func (s *stack) containers(ctx context.Context) (map[string]string, error) {
	out, err := exec.CommandContext(ctx, "docker", "ps", "-a", "--filter", "label=com.docker.compose.project="+project,
		"--format", `{{.ID}} {{.Label "com.docker.compose.service"}}`).Output()
	if err != nil {
		return nil, fmt.Errorf("docker ps: %v", err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if id, svc, ok := strings.Cut(line, " "); ok {
			m[svc] = id
		}
	}
	return m, nil
}

// container is the id of a service's container.
func (s *stack) container(t testing.TB, svc string) string {
	t.Helper()
	m, err := s.containers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	id, ok := m[svc]
	if !ok {
		t.Fatalf("no container for %s", svc)
	}
	return id
}

// waitHealthy waits until every container of the project is running and, where it has
// a health check, healthy.
func (s *stack) waitHealthy(ctx context.Context) error {
	var last string
	for {
		m, err := s.containers(ctx)
		if err == nil {
			var bad []string
			for svc, id := range m {
				out, err := exec.CommandContext(ctx, "docker", "inspect", "--format",
					"{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", id).Output()
				state := strings.TrimSpace(string(out))
				if err != nil || !(state == "running healthy" || state == "running none") {
					bad = append(bad, svc+": "+state)
				}
			}
			if len(bad) == 0 && len(m) > 0 {
				return nil
			}
			last = strings.Join(bad, ", ")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containers not healthy: %s", last)
		case <-time.After(time.Second):
		}
	}
}

// addHosts registers the targets with the keys their containers were given.
func (s *stack) addHosts(ctx context.Context) error {
	for _, h := range []struct{ name, user string }{{"operator-pc", "operator"}, {"customer", "customer"}} {
		pub, err := os.ReadFile(filepath.Join(s.work, "keys", h.name, "ssh_host_ed25519_key.pub"))
		if err != nil {
			return err
		}
		args := []string{"host", "add", h.name, "--address", h.name, "--user", h.user, "--credential", h.name,
			"--host-key", strings.TrimSpace(string(pub)), "--replace"}
		if h.name == "customer" {
			args = append(args, "--root", "/opt/app", "--root", "/var/log/app", "--root", "~")
		}
		var err2 error
		for i := 0; i < 30; i++ { // the orchestrator may still be provisioning the buckets
			if _, err2 = s.cli(ctx, "admin", args...); err2 == nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err2 != nil {
			return err2
		}
	}
	return nil
}

// cli runs the ferry CLI on the host as a NATS user (admin or helpdesk) and returns its
// standard output.
func (s *stack) cli(ctx context.Context, user string, args ...string) (string, error) {
	c := exec.CommandContext(ctx, s.ferry, args...)
	c.Dir = s.root
	urls := []string{fmt.Sprintf("tls://127.0.0.1:%d", natsPort)}
	if s.cluster {
		urls = append(urls, fmt.Sprintf("tls://127.0.0.1:%d", natsPort2), fmt.Sprintf("tls://127.0.0.1:%d", natsPort3))
	}
	c.Env = append(os.Environ(),
		"FERRY_NATS_URL="+strings.Join(urls, ","),
		"FERRY_NATS_USER="+user,
		"FERRY_NATS_PASSWORD_FILE="+filepath.Join(s.root, "deployments/tls/passwords", user),
		"FERRY_NATS_CA="+filepath.Join(s.root, "deployments/tls/ca.pem"))
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ferry %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// job reads a job record with the CLI.
func (s *stack) job(t testing.TB, id string) contracts.Job {
	t.Helper()
	j, err := s.readJob(id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func (s *stack) readJob(id string) (contracts.Job, error) {
	var j contracts.Job
	out, err := s.cli(context.Background(), "admin", "job", "get", id, "-o", "json")
	if err == nil {
		if err = json.Unmarshal([]byte(out), &j); err != nil {
			err = fmt.Errorf("job get %s: %v\n%s", id, err, out)
		}
	}
	return j, err
}

// waitJob polls a job until it ends or timeout passes.
func (s *stack) waitJob(t testing.TB, id string, timeout time.Duration) contracts.Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j, err := s.readJob(id)
		if err == nil && j.State.Final() {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not end within %s (last: %s, %v)", id, timeout, j.State, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// exec runs a command in a service's container and returns its standard output.
func (s *stack) exec(t testing.TB, svc string, args ...string) string {
	t.Helper()
	out, err := s.execErr(svc, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *stack) execErr(svc string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := s.containers(ctx)
	if err != nil {
		return "", err
	}
	id, ok := m[svc]
	if !ok {
		return "", fmt.Errorf("no container for %s", svc)
	}
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, "docker", append([]string{"exec", "-u", "0", id}, args...)...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker exec %s %s: %v\n%s", svc, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// docker runs the docker CLI.
func docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// metric returns the sum of a metric's samples on a service's /metrics.
func (s *stack) metric(t testing.TB, svc, name string) float64 {
	t.Helper()
	out := s.exec(t, svc, "curl", "-fsS", "http://127.0.0.1:9090/metrics")
	var sum float64
	found := false
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	if !found {
		t.Fatalf("%s exports no %s", svc, name)
	}
	return sum
}

// nothingLeft checks that no SSH session or tunnel is open in any service and that the
// staging volume is empty, waiting a little for closing steps that are still running.
func (s *stack) nothingLeft(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for _, svc := range []string{"connector", "transfer", "cleanup"} {
			if v := s.metric(t, svc, "ferry_ssh_sessions_active"); v != 0 {
				left = append(left, fmt.Sprintf("%s: %v SSH sessions", svc, v))
			}
		}
		if v := s.metric(t, "connector", "ferry_ssh_tunnels_active"); v != 0 {
			left = append(left, fmt.Sprintf("connector: %v tunnels", v))
		}
		if out := strings.TrimSpace(s.exec(t, "transfer", "find", "/var/lib/ferry/staging", "-mindepth", "1")); out != "" {
			left = append(left, "staging: "+strings.ReplaceAll(out, "\n", " "))
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %s", strings.Join(left, "; "))
		}
		time.Sleep(time.Second)
	}
}
