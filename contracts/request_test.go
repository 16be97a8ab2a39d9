package contracts

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func example(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("examples/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeJobRequestNamesTheField(t *testing.T) {
	cases := []struct {
		name, body, field, problem string
	}{
		{"malformed", `{"schema": "ferry.v1.job.request", "id": `, "(request)", "truncated"},
		{"syntax", `{"schema" "x"}`, "(request)", "malformed JSON"},
		{"not an object", `[1,2]`, "(request)", "must be an object"},
		{"trailing", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"from":"a","to":"b","files":["x"],"dest":"/d"}} {}`, "(request)", "trailing data"},
		{"unknown field", `{"schema":"ferry.v1.job.request","id":"a","action":"update","frm":"x"}`, "frm", "unknown field"},
		{"unknown nested field", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"form":"x"}}`, "form", "unknown field"},
		{"wrong type", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"from":"a","to":"b","files":"x","dest":"/d"}}`, "update.files", "must be an array"},
		{"missing schema", `{"id":"a","action":"update","update":{"from":"a","to":"b","files":["x"],"dest":"/d"}}`, "schema", "must be"},
		{"bad id", `{"schema":"ferry.v1.job.request","id":"a.b","action":"update","update":{"from":"a","to":"b","files":["x"],"dest":"/d"}}`, "id", "letters"},
		{"missing action", `{"schema":"ferry.v1.job.request","id":"a"}`, "action", "is required"},
		{"unknown action", `{"schema":"ferry.v1.job.request","id":"a","action":"reboot"}`, "action", `unknown action "reboot"`},
		{"missing body", `{"schema":"ferry.v1.job.request","id":"a","action":"db-backup"}`, "db_backup", "is required"},
		{"two bodies", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"from":"a","to":"b","files":["x"],"dest":"/d"},"log_backup":{}}`, "action", "exactly one"},
		{"missing host", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"to":"b","files":["x"],"dest":"/d"}}`, "update.from", "is required"},
		{"no files", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"from":"a","to":"b","files":[],"dest":"/d"}}`, "update.files", "at least one"},
		{"escaping file", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"from":"a","to":"b","files":["ok","../../etc/shadow"],"dest":"/d"}}`, "update.files[1]", "'..'"},
		{"bad glob", `{"schema":"ferry.v1.job.request","id":"a","action":"log-backup","log_backup":{"from":"a","to":"b","paths":["/var/log/[a"]}}`, "log_backup.paths[0]", "not a valid glob"},
		{"bad compression", `{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"from":"a","to":"b","files":["x"],"dest":"/d","compression":"xz"}}`, "update.compression", "zstd or gzip"},
		{"bad engine", `{"schema":"ferry.v1.job.request","id":"a","action":"db-backup","db_backup":{"from":"a","to":"b","database":"x","engine":"oracle"}}`, "db_backup.engine", "postgres or mysql"},
		{"bad port", `{"schema":"ferry.v1.job.request","id":"a","action":"db-backup","db_backup":{"from":"a","to":"b","database":"x","db_port":70000}}`, "db_backup.db_port", "between"},
		{"bad database", `{"schema":"ferry.v1.job.request","id":"a","action":"db-backup","db_backup":{"from":"a","to":"b","database":"x; drop"}}`, "db_backup.database", "letters"},
		{"bad credential ref", `{"schema":"ferry.v1.job.request","id":"a","action":"db-backup","db_backup":{"from":"a","to":"b","database":"x","db_credential":"../etc"}}`, "db_backup.db_credential", "credential reference"},
		{"bad since", `{"schema":"ferry.v1.job.request","id":"a","action":"log-backup","log_backup":{"from":"a","to":"b","paths":["x"],"since":"yesterday"}}`, "log_backup.since", "duration"},
		{"bad size", `{"schema":"ferry.v1.job.request","id":"a","action":"log-backup","log_backup":{"from":"a","to":"b","paths":["x"],"max_size":"lots"}}`, "log_backup.max_size", "size"},
		{"negative keep", `{"schema":"ferry.v1.job.request","id":"a","action":"log-backup","log_backup":{"from":"a","to":"b","paths":["x"],"keep":-1}}`, "log_backup.keep", "negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeJobRequest([]byte(c.body))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want *ValidationError, got %v", err)
			}
			for _, f := range ve.Fields {
				if f.Field == c.field && strings.Contains(f.Problem, c.problem) {
					return
				}
			}
			t.Fatalf("want field %q with %q, got %v", c.field, c.problem, err)
		})
	}
}

func TestDecodeJobRequestAcceptsUnits(t *testing.T) {
	req, err := DecodeJobRequest(example(t, "log-backup"))
	if err != nil {
		t.Fatal(err)
	}
	if got := int64(req.LogBackup.MaxSize); got != 500<<20 {
		t.Errorf("max_size = %d", got)
	}
	if got := req.LogBackup.Since.String(); got != "72h0m0s" {
		t.Errorf("since = %s", got)
	}
}

func TestCancelRequestValidate(t *testing.T) {
	c := CancelRequest{Schema: SchemaCancel, JobID: "x/y"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `"job_id"`) {
		t.Fatalf("got %v", err)
	}
}

func TestSubjects(t *testing.T) {
	if got := CommandSubject(ServiceTransfer, OpPush); got != "ferry.v1.cmd.transfer.push" {
		t.Error(got)
	}
	if got := CommandMsgID("j1", "push", 2); got != "j1/push/2" {
		t.Error(got)
	}
	if got := StepEventSubject("j1"); got != "ferry.v1.evt.step.j1" {
		t.Error(got)
	}
	if got := JobEventSubject("j1"); got != "ferry.v1.evt.job.j1" {
		t.Error(got)
	}
}

// FuzzDecodeJobRequest: decoding never panics, and whatever it accepts is valid, has a
// subject-safe id and re-validates after a round trip.
func FuzzDecodeJobRequest(f *testing.F) {
	for _, n := range []string{"update", "db-backup", "log-backup"} {
		f.Add(example(f, n))
	}
	f.Add([]byte(`{"schema":"ferry.v1.job.request","id":"a","action":"update","update":{"from":"a","to":"b","files":["../x"],"dest":"/d"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeJobRequest(b)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Fields) == 0 {
				t.Fatalf("error without fields: %v", err)
			}
			for _, fe := range ve.Fields {
				if fe.Field == "" {
					t.Fatalf("unnamed field in %v", err)
				}
			}
			return
		}
		if !ValidID(req.ID) {
			t.Fatalf("accepted id %q", req.ID)
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("accepted then invalid: %v", err)
		}
	})
}

// The cleanup removes only names IsTempName accepts: the job's own temporary names.
func TestIsTempName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{TempName("update-j1.tar.zst", "j1"), true},
		{TempName(ManifestName("update-j1.tar.zst"), "j1"), true},
		{IncomingName("j1"), true},
		{TempName("update-j1.tar.zst", "j2"), false}, // another job's
		{IncomingName("j2"), false},
		{TempName("", "j1"), false},
		{"app.conf", false},
		{".app.conf", false},
		{"../" + TempName("x", "j1"), false},
		{"sub/" + TempName("x", "j1"), false},
		{`..\` + TempName("x", "j1"), false},
		{IncomingName("j1") + "/x", false},
	} {
		if got := IsTempName(tc.name, "j1"); got != tc.want {
			t.Errorf("IsTempName(%q, j1) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
