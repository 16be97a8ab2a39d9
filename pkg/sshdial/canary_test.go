package sshdial_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// TestSecretsNeverLeak drives every error path with canary secrets and checks that
// no error message and no log line contains them.
func TestSecretsNeverLeak(t *testing.T) {
	srv := sshtest.StartInProcess(t, sshtest.InProcessOptions{
		Password:       "right-password",
		AuthorizedKeys: []ssh.PublicKey{sshtest.NewClientKey(t, sshtest.KeyEd25519, "").Public()},
		Rounds:         []sshtest.Round{{Prompts: []sshtest.Prompt{{Text: "Password: ", Answer: "right-password"}, {Text: "Token: ", Answer: "42"}}}},
	})
	locked := sshtest.NewClientKey(t, sshtest.KeyEd25519, canaryPassphrase)
	lockedRSA := sshtest.NewClientKey(t, sshtest.KeyRSA, "right-passphrase")
	e := &env{secrets: t.TempDir(), logs: &syncBuffer{}}
	kbd := func(answer string) string {
		return `[{"prompt": "^Password", "answer": "` + answer + `"}, {"prompt": "^Token", "answer": "` + canaryAnswer + `"}]`
	}
	paths := map[string]map[string]string{
		"wrong password":               {"password": canaryPassword},
		"wrong keyboard answers":       {"keyboard_interactive.json": kbd(canaryPassword)},
		"unanswered prompt":            {"keyboard_interactive.json": `[{"prompt": "^Password", "answer": "` + canaryAnswer + `"}]`},
		"unauthorized key + password":  {"private_key": string(sshtest.NewClientKey(t, sshtest.KeyEd25519, "").PEM), "password": canaryPassword},
		"wrong passphrase":             {"private_key": string(lockedRSA.PEM), "passphrase": canaryPassphrase, "password": canaryPassword},
		"wrong passphrase legacy PEM":  {"private_key": string(lockedRSA.LegacyPEM(t)), "passphrase": canaryPassphrase},
		"missing passphrase":           {"private_key": string(locked.PEM), "password": canaryPassword},
		"garbage key":                  {"private_key": canaryPassphrase + "\n" + canaryPassword},
		"bad json":                     {"keyboard_interactive.json": `[{"prompt": "^P", "answer": "` + canaryAnswer + `"`},
		"json with a number":           {"keyboard_interactive.json": `[{"prompt": "^P", "answer": ` + "1" + `, "x": "` + canaryAnswer + `"}]`},
		"bad regexp":                   {"keyboard_interactive.json": `[{"prompt": "[", "answer": "` + canaryAnswer + `"}]`},
		"unreachable agent + password": {"agent_socket": filepath.Join(t.TempDir(), "none.sock"), "password": canaryPassword},
		"bad mode":                     {"password": canaryPassword},
	}
	i := 0
	for name, files := range paths {
		i++
		ref := fmt.Sprintf("ref%d", i)
		dir := sshtest.WriteCredential(t, e.secrets, ref, files)
		if name == "bad mode" {
			os.Chmod(filepath.Join(dir, "password"), 0o644)
		}
		host := srv.Host("inproc", ref)
		_, err := e.dialHost(t, host, e.options())
		if err == nil {
			t.Errorf("%s: dial succeeded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		assertNoCanary(t, name+" error", err.Error())
		assertNoCanary(t, name+" error (%+v)", fmt.Sprintf("%+v %#v", err, err))

		// The same credential against a host whose key changed or is unknown,
		// and against a dead address.
		host.HostKeys = []string{sshdial.AuthorizedKey(sshtest.NewClientKey(t, sshtest.KeyEd25519, "").Public())}
		if _, err := e.dialHost(t, host, e.options()); err != nil {
			assertNoCanary(t, name+" host key error", err.Error())
		}
		host.HostKeys = nil
		if _, err := e.dialHost(t, host, e.options()); err != nil {
			assertNoCanary(t, name+" unknown key error", err.Error())
		}
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		host.Port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, err := e.dialHost(t, host, e.options()); err != nil {
			assertNoCanary(t, name+" unreachable error", err.Error())
		}
		if c, err := sshdial.LoadCredential(e.secrets, ref); err == nil {
			assertNoCanary(t, name+" credential", fmt.Sprintf("%v %+v %#v %s", c, c, c, c))
		}
	}
	assertNoCanary(t, "log", e.logs.String())
	if len(e.logs.String()) == 0 {
		t.Error("nothing was logged; the log check is vacuous")
	}
}
