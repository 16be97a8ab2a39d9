package dbdump

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ferrydesk/ferry/pkg/sshdial"
)

// Password is a database password. It never prints itself: every fmt verb and slog
// show "[redacted]", so a Password in a struct, an error or a log line leaks nothing.
// The zero value is "no password".
type Password struct {
	s   string
	set bool
}

// NewPassword wraps s.
func NewPassword(s string) Password { return Password{s: s, set: true} }

// IsSet reports whether there is a password.
func (p Password) IsSet() bool { return p.set }

const redacted = "[redacted]"

// Format implements fmt.Formatter for every verb (%v, %+v, %#v, %s, %q, %x ...).
func (p Password) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }

// LogValue implements slog.LogValuer.
func (p Password) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText keeps encoders (JSON, text) from writing the password.
func (p Password) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// maxSecret bounds a password file.
const maxSecret = 4096

// LoadPassword reads the password of credential ref from <secretsDir>/<ref>/password,
// the layout sshdial uses. The reference must pass sshdial.CheckRef; the file must be a
// regular file (not a symbolic link) without group or other permission bits (0600 or
// 0400), as sshdial enforces for SSH secrets. One trailing newline is dropped. Errors
// wrap sshdial.ErrCredential and name the reference and the file, never the secret.
func LoadPassword(secretsDir, ref string) (Password, error) {
	if err := sshdial.CheckRef(ref); err != nil {
		return Password{}, err
	}
	if secretsDir == "" {
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: "no secrets directory configured"}
	}
	path := filepath.Join(secretsDir, ref, sshdial.FilePassword)
	// O_NOFOLLOW and fstat on the open descriptor: the mode checked is the mode of the
	// file read.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("no database password file %s", path)}
	case errors.Is(err, syscall.ELOOP):
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("%s is a symbolic link", path)}
	case err != nil:
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("cannot open %s: %v", path, errors.Unwrap(err))}
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("cannot stat %s: %v", path, errors.Unwrap(err))}
	}
	if !fi.Mode().IsRegular() {
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("%s is not a regular file", path)}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf(
			"secret file %s has mode %04o; it must not be accessible by group or others (use 0600 or 0400)", path, perm)}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecret+1))
	if err != nil {
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("cannot read %s: %v", path, errors.Unwrap(err))}
	}
	if len(b) > maxSecret {
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("%s is larger than %d bytes", path, maxSecret)}
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if strings.ContainsAny(s, "\x00\n\r") {
		return Password{}, &sshdial.CredentialError{Ref: ref, Msg: fmt.Sprintf("%s holds more than one line or a NUL byte", path)}
	}
	return NewPassword(s), nil
}

// pgpassLine is a ~/.pgpass line matching any host, port, database and user (the file
// serves one invocation) with the password escaped: '\' and ':' take a backslash.
func pgpassLine(p Password) string {
	r := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
	return "*:*:*:*:" + r.Replace(p.s) + "\n"
}

// mysqlOptionValue quotes p for a MySQL/MariaDB option file: inside double quotes,
// with the escapes the option file parser understands.
func mysqlOptionValue(p Password) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `'`, `\'`, "\t", `\t`, "\b", `\b`)
	return `"` + r.Replace(p.s) + `"`
}

// writePrivate creates name in dir with mode 0600 (O_EXCL) and writes data.
func writePrivate(dir, name, data string) (string, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = io.WriteString(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return path, err
}
