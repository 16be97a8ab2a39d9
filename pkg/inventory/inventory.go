// Package inventory keeps ferry's host inventory in the hosts KV bucket: name → address,
// port, user, credential reference, pinned host keys, site and allowed roots. Jobs name
// hosts; the connector resolves them here. Changes are compare-and-set, so a
// trust-on-first-use pin never overwrites a key pinned meanwhile.
package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/ssh"
)

// Errors.
var (
	ErrUnknownHost = errors.New("unknown host")
	ErrHostExists  = errors.New("host exists")
	ErrPinned      = errors.New("host key already pinned")
)

// Store is the inventory.
type Store struct {
	kv jetstream.KeyValue
}

// New wraps the hosts bucket.
func New(kv jetstream.KeyValue) *Store { return &Store{kv: kv} }

// Open binds to the hosts bucket, waiting for it to be provisioned.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := bus.WaitKeyValue(ctx, js, contracts.BucketHosts)
	if err != nil {
		return nil, err
	}
	return New(kv), nil
}

// Normalize fills defaults (port 22, schema) and validates h, naming every bad field.
func Normalize(h *contracts.Host) error {
	h.Schema = contracts.SchemaHost
	if h.Port == 0 {
		h.Port = 22
	}
	var bad []contracts.FieldError
	add := func(f, format string, args ...any) {
		bad = append(bad, contracts.FieldError{Field: f, Problem: fmt.Sprintf(format, args...)})
	}
	if !contracts.ValidID(h.Name) {
		add("name", "must be 1–64 letters, digits, '-' or '_', starting with a letter or digit")
	}
	if h.Address == "" || strings.ContainsAny(h.Address, " /@\x00") {
		add("address", "must be a host name or IP address")
	}
	if h.Port < 1 || h.Port > 65535 {
		add("port", "must be between 1 and 65535")
	}
	if h.User == "" || strings.ContainsAny(h.User, " :/@\x00") {
		add("user", "must be a login name")
	}
	if !contracts.ValidCredentialRef(h.Credential) {
		add("credential", "must name a credential in the secrets directory (letters, digits, '.', '-', '_')")
	}
	for i, k := range h.HostKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			add(fmt.Sprintf("host_keys[%d]", i), "not an authorized_keys line: %v", err)
		}
	}
	for i, r := range h.Roots {
		if r != "~" && !strings.HasPrefix(r, "~/") && !path.IsAbs(r) || strings.Contains("/"+r+"/", "/../") {
			add(fmt.Sprintf("roots[%d]", i), "must be an absolute path or start with ~/, without '..'")
		}
	}
	if len(bad) > 0 {
		return &contracts.ValidationError{Fields: bad}
	}
	return nil
}

// Get returns the host and the revision of its entry.
func (s *Store) Get(ctx context.Context, name string) (contracts.Host, uint64, error) {
	var h contracts.Host
	if !contracts.ValidID(name) {
		return h, 0, fmt.Errorf("%w %q", ErrUnknownHost, name)
	}
	e, err := s.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return h, 0, fmt.Errorf("%w %q: add it with `ferry host add`", ErrUnknownHost, name)
	}
	if err != nil {
		return h, 0, fmt.Errorf("reading host %s: %w", name, err)
	}
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return h, 0, fmt.Errorf("decoding host %s: %w", name, err)
	}
	return h, e.Revision(), nil
}

// Add stores a new host; ErrHostExists if the name is taken.
func (s *Store) Add(ctx context.Context, h contracts.Host) error {
	if err := Normalize(&h); err != nil {
		return err
	}
	data, _ := json.Marshal(h)
	if _, err := s.kv.Create(ctx, h.Name, data); errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("%w: %s", ErrHostExists, h.Name)
	} else if err != nil {
		return fmt.Errorf("adding host %s: %w", h.Name, err)
	}
	return nil
}

// Put stores h, replacing any entry of that name.
func (s *Store) Put(ctx context.Context, h contracts.Host) error {
	if err := Normalize(&h); err != nil {
		return err
	}
	data, _ := json.Marshal(h)
	if _, err := s.kv.Put(ctx, h.Name, data); err != nil {
		return fmt.Errorf("storing host %s: %w", h.Name, err)
	}
	return nil
}

// List returns every host, by name.
func (s *Store) List(ctx context.Context) ([]contracts.Host, error) {
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing hosts: %w", err)
	}
	var hosts []contracts.Host
	for k := range keys.Keys() {
		h, _, err := s.Get(ctx, k)
		if errors.Is(err, ErrUnknownHost) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts, nil
}

// Remove deletes a host.
func (s *Store) Remove(ctx context.Context, name string) error {
	if _, _, err := s.Get(ctx, name); err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, name); err != nil {
		return fmt.Errorf("removing host %s: %w", name, err)
	}
	return nil
}

// Pin records key (authorized_keys format) as the host's pinned key. With firstUse it
// only pins a host that has no key yet (trust on first use) and returns ErrPinned
// otherwise; without it, it replaces the pinned keys (an operator's `ferry host trust`).
func (s *Store) Pin(ctx context.Context, name, key string, firstUse bool) error {
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key)); err != nil {
		return fmt.Errorf("pinning host %s: not a public key: %w", name, err)
	}
	return s.update(ctx, name, func(h *contracts.Host) error {
		if firstUse && len(h.HostKeys) > 0 {
			return fmt.Errorf("%w for %s", ErrPinned, name)
		}
		h.HostKeys = []string{strings.TrimSpace(key)}
		return nil
	})
}

// PinAll replaces the host's pinned keys with keys (authorized_keys format, at least
// one; duplicates are dropped), e.g. every key `ferry host trust` scanned. Like Pin it
// is a compare-and-set on the entry, so no other change of the host is lost.
func (s *Store) PinAll(ctx context.Context, name string, keys []string) error {
	if len(keys) == 0 {
		return fmt.Errorf("pinning host %s: no key given", name)
	}
	var pins []string
	seen := map[string]bool{}
	for i, k := range keys {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return fmt.Errorf("pinning host %s: key %d is not a public key: %w", name, i+1, err)
		}
		if blob := string(pub.Marshal()); !seen[blob] {
			seen[blob] = true
			pins = append(pins, strings.TrimSpace(k))
		}
	}
	return s.update(ctx, name, func(h *contracts.Host) error {
		h.HostKeys = pins
		return nil
	})
}

// update applies change to the host's entry with compare-and-set, retrying when
// another writer got there first. An error from change aborts the update.
func (s *Store) update(ctx context.Context, name string, change func(*contracts.Host) error) error {
	for try := 0; try < 10; try++ {
		h, rev, err := s.Get(ctx, name)
		if err != nil {
			return err
		}
		if err := change(&h); err != nil {
			return err
		}
		data, _ := json.Marshal(h)
		_, err = s.kv.Update(ctx, name, data, rev)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			continue
		}
		if err != nil {
			return fmt.Errorf("pinning host %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("pinning host %s: too many concurrent changes", name)
}
