package sshdial

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Secret file names inside a credential directory.
const (
	FilePassword            = "password"
	FilePrivateKey          = "private_key"
	FilePassphrase          = "passphrase"
	FileKeyboardInteractive = "keyboard_interactive.json"
	FileAgentSocket         = "agent_socket"
)

var refPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// CheckRef reports whether ref is a valid credential reference: a token of at most
// 64 characters from [A-Za-z0-9_.-] starting with a letter or digit. Anything else
// (slashes, "..", empty) is rejected so that a reference never escapes the secrets
// directory.
func CheckRef(ref string) error {
	if !refPattern.MatchString(ref) {
		return &CredentialError{Ref: ref, Msg: "invalid credential reference: want 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit"}
	}
	return nil
}

// PromptAnswer is one entry of keyboard_interactive.json: the answer to give to
// every keyboard-interactive prompt matched by the Go regular expression Prompt.
type PromptAnswer struct {
	Prompt string `json:"prompt"`
	Answer string `json:"answer"`
}

type promptRule struct {
	prompt *regexp.Regexp
	answer string
}

// Credential is the secret material of one credential reference, loaded from
// <secretsDir>/<ref>/. It never prints its secrets: String and GoString show only
// the reference and which methods it offers.
type Credential struct {
	ref         string
	password    string
	hasPassword bool
	signer      ssh.Signer
	prompts     []promptRule
	agentSocket string
}

// LoadCredential reads the credential ref from secretsDir. The directory
// <secretsDir>/<ref>/ may contain the files password, private_key (+ passphrase),
// keyboard_interactive.json and agent_socket; at least one must be present. Every
// secret file must be a regular file without group/other permission bits.
// A wrong or missing passphrase yields an error wrapping ErrPassphrase.
func LoadCredential(secretsDir, ref string) (*Credential, error) {
	if err := CheckRef(ref); err != nil {
		return nil, err
	}
	if secretsDir == "" {
		return nil, &CredentialError{Ref: ref, Msg: "no secrets directory configured"}
	}
	dir := filepath.Join(secretsDir, ref)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, &CredentialError{Ref: ref, Msg: fmt.Sprintf("no credential directory %s", dir)}
	}
	c := &Credential{ref: ref}
	read := func(name string) ([]byte, bool, error) { return readSecret(ref, dir, name) }

	if b, ok, err := read(FilePassword); err != nil {
		return nil, err
	} else if ok {
		c.password, c.hasPassword = trimNewline(string(b)), true
	}

	if b, ok, err := read(FilePrivateKey); err != nil {
		return nil, err
	} else if ok {
		pass, hasPass, err := read(FilePassphrase)
		if err != nil {
			return nil, err
		}
		if hasPass {
			pass = []byte(trimNewline(string(pass)))
		}
		if c.signer, err = parseKey(ref, b, pass, hasPass); err != nil {
			return nil, err
		}
	}

	if b, ok, err := read(FileKeyboardInteractive); err != nil {
		return nil, err
	} else if ok {
		if c.prompts, err = parsePrompts(ref, b); err != nil {
			return nil, err
		}
	}

	if b, ok, err := read(FileAgentSocket); err != nil {
		return nil, err
	} else if ok {
		c.agentSocket = strings.TrimSpace(string(b))
		if c.agentSocket == "" {
			return nil, &CredentialError{Ref: ref, Msg: FileAgentSocket + " is empty"}
		}
	}

	if !c.hasPassword && c.signer == nil && c.prompts == nil && c.agentSocket == "" {
		return nil, &CredentialError{Ref: ref, Msg: fmt.Sprintf("directory %s holds none of %s, %s, %s, %s",
			dir, FilePassword, FilePrivateKey, FileKeyboardInteractive, FileAgentSocket)}
	}
	return c, nil
}

// readSecret reads dir/name after checking its mode; ok is false if it does not exist.
func readSecret(ref, dir, name string) (b []byte, ok bool, err error) {
	path := filepath.Join(dir, name)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, &CredentialError{Ref: ref, Msg: fmt.Sprintf("cannot stat %s: %v", path, errors.Unwrap(err))}
	}
	if !fi.Mode().IsRegular() {
		return nil, false, &CredentialError{Ref: ref, Msg: fmt.Sprintf("%s is not a regular file", path)}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, false, &CredentialError{Ref: ref, Msg: fmt.Sprintf(
			"secret file %s has mode %04o; it must not be accessible by group or others (use 0600 or 0400)", path, perm)}
	}
	b, err = os.ReadFile(path)
	if err != nil {
		return nil, false, &CredentialError{Ref: ref, Msg: fmt.Sprintf("cannot read %s: %v", path, errors.Unwrap(err))}
	}
	return b, true, nil
}

func trimNewline(s string) string {
	s = strings.TrimSuffix(s, "\n")
	return strings.TrimSuffix(s, "\r")
}

func parseKey(ref string, pemBytes, passphrase []byte, hasPassphrase bool) (ssh.Signer, error) {
	signer, err := ssh.ParsePrivateKey(pemBytes)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		return signer, nil // a passphrase file next to a plain key is harmless
	case !errors.As(err, &missing):
		// x/crypto parse errors describe the format, never the key bytes.
		return nil, &CredentialError{Ref: ref, Msg: fmt.Sprintf("cannot parse %s: %v", FilePrivateKey, err)}
	case !hasPassphrase:
		return nil, &CredentialError{Ref: ref, kind: ErrPassphrase,
			Msg: fmt.Sprintf("%s is protected by a passphrase but there is no %s file", FilePrivateKey, FilePassphrase)}
	}
	signer, err = ssh.ParsePrivateKeyWithPassphrase(pemBytes, passphrase)
	if err != nil {
		// Any failure here is a decryption failure: legacy PEM encryption cannot
		// always tell a wrong passphrase from a corrupt key.
		return nil, &CredentialError{Ref: ref, kind: ErrPassphrase, Msg: "private key passphrase is wrong"}
	}
	return signer, nil
}

func parsePrompts(ref string, b []byte) ([]promptRule, error) {
	var entries []PromptAnswer
	if err := json.Unmarshal(b, &entries); err != nil {
		// Do not echo the decoder's message: it may quote part of an answer.
		msg := FileKeyboardInteractive + ` is not a JSON list of {"prompt": ..., "answer": ...}`
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			msg += fmt.Sprintf(" (syntax error at byte %d)", syn.Offset)
		}
		return nil, &CredentialError{Ref: ref, Msg: msg}
	}
	if len(entries) == 0 {
		return nil, &CredentialError{Ref: ref, Msg: FileKeyboardInteractive + " holds no prompts"}
	}
	rules := make([]promptRule, 0, len(entries))
	for i, e := range entries {
		re, err := regexp.Compile(e.Prompt)
		if err != nil || e.Prompt == "" {
			return nil, &CredentialError{Ref: ref, Msg: fmt.Sprintf("%s entry %d: prompt %q is not a valid non-empty Go regexp",
				FileKeyboardInteractive, i, e.Prompt)}
		}
		rules = append(rules, promptRule{prompt: re, answer: e.Answer})
	}
	return rules, nil
}

// Ref returns the credential reference.
func (c *Credential) Ref() string { return c.ref }

// Methods lists the authentication methods the credential offers, in the order they
// are tried: "agent", "publickey", "keyboard-interactive", "password".
func (c *Credential) Methods() []string {
	var m []string
	if c.agentSocket != "" {
		m = append(m, "agent")
	}
	if c.signer != nil {
		m = append(m, "publickey")
	}
	if c.prompts != nil {
		m = append(m, "keyboard-interactive")
	}
	if c.hasPassword {
		m = append(m, "password")
	}
	return m
}

// String describes the credential without its secrets.
func (c *Credential) String() string {
	return fmt.Sprintf("credential %q (%s)", c.ref, strings.Join(c.Methods(), ", "))
}

// GoString describes the credential without its secrets (for %#v).
func (c *Credential) GoString() string { return c.String() }

// answer answers one keyboard-interactive round. An unmatched prompt is an error
// that names the prompt, never an answer.
func (c *Credential) answer(questions []string) ([]string, error) {
	answers := make([]string, len(questions))
next:
	for i, q := range questions {
		for _, r := range c.prompts {
			if r.prompt.MatchString(q) {
				answers[i] = r.answer
				continue next
			}
		}
		return nil, fmt.Errorf("credential %q has no keyboard-interactive answer for prompt %q", c.ref, q)
	}
	return answers, nil
}
