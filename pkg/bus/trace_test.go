package bus_test

import (
	"context"
	"testing"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/nats-io/nats.go"
)

func TestParseTraceParent(t *testing.T) {
	for in, ok := range map[string]bool{
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01":        true,
		" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 ":      true,
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future": true, // a later version may add fields
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra":  false,
		"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01":        false,
		"00-00000000000000000000000000000000-b7ad6b7169203331-01":        false,
		"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01":        false,
		"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01":        false,
		"00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01":         false,
		"":        false,
		"garbage": false,
	} {
		tid, sid, got := bus.ParseTraceParent(in)
		if got != ok {
			t.Errorf("ParseTraceParent(%q) ok = %v, want %v", in, got, ok)
		}
		if got && (tid != "0af7651916cd43dd8448eb211c80319c" || sid != "b7ad6b7169203331") {
			t.Errorf("ParseTraceParent(%q) = %s %s", in, tid, sid)
		}
	}
	id := bus.TraceIDFor("hd-4711")
	if id != bus.TraceIDFor("hd-4711") || id == bus.TraceIDFor("hd-4712") || len(id) != 32 {
		t.Errorf("TraceIDFor: %s", id)
	}
	tp := bus.TraceParent(id, bus.NewSpanID())
	if tid, _, ok := bus.ParseTraceParent(tp); !ok || tid != id {
		t.Errorf("TraceParent = %q does not parse back", tp)
	}
}

func TestTraceOf(t *testing.T) {
	h := nats.Header{}
	h.Set(contracts.HeaderTraceParent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	tr := bus.TraceOf(h, "job")
	if tr.TraceID != "0af7651916cd43dd8448eb211c80319c" || tr.ParentID != "b7ad6b7169203331" || len(tr.SpanID) != 16 || tr.SpanID == tr.ParentID {
		t.Errorf("TraceOf(traceparent) = %+v", tr)
	}
	h = nats.Header{}
	h.Set(contracts.HeaderCorrelationID, "hd-1")
	if tr := bus.TraceOf(h, "other"); tr.TraceID != bus.TraceIDFor("hd-1") || tr.ParentID != "" {
		t.Errorf("TraceOf(correlation id) = %+v", tr)
	}
	if tr := bus.TraceOf(nil, "hd-2"); tr.TraceID != bus.TraceIDFor("hd-2") {
		t.Errorf("TraceOf(no headers) = %+v", tr)
	}
	if tr := bus.TraceOf(nil, ""); tr.TraceID != "" || tr.LogAttrs() != nil {
		t.Errorf("TraceOf(nothing) = %+v", tr)
	}

	// Publish stamps the trace of its context, as the parent of what the message starts.
	m, _ := bus.Message("s", 1, "hd-3")
	want := bus.Trace{TraceID: bus.TraceIDFor("hd-3"), SpanID: "b7ad6b7169203331"}
	ctx := bus.WithTrace(context.Background(), want)
	got, ok := bus.TraceFrom(ctx)
	if !ok || got != want {
		t.Fatalf("TraceFrom = %+v %v", got, ok)
	}
	bus.SetTrace(m, got)
	if m.Header.Get(contracts.HeaderTraceParent) != bus.TraceParent(want.TraceID, want.SpanID) ||
		m.Header.Get(contracts.HeaderCorrelationID) != "hd-3" {
		t.Errorf("headers %v", m.Header)
	}
}
