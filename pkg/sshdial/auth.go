package sshdial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Authentication method names (RFC 4252), as reported in ConnInfo.AuthMethod.
const (
	MethodNone                = "none"
	MethodPublicKey           = "publickey"
	MethodKeyboardInteractive = "keyboard-interactive"
	MethodPassword            = "password"
)

type namedMethod struct {
	name   string
	method ssh.AuthMethod
}

// auth drives client authentication for one Dial: it offers the credential's
// methods in the order publickey (agent, key), keyboard-interactive, password,
// remembers which one is being tried, and keeps the errors our own callbacks
// produced, which x/crypto would otherwise swallow when another method remains.
type auth struct {
	ctx     context.Context
	cred    *Credential
	methods []namedMethod

	mu        sync.Mutex
	started   bool     // the server has been asked at least once
	current   string   // method being tried
	partial   []string // methods that succeeded partially (multi-factor)
	tried     []string
	allowed   []string // methods the server allows
	errs      []error
	agentConn net.Conn
}

func newAuth(ctx context.Context, cred *Credential) *auth {
	a := &auth{ctx: ctx, cred: cred, current: MethodNone}
	if cred.agentSocket != "" || cred.signer != nil {
		a.methods = append(a.methods, namedMethod{MethodPublicKey, ssh.PublicKeysCallback(a.signers)})
	}
	if cred.prompts != nil {
		a.methods = append(a.methods, namedMethod{MethodKeyboardInteractive, ssh.KeyboardInteractive(a.challenge)})
	}
	if cred.hasPassword {
		a.methods = append(a.methods, namedMethod{MethodPassword, ssh.PasswordCallback(func() (string, error) {
			return cred.password, nil
		})})
	}
	return a
}

// next is the ssh.ClientConfig.AuthCallback: it picks the next untried method the
// server allows. Returning (nil, nil) ends authentication.
func (a *auth) next(ctx *ssh.ClientAuthContext) (ssh.AuthMethod, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.started = true
	a.partial = ctx.PartialSuccessMethods
	a.tried = ctx.TriedMethods
	a.allowed = ctx.AllowedMethods
	for _, m := range a.methods {
		if slices.Contains(ctx.AllowedMethods, m.name) && !slices.Contains(ctx.TriedMethods, m.name) {
			a.current = m.name
			return m.method, nil
		}
	}
	return nil, nil
}

func (a *auth) record(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.errs = append(a.errs, err)
}

// signers returns the agent's keys followed by the private key.
func (a *auth) signers() ([]ssh.Signer, error) {
	var signers []ssh.Signer
	if sock := a.cred.agentSocket; sock != "" {
		var d net.Dialer
		if conn, err := d.DialContext(a.ctx, "unix", sock); err != nil {
			a.record(fmt.Errorf("ssh-agent unreachable: %v", err))
		} else {
			a.mu.Lock()
			a.agentConn = conn
			a.mu.Unlock()
			if signers, err = agent.NewClient(conn).Signers(); err != nil {
				a.record(fmt.Errorf("ssh-agent at %s: %v", sock, err))
			}
		}
	}
	if a.cred.signer != nil {
		signers = append(signers, a.cred.signer)
	}
	if len(signers) == 0 {
		return nil, errors.New("no public keys to offer")
	}
	return signers, nil
}

func (a *auth) challenge(_, _ string, questions []string, _ []bool) ([]string, error) {
	answers, err := a.cred.answer(questions)
	if err != nil {
		a.record(err)
	}
	return answers, err
}

// method returns the label of the method that succeeded, e.g. "publickey" or
// "publickey+keyboard-interactive" for multi-factor logins.
func (a *auth) method() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(append(slices.Clone(a.partial), a.current), "+")
}

// failure describes why authentication failed: the methods the server rejected
// and the errors of our own callbacks (unanswered prompt, unreachable agent).
func (a *auth) failure() (started bool, detail string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	tried := slices.DeleteFunc(slices.Clone(a.tried), func(m string) bool { return m == MethodNone })
	if a.current != MethodNone && !slices.Contains(tried, a.current) {
		tried = append(tried, a.current)
	}
	var parts []string
	if len(tried) > 0 {
		parts = append(parts, "tried "+strings.Join(tried, ", "))
	} else {
		offered := make([]string, len(a.methods))
		for i, m := range a.methods {
			offered[i] = m.name
		}
		parts = append(parts, fmt.Sprintf("the server allows %s, the credential offers %s",
			strings.Join(a.allowed, ", "), strings.Join(offered, ", ")))
	}
	for _, err := range a.errs {
		parts = append(parts, err.Error())
	}
	return a.started, strings.Join(parts, "; ")
}

// close releases the agent connection, which is needed only during authentication.
func (a *auth) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.agentConn != nil {
		a.agentConn.Close()
		a.agentConn = nil
	}
}
