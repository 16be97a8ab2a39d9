package sshtest

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// UserName is the system account the test sshd authenticates.
const UserName = "ferrytest"

// User is the test login: a real system account with a random password.
type User struct {
	Name     string
	Password string
}

// testUser is set up once per test binary. The password is random per run; test
// binaries running at the same time (go test ./...) share it: the first one to
// start rotates it, the others read it (see ensureUser).
var testUser = sync.OnceValues(ensureUser)

// TestUser returns the test account, creating it (useradd -m) if needed and giving
// it a fresh random password. It skips the test unless running as root, which is
// also what sshd needs to authenticate a system user.
func TestUser(t testing.TB) User {
	t.Helper()
	if os.Geteuid() != 0 {
		if _, err := user.Lookup(UserName); err != nil {
			Unavailable(t, "sshtest: user %q does not exist and only root can create it", UserName)
		}
		Unavailable(t, "sshtest: running sshd for a system user needs root")
	}
	u, err := testUser()
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	return u
}

func ensureUser() (User, error) {
	dir := filepath.Join(os.TempDir(), "ferry-sshtest")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return User{}, err
	}
	// setup.lock serialises setup between test binaries; inuse.lock is held shared
	// by every binary for its whole run (released by the kernel when it exits), so
	// the password is rotated only when no other binary is using it.
	setup, err := lockFile(filepath.Join(dir, "setup.lock"), syscall.LOCK_EX)
	if err != nil {
		return User{}, err
	}
	defer setup.Close()

	if _, err := user.Lookup(UserName); err != nil {
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", UserName).CombinedOutput(); err != nil {
			return User{}, fmt.Errorf("useradd %s: %v: %s", UserName, err, out)
		}
	}

	pwFile := filepath.Join(dir, "password")
	// A raw descriptor, not an *os.File, whose finalizer would close it (and drop
	// the lock) once unreachable: it stays open until the process exits.
	inuse, err := syscall.Open(filepath.Join(dir, "inuse.lock"), syscall.O_CREAT|syscall.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return User{}, err
	}
	var password string
	if err := syscall.Flock(inuse, syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		password = randomToken()
		cmd := exec.Command("chpasswd")
		cmd.Stdin = strings.NewReader(UserName + ":" + password + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			return User{}, fmt.Errorf("chpasswd: %v: %s", err, out)
		}
		if err := os.WriteFile(pwFile, []byte(password), 0o600); err != nil {
			return User{}, err
		}
	} else {
		b, err := os.ReadFile(pwFile)
		if errors.Is(err, fs.ErrNotExist) {
			return User{}, fmt.Errorf("%s is in use by another test binary but %s is missing", UserName, pwFile)
		} else if err != nil {
			return User{}, err
		}
		password = string(b)
	}
	if err := syscall.Flock(inuse, syscall.LOCK_SH); err != nil {
		return User{}, err
	}
	return User{Name: UserName, Password: password}, nil
}

func lockFile(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func randomToken() string {
	b := make([]byte, 18)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
