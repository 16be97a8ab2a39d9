package sshtest_test

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func TestServer(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{HostKeyTypes: []string{sshtest.KeyEd25519, sshtest.KeyRSA}})
	keys := srv.HostKeys()
	if len(keys) != 2 || !strings.HasPrefix(keys[0], "ssh-ed25519 ") || !strings.HasPrefix(keys[1], "ssh-rsa ") {
		t.Fatalf("HostKeys = %q", keys)
	}
	key := sshtest.NewClientKey(t, sshtest.KeyEd25519, "")
	srv.Authorize(key.Public())

	conn, err := ssh.Dial("tcp", srv.Addr(), &ssh.ClientConfig{
		User:            srv.User().Name,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(key.Signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := conn.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Output("echo $SHLVL")
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("SHLVL = %q, %v", out, err)
	}
	if pids := srv.ConnectionPIDs(); len(pids) == 0 {
		t.Error("no connection processes")
	}
	if !strings.Contains(srv.LogText(), "Accepted publickey for "+sshtest.UserName) {
		t.Errorf("log lacks the login:\n%s", srv.LogText())
	}

	srv.Restart(true)
	if after := srv.HostKeys(); slices.Equal(after, keys) {
		t.Error("Restart(true) kept the host keys")
	}
	if err := conn.Wait(); err == nil {
		t.Error("connection survived Restart")
	}
}

func TestInProcessServer(t *testing.T) {
	srv := sshtest.StartInProcess(t, sshtest.InProcessOptions{Password: "pw"})
	conn, err := ssh.Dial("tcp", srv.Addr(), &ssh.ClientConfig{
		User:            sshtest.UserName,
		Auth:            []ssh.AuthMethod{ssh.Password("pw")},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := conn.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.Output("hello"); err != nil || string(out) != "hello" {
		t.Errorf("exec = %q, %v", out, err)
	}
	if ev := srv.Events(); !slices.Equal(ev, []string{"password ok"}) {
		t.Errorf("Events = %q", ev)
	}
}
