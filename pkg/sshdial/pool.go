package sshdial

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Pool holds at most one Client per key (a session lease id). Concurrent Gets for
// one key share a single dial; a Client that has ended (dead peer, lost
// connection) is replaced by a fresh dial on the next Get.
type Pool struct {
	mu      sync.Mutex
	entries map[string]*poolEntry
	closed  bool
}

type poolEntry struct {
	ready   chan struct{} // closed when the dial finished
	client  *Client       // valid after ready, if err is nil
	err     error
	dropped bool // Drop or Close ran while dialling: close the client when it arrives
}

// NewPool returns an empty Pool.
func NewPool() *Pool { return &Pool{entries: map[string]*poolEntry{}} }

// Get returns the live Client for key, calling dial to create one if there is
// none. While one Get dials, other Gets for the same key wait for its result; if
// the dialling Get's context is cancelled, a waiter with a live context dials itself.
func (p *Pool) Get(ctx context.Context, key string, dial func(context.Context) (*Client, error)) (*Client, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("ssh pool: %w", ErrClosed)
		}
		e, ok := p.entries[key]
		if !ok {
			e = &poolEntry{ready: make(chan struct{})}
			p.entries[key] = e
			p.mu.Unlock()
			return p.dial(ctx, key, e, dial)
		}
		p.mu.Unlock()

		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if e.err == nil {
			if e.client.Err() == nil {
				return e.client, nil
			}
			p.remove(key, e) // dead: the next round dials again
			e.client.Close()
			continue
		}
		if errors.Is(e.err, context.Canceled) || errors.Is(e.err, context.DeadlineExceeded) {
			if ctx.Err() == nil {
				continue // the dialler gave up, not us
			}
		}
		return nil, e.err
	}
}

func (p *Pool) dial(ctx context.Context, key string, e *poolEntry, dial func(context.Context) (*Client, error)) (*Client, error) {
	client, err := dial(ctx)
	p.mu.Lock()
	e.client, e.err = client, err
	dropped := e.dropped
	if err != nil || dropped {
		if p.entries[key] == e {
			delete(p.entries, key)
		}
	}
	close(e.ready) // under p.mu, so closeEntry sees either ready or sets dropped in time
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if dropped {
		client.Close()
		return nil, fmt.Errorf("ssh pool: %q dropped while dialling: %w", key, ErrClosed)
	}
	return client, nil
}

func (p *Pool) remove(key string, e *poolEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.entries[key] == e {
		delete(p.entries, key)
	}
}

// Drop closes and forgets the Client for key (e.g. when its lease is revoked).
func (p *Pool) Drop(key string) {
	p.mu.Lock()
	e, ok := p.entries[key]
	delete(p.entries, key)
	p.mu.Unlock()
	if ok {
		p.closeEntry(e)
	}
}

// Len returns the number of keys with a Client or a dial in progress.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.entries)
}

// Close closes every Client; later Gets fail with ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	entries := p.entries
	p.entries = map[string]*poolEntry{}
	p.mu.Unlock()
	for _, e := range entries {
		p.closeEntry(e)
	}
	return nil
}

// closeEntry closes e's client, or arranges for it to be closed when its dial ends.
func (p *Pool) closeEntry(e *poolEntry) {
	p.mu.Lock()
	select {
	case <-e.ready:
	default:
		e.dropped = true
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if e.err == nil {
		e.client.Close()
	}
}
