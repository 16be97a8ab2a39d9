package inventory

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/bus/bustest"
	"golang.org/x/crypto/ssh"
)

func newStore(t *testing.T) *Store {
	srv := bustest.Start(t, bus.Topology{})
	_, js := srv.Connect(t, "test")
	s, err := Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pubKey(t *testing.T) string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}

func TestAddGetListRemove(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	h := contracts.Host{Name: "customer-acme", Address: "10.1.2.3", User: "ferry", Credential: "acme", Site: "berlin"}
	if err := s.Add(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, h); !errors.Is(err, ErrHostExists) {
		t.Fatalf("second add: %v", err)
	}
	got, _, err := s.Get(ctx, "customer-acme")
	if err != nil || got.Port != 22 || got.Schema != contracts.SchemaHost {
		t.Fatalf("%+v %v", got, err)
	}
	if hosts, err := s.List(ctx); err != nil || len(hosts) != 1 {
		t.Fatalf("%v %v", hosts, err)
	}
	if err := s.Remove(ctx, "customer-acme"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "customer-acme"); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("after remove: %v", err)
	}
}

func TestValidationNamesFields(t *testing.T) {
	s := newStore(t)
	err := s.Add(context.Background(), contracts.Host{Name: "a.b", Port: 70000, Credential: "../x", HostKeys: []string{"nope"}, Roots: []string{"rel/path"}})
	var ve *contracts.ValidationError
	if !errors.As(err, &ve) {
		t.Fatal(err)
	}
	for _, f := range []string{"name", "address", "port", "user", "credential", "host_keys[0]", "roots[0]"} {
		if !strings.Contains(err.Error(), `"`+f+`"`) {
			t.Errorf("no error for %s in %v", f, err)
		}
	}
}

func TestPinFirstUseNeverOverwrites(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if err := s.Add(ctx, contracts.Host{Name: "h", Address: "127.0.0.1", User: "u", Credential: "c", TrustOnFirstUse: true}); err != nil {
		t.Fatal(err)
	}
	k1, k2 := pubKey(t), pubKey(t)
	if err := s.Pin(ctx, "h", k1, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(ctx, "h", k2, true); !errors.Is(err, ErrPinned) {
		t.Fatalf("second first-use pin: %v", err)
	}
	if h, _, _ := s.Get(ctx, "h"); len(h.HostKeys) != 1 || h.HostKeys[0] != k1 {
		t.Fatalf("keys %v", h.HostKeys)
	}
	if err := s.Pin(ctx, "h", k2, false); err != nil { // the operator re-trusts
		t.Fatal(err)
	}
	if h, _, _ := s.Get(ctx, "h"); h.HostKeys[0] != k2 {
		t.Fatal("trust did not replace the key")
	}
}

func TestPinAllReplacesEveryPin(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	old := pubKey(t)
	if err := s.Add(ctx, contracts.Host{Name: "h", Address: "127.0.0.1", User: "u", Credential: "c", Site: "berlin",
		HostKeys: []string{old}}); err != nil {
		t.Fatal(err)
	}
	k1, k2 := pubKey(t), pubKey(t)
	if err := s.PinAll(ctx, "h", []string{k1 + "\n", k2, k1}); err != nil {
		t.Fatal(err)
	}
	h, _, err := s.Get(ctx, "h")
	if err != nil || len(h.HostKeys) != 2 || h.HostKeys[0] != k1 || h.HostKeys[1] != k2 || h.Site != "berlin" {
		t.Fatalf("after PinAll: %+v %v", h, err)
	}

	for name, keys := range map[string][]string{"no key": nil, "not a key": {k1, "ssh-ed25519 nope"}} {
		if err := s.PinAll(ctx, "h", keys); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := s.PinAll(ctx, "nowhere", []string{k1}); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("unknown host: %v", err)
	}
	if h2, _, _ := s.Get(ctx, "h"); strings.Join(h2.HostKeys, "|") != strings.Join(h.HostKeys, "|") {
		t.Errorf("a refused PinAll changed the pins: %v", h2.HostKeys)
	}

	// Concurrent writers: compare-and-set retries, so each call succeeds and the
	// entry ends with exactly one writer's keys.
	sets := make([][]string, 6)
	errs := make(chan error, len(sets))
	for i := range sets {
		sets[i] = []string{pubKey(t), pubKey(t)}
		go func() { errs <- s.PinAll(ctx, "h", sets[i]) }()
	}
	for range sets {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	h, _, _ = s.Get(ctx, "h")
	found := false
	for _, set := range sets {
		found = found || strings.Join(set, "|") == strings.Join(h.HostKeys, "|")
	}
	if !found || h.Site != "berlin" {
		t.Errorf("after concurrent PinAll: %+v", h)
	}
}
