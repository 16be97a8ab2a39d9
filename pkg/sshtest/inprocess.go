package sshtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ferrydesk/ferry/contracts"
)

// Prompt is one keyboard-interactive question and the answer the server expects.
type Prompt struct {
	Text   string
	Echo   bool
	Answer string
}

// Round is one keyboard-interactive info request: several prompts at once.
type Round struct {
	Instruction string
	Prompts     []Prompt
}

// InProcessOptions configure StartInProcess. Only the methods configured are offered.
type InProcessOptions struct {
	User           string          // login name; default UserName
	Password       string          // enables password authentication
	Rounds         []Round         // enables keyboard-interactive: every round must be answered
	AuthorizedKeys []ssh.PublicKey // enables publickey authentication
}

// InProcessServer is a minimal x/crypto SSH server for fast authentication tests
// (quick checks only: it runs "exec" requests by echoing the command back).
type InProcessServer struct {
	ln      net.Listener
	hostKey ssh.Signer
	user    string

	mu     sync.Mutex
	events []string
	wg     sync.WaitGroup
}

// StartInProcess starts an in-process server on 127.0.0.1; t.Cleanup stops it.
func StartInProcess(t testing.TB, opts InProcessOptions) *InProcessServer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if opts.User == "" {
		opts.User = UserName
	}
	s := &InProcessServer{hostKey: hostKey, user: opts.User}
	config := &ssh.ServerConfig{}
	config.AddHostKey(hostKey)
	if opts.Password != "" {
		config.PasswordCallback = func(c ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
			if c.User() == opts.User && string(password) == opts.Password {
				s.event("password ok")
				return nil, nil
			}
			s.event("password rejected")
			return nil, fmt.Errorf("password rejected")
		}
	}
	if len(opts.AuthorizedKeys) > 0 {
		config.PublicKeyCallback = func(c ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if c.User() == opts.User && slices.ContainsFunc(opts.AuthorizedKeys, func(k ssh.PublicKey) bool {
				return bytes.Equal(k.Marshal(), key.Marshal())
			}) {
				s.event("publickey ok")
				return nil, nil
			}
			s.event("publickey rejected")
			return nil, fmt.Errorf("key not authorized")
		}
	}
	if len(opts.Rounds) > 0 {
		config.KeyboardInteractiveCallback = func(c ssh.ConnMetadata, challenge ssh.KeyboardInteractiveChallenge) (*ssh.Permissions, error) {
			for i, r := range opts.Rounds {
				questions := make([]string, len(r.Prompts))
				echos := make([]bool, len(r.Prompts))
				for j, p := range r.Prompts {
					questions[j], echos[j] = p.Text, p.Echo
				}
				answers, err := challenge(c.User(), r.Instruction, questions, echos)
				if err != nil {
					s.event(fmt.Sprintf("keyboard-interactive round %d: %v", i+1, err))
					return nil, err
				}
				for j, p := range r.Prompts {
					if j >= len(answers) || answers[j] != p.Answer {
						s.event(fmt.Sprintf("keyboard-interactive round %d: wrong answer to %q", i+1, p.Text))
						return nil, fmt.Errorf("wrong answer")
					}
				}
				s.event(fmt.Sprintf("keyboard-interactive round %d ok", i+1))
			}
			if c.User() != opts.User {
				return nil, fmt.Errorf("unknown user")
			}
			return nil, nil
		}
	}

	s.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.wg.Add(1)
	go s.serve(config)
	t.Cleanup(func() {
		s.ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *InProcessServer) event(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

// Events returns what happened during authentication, e.g. "keyboard-interactive
// round 2 ok" or "password rejected".
func (s *InProcessServer) Events() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// Addr returns the listening address.
func (s *InProcessServer) Addr() string { return s.ln.Addr().String() }

// Port returns the listening port.
func (s *InProcessServer) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// HostKey returns the server's host key in authorized_keys format.
func (s *InProcessServer) HostKey() string { return authorizedKey(s.hostKey.PublicKey()) }

// Host returns an inventory entry for the server, pinned to its host key.
func (s *InProcessServer) Host(name, credential string) contracts.Host {
	return contracts.Host{
		Schema:     contracts.SchemaHost,
		Name:       name,
		Address:    "127.0.0.1",
		Port:       s.Port(),
		User:       s.user,
		Credential: credential,
		HostKeys:   []string{s.HostKey()},
	}
}

func (s *InProcessServer) serve(config *ssh.ServerConfig) {
	defer s.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		open = append(open, conn)
		conns.Add(1)
		go func() {
			defer conns.Done()
			s.handle(conn, config)
		}()
	}
}

func (s *InProcessServer) handle(conn net.Conn, config *ssh.ServerConfig) {
	defer conn.Close()
	sc, chans, reqs, err := ssh.NewServerConn(conn, config)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for req := range creqs {
				if req.Type != "exec" {
					req.Reply(false, nil)
					continue
				}
				var cmd struct{ Command string }
				if err := ssh.Unmarshal(req.Payload, &cmd); err != nil {
					req.Reply(false, nil)
					continue
				}
				req.Reply(true, nil)
				ch.Write([]byte(cmd.Command))
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
				return
			}
		}()
	}
}
