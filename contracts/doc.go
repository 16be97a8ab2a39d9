// Package contracts is the wire contract of ferry: NATS subjects, stream, consumer and
// bucket names, and the versioned JSON payloads that travel between the helpdesk system,
// the orchestrator and the worker services.
//
// Nothing outside this package defines a subject. Within v1 fields are only ever added;
// a breaking change is a v2 subject that runs beside v1. Wire names are spelled out
// here and never derived from Go type names, so renaming a type never changes the wire.
//
// The JSON Schemas in schema/ are generated from these types (see schema_test.go) and a
// test fails when they are stale. Example requests for each action are in examples/.
package contracts
