package sshdial_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// Canary secrets: they must never show up in an error message or a log line.
const (
	canaryPassword   = "canary-password-5f1d2c"
	canaryPassphrase = "canary-passphrase-8e4b7a"
	canaryAnswer     = "canary-answer-3c9e06"
)

var canaries = []string{canaryPassword, canaryPassphrase, canaryAnswer}

// env is one real sshd plus a secrets directory.
type env struct {
	srv     *sshtest.Server
	secrets string
	logs    *syncBuffer
}

func newEnv(t *testing.T, opts sshtest.Options) *env {
	t.Helper()
	return &env{srv: sshtest.Start(t, opts), secrets: t.TempDir(), logs: &syncBuffer{}}
}

// credential writes a credential directory and returns its reference.
func (e *env) credential(t *testing.T, ref string, files map[string]string) string {
	t.Helper()
	sshtest.WriteCredential(t, e.secrets, ref, files)
	return ref
}

func (e *env) options() sshdial.Options {
	return sshdial.Options{
		SecretsDir: e.secrets,
		Timeout:    10 * time.Second,
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// dial connects to the env's sshd with the credential ref.
func (e *env) dial(t *testing.T, ref string) (*sshdial.Client, error) {
	t.Helper()
	return e.dialHost(t, e.srv.Host("test-host", ref), e.options())
}

func (e *env) dialHost(t *testing.T, host contracts.Host, opts sshdial.Options) (*sshdial.Client, error) {
	t.Helper()
	c, err := sshdial.Dial(context.Background(), host, opts)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// mustDial dials and runs a command to prove the login is usable.
func (e *env) mustDial(t *testing.T, ref string) *sshdial.Client {
	t.Helper()
	c, err := e.dial(t, ref)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	defer s.Close()
	out, err := s.Output("id -un")
	if err != nil || strings.TrimSpace(string(out)) != sshtest.UserName {
		t.Fatalf("id -un = %q, %v", out, err)
	}
	return c
}

// assertNoCanary fails if s contains a canary secret.
func assertNoCanary(t *testing.T, what, s string) {
	t.Helper()
	for _, c := range canaries {
		if strings.Contains(s, c) {
			t.Errorf("%s leaks a secret: %q", what, s)
		}
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
