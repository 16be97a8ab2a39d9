package remote

import (
	"sync"

	"github.com/ferrydesk/ferry/pkg/sshdial"
)

// Conns keeps one Conn (one SFTP session) per SSH connection, shared by every step on
// that connection, and forgets it when the connection or the SFTP session ends.
type Conns struct {
	opts Options

	mu sync.Mutex
	m  map[*sshdial.Client]*connEntry
}

type connEntry struct {
	ready chan struct{}
	conn  *Conn
	err   error
}

// NewConns returns an empty Conns whose Conns are opened with opts.
func NewConns(opts Options) *Conns {
	return &Conns{opts: opts, m: map[*sshdial.Client]*connEntry{}}
}

// Get returns the Conn of c, opening it on first use.
func (p *Conns) Get(c *sshdial.Client) (*Conn, error) {
	p.mu.Lock()
	e, ok := p.m[c]
	if ok {
		p.mu.Unlock()
		<-e.ready
		return e.conn, e.err
	}
	e = &connEntry{ready: make(chan struct{})}
	p.m[c] = e
	p.mu.Unlock()

	e.conn, e.err = Open(c, p.opts)
	close(e.ready)
	if e.err != nil {
		p.forget(c, e)
		return nil, e.err
	}
	go func() {
		ended := make(chan struct{})
		go func() { _ = e.conn.sftp.Wait(); close(ended) }()
		select {
		case <-c.Done():
		case <-ended:
		}
		p.forget(c, e)
		_ = e.conn.Close()
	}()
	return e.conn, nil
}

func (p *Conns) forget(c *sshdial.Client, e *connEntry) {
	p.mu.Lock()
	if p.m[c] == e {
		delete(p.m, c)
	}
	p.mu.Unlock()
}

// Len is the number of open Conns.
func (p *Conns) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}
