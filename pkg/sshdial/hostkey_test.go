package sshdial_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func parseKey(t *testing.T, line string) ssh.PublicKey {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestUnknownHostKeyIsRefused(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	ref := e.credential(t, "pw", map[string]string{"password": e.srv.User().Password})
	host := e.srv.Host("web1", ref)
	host.HostKeys = nil

	_, err := e.dialHost(t, host, e.options())
	var unknown *sshdial.UnknownHostKeyError
	if !errors.As(err, &unknown) || !errors.Is(err, sshdial.ErrHostKeyUnknown) {
		t.Fatalf("err = %v, want UnknownHostKeyError", err)
	}
	want := "unknown host key for web1 (fingerprint " + ssh.FingerprintSHA256(parseKey(t, e.srv.HostKeys()[0])) +
		"); pin it with `ferry host trust web1`"
	if err.Error() != want {
		t.Errorf("err = %q\nwant  %q", err, want)
	}
	if sshdial.Retryable(err) {
		t.Error("unknown host key is retryable")
	}
}

func TestTrustOnFirstUse(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	ref := e.credential(t, "pw", map[string]string{"password": e.srv.User().Password})
	host := e.srv.Host("web1", ref)
	host.HostKeys, host.TrustOnFirstUse = nil, true

	c, err := e.dialHost(t, host, e.options())
	if err != nil {
		t.Fatal(err)
	}
	info := c.Info()
	if !info.TrustedOnFirstUse || sshdial.AuthorizedKey(info.HostKey) != e.srv.HostKeys()[0] {
		t.Fatalf("Info = %+v, want the server key trusted on first use", info)
	}

	// Pinned: later connections verify against the pin, not TOFU.
	pinned := host
	pinned.HostKeys = []string{sshdial.AuthorizedKey(info.HostKey)}
	c, err = e.dialHost(t, pinned, e.options())
	if err != nil || c.Info().TrustedOnFirstUse {
		t.Fatalf("pinned dial: %v, %+v", err, c)
	}

	// Under a session lease: the recorded fingerprint replaces TOFU.
	host.TrustOnFirstUse = false
	opts := e.options()
	opts.RequireFingerprint = info.Fingerprint
	c, err = e.dialHost(t, host, opts)
	if err != nil || c.Info().TrustedOnFirstUse || c.Info().Fingerprint != info.Fingerprint {
		t.Fatalf("lease dial: %v, %+v", err, c)
	}
	opts.RequireFingerprint = "SHA256:" + strings.Repeat("A", 43)
	_, err = e.dialHost(t, pinned, opts)
	if !errors.Is(err, sshdial.ErrHostKeyChanged) || !strings.Contains(err.Error(), opts.RequireFingerprint) {
		t.Fatalf("lease with another fingerprint: %v, want ErrHostKeyChanged", err)
	}
}

func TestChangedHostKeyStopsBeforeAuthentication(t *testing.T) {
	e := newEnv(t, sshtest.Options{})
	ref := e.credential(t, "pw", map[string]string{"password": canaryPassword})
	host := e.srv.Host("web1", ref)
	host.TrustOnFirstUse = true // a pin exists, so TOFU must not apply
	old := parseKey(t, host.HostKeys[0])

	e.srv.Restart(true)
	presented := parseKey(t, e.srv.HostKeys()[0])
	logStart := len(e.srv.LogText())

	_, err := e.dialHost(t, host, e.options())
	var changed *sshdial.HostKeyChangedError
	if !errors.As(err, &changed) || !errors.Is(err, sshdial.ErrHostKeyChanged) {
		t.Fatalf("err = %v, want HostKeyChangedError", err)
	}
	for _, want := range []string{"host key changed", ssh.FingerprintSHA256(old), ssh.FingerprintSHA256(presented), "web1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to contain %q", err, want)
		}
	}
	if sshdial.Retryable(err) {
		t.Error("changed host key is retryable")
	}
	assertNoCanary(t, "error", err.Error())

	// sshd logs the end of the connection; by then any authentication request
	// would have been logged too.
	var log string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if log = e.srv.LogText()[logStart:]; strings.Contains(log, "Connection closed by") || strings.Contains(log, "Connection reset by") {
			break
		}
	}
	if !strings.Contains(log, "Connection from 127.0.0.1") {
		t.Fatalf("the connection is not in the sshd log:\n%s", log)
	}
	for _, attempt := range []string{"userauth-request", "Failed password", "Accepted", "Postponed"} {
		if strings.Contains(log, attempt) {
			t.Errorf("sshd saw an authentication attempt (%q):\n%s", attempt, log)
		}
	}
}

func TestPinnedKeyTypesRestrictHostKeyAlgorithms(t *testing.T) {
	e := newEnv(t, sshtest.Options{HostKeyTypes: []string{sshtest.KeyEd25519, sshtest.KeyRSA, sshtest.KeyECDSA}})
	ref := e.credential(t, "pw", map[string]string{"password": e.srv.User().Password})
	keys := e.srv.HostKeys() // ed25519, rsa, ecdsa
	for name, tt := range map[string]struct {
		pins     []string
		wantType string
	}{
		"ed25519+rsa": {[]string{keys[1], keys[0]}, ssh.KeyAlgoED25519},
		"rsa only":    {[]string{keys[1]}, ssh.KeyAlgoRSA},
		"ecdsa only":  {[]string{keys[2]}, ssh.KeyAlgoECDSA256},
		"all three":   {keys, ssh.KeyAlgoED25519},
	} {
		t.Run(name, func(t *testing.T) {
			host := e.srv.Host("multi", ref)
			host.HostKeys = tt.pins
			c, err := e.dialHost(t, host, e.options())
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Info().HostKey.Type(); got != tt.wantType {
				t.Errorf("host key type = %s, want %s", got, tt.wantType)
			}
		})
	}
}

func TestKnownHostsFile(t *testing.T) {
	e := newEnv(t, sshtest.Options{HostKeyTypes: []string{sshtest.KeyEd25519, sshtest.KeyECDSA}})
	ref := e.credential(t, "pw", map[string]string{"password": e.srv.User().Password})
	host := e.srv.Host("web1", ref)
	host.HostKeys = nil
	dir := t.TempDir()

	knownHosts := func(name string, lines ...string) string {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
		return path
	}
	ecdsaKey := parseKey(t, e.srv.HostKeys()[1])
	other := sshtest.NewClientKey(t, sshtest.KeyEd25519, "").Public()

	good := knownHosts("good", "# comment",
		knownhosts.Line([]string{"other.example"}, other),
		knownhosts.Line([]string{e.srv.Addr()}, ecdsaKey))
	opts := e.options()
	opts.KnownHostsFiles = []string{good}
	c, err := e.dialHost(t, host, opts)
	if err != nil {
		t.Fatal(err)
	}
	if c.Info().HostKey.Type() != ssh.KeyAlgoECDSA256 || c.Info().TrustedOnFirstUse {
		t.Errorf("Info = %+v, want the ecdsa key from known_hosts", c.Info())
	}

	opts.KnownHostsFiles = []string{knownHosts("stale", knownhosts.Line([]string{e.srv.Addr()}, other))}
	if _, err := e.dialHost(t, host, opts); !errors.Is(err, sshdial.ErrHostKeyChanged) {
		t.Errorf("stale known_hosts: err = %v, want ErrHostKeyChanged", err)
	}

	opts.KnownHostsFiles = []string{knownHosts("unrelated", knownhosts.Line([]string{"other.example"}, ecdsaKey))}
	if _, err := e.dialHost(t, host, opts); !errors.Is(err, sshdial.ErrHostKeyUnknown) {
		t.Errorf("unrelated known_hosts: err = %v, want ErrHostKeyUnknown", err)
	}

	opts.KnownHostsFiles = []string{knownHosts("revoked", knownhosts.Line([]string{e.srv.Addr()}, ecdsaKey),
		"@revoked * "+e.srv.HostKeys()[0])}
	if _, err := e.dialHost(t, host, opts); err != nil {
		t.Errorf("ecdsa pin with revoked ed25519: %v", err)
	}
	opts.KnownHostsFiles = []string{knownHosts("revoked2", "@revoked * "+e.srv.HostKeys()[1],
		knownhosts.Line([]string{e.srv.Addr()}, ecdsaKey))}
	if _, err := e.dialHost(t, host, opts); !errors.Is(err, sshdial.ErrHostKeyRevoked) {
		t.Errorf("revoked key: err = %v, want ErrHostKeyRevoked", err)
	}
}
