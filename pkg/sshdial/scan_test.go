package sshdial_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

func TestScanHostKeys(t *testing.T) {
	for name, tt := range map[string]struct {
		types []string
		order []int // indexes into Server.HostKeys() of the expected result
	}{
		"ed25519":           {[]string{sshtest.KeyEd25519}, []int{0}},
		"ed25519+ecdsa+rsa": {[]string{sshtest.KeyEd25519, sshtest.KeyECDSA, sshtest.KeyRSA}, []int{0, 1, 2}},
		"rsa+ecdsa+ed25519": {[]string{sshtest.KeyRSA, sshtest.KeyECDSA, sshtest.KeyEd25519}, []int{2, 1, 0}},
		"rsa only":          {[]string{sshtest.KeyRSA}, []int{0}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := sshtest.Start(t, sshtest.Options{HostKeyTypes: tt.types})
			logStart := len(srv.LogText())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			keys, err := sshdial.ScanHostKeys(ctx, "127.0.0.1", srv.Port(), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var got, want []string
			for _, k := range keys {
				got = append(got, sshdial.AuthorizedKey(k))
			}
			for _, i := range tt.order {
				want = append(want, srv.HostKeys()[i])
			}
			if !slices.Equal(got, want) {
				t.Errorf("scanned keys:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}

			// Every connection ends before authentication: sshd logs the client
			// closing during the key exchange and never a userauth request.
			var log string
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				log = srv.LogText()[logStart:]
				ended := 0
				for _, end := range []string{"Connection closed by", "Connection reset by", "Unable to negotiate"} {
					ended += strings.Count(log, end)
				}
				if started := strings.Count(log, "Connection from 127.0.0.1"); started > 0 && ended >= started {
					break
				}
			}
			if !strings.Contains(log, "Connection from 127.0.0.1") {
				t.Fatalf("no connection in the sshd log:\n%s", log)
			}
			for _, attempt := range []string{"userauth", "Invalid user", "ferry-keyscan", "Failed", "Accepted", "Postponed"} {
				if strings.Contains(log, attempt) {
					t.Errorf("sshd saw an authentication attempt (%q):\n%s", attempt, log)
				}
			}
		})
	}
}

func TestScanHostKeysUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there now

	_, err = sshdial.ScanHostKeys(context.Background(), "127.0.0.1", port, 2*time.Second)
	if !errors.Is(err, sshdial.ErrUnreachable) || !sshdial.Retryable(err) {
		t.Errorf("closed port: err = %v, want ErrUnreachable", err)
	}

	// A listener that accepts and never speaks: the handshake times out.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, err = sshdial.ScanHostKeys(context.Background(), "127.0.0.1", ln.Addr().(*net.TCPAddr).Port, 300*time.Millisecond)
	if !errors.Is(err, sshdial.ErrUnreachable) {
		t.Errorf("silent server: err = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("silent server: took %s, want one timeout", d)
	}

	if _, err := sshdial.ScanHostKeys(context.Background(), "", 22, time.Second); err == nil {
		t.Error("empty address accepted")
	}
}

func TestKnownHostKeys(t *testing.T) {
	ed := sshtest.NewClientKey(t, sshtest.KeyEd25519, "").Public()
	ec := sshtest.NewClientKey(t, sshtest.KeyECDSA, "").Public()
	rsa := sshtest.NewClientKey(t, sshtest.KeyRSA, "").Public()
	other := sshtest.NewClientKey(t, sshtest.KeyEd25519, "").Public()
	path := filepath.Join(t.TempDir(), "known_hosts")
	lines := []string{
		"# comment",
		knownhosts.Line([]string{"other.example"}, other),
		knownhosts.Line([]string{"[10.0.0.5]:2222"}, rsa),
		"@cert-authority *.example " + sshdial.AuthorizedKey(other),
		knownhosts.HashHostname("[10.0.0.5]:2222") + " " + sshdial.AuthorizedKey(ec),
		knownhosts.Line([]string{"10.0.0.5"}, other), // port 22: another host
		"[10.0.0.*]:2222 " + sshdial.AuthorizedKey(ed),
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := sshdial.KnownHostKeys([]string{path}, "10.0.0.5", 2222)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range keys {
		got = append(got, sshdial.AuthorizedKey(k))
	}
	want := []string{sshdial.AuthorizedKey(ed), sshdial.AuthorizedKey(ec), sshdial.AuthorizedKey(rsa)}
	if !slices.Equal(got, want) {
		t.Errorf("keys:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if keys, err := sshdial.KnownHostKeys([]string{path}, "10.0.0.6", 22); err != nil || len(keys) != 0 {
		t.Errorf("unlisted host: %v, %v", keys, err)
	}
	if _, err := sshdial.KnownHostKeys([]string{path + ".missing"}, "10.0.0.5", 22); err == nil {
		t.Error("missing file accepted")
	}
}
