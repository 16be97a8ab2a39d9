package svcenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadPasswordFile reads the NATS password from a mounted secret file: one
// trailing newline is not part of it, and errors name the variable, never the secret.
func TestLoadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "nats-password")
	if err := os.WriteFile(file, []byte("s3cret-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := Load(env(map[string]string{"FERRY_NATS_USER": "connector", "FERRY_NATS_PASSWORD_FILE": file}))
	if err != nil {
		t.Fatal(err)
	}
	if e.NATS.User != "connector" || e.NATS.Password != "s3cret-pw" {
		t.Errorf("NATS config = %+v", e.NATS)
	}

	for name, vars := range map[string]map[string]string{
		"both":    {"FERRY_NATS_PASSWORD": "x", "FERRY_NATS_PASSWORD_FILE": file},
		"missing": {"FERRY_NATS_PASSWORD_FILE": filepath.Join(dir, "absent")},
		"empty":   {"FERRY_NATS_PASSWORD_FILE": writeFile(t, dir, "empty", "\n")},
	} {
		_, err := Load(env(vars))
		if err == nil || !strings.Contains(err.Error(), "FERRY_NATS_PASSWORD_FILE") {
			t.Errorf("%s: error %v does not name FERRY_NATS_PASSWORD_FILE", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error shows the secret: %v", name, err)
		}
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
