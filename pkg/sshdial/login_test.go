package sshdial_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func TestLoginSucceeds(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	password := e.srv.User().Password

	ed := sshtest.NewClientKey(t, sshtest.KeyEd25519, "")
	rsa := sshtest.NewClientKey(t, sshtest.KeyRSA, "correct horse")
	ecdsa := sshtest.NewClientKey(t, sshtest.KeyECDSA, "")
	agentKey := sshtest.NewClientKey(t, sshtest.KeyEd25519, "")
	for _, k := range []sshtest.ClientKey{ed, rsa, ecdsa, agentKey} {
		e.srv.Authorize(k.Public())
	}
	sock := sshtest.StartAgent(t, agentKey)

	tests := []struct {
		name   string
		files  map[string]string
		method string
	}{
		{"password", map[string]string{"password": password + "\n"}, "password"},
		{"ed25519 key", map[string]string{"private_key": string(ed.PEM)}, "publickey"},
		{"rsa key with passphrase", map[string]string{"private_key": string(rsa.PEM), "passphrase": "correct horse\n"}, "publickey"},
		{"rsa legacy PEM key with passphrase", map[string]string{"private_key": string(rsa.LegacyPEM(t)), "passphrase": "correct horse"}, "publickey"},
		{"ecdsa legacy PEM key", map[string]string{"private_key": string(ecdsa.LegacyPEM(t))}, "publickey"},
		{"keyboard-interactive via PAM", map[string]string{
			"keyboard_interactive.json": `[{"prompt": "(?i)^password: ?$", "answer": "` + password + `"}]`,
		}, "keyboard-interactive"},
		{"ssh-agent", map[string]string{"agent_socket": sock + "\n"}, "publickey"},
		{"key preferred over password", map[string]string{"private_key": string(ed.PEM), "password": "wrong"}, "publickey"},
		{"password after a rejected key", map[string]string{
			"private_key": string(sshtest.NewClientKey(t, sshtest.KeyEd25519, "").PEM), "password": password,
		}, "password"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := e.credential(t, "cred"+string(rune('a'+i)), tt.files)
			c := e.mustDial(t, ref)
			info := c.Info()
			if info.AuthMethod != tt.method {
				t.Errorf("AuthMethod = %q, want %q", info.AuthMethod, tt.method)
			}
			if !strings.HasPrefix(info.Fingerprint, "SHA256:") || info.TrustedOnFirstUse || info.Handshake <= 0 {
				t.Errorf("Info = %+v", info)
			}
		})
	}
	if log := e.srv.LogText(); !strings.Contains(log, "client->server cipher: aes128-gcm@openssh.com") {
		t.Errorf("aes128-gcm@openssh.com was not negotiated:\n%s", log)
	}
}

func TestLoginFails(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	rsa := sshtest.NewClientKey(t, sshtest.KeyRSA, "correct horse")
	e.srv.Authorize(rsa.Public())

	tests := []struct {
		name  string
		files map[string]string
		kind  error
		want  []string // substrings of the error message
	}{
		{"wrong password", map[string]string{"password": canaryPassword},
			sshdial.ErrAuthFailed, []string{`authentication as "ferrytest" failed`, "password"}},
		{"wrong passphrase", map[string]string{"private_key": string(rsa.PEM), "passphrase": canaryPassphrase},
			sshdial.ErrPassphrase, []string{`credential "wrong-passphrase": private key passphrase is wrong`}},
		{"wrong passphrase legacy PEM", map[string]string{"private_key": string(rsa.LegacyPEM(t)), "passphrase": canaryPassphrase},
			sshdial.ErrPassphrase, []string{"private key passphrase is wrong"}},
		{"missing passphrase", map[string]string{"private_key": string(rsa.PEM)},
			sshdial.ErrPassphrase, []string{"passphrase", "no passphrase file"}},
		{"unanswered prompt", map[string]string{
			"keyboard_interactive.json": `[{"prompt": "^Verification code", "answer": "` + canaryAnswer + `"}]`,
		}, sshdial.ErrAuthFailed, []string{`no keyboard-interactive answer for prompt "Password: "`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := e.credential(t, strings.ReplaceAll(tt.name, " ", "-"), tt.files)
			_, err := e.dial(t, ref)
			if !errors.Is(err, tt.kind) {
				t.Fatalf("err = %v, want %v", err, tt.kind)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "unable to authenticate") && tt.kind == sshdial.ErrPassphrase {
				t.Errorf("passphrase error reported as an authentication failure: %v", err)
			}
			if sshdial.Retryable(err) {
				t.Errorf("Retryable(%v) = true", err)
			}
			assertNoCanary(t, "error", err.Error())
		})
	}
	assertNoCanary(t, "log", e.logs.String())
}

func TestKeyboardInteractiveRounds(t *testing.T) {
	srv := sshtest.StartInProcess(t, sshtest.InProcessOptions{Rounds: []sshtest.Round{
		{Instruction: "first factor", Prompts: []sshtest.Prompt{
			{Text: "Password: ", Answer: "pw-1"},
			{Text: "PIN: ", Answer: "1234"},
		}},
		{Instruction: "second factor", Prompts: []sshtest.Prompt{
			{Text: "Verification code: ", Echo: true, Answer: "987654"},
			{Text: "Password: ", Answer: "pw-1"},
		}},
	}})
	secrets := t.TempDir()
	sshtest.WriteCredential(t, secrets, "mfa", map[string]string{"keyboard_interactive.json": `[
		{"prompt": "^Password:", "answer": "pw-1"},
		{"prompt": "^PIN", "answer": "1234"},
		{"prompt": "(?i)verification code", "answer": "987654"}
	]`})
	sshtest.WriteCredential(t, secrets, "partial", map[string]string{"keyboard_interactive.json": `[
		{"prompt": "^Password:", "answer": "pw-1"},
		{"prompt": "^PIN", "answer": "1234"},
		{"prompt": "^OTP", "answer": "` + canaryAnswer + `"}
	]`})

	e := &env{secrets: secrets, logs: &syncBuffer{}}
	c, err := e.dialHost(t, srv.Host("inproc", "mfa"), e.options())
	if err != nil {
		t.Fatalf("dial: %v (server: %q)", err, srv.Events())
	}
	if got := c.Info().AuthMethod; got != "keyboard-interactive" {
		t.Errorf("AuthMethod = %q", got)
	}
	if ev := srv.Events(); len(ev) != 2 || ev[1] != "keyboard-interactive round 2 ok" {
		t.Errorf("server events = %q", ev)
	}

	// Round 2 asks for a verification code the credential cannot answer.
	_, err = e.dialHost(t, srv.Host("inproc", "partial"), e.options())
	if !errors.Is(err, sshdial.ErrAuthFailed) || !strings.Contains(err.Error(), `prompt "Verification code: "`) {
		t.Fatalf("err = %v", err)
	}
	assertNoCanary(t, "error", err.Error())
	assertNoCanary(t, "log", e.logs.String())
}
