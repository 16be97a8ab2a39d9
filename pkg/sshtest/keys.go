package sshtest

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// ClientKey is a generated client key pair.
type ClientKey struct {
	Signer ssh.Signer
	// PEM is the private key in OpenSSH format, encrypted if Passphrase is set.
	PEM        []byte
	Passphrase string
}

// Public returns the public key.
func (k ClientKey) Public() ssh.PublicKey { return k.Signer.PublicKey() }

// NewClientKey generates a client key of type typ (KeyEd25519, KeyRSA, KeyECDSA),
// encrypted with passphrase if it is not empty. Encryption is done by ssh-keygen
// with few KDF rounds, to keep tests fast.
func NewClientKey(t testing.TB, typ, passphrase string) ClientKey {
	t.Helper()
	key, _ := generateKey(t, typ)
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	block, err := ssh.MarshalPrivateKey(key, "sshtest client key")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	k := ClientKey{Signer: signer, PEM: pem.EncodeToMemory(block)}
	if passphrase != "" {
		k.PEM = reencrypt(t, k.PEM, "", passphrase, false)
		k.Passphrase = passphrase
	}
	return k
}

// LegacyPEM returns the key in the legacy PEM format ("BEGIN RSA PRIVATE KEY",
// "BEGIN EC PRIVATE KEY"; ed25519 keys have none), encrypted with the key's
// passphrase if it has one.
func (k ClientKey) LegacyPEM(t testing.TB) []byte {
	t.Helper()
	return reencrypt(t, k.PEM, k.Passphrase, k.Passphrase, true)
}

// reencrypt rewrites a private key with ssh-keygen -p.
func reencrypt(t testing.TB, pemBytes []byte, oldPass, newPass string, legacyPEM bool) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	args := []string{"-q", "-p", "-a", "2", "-P", oldPass, "-N", newPass, "-f", path}
	if legacyPEM {
		args = append(args, "-m", "PEM")
	}
	if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
		t.Fatalf("sshtest: ssh-keygen -p: %v: %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	return b
}

// WriteCredential creates <secretsDir>/<ref>/ (mode 0700) holding files, each
// written with mode 0600, and returns the directory.
func WriteCredential(t testing.TB, secretsDir, ref string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(secretsDir, ref)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
	}
	return dir
}

// StartAgent runs a real `ssh-agent -D -a <socket>`, loads keys into it with
// ssh-add, and returns the socket path. The agent is killed in t.Cleanup.
// Keys must not have a passphrase (ssh-add would prompt for it).
func StartAgent(t testing.TB, keys ...ClientKey) string {
	t.Helper()
	agentPath, err := exec.LookPath("ssh-agent")
	if err != nil {
		Unavailable(t, "sshtest: ssh-agent not installed")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	cmd := exec.Command(agentPath, "-D", "-a", sock)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("sshtest: ssh-agent: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if err := waitUnixSocket(sock, 5*time.Second); err != nil {
		t.Fatalf("sshtest: ssh-agent: %v", err)
	}
	for i, k := range keys {
		if k.Passphrase != "" {
			t.Fatalf("sshtest: StartAgent: key %d has a passphrase", i)
		}
		path := filepath.Join(dir, fmt.Sprintf("key%d", i))
		if err := os.WriteFile(path, k.PEM, 0o600); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
		add := exec.Command("ssh-add", path)
		add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("sshtest: ssh-add: %v: %s", err, out)
		}
	}
	return sock
}

func waitUnixSocket(path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn.Close()
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// EchoServer listens on 127.0.0.1 and echoes every connection back to its sender,
// half-closing when the sender does. It returns the address; t.Cleanup stops it.
func EchoServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
				conn.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}
