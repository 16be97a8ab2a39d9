package sshdial_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func TestLoadCredentialRejectsBadReference(t *testing.T) {
	secrets := t.TempDir()
	sshtest.WriteCredential(t, secrets, "ok", map[string]string{"password": "x"})
	for _, ref := range []string{"", "../ok", "ok/..", "a/b", "/etc", ".ok", "-ok", "_ok", "o k", "ok\n", strings.Repeat("a", 65), "é"} {
		_, err := sshdial.LoadCredential(secrets, ref)
		if !errors.Is(err, sshdial.ErrCredential) || !strings.Contains(err.Error(), "invalid credential reference") {
			t.Errorf("LoadCredential(%q) = %v, want an invalid-reference error", ref, err)
		}
	}
	for _, ref := range []string{"ok", strings.Repeat("a", 64), "web-1.prod_2"} {
		sshtest.WriteCredential(t, secrets, ref, map[string]string{"password": "x"})
		if _, err := sshdial.LoadCredential(secrets, ref); err != nil {
			t.Errorf("LoadCredential(%q): %v", ref, err)
		}
	}
}

func TestLoadCredentialRefusesOpenSecretFiles(t *testing.T) {
	key := sshtest.NewClientKey(t, sshtest.KeyEd25519, "")
	for _, file := range []string{"password", "private_key", "passphrase", "keyboard_interactive.json", "agent_socket"} {
		for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o601} {
			t.Run(fmt.Sprintf("%s %04o", file, mode), func(t *testing.T) {
				secrets := t.TempDir()
				dir := sshtest.WriteCredential(t, secrets, "ops", map[string]string{
					"password":                  canaryPassword,
					"private_key":               string(key.PEM),
					"passphrase":                canaryPassphrase,
					"keyboard_interactive.json": `[{"prompt": ".", "answer": "` + canaryAnswer + `"}]`,
					"agent_socket":              "/nonexistent/agent.sock",
				})
				path := filepath.Join(dir, file)
				if err := os.Chmod(path, mode); err != nil {
					t.Fatal(err)
				}
				_, err := sshdial.LoadCredential(secrets, "ops")
				if !errors.Is(err, sshdial.ErrCredential) {
					t.Fatalf("err = %v, want ErrCredential", err)
				}
				if want := fmt.Sprintf("%s has mode %04o", path, mode); !strings.Contains(err.Error(), want) {
					t.Errorf("err = %q, want it to contain %q", err, want)
				}
				assertNoCanary(t, "error", err.Error())
			})
		}
	}
	t.Run("0400 is fine", func(t *testing.T) {
		secrets := t.TempDir()
		dir := sshtest.WriteCredential(t, secrets, "ops", map[string]string{"password": "x"})
		os.Chmod(filepath.Join(dir, "password"), 0o400)
		if _, err := sshdial.LoadCredential(secrets, "ops"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestLoadCredential(t *testing.T) {
	key := sshtest.NewClientKey(t, sshtest.KeyEd25519, "")
	secrets := t.TempDir()
	sshtest.WriteCredential(t, secrets, "all", map[string]string{
		"password":                  canaryPassword + "\r\n",
		"private_key":               string(key.PEM),
		"keyboard_interactive.json": `[{"prompt": "^Password", "answer": "` + canaryAnswer + `"}]`,
		"agent_socket":              "/run/agent.sock\n",
	})
	c, err := sshdial.LoadCredential(secrets, "all")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Methods(), ","); got != "agent,publickey,keyboard-interactive,password" {
		t.Errorf("Methods = %s", got)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		assertNoCanary(t, "formatted credential", fmt.Sprintf(verb, c))
	}

	for name, tt := range map[string]struct {
		files map[string]string
		want  string
	}{
		"missing directory": {nil, "no credential directory"},
		"empty directory":   {map[string]string{"notes.txt": "x"}, "holds none of password, private_key"},
		"not a key":         {map[string]string{"private_key": "not a key " + canaryPassword}, "cannot parse private_key"},
		"bad json":          {map[string]string{"keyboard_interactive.json": `[{"prompt": "x", "answer": "` + canaryAnswer + `}]`}, "not a JSON list"},
		"json object":       {map[string]string{"keyboard_interactive.json": `{"prompt": "x", "answer": "` + canaryAnswer + `"}`}, "not a JSON list"},
		"json wrong type":   {map[string]string{"keyboard_interactive.json": `[{"prompt": "x", "answer": 12}]`}, "not a JSON list"},
		"empty json":        {map[string]string{"keyboard_interactive.json": `[]`}, "holds no prompts"},
		"bad regexp":        {map[string]string{"keyboard_interactive.json": `[{"prompt": "(", "answer": "` + canaryAnswer + `"}]`}, `entry 0: prompt "(" is not a valid`},
		"empty agent":       {map[string]string{"agent_socket": "\n"}, "agent_socket is empty"},
	} {
		t.Run(name, func(t *testing.T) {
			secrets := t.TempDir()
			if tt.files != nil {
				sshtest.WriteCredential(t, secrets, "c", tt.files)
			}
			_, err := sshdial.LoadCredential(secrets, "c")
			if !errors.Is(err, sshdial.ErrCredential) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrCredential containing %q", err, tt.want)
			}
			assertNoCanary(t, "error", err.Error())
		})
	}
}
