package contracts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// SchemaJobRequest is the schema id every JobRequest carries.
const SchemaJobRequest = "ferry.v1.job.request"

// Action is what a job does.
type Action string

// The three actions of the helpdesk.
const (
	ActionUpdate    Action = "update"
	ActionDBBackup  Action = "db-backup"
	ActionLogBackup Action = "log-backup"
)

// Actions lists every action.
var Actions = []Action{ActionUpdate, ActionDBBackup, ActionLogBackup}

// JobRequest is what the helpdesk system publishes on SubjectJobSubmit. Exactly one of
// the action fields is set, the one that Action names.
type JobRequest struct {
	Schema string `json:"schema" jsonschema:"const=ferry.v1.job.request"`
	// ID is the request id; it becomes the job id. Submitting the same id twice gives one job.
	ID     string `json:"id" jsonschema:"pattern=^[A-Za-z0-9][A-Za-z0-9_-]{0\\,63}$"`
	Action Action `json:"action" jsonschema:"enum=update,enum=db-backup,enum=log-backup"`
	// Ticket is the helpdesk ticket this job belongs to (free text, optional).
	Ticket string `json:"ticket,omitempty" jsonschema:"maxLength=200"`
	// RequestedBy names the operator (free text, optional).
	RequestedBy string `json:"requested_by,omitempty" jsonschema:"maxLength=200"`

	Update    *UpdateRequest    `json:"update,omitempty"`
	DBBackup  *DBBackupRequest  `json:"db_backup,omitempty"`
	LogBackup *LogBackupRequest `json:"log_backup,omitempty"`
}

// UpdateRequest pushes update files from the operator's computer to a customer server.
type UpdateRequest struct {
	// From is the operator's computer (inventory host name).
	From string `json:"from"`
	// Files are paths or globs on the operator's computer; relative paths are relative
	// to the login user's home directory. Directories are copied as trees.
	Files []string `json:"files" jsonschema:"minItems=1"`
	// To is the customer server (inventory host name).
	To string `json:"to"`
	// Dest is the destination directory on the customer server.
	Dest string `json:"dest"`
	// Unpack delivers the file tree instead of the archive and its manifest.
	Unpack bool `json:"unpack,omitempty"`
	// Compression of the archive: zstd (default) or gzip.
	Compression string `json:"compression,omitempty" jsonschema:"enum=zstd,enum=gzip"`
}

// DBBackupRequest dumps a customer's database through an SSH tunnel and delivers the
// dump to the operator's computer.
type DBBackupRequest struct {
	// From is the customer server (inventory host name) the database runs on or behind.
	From string `json:"from"`
	// Engine is postgres (default) or mysql (MariaDB/MySQL).
	Engine string `json:"engine,omitempty" jsonschema:"enum=postgres,enum=mysql"`
	// Database is the database name.
	Database string `json:"database"`
	// DBHost and DBPort are the database address as seen from the customer server
	// (default 127.0.0.1 and the engine's default port).
	DBHost string `json:"db_host,omitempty"`
	DBPort int    `json:"db_port,omitempty" jsonschema:"minimum=0,maximum=65535"`
	// DBUser is the database user.
	DBUser string `json:"db_user,omitempty"`
	// DBCredential references the database password in the secrets directory.
	DBCredential string `json:"db_credential,omitempty"`
	// To is the operator's computer (inventory host name).
	To string `json:"to"`
	// Keep prunes older backups of this customer and database beyond the newest Keep
	// (0 keeps everything). Only files ferry wrote are ever pruned.
	Keep int `json:"keep,omitempty" jsonschema:"minimum=0"`
}

// LogBackupRequest collects a customer's logs and delivers a bundle to the operator.
type LogBackupRequest struct {
	// From is the customer server (inventory host name).
	From string `json:"from"`
	// Paths are globs of log files on the customer server (rotated and compressed too).
	Paths []string `json:"paths" jsonschema:"minItems=1"`
	// Since keeps files modified within this duration (e.g. "24h"); empty keeps all.
	Since Duration `json:"since,omitempty"`
	// MaxSize caps the bytes collected (e.g. "500MiB" or a number of bytes); 0 is no cap.
	MaxSize Size `json:"max_size,omitempty"`
	// AllowEmpty delivers an empty bundle when nothing matches instead of failing.
	AllowEmpty bool `json:"allow_empty,omitempty"`
	// To is the operator's computer (inventory host name).
	To string `json:"to"`
	// Keep prunes older log bundles of this customer beyond the newest Keep.
	Keep int `json:"keep,omitempty" jsonschema:"minimum=0"`
}

// Duration is a time.Duration written as a Go duration string ("90s", "24h").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// String formats the duration as Go does.
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[Duration]()}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: strconv.Quote(s), Type: reflect.TypeFor[Duration]()}
	}
	*d = Duration(v)
	return nil
}

// Size is a byte count written as a number or a string with a unit ("512KiB", "2GB").
type Size int64

// UnmarshalJSON reads a number of bytes or a string with a unit.
func (s *Size) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		v, err := ParseSize(str)
		if err != nil {
			return &json.UnmarshalTypeError{Value: strconv.Quote(str), Type: reflect.TypeFor[Size]()}
		}
		*s = Size(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[Size]()}
	}
	*s = Size(n)
	return nil
}

// ParseSize reads "123", "10k", "512KiB", "2GB", "1.5GiB".
func ParseSize(str string) (int64, error) {
	t := strings.TrimSpace(str)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kb": 1e3, "kib": 1 << 10,
		"m": 1 << 20, "mb": 1e6, "mib": 1 << 20,
		"g": 1 << 30, "gb": 1e9, "gib": 1 << 30,
		"t": 1 << 40, "tb": 1e12, "tib": 1 << 40,
	}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 {
		return 0, fmt.Errorf("must be a size such as \"500MiB\", not %q", str)
	}
	return int64(v * mult), nil
}

// FieldError says which field of a request is wrong and why.
type FieldError struct {
	Field   string `json:"field"`
	Problem string `json:"problem"`
}

func (e FieldError) Error() string { return fmt.Sprintf("field %q: %s", e.Field, e.Problem) }

// ValidationError lists every problem of a rejected request.
type ValidationError struct {
	Fields []FieldError `json:"fields"`
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	return "invalid job request: " + strings.Join(parts, "; ")
}

func (e *ValidationError) add(field, format string, args ...any) {
	e.Fields = append(e.Fields, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

// MaxRequestBytes bounds a job request.
const MaxRequestBytes = 256 << 10

// DecodeJobRequest reads and validates one job request. Unknown fields are refused (a
// misspelt field must not be silently ignored). The error is a *ValidationError that
// names the field.
func DecodeJobRequest(data []byte) (JobRequest, error) {
	var req JobRequest
	if len(data) > MaxRequestBytes {
		return req, &ValidationError{Fields: []FieldError{{Field: "(request)", Problem: fmt.Sprintf("larger than %d bytes", MaxRequestBytes)}}}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, &ValidationError{Fields: []FieldError{decodeProblem(err)}}
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, &ValidationError{Fields: []FieldError{{Field: "(request)", Problem: "trailing data after the JSON object"}}}
	}
	return req, req.Validate()
}

func decodeProblem(err error) FieldError {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return FieldError{Field: "(request)", Problem: fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, syn)}
	case errors.As(err, &typ):
		f := typ.Field
		if f == "" {
			f = "(request)"
		}
		switch typ.Type {
		case reflect.TypeFor[Duration]():
			return FieldError{Field: f, Problem: fmt.Sprintf("must be a duration such as \"24h\", not %s", typ.Value)}
		case reflect.TypeFor[Size]():
			return FieldError{Field: f, Problem: fmt.Sprintf("must be a byte count or a size such as \"500MiB\", not %s", typ.Value)}
		}
		return FieldError{Field: f, Problem: fmt.Sprintf("must be %s, not JSON %s", jsonKind(typ.Type.Kind().String()), typ.Value)}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return FieldError{Field: "(request)", Problem: "empty or truncated JSON"}
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		name := strings.Trim(f, `"`)
		if name == "" {
			name = `""`
		}
		return FieldError{Field: name, Problem: "unknown field"}
	}
	return FieldError{Field: "(request)", Problem: strings.TrimPrefix(msg, "json: ")}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice", "array":
		return "an array"
	case "struct", "map", "ptr":
		return "an object"
	}
	return "a number"
}

// Validate checks a decoded request and names every bad field.
func (r *JobRequest) Validate() error {
	v := &ValidationError{}
	if r.Schema != SchemaJobRequest {
		v.add("schema", "must be %q", SchemaJobRequest)
	}
	if !ValidID(r.ID) {
		v.add("id", "must be 1–64 letters, digits, '-' or '_', starting with a letter or digit")
	}
	set := 0
	for _, isSet := range []bool{r.Update != nil, r.DBBackup != nil, r.LogBackup != nil} {
		if isSet {
			set++
		}
	}
	switch r.Action {
	case ActionUpdate:
		if r.Update == nil {
			v.add("update", "is required for action %q", r.Action)
		} else {
			r.Update.validate(v)
		}
	case ActionDBBackup:
		if r.DBBackup == nil {
			v.add("db_backup", "is required for action %q", r.Action)
		} else {
			r.DBBackup.validate(v)
		}
	case ActionLogBackup:
		if r.LogBackup == nil {
			v.add("log_backup", "is required for action %q", r.Action)
		} else {
			r.LogBackup.validate(v)
		}
	case "":
		v.add("action", "is required: one of update, db-backup, log-backup")
	default:
		v.add("action", "unknown action %q: one of update, db-backup, log-backup", r.Action)
	}
	if set > 1 {
		v.add("action", "exactly one of update, db_backup, log_backup may be set")
	}
	if len(r.Ticket) > 200 {
		v.add("ticket", "longer than 200 characters")
	}
	if len(r.RequestedBy) > 200 {
		v.add("requested_by", "longer than 200 characters")
	}
	if len(v.Fields) > 0 {
		return v
	}
	return nil
}

func (u *UpdateRequest) validate(v *ValidationError) {
	checkHost(v, "update.from", u.From)
	checkHost(v, "update.to", u.To)
	if len(u.Files) == 0 {
		v.add("update.files", "at least one path or glob is required")
	}
	for i, f := range u.Files {
		checkPath(v, fmt.Sprintf("update.files[%d]", i), f, true)
	}
	checkPath(v, "update.dest", u.Dest, false)
	switch u.Compression {
	case "", "zstd", "gzip":
	default:
		v.add("update.compression", "must be zstd or gzip, not %q", u.Compression)
	}
}

func (d *DBBackupRequest) validate(v *ValidationError) {
	checkHost(v, "db_backup.from", d.From)
	checkHost(v, "db_backup.to", d.To)
	switch d.Engine {
	case "", "postgres", "mysql":
	default:
		v.add("db_backup.engine", "must be postgres or mysql, not %q", d.Engine)
	}
	if !dbNameRE(d.Database) {
		v.add("db_backup.database", "must be 1–63 letters, digits, '_', '-' or '$'")
	}
	if d.DBHost != "" && !hostAddrOK(d.DBHost) {
		v.add("db_backup.db_host", "must be a host name or IP address, not %q", d.DBHost)
	}
	if d.DBPort < 0 || d.DBPort > 65535 {
		v.add("db_backup.db_port", "must be between 1 and 65535")
	}
	if d.DBUser != "" && !dbNameRE(d.DBUser) {
		v.add("db_backup.db_user", "must be 1–63 letters, digits, '_', '-' or '$'")
	}
	if d.DBCredential != "" && !ValidCredentialRef(d.DBCredential) {
		v.add("db_backup.db_credential", "must be a credential reference (letters, digits, '.', '-', '_')")
	}
	if d.Keep < 0 {
		v.add("db_backup.keep", "must not be negative")
	}
}

func (l *LogBackupRequest) validate(v *ValidationError) {
	checkHost(v, "log_backup.from", l.From)
	checkHost(v, "log_backup.to", l.To)
	if len(l.Paths) == 0 {
		v.add("log_backup.paths", "at least one glob is required")
	}
	for i, p := range l.Paths {
		checkPath(v, fmt.Sprintf("log_backup.paths[%d]", i), p, true)
	}
	if l.Since < 0 {
		v.add("log_backup.since", "must not be negative")
	}
	if l.MaxSize < 0 {
		v.add("log_backup.max_size", "must not be negative")
	}
	if l.Keep < 0 {
		v.add("log_backup.keep", "must not be negative")
	}
}

func checkHost(v *ValidationError, field, name string) {
	if name == "" {
		v.add(field, "is required: the name of a host in the inventory")
	} else if !ValidID(name) {
		v.add(field, "%q is not a host name (letters, digits, '-', '_')", name)
	}
}

// checkPath refuses empty, overlong and NUL-bearing paths and any '..' component, so a
// request cannot name a path outside the roots it is given. Globs are checked for syntax.
func checkPath(v *ValidationError, field, p string, glob bool) {
	switch {
	case p == "":
		v.add(field, "is required")
		return
	case len(p) > 4096:
		v.add(field, "longer than 4096 bytes")
		return
	case strings.ContainsAny(p, "\x00\n\r"):
		v.add(field, "contains a NUL or newline")
		return
	case strings.Contains(p, `\`):
		v.add(field, "contains a backslash: use '/' as the separator")
		return
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			v.add(field, "%q has a '..' component: paths may not climb out of their root", p)
			return
		}
	}
	if glob {
		if _, err := path.Match(p, ""); err != nil {
			v.add(field, "%q is not a valid glob: %v", p, err)
		}
	}
}

func dbNameRE(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c == '-' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func hostAddrOK(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, c := range s {
		if !(c == '.' || c == '-' || c == ':' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return s != ""
}

// ValidCredentialRef reports whether s can name a credential: 1–64 letters, digits,
// '.', '-' or '_', starting with a letter or digit (so it can never name a path outside
// the secrets directory).
func ValidCredentialRef(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '.' || s[0] == '-' || s[0] == '_' {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c == '-' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
