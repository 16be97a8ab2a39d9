package sshdial

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// AuthorizedKey formats a public key in authorized_keys format ("ssh-ed25519 AAAA..."),
// the form contracts.Host.HostKeys pins.
func AuthorizedKey(key ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
}

// hostKeyCheck verifies the key a host presents during the key exchange, before any
// credential is sent. It remembers the verified key and how it was accepted.
type hostKeyCheck struct {
	host    string // inventory name, for messages
	address string // host:port
	pins    []ssh.PublicKey
	known   ssh.HostKeyCallback // from known_hosts files; nil if none
	tofu    bool
	lease   string // fingerprint the key must have (Options.RequireFingerprint), or ""

	mu         sync.Mutex
	key        ssh.PublicKey // verified key
	firstUse   bool          // accepted only by trust-on-first-use
	err        error         // rejection, if any
	rejectKind string        // unknown, changed, revoked
}

// newHostKeyCheck collects the pins of a host: its HostKeys (authorized_keys format)
// plus the known_hosts entries that match address.
func newHostKeyCheck(host, address string, hostKeys []string, knownHostsFiles []string, tofu bool, fingerprint string) (*hostKeyCheck, error) {
	c := &hostKeyCheck{host: host, address: address, tofu: tofu, lease: fingerprint}
	for i, line := range hostKeys {
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("host %s: pinned host key %d is not in authorized_keys format: %v", host, i+1, err)
		}
		c.addPin(key)
	}
	if len(knownHostsFiles) > 0 {
		known, err := knownhosts.New(knownHostsFiles...)
		if err != nil {
			return nil, fmt.Errorf("host %s: known_hosts: %w", host, err)
		}
		c.known = known
		// Probe with a key no file can contain: the KeyError lists every key
		// known for this address, which become pins too.
		var keyErr *knownhosts.KeyError
		if err := known(address, dummyAddr, probeKey); errors.As(err, &keyErr) {
			for _, k := range keyErr.Want {
				c.addPin(k.Key)
			}
		}
	}
	return c, nil
}

func (c *hostKeyCheck) addPin(key ssh.PublicKey) {
	if !c.pinned(key) {
		c.pins = append(c.pins, key)
	}
}

func (c *hostKeyCheck) pinned(key ssh.PublicKey) bool {
	blob := key.Marshal()
	return slices.ContainsFunc(c.pins, func(p ssh.PublicKey) bool { return bytes.Equal(p.Marshal(), blob) })
}

var (
	dummyAddr   = &net.TCPAddr{IP: net.IPv4zero}
	probeKey, _ = ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
)

// hostKeyPreference orders host-key algorithms; others x/crypto supports follow.
var hostKeyPreference = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

// algorithms returns the host-key algorithms to offer: only those of the pinned
// keys (an RSA pin allows rsa-sha2-512 and rsa-sha2-256, not SHA-1 ssh-rsa).
// Without pins it returns nil, i.e. x/crypto's defaults.
func (c *hostKeyCheck) algorithms() []string {
	if len(c.pins) == 0 {
		return nil
	}
	allowed := map[string]bool{}
	for _, k := range c.pins {
		switch t := k.Type(); t {
		case ssh.KeyAlgoRSA:
			allowed[ssh.KeyAlgoRSASHA512] = true
			allowed[ssh.KeyAlgoRSASHA256] = true
		default:
			allowed[t] = true
		}
	}
	var algos []string
	for _, a := range append(slices.Clone(hostKeyPreference), ssh.SupportedAlgorithms().HostKeys...) {
		if allowed[a] && !slices.Contains(algos, a) {
			algos = append(algos, a)
		}
	}
	return algos
}

// verify is the ssh.HostKeyCallback. x/crypto calls it again on every re-key:
// from then on only the key verified first is accepted.
func (c *hostKeyCheck) verify(_ string, remote net.Addr, key ssh.PublicKey) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.key != nil {
		if bytes.Equal(c.key.Marshal(), key.Marshal()) {
			return nil
		}
		return c.reject("changed", &HostKeyChangedError{Host: c.host, Address: c.address, Key: key,
			Expected: []string{ssh.FingerprintSHA256(c.key)}})
	}
	kind, err := c.check(remote, key)
	if err != nil {
		return c.reject(kind, err)
	}
	c.key = key
	return nil
}

func (c *hostKeyCheck) reject(kind string, err error) error {
	c.err, c.rejectKind = err, kind
	return err
}

func (c *hostKeyCheck) check(remote net.Addr, key ssh.PublicKey) (kind string, err error) {
	known := false // accepted by known_hosts (a plain key or a @cert-authority certificate)
	if c.known != nil {
		var revoked *knownhosts.RevokedError
		err := c.known(c.address, remote, key)
		if errors.As(err, &revoked) {
			return "revoked", &HostKeyRevokedError{Host: c.host, Address: c.address, Key: key,
				Source: fmt.Sprintf("%s:%d", revoked.Revoked.Filename, revoked.Revoked.Line)}
		}
		known = err == nil
	}
	if c.lease != "" && ssh.FingerprintSHA256(key) != c.lease {
		return "changed", &HostKeyChangedError{Host: c.host, Address: c.address, Key: key, Expected: []string{c.lease}}
	}
	if known || c.pinned(key) {
		return "", nil
	}
	if len(c.pins) == 0 {
		if c.lease != "" {
			return "", nil // the lease vouches for the key
		}
		if c.tofu {
			c.firstUse = true
			return "", nil
		}
		return "unknown", &UnknownHostKeyError{Host: c.host, Address: c.address, Key: key}
	}
	want := make([]string, 0, len(c.pins))
	for _, p := range c.pins {
		want = append(want, ssh.FingerprintSHA256(p))
	}
	return "changed", &HostKeyChangedError{Host: c.host, Address: c.address, Key: key, Expected: want}
}

// result returns the verified key, whether it was trusted on first use, and the
// rejection (with its kind) if the key was refused.
func (c *hostKeyCheck) result() (key ssh.PublicKey, firstUse bool, rejectKind string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.key, c.firstUse, c.rejectKind, c.err
}
