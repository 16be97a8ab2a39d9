package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"github.com/ferrydesk/ferry/pkg/inventory"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// ferryTTY runs the command line in process with stdin as its input, seen as a
// terminal when terminal is set.
func ferryTTY(t *testing.T, env map[string]string, stdin string, terminal bool, args ...string) result {
	t.Helper()
	var out, errb syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newApp(&out, &errb, func(k string) string { return env[k] })
	a.stdin = strings.NewReader(stdin)
	a.stdinTerminal = func() bool { return terminal }
	code := a.run(ctx, args)
	return result{code, out.String(), errb.String()}
}

func fingerprint(t *testing.T, line string) string {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(k)
}

func TestHostValidation(t *testing.T) {
	nowhere := map[string]string{"FERRY_NATS_URL": "nats://127.0.0.1:1"}
	valid := []string{"--address", "10.0.0.1", "--user", "maint", "--credential", "cust-1"}
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(kh, []byte("# nothing\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"bad port", append([]string{"host", "add", "cust-1", "--port", "70000"}, valid...), []string{"port (--port)", "between 1 and 65535"}},
		{"nothing but a name", []string{"host", "add", "cust-1"},
			[]string{"address (--address)", "user (--user)", "credential (--credential)"}},
		{"bad name", append([]string{"host", "add", "a.b"}, valid...), []string{"name:"}},
		{"climbing credential", []string{"host", "add", "cust-1", "--address", "h", "--user", "u", "--credential", "../etc"}, []string{"credential (--credential)"}},
		{"bad host key", append([]string{"host", "add", "cust-1", "--host-key", "ssh-ed25519 nope"}, valid...), []string{"host_keys[0] (--host-key)"}},
		{"relative root", append([]string{"host", "add", "cust-1", "--root", "/ok", "--root", "opt/app"}, valid...), []string{"roots[1] (--root)"}},
		{"known_hosts without the host", append([]string{"host", "add", "cust-1", "--known-hosts", kh}, valid...), []string{"known_hosts (--known-hosts)", "no key for 10.0.0.1"}},
		{"bad name to get", []string{"host", "get", "../x"}, []string{"name:"}},
		{"bad name to trust", []string{"host", "trust", "a b", "--yes"}, []string{"name:"}},
		{"missing name", []string{"host", "remove"}, []string{"accepts 1 arg"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ferry(t, nowhere, c.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, exitUsage, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

// TestHostCommands manages hosts against an embedded NATS server and pins the keys
// of a real sshd.
func TestHostCommands(t *testing.T) {
	srv := bustest.Start(t, bus.Topology{})
	sshd := sshtest.Start(t, sshtest.Options{HostKeyTypes: []string{sshtest.KeyEd25519, sshtest.KeyECDSA}})
	env := map[string]string{"FERRY_NATS_URL": srv.URL}
	port := strconv.Itoa(sshd.Port())
	user := sshd.User()
	stranger := sshdial.AuthorizedKey(sshtest.NewClientKey(t, sshtest.KeyEd25519, "").Public())

	_, js := srv.Connect(t, "test")
	store, err := inventory.Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	pins := func(name string) []string {
		t.Helper()
		h, _, err := store.Get(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		return h.HostKeys
	}
	mustRun := func(t *testing.T, r result) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
	}

	t.Run("add", func(t *testing.T) {
		r := ferry(t, env, "host", "add", "cust-1", "--address", "127.0.0.1", "--port", port, "--user", user.Name,
			"--credential", "cust-1", "--site", "berlin", "--root", "/opt/app", "--root", "~/updates")
		mustRun(t, r)
		if !strings.Contains(r.stdout, "added host cust-1") || !strings.Contains(r.stderr, "ferry host trust cust-1") {
			t.Errorf("stdout %q, stderr %q", r.stdout, r.stderr)
		}
		r = ferry(t, env, "host", "add", "cust-1", "--address", "127.0.0.1", "--user", "x", "--credential", "c")
		if r.code != exitFail || !strings.Contains(r.stderr, "--replace") {
			t.Errorf("second add: exit %d, stderr %q", r.code, r.stderr)
		}
		// op-pc: pinned to a key the server does not have, trust on first use.
		mustRun(t, ferry(t, env, "host", "add", "op-pc", "--address", "127.0.0.1", "--port", port, "--user", user.Name,
			"--credential", "op-pc", "--host-key", stranger, "--trust-on-first-use"))
		// kh: keys from a known_hosts file (hashed entry for [127.0.0.1]:port).
		kh := filepath.Join(t.TempDir(), "known_hosts")
		var lines []string
		for _, k := range sshd.HostKeys() {
			lines = append(lines, knownhosts.HashHostname(knownhosts.Normalize(sshd.Addr()))+" "+k)
		}
		if err := os.WriteFile(kh, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mustRun(t, ferry(t, env, "host", "add", "kh", "--address", "127.0.0.1", "--port", port, "--user", user.Name,
			"--credential", "kh", "--known-hosts", kh))
		if got := pins("kh"); !slices.Equal(got, sshd.HostKeys()) {
			t.Errorf("kh pins = %v, want the server's keys", got)
		}
		// --replace overwrites.
		mustRun(t, ferry(t, env, "host", "add", "kh", "--replace", "--address", "127.0.0.2", "--user", "other", "--credential", "kh"))
		if h, _, _ := store.Get(context.Background(), "kh"); h.Address != "127.0.0.2" || len(h.HostKeys) != 0 {
			t.Errorf("after --replace: %+v", h)
		}
	})

	t.Run("list", func(t *testing.T) {
		r := ferry(t, env, "host", "list")
		mustRun(t, r)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "NAME") {
			t.Fatalf("list:\n%s", r.stdout)
		}
		for _, w := range []string{"ADDRESS", "PORT", "USER", "CREDENTIAL", "SITE", "KEYS", "TOFU"} {
			if !strings.Contains(lines[0], w) {
				t.Errorf("header lacks %s: %q", w, lines[0])
			}
		}
		if f := strings.Fields(lines[1]); len(f) != 8 || f[0] != "cust-1" || f[2] != port || f[5] != "berlin" || f[6] != "-" || f[7] != "no" {
			t.Errorf("cust-1 row: %q", lines[1])
		}
		if f := strings.Fields(lines[3]); len(f) != 8 || f[0] != "op-pc" || !strings.HasPrefix(fingerprint(t, stranger), f[6]) || f[7] != "yes" {
			t.Errorf("op-pc row: %q", lines[3])
		}
		r = ferry(t, env, "host", "list", "-o", "json")
		mustRun(t, r)
		var hosts []hostView
		if err := json.Unmarshal([]byte(r.stdout), &hosts); err != nil || len(hosts) != 3 {
			t.Fatalf("json list: %v\n%s", err, r.stdout)
		}
		if op := hosts[2]; op.Name != "op-pc" || len(op.Keys) != 1 || op.Keys[0].Fingerprint != fingerprint(t, stranger) || op.Keys[0].Type != ssh.KeyAlgoED25519 {
			t.Errorf("op-pc: %+v", op)
		}
	})

	t.Run("get", func(t *testing.T) {
		r := ferry(t, env, "host", "get", "cust-1", "-o", "json")
		mustRun(t, r)
		var h contracts.Host // a hostView decodes as a plain inventory entry
		if err := json.Unmarshal([]byte(r.stdout), &h); err != nil {
			t.Fatalf("%v\n%s", err, r.stdout)
		}
		if h.Name != "cust-1" || h.Port != sshd.Port() || h.User != user.Name || h.Credential != "cust-1" ||
			h.Site != "berlin" || !slices.Equal(h.Roots, []string{"/opt/app", "~/updates"}) || len(h.HostKeys) != 0 || h.Schema != contracts.SchemaHost {
			t.Errorf("host = %+v", h)
		}
		r = ferry(t, env, "host", "get", "op-pc")
		mustRun(t, r)
		for _, w := range []string{"host:", "op-pc", "trust on first use:", "yes", "host keys:", "ssh-ed25519", fingerprint(t, stranger),
			"(the login user's home directory)"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("get lacks %q:\n%s", w, r.stdout)
			}
		}
		r = ferry(t, env, "host", "get", "nobody")
		if r.code != exitFail || !strings.Contains(r.stderr, `unknown host "nobody"`) {
			t.Errorf("get nobody: exit %d, %q", r.code, r.stderr)
		}
	})

	keys := sshd.HostKeys() // ed25519, ecdsa
	edFP := fingerprint(t, keys[0])

	t.Run("trust with a wrong fingerprint", func(t *testing.T) {
		wrong := fingerprint(t, stranger)
		r := ferry(t, env, "host", "trust", "cust-1", "--fingerprint", wrong)
		if r.code != exitFail {
			t.Errorf("exit %d, want 1\n%s", r.code, r.stderr)
		}
		want := "presented " + edFP + ", " + fingerprint(t, keys[1]) + ", expected " + wrong
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
		if got := pins("cust-1"); len(got) != 0 {
			t.Errorf("pinned %v", got)
		}
	})

	t.Run("trust needs a confirmation", func(t *testing.T) {
		r := ferryTTY(t, env, "", false, "host", "trust", "cust-1")
		if r.code != exitUsage || !strings.Contains(r.stderr, "--fingerprint") || !strings.Contains(r.stderr, "--yes") ||
			!strings.Contains(r.stderr, "not a terminal") {
			t.Errorf("no terminal: exit %d, stderr %q", r.code, r.stderr)
		}
		r = ferryTTY(t, env, "n\n", true, "host", "trust", "cust-1")
		if r.code != exitFail || !strings.Contains(r.stderr, "Pin these keys for cust-1? [y/N]") || !strings.Contains(r.stderr, "nothing was pinned") {
			t.Errorf("answered no: exit %d, stderr %q", r.code, r.stderr)
		}
		if got := pins("cust-1"); len(got) != 0 {
			t.Errorf("pinned %v", got)
		}
	})

	t.Run("trust with the right fingerprint", func(t *testing.T) {
		r := ferry(t, env, "host", "trust", "cust-1", "--fingerprint", edFP)
		mustRun(t, r)
		for _, w := range []string{"ssh-ed25519", edFP, "ecdsa-sha2-nistp256", fingerprint(t, keys[1]), "No key is pinned for cust-1 yet",
			"pinned 1 host key(s) for cust-1"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
			}
		}
		// Only the key checked out of band is pinned: the others came over connections
		// nobody verified.
		if got := pins("cust-1"); !slices.Equal(got, keys[:1]) {
			t.Errorf("pins = %v, want %v", got, keys[:1])
		}
		// Again: nothing to change.
		r = ferry(t, env, "host", "trust", "cust-1", "--fingerprint", strings.TrimPrefix(edFP, "SHA256:"))
		mustRun(t, r)
		if !strings.Contains(r.stdout, "pinned for cust-1 already") {
			t.Errorf("second trust:\n%s", r.stdout)
		}
	})

	t.Run("trust a changed key", func(t *testing.T) {
		// The pins work for a real login.
		secrets := t.TempDir()
		sshtest.WriteCredential(t, secrets, "cust-1", map[string]string{"password": user.Password})
		dial := func() error {
			h, _, err := store.Get(context.Background(), "cust-1")
			if err != nil {
				t.Fatal(err)
			}
			c, err := sshdial.Dial(context.Background(), h, sshdial.Options{SecretsDir: secrets, Timeout: 10 * time.Second})
			if err == nil {
				c.Close()
			}
			return err
		}
		if err := dial(); err != nil {
			t.Fatalf("dial with the pinned keys: %v", err)
		}

		sshd.Restart(true)
		newKeys := sshd.HostKeys()
		if err := dial(); err == nil {
			t.Fatal("dial accepted the new host key")
		}
		r := ferry(t, env, "host", "trust", "cust-1", "--fingerprint", edFP)
		if r.code != exitFail || !strings.Contains(r.stderr, "expected "+edFP) {
			t.Errorf("old fingerprint: exit %d, stderr %q", r.code, r.stderr)
		}
		if got := pins("cust-1"); !slices.Equal(got, keys[:1]) {
			t.Errorf("a refused trust changed the pins: %v", got)
		}

		r = ferry(t, env, "host", "trust", "cust-1", "--yes")
		mustRun(t, r)
		for _, w := range []string{"CHANGED", "Pinned before:", edFP,
			fingerprint(t, newKeys[0]), fingerprint(t, newKeys[1]), "pinned 2 host key(s) for cust-1"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
			}
		}
		if got := pins("cust-1"); !slices.Equal(got, newKeys) {
			t.Errorf("pins = %v, want %v", got, newKeys)
		}
		if err := dial(); err != nil {
			t.Fatalf("dial with the new pins: %v", err)
		}
	})

	t.Run("trust on a terminal", func(t *testing.T) {
		r := ferryTTY(t, env, "yes\n", true, "host", "trust", "op-pc", "-o", "json")
		mustRun(t, r)
		if !strings.Contains(r.stderr, "CHANGED") || !strings.Contains(r.stderr, fingerprint(t, stranger)) {
			t.Errorf("stderr:\n%s", r.stderr)
		}
		var res trustResult
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("%v\n%s", err, r.stdout)
		}
		if !res.Changed || !res.Pinned || len(res.Keys) != 2 || len(res.Previous) != 1 {
			t.Errorf("result %+v", res)
		}
		if got := pins("op-pc"); !slices.Equal(got, sshd.HostKeys()) {
			t.Errorf("pins = %v", got)
		}
	})

	t.Run("remove", func(t *testing.T) {
		r := ferry(t, env, "host", "remove", "cust-1")
		mustRun(t, r)
		if !strings.Contains(r.stdout, "removed host cust-1") {
			t.Errorf("stdout %q", r.stdout)
		}
		r = ferry(t, env, "host", "get", "cust-1")
		if r.code != exitFail || !strings.Contains(r.stderr, "unknown host") {
			t.Errorf("get after remove: exit %d, %q", r.code, r.stderr)
		}
		r = ferry(t, env, "host", "remove", "cust-1")
		if r.code != exitFail {
			t.Errorf("second remove: exit %d", r.code)
		}
	})

	t.Run("unreachable host", func(t *testing.T) {
		mustRun(t, ferry(t, env, "host", "add", "gone", "--address", "127.0.0.1", "--port", "1", "--user", "u", "--credential", "c"))
		r := ferry(t, env, "host", "trust", "gone", "--yes")
		if r.code != exitFail || !strings.Contains(r.stderr, "unreachable") && !strings.Contains(r.stderr, "cannot reach") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
}
