package contracts

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/invopop/jsonschema"
)

var update = flag.Bool("update", false, "rewrite the generated JSON Schemas in schema/")

// schemas lists every payload that crosses the bus, by its wire file name.
var schemas = map[string]any{
	"job-request.json":      &JobRequest{},
	"job-cancel.json":       &CancelRequest{},
	"job.json":              &Job{},
	"job-event.json":        &JobEvent{},
	"step-command.json":     &StepCommand{},
	"step-event.json":       &StepEvent{},
	"progress.json":         &Progress{},
	"host.json":             &Host{},
	"lease.json":            &Lease{},
	"pending-leftover.json": &PendingLeftover{},
	"manifest.json":         &Manifest{},
}

// JSONSchema describes Duration on the wire.
func (Duration) JSONSchema() *jsonschema.Schema {
	return &jsonschema.Schema{Type: "string", Description: `Go duration, e.g. "24h" or "90s"`}
}

// JSONSchema describes Size on the wire.
func (Size) JSONSchema() *jsonschema.Schema {
	return &jsonschema.Schema{
		Description: `bytes, or a size with a unit such as "500MiB"`,
		OneOf:       []*jsonschema.Schema{{Type: "integer", Minimum: "0"}, {Type: "string"}},
	}
}

func generate(t *testing.T, v any) []byte {
	t.Helper()
	r := &jsonschema.Reflector{DoNotReference: false, RequiredFromJSONSchemaTags: false}
	s := r.Reflect(v)
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestSchemasUpToDate fails when a type changed and schema/ was not regenerated
// (make schemas, or go test ./contracts -run Schemas -update).
func TestSchemasUpToDate(t *testing.T) {
	for name, v := range schemas {
		got := generate(t, v)
		file := filepath.Join("schema", name)
		if *update {
			if err := os.WriteFile(file, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s: %v (run make schemas)", file, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run make schemas and commit the result", file)
		}
	}
}

// TestExamplesValid decodes every example request with the same code the orchestrator
// uses, so the examples in the README and the docs cannot drift from the contract.
func TestExamplesValid(t *testing.T) {
	files, _ := filepath.Glob("examples/*.json")
	if len(files) != len(Actions) {
		t.Fatalf("want one example per action, found %v", files)
	}
	seen := map[Action]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		req, err := DecodeJobRequest(b)
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
		seen[req.Action] = true
	}
	for _, a := range Actions {
		if !seen[a] {
			t.Errorf("no example for action %s", a)
		}
	}
}
