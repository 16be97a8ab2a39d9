// Package demohost is a small SSH/SFTP server for demonstrations (`ferry dev --demo`):
// it listens on loopback, lets one user in with a password and serves the SFTP
// subsystem confined to one directory, which is the host's "/" and its home directory.
// There is no shell: exec, shell and port forwarding are refused, so ferry takes its
// SFTP-only paths against it.
//
// A host keeps its state (ed25519 host key, password) in a directory of its own,
// created on first start with mode 0700 and files 0600, so it presents the same host
// key and accepts the same password on every start.
package demohost

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// Names of the files in a host's state directory.
const (
	FileHostKey    = "ssh_host_ed25519_key"
	FileHostKeyPub = "ssh_host_ed25519_key.pub"
	FilePassword   = "password"
)

// DefaultUser is the login name when Config.User is empty.
const DefaultUser = "demo"

// Config configures Start.
type Config struct {
	// Root is the directory served over SFTP: the host's "/" and home directory.
	// It is created (0755) if missing.
	Root string
	// StateDir holds the host key and the password; it must not lie inside Root, so
	// that no SFTP client can read them. Created (0700) if missing.
	StateDir string
	// User is the one login name accepted (DefaultUser if empty).
	User string
	// Addr is the listen address (default 127.0.0.1:0: loopback, a free port).
	Addr string
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
}

// Host is a running demo SSH/SFTP host.
type Host struct {
	cfg      Config
	signer   ssh.Signer
	password string
	root     *os.Root
	ln       net.Listener
	log      *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Start loads or creates the host's key and password and starts serving.
func Start(cfg Config) (*Host, error) {
	if cfg.Root == "" || cfg.StateDir == "" {
		return nil, errors.New("demohost: Root and StateDir are required")
	}
	if cfg.User == "" {
		cfg.User = DefaultUser
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, err
	}
	state, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if rel, err := filepath.Rel(root, state); err == nil && (rel == "." || !strings.HasPrefix(rel, "..")) {
		return nil, fmt.Errorf("demohost: state directory %s lies inside the served root %s", state, root)
	}
	cfg.Root, cfg.StateDir = root, state
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	signer, err := loadOrCreateHostKey(state)
	if err != nil {
		return nil, err
	}
	password, err := loadOrCreatePassword(state)
	if err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		r.Close()
		return nil, err
	}
	h := &Host{cfg: cfg, signer: signer, password: password, root: r, ln: ln,
		log: log.With("demo_host", filepath.Base(root), "addr", ln.Addr().String()), conns: map[net.Conn]struct{}{}}
	h.wg.Add(1)
	go h.serve(h.serverConfig())
	h.log.Debug("demo host listening")
	return h, nil
}

// Addr is the address the host listens on (host:port).
func (h *Host) Addr() string { return h.ln.Addr().String() }

// Port is the port the host listens on.
func (h *Host) Port() int { return h.ln.Addr().(*net.TCPAddr).Port }

// User is the login name.
func (h *Host) User() string { return h.cfg.User }

// Password is the login password.
func (h *Host) Password() string { return h.password }

// Root is the absolute directory served as the host's "/".
func (h *Host) Root() string { return h.cfg.Root }

// StateDir is the absolute directory of the host key and password.
func (h *Host) StateDir() string { return h.cfg.StateDir }

// PublicKey is the host key.
func (h *Host) PublicKey() ssh.PublicKey { return h.signer.PublicKey() }

// AuthorizedKey is the host key as an authorized_keys line without newline
// ("ssh-ed25519 AAAA…"), the form the host inventory pins.
func (h *Host) AuthorizedKey() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(h.signer.PublicKey())))
}

// Fingerprint is the host key's SHA256 fingerprint ("SHA256:…").
func (h *Host) Fingerprint() string { return ssh.FingerprintSHA256(h.signer.PublicKey()) }

// Close stops listening, closes every connection and waits for their handlers.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	err := h.ln.Close()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	h.root.Close()
	return err
}

func (h *Host) serverConfig() *ssh.ServerConfig {
	cfg := &ssh.ServerConfig{
		MaxAuthTries: 6,
		PasswordCallback: func(c ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
			userOK := subtle.ConstantTimeCompare([]byte(c.User()), []byte(h.cfg.User)) == 1
			passOK := subtle.ConstantTimeCompare(password, []byte(h.password)) == 1
			if userOK && passOK {
				return nil, nil
			}
			h.log.Info("demo host: login refused", "user", c.User(), "remote", c.RemoteAddr().String())
			return nil, errors.New("wrong user or password")
		},
		ServerVersion: "SSH-2.0-ferry-demohost",
	}
	cfg.AddHostKey(h.signer)
	return cfg
}

func (h *Host) serve(cfg *ssh.ServerConfig) {
	defer h.wg.Done()
	for {
		conn, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			conn.Close()
			return
		}
		h.conns[conn] = struct{}{}
		h.wg.Add(1)
		h.mu.Unlock()
		go func() {
			defer h.wg.Done()
			defer func() {
				h.mu.Lock()
				delete(h.conns, conn)
				h.mu.Unlock()
				conn.Close()
			}()
			h.handle(conn, cfg)
		}()
	}
}

// handle runs one SSH connection until it ends.
func (h *Host) handle(conn net.Conn, cfg *ssh.ServerConfig) {
	sc, chans, reqs, err := ssh.NewServerConn(conn, cfg)
	if err != nil {
		h.log.Debug("demo host: handshake failed", "remote", conn.RemoteAddr().String(), "error", err)
		return
	}
	defer sc.Close()
	h.log.Debug("demo host: logged in", "user", sc.User(), "remote", sc.RemoteAddr().String())
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for req := range reqs {
			// keepalive@openssh.com and every other global request (tcpip-forward…):
			// answered, and refused, as OpenSSH answers keepalives.
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}()
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
		case "direct-tcpip":
			nc.Reject(ssh.Prohibited, "port forwarding is disabled on this demo host")
			continue
		default:
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.session(ch, creqs)
		}()
	}
}

// session serves one session channel: the sftp subsystem, nothing else.
func (h *Host) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var (
		started bool
		done    = make(chan struct{})
	)
	for req := range reqs {
		ok := false
		switch req.Type {
		case "subsystem":
			var p struct{ Name string }
			if err := ssh.Unmarshal(req.Payload, &p); err == nil && p.Name == "sftp" && !started {
				ok, started = true, true
				go func() {
					defer close(done)
					h.serveSFTP(ch)
				}()
			}
		case "exec", "shell":
			// No shell on this host: ferry falls back to its SFTP-only paths.
			h.log.Debug("demo host: refused " + req.Type)
		}
		// Everything else (env, pty-req, keepalive@openssh.com…) is answered with a refusal.
		if req.WantReply {
			req.Reply(ok, nil)
		}
	}
	if started {
		<-done
	}
}

func (h *Host) serveSFTP(ch ssh.Channel) {
	rs := sftp.NewRequestServer(ch, newHandlers(h.root))
	err := rs.Serve()
	rs.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) && err.Error() != "EOF" {
		h.log.Debug("demo host: sftp session ended", "error", err)
	}
	// Tell the client the subsystem ended, as sshd does.
	ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
	ch.Close()
}

// loadOrCreateHostKey reads dir/ssh_host_ed25519_key, creating it on first start.
func loadOrCreateHostKey(dir string) (ssh.Signer, error) {
	path := filepath.Join(dir, FileHostKey)
	b, err := readPrivate(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		block, err := ssh.MarshalPrivateKey(priv, "ferry demo host")
		if err != nil {
			return nil, err
		}
		b = pem.EncodeToMemory(block)
		if err := writeNew(path, b, 0o600); err != nil {
			return nil, err
		}
		signer, err := ssh.NewSignerFromKey(priv)
		if err != nil {
			return nil, err
		}
		pub := ssh.MarshalAuthorizedKey(signer.PublicKey())
		if err := writeNew(filepath.Join(dir, FileHostKeyPub), pub, 0o644); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		return signer, nil
	}
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("demohost: host key %s: %w", path, err)
	}
	return signer, nil
}

// loadOrCreatePassword reads dir/password, creating a random one on first start.
func loadOrCreatePassword(dir string) (string, error) {
	path := filepath.Join(dir, FilePassword)
	b, err := readPrivate(path)
	if errors.Is(err, fs.ErrNotExist) {
		raw := make([]byte, 18)
		rand.Read(raw)
		pw := base64.RawURLEncoding.EncodeToString(raw)
		if err := writeNew(path, []byte(pw+"\n"), 0o600); err != nil {
			return "", err
		}
		return pw, nil
	}
	if err != nil {
		return "", err
	}
	pw := string(bytes.TrimSuffix(b, []byte("\n")))
	if pw == "" {
		return "", fmt.Errorf("demohost: %s is empty", path)
	}
	return pw, nil
}

// readPrivate reads a secret file, refusing one that others may read or write.
func readPrivate(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("demohost: %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("demohost: %s has mode %04o; want 0600", path, fi.Mode().Perm())
	}
	return os.ReadFile(path)
}

// writeNew writes a file that must not exist yet, atomically (temporary file, then
// a hard link that fails if the name was taken meanwhile).
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Link(tmp, path)
}
