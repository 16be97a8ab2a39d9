// Package sshtest runs real OpenSSH servers (and a small in-process x/crypto
// server) for tests of ferry's SSH layer.
package sshtest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ferrydesk/ferry/contracts"
)

// SSHDPath is the OpenSSH server binary.
const SSHDPath = "/usr/sbin/sshd"

// Host key types for Options.HostKeyTypes.
const (
	KeyEd25519 = "ed25519"
	KeyRSA     = "rsa"
	KeyECDSA   = "ecdsa"
)

// Options configure Start.
type Options struct {
	// HostKeyTypes lists the host keys to generate, from KeyEd25519, KeyRSA and
	// KeyECDSA. Default: ed25519 only.
	HostKeyTypes []string
	// Config holds extra sshd_config lines, appended to the generated ones.
	Config []string
	// SFTPLog serves SFTP with OpenSSH's sftp-server program logging every
	// operation it performs (open, write, fsync, rename…) to a file that SFTPLogText
	// returns, instead of the quiet internal-sftp.
	SFTPLog bool
	// SFTPLogLevel is sftp-server's log level with SFTPLog (default VERBOSE, one line
	// an operation; DEBUG1 names every request, each write and copy-data among them).
	SFTPLogLevel string
	// SFTPOnly forces every session into the SFTP server (ForceCommand): the host
	// runs no commands, like a chrooted SFTP-only account.
	SFTPOnly bool
}

// Server is an OpenSSH sshd listening on 127.0.0.1 with throwaway host keys and
// configuration. It authenticates the system account of TestUser.
type Server struct {
	t    testing.TB
	dir  string
	opts Options
	port int
	user User

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	hostKeys []string // authorized_keys lines, in opts.HostKeyTypes order
}

// Start runs `sshd -D -e -f <config>` on a free loopback port, waits until it
// listens, and kills it (and its per-connection children) in t.Cleanup. It skips
// the test when not running as root (see TestUser).
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	u := TestUser(t)
	if _, err := os.Stat(SSHDPath); err != nil {
		Unavailable(t, "sshtest: %s not installed", SSHDPath)
	}
	if len(opts.HostKeyTypes) == 0 {
		opts.HostKeyTypes = []string{KeyEd25519}
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation dir
		t.Fatalf("sshtest: %v", err)
	}
	dir := t.TempDir()
	// sshd reads authorized_keys as the test user: let it traverse the temp dirs.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
	}
	s := &Server{t: t, dir: dir, opts: opts, user: u}
	s.writeFile("authorized_keys", nil, 0o644)
	s.generateHostKeys()
	t.Cleanup(s.stop)

	var err error
	for range 3 { // a free port can be taken between probing and binding
		s.port = freePort(t)
		s.writeConfig()
		if err = s.start(); err == nil {
			return s
		}
	}
	t.Fatalf("sshtest: %v", err)
	return nil
}

func (s *Server) writeFile(name string, data []byte, mode os.FileMode) string {
	path := filepath.Join(s.dir, name)
	if err := os.WriteFile(path, data, mode); err != nil {
		s.t.Fatalf("sshtest: %v", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		s.t.Fatalf("sshtest: %v", err)
	}
	return path
}

func (s *Server) generateHostKeys() {
	s.hostKeys = nil
	for _, typ := range s.opts.HostKeyTypes {
		key, pub := generateKey(s.t, typ)
		block, err := ssh.MarshalPrivateKey(key, "sshtest host key")
		if err != nil {
			s.t.Fatalf("sshtest: %v", err)
		}
		s.writeFile("ssh_host_"+typ+"_key", pem.EncodeToMemory(block), 0o600)
		s.hostKeys = append(s.hostKeys, authorizedKey(pub))
	}
}

func (s *Server) writeConfig() {
	lines := []string{
		"ListenAddress 127.0.0.1",
		"Port " + strconv.Itoa(s.port),
		"PidFile " + filepath.Join(s.dir, "sshd.pid"),
		"AuthorizedKeysFile " + filepath.Join(s.dir, "authorized_keys"),
		"PasswordAuthentication yes",
		"KbdInteractiveAuthentication yes",
		"PubkeyAuthentication yes",
		"UsePAM yes",
		"StrictModes no",
		"PermitRootLogin no",
		"PrintMotd no",
		"UseDNS no",
		"MaxStartups 100",
		s.subsystem(),
		"SetEnv SHLVL=1",
		"AllowTcpForwarding yes",
		"LogLevel DEBUG1",
	}
	for _, typ := range s.opts.HostKeyTypes {
		lines = append(lines, "HostKey "+filepath.Join(s.dir, "ssh_host_"+typ+"_key"))
	}
	if s.opts.SFTPOnly {
		lines = append(lines, "ForceCommand "+strings.TrimPrefix(s.subsystem(), "Subsystem sftp "))
	}
	lines = append(lines, s.opts.Config...)
	s.writeFile("sshd_config", []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

func (s *Server) logPath() string { return filepath.Join(s.dir, "sshd.log") }

// SFTPServerPath is OpenSSH's SFTP server program (Debian's path).
const SFTPServerPath = "/usr/lib/openssh/sftp-server"

func (s *Server) sftpLogPath() string { return filepath.Join(s.dir, "sftp.log") }

func (s *Server) subsystem() string {
	if !s.opts.SFTPLog {
		return "Subsystem sftp internal-sftp"
	}
	// sshd runs a subsystem through the user's shell, which does the redirection;
	// the log is writable by the test user the server runs as.
	s.writeFile("sftp.log", nil, 0o666)
	level := s.opts.SFTPLogLevel
	if level == "" {
		level = "VERBOSE"
	}
	return "Subsystem sftp " + SFTPServerPath + " -e -l " + level + " 2>>" + s.sftpLogPath()
}

// SFTPLogText returns what sftp-server logged so far (Options.SFTPLog).
func (s *Server) SFTPLogText() string {
	b, err := os.ReadFile(s.sftpLogPath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		s.t.Errorf("sshtest: %v", err)
	}
	return string(b)
}

// start runs sshd and waits for it to listen.
func (s *Server) start() error {
	logOffset := len(s.LogText())
	cmd := exec.Command(SSHDPath, "-D", "-e", "-f", filepath.Join(s.dir, "sshd_config"), "-E", s.logPath())
	// A file, not a pipe: connection processes inherit it, and a pipe would make
	// cmd.Wait wait for them too.
	stderr, err := os.Create(filepath.Join(s.dir, "sshd.stderr"))
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	listening := fmt.Sprintf("Server listening on 127.0.0.1 port %d", s.port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if strings.Contains(s.LogText()[logOffset:], listening) {
			return nil
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(stderr.Name())
			return fmt.Errorf("sshd exited: %s\n%s", out, s.LogText()[logOffset:])
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("sshd did not listen within 10s:\n%s", s.LogText()[logOffset:])
		}
	}
}

// kill stops the listener and every per-connection child.
func (s *Server) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	children := descendants(cmd.Process.Pid)
	for _, pid := range children {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(3 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	for _, pid := range descendants(cmd.Process.Pid) { // forked meanwhile
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (s *Server) stop() {
	s.kill()
	if s.t.Failed() {
		s.t.Logf("sshd log:\n%s", s.LogText())
	}
}

// Restart stops sshd, including the processes of established connections, and
// starts it again on the same port, with freshly generated host keys if
// newHostKeys is set.
func (s *Server) Restart(newHostKeys bool) {
	s.t.Helper()
	s.Down()
	if newHostKeys {
		s.generateHostKeys()
	}
	s.Up()
}

// Down stops sshd, including the processes of established connections: the host is
// out of reach (connections to its port are refused) until Up.
func (s *Server) Down() { s.kill() }

// Up starts sshd again on its port after Down; a running sshd is left as it is.
func (s *Server) Up() {
	s.t.Helper()
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	select {
	case <-exited:
	default:
		return // running
	}
	var err error
	for range 20 { // the port may linger briefly
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("sshtest: start again: %v", err)
}

// Addr returns "127.0.0.1:<port>".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port returns the listening port.
func (s *Server) Port() int { return s.port }

// Dir returns the server's temporary directory (config, keys, log).
func (s *Server) Dir() string { return s.dir }

// User returns the account the server authenticates.
func (s *Server) User() User { return s.user }

// HostKeys returns the server's public host keys in authorized_keys format.
func (s *Server) HostKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hostKeys)
}

// Host returns an inventory entry for the server, pinned to its current host keys.
func (s *Server) Host(name, credential string) contracts.Host {
	return contracts.Host{
		Schema:     contracts.SchemaHost,
		Name:       name,
		Address:    "127.0.0.1",
		Port:       s.port,
		User:       s.user.Name,
		Credential: credential,
		HostKeys:   s.HostKeys(),
	}
}

// LogText returns the sshd log so far (LogLevel DEBUG1).
func (s *Server) LogText() string {
	b, err := os.ReadFile(s.logPath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		s.t.Errorf("sshtest: %v", err)
	}
	return string(b)
}

// PID returns the process id of the listening sshd.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

// ConnectionPIDs returns the processes sshd started for connections (the
// privileged monitor and the unprivileged child of each connection).
func (s *Server) ConnectionPIDs() []int { return descendants(s.PID()) }

// SignalConnections sends sig (e.g. SIGSTOP to simulate a hung peer) to every
// per-connection process and returns how many it signalled. Cleanup kills them
// whatever their state.
//
// A connection's processes fork while it runs: the privileged monitor starts the
// user's child only after authentication, some time after the client saw it
// succeed. One snapshot of the process tree can miss a child forked between the
// snapshot and the signal, and once its parent is killed the orphan is no longer
// below sshd at all. So the tree is first frozen with SIGSTOP, snapshot after
// snapshot until no new process appears (a stopped process forks nothing more),
// and only then sent sig. A process is only known to be stopped once /proc says so:
// SIGSTOP takes effect on the way back to user space, so a fork under way when it
// was sent still completes, and its child appears after kill has returned.
func (s *Server) SignalConnections(sig syscall.Signal) int {
	var pids []int
	stopped := map[int]bool{}
	for {
		n := len(pids)
		for _, pid := range s.ConnectionPIDs() {
			if !stopped[pid] {
				stopped[pid] = true
				pids = append(pids, pid)
				syscall.Kill(pid, syscall.SIGSTOP)
			}
		}
		if len(pids) == n {
			break
		}
		for _, pid := range pids[n:] {
			waitStopped(pid)
		}
	}
	if sig != syscall.SIGSTOP {
		for _, pid := range pids {
			syscall.Kill(pid, sig)
		}
		for _, pid := range pids { // a stopped process acts on sig once continued
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	return len(pids)
}

// Authorize adds key to the authorized keys of the server's user.
func (s *Server) Authorize(key ssh.PublicKey) {
	f, err := os.OpenFile(filepath.Join(s.dir, "authorized_keys"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		s.t.Fatalf("sshtest: %v", err)
	}
	defer f.Close()
	if _, err := f.WriteString(authorizedKey(key) + "\n"); err != nil {
		s.t.Fatalf("sshtest: %v", err)
	}
}

// waitStopped waits (up to a few seconds) until pid is stopped, a zombie or gone.
func waitStopped(pid int) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		switch procState(pid) {
		case 'T', 't', 'Z', 'X', 0:
			return
		}
	}
}

// procState returns the state letter of pid from /proc/pid/stat, 0 if it is gone.
func procState(pid int) byte {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// "pid (comm) state ppid ...": comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return 0
	}
	return stat[i+2]
}

// descendants lists the processes below pid, read from /proc.
func descendants(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may contain spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		fields := strings.Fields(string(stat[i+1:]))
		if i < 0 || len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, children[p]...)
		queue = append(queue, children[p]...)
	}
	return out
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// generateKey returns a new private key of type typ and its SSH public key.
func generateKey(t testing.TB, typ string) (crypto.PrivateKey, ssh.PublicKey) {
	var (
		key crypto.Signer
		err error
	)
	switch typ {
	case KeyEd25519:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case KeyRSA:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case KeyECDSA:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		err = fmt.Errorf("unknown key type %q", typ)
	}
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	return key, pub
}

func authorizedKey(key ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
}
