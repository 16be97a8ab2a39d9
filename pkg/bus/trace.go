package bus

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/nats-io/nats.go"
)

// Trace context of a job, W3C Trace Context (traceparent) without an OpenTelemetry SDK:
// every message about a job carries the job's trace id in a traceparent header
// ("00-<trace id>-<span id>-01") next to its correlation id (the job id), and every
// service logs trace_id, so the logs of one job can be joined by either id and a
// tracing system that understands traceparent (or a helpdesk system that sent one)
// sees the same trace. A piece of work (the orchestrator handling a message, a worker
// running a step attempt) is a span; what it publishes carries that span as parent.

// TraceIDFor is the trace id of a job that was submitted without a trace context: the
// first 16 bytes of SHA-256("ferry/" + job), in hex. Derived, not random, so any tool
// that knows the job id knows its trace id.
func TraceIDFor(job string) string {
	sum := sha256.Sum256([]byte("ferry/" + job))
	return hex.EncodeToString(sum[:16])
}

// NewSpanID returns a random 8-byte span id in hex.
func NewSpanID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	if b == [8]byte{} {
		b[7] = 1 // all zeros is invalid
	}
	return hex.EncodeToString(b[:])
}

// TraceParent formats a version-00 traceparent header value, sampled.
func TraceParent(traceID, spanID string) string {
	return "00-" + traceID + "-" + spanID + "-01"
}

// ParseTraceParent reads a traceparent header value. ok is false unless it is a
// well-formed W3C traceparent with non-zero trace and span ids.
func ParseTraceParent(s string) (traceID, spanID string, ok bool) {
	f := strings.Split(strings.TrimSpace(s), "-")
	if len(f) < 4 || len(f[0]) != 2 || f[0] == "ff" || len(f[1]) != 32 || len(f[2]) != 16 || len(f[3]) != 2 {
		return "", "", false
	}
	if f[0] == "00" && len(f) != 4 {
		return "", "", false
	}
	for _, p := range f[:4] {
		if !lowerHex(p) {
			return "", "", false
		}
	}
	if strings.Trim(f[1], "0") == "" || strings.Trim(f[2], "0") == "" {
		return "", "", false
	}
	return f[1], f[2], true
}

func lowerHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Trace is the trace context a piece of work runs in: the trace and the span of the
// work itself (the parent of what it publishes).
type Trace struct {
	TraceID string
	SpanID  string
	// ParentID is the span of the message that started the work, when it carried one.
	ParentID string
}

type traceKey struct{}

// WithTrace returns ctx carrying t; Publish and SetTrace then stamp messages with it.
func WithTrace(ctx context.Context, t Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

// TraceFrom returns the trace in ctx, if any.
func TraceFrom(ctx context.Context) (Trace, bool) {
	t, ok := ctx.Value(traceKey{}).(Trace)
	return t, ok && t.TraceID != ""
}

// TraceOf reads the trace context of a received message: the trace id of its
// traceparent header, or for a message without one the trace id derived from its
// correlation id (the job id), or from fallbackJob. SpanID is a new span for the work
// the message starts; ParentID the sender's span.
func TraceOf(h nats.Header, fallbackJob string) Trace {
	t := Trace{SpanID: NewSpanID()}
	if tid, sid, ok := ParseTraceParent(h.Get(contracts.HeaderTraceParent)); ok {
		t.TraceID, t.ParentID = tid, sid
		return t
	}
	job := h.Get(contracts.HeaderCorrelationID)
	if job == "" {
		job = fallbackJob
	}
	if job != "" {
		t.TraceID = TraceIDFor(job)
	}
	return t
}

// SetTrace stamps m with t's traceparent (t's span as the parent of whatever m
// starts). A trace without an id leaves m alone.
func SetTrace(m *nats.Msg, t Trace) {
	if t.TraceID == "" {
		return
	}
	if t.SpanID == "" {
		t.SpanID = NewSpanID()
	}
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	m.Header.Set(contracts.HeaderTraceParent, TraceParent(t.TraceID, t.SpanID))
}

// LogAttrs are the trace's log attributes: trace_id and span_id (and parent_span_id
// when known).
func (t Trace) LogAttrs() []any {
	if t.TraceID == "" {
		return nil
	}
	a := []any{"trace_id", t.TraceID, "span_id", t.SpanID}
	if t.ParentID != "" {
		a = append(a, "parent_span_id", t.ParentID)
	}
	return a
}
