package telemetry

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Readiness gates /healthz until every part of a process has said that it takes work:
// a worker once its consumer is bound, the orchestrator once its API answers. Until
// then the health check fails with "starting", so compose's depends_on and a
// readiness probe wait for a service that can actually be used, not just connected.
type Readiness struct {
	mu      sync.Mutex
	pending map[string]bool
}

// NewReadiness returns a Readiness waiting for the named parts.
func NewReadiness(parts ...string) *Readiness {
	r := &Readiness{pending: map[string]bool{}}
	for _, p := range parts {
		r.pending[p] = true
	}
	return r
}

// Ready returns the function part calls once it takes work; calling it again does
// nothing.
func (r *Readiness) Ready(part string) func() {
	return func() {
		r.mu.Lock()
		delete(r.pending, part)
		r.mu.Unlock()
	}
}

// Check returns health gated on readiness: it fails while a part is pending,
// naming the parts, and otherwise returns next's answer (nil next: healthy).
func (r *Readiness) Check(next func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		r.mu.Lock()
		var waiting []string
		for p := range r.pending {
			waiting = append(waiting, p)
		}
		r.mu.Unlock()
		if len(waiting) > 0 {
			slices.Sort(waiting)
			return fmt.Errorf("starting: %s not ready yet", strings.Join(waiting, ", "))
		}
		if next == nil {
			return nil
		}
		return next(ctx)
	}
}
