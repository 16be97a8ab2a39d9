// Package dbdump dumps PostgreSQL and MariaDB/MySQL databases with the engines' own
// tools (pg_dump -Fc, mariadb-dump/mysqldump --single-transaction) into a file, and
// verifies a dump by reading it whole.
//
// Secrets: the password goes to pg_dump through a 0600 passfile (PGPASSFILE) and to
// mysqldump through a 0600 option file (--defaults-extra-file), both in a private 0700
// directory removed afterwards; never on a command line, never in the environment of
// the tool, never in an error message. The tools run with a minimal environment (HOME
// pointing at the private directory, so no ~/.pgpass or ~/.my.cnf of the service's user
// is read) and in their own process group, killed whole when the context ends.
//
// Failures are *Error values wrapping one of the Err* sentinels, so callers can tell
// a rejected password from an unknown database from a dropped tunnel.
package dbdump

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// Engine is a database engine.
type Engine string

// Engines.
const (
	Postgres Engine = "postgres"
	MySQL    Engine = "mysql" // MariaDB or MySQL
)

// Manifest artifact kinds of the dumps (contracts.ManifestArtifact.Kind).
const (
	KindPostgres = "pg-dump"
	KindMySQL    = "mysql-dump"
)

// ParseEngine returns the engine named s: "" and "postgres" (also "postgresql") are
// PostgreSQL, "mysql" (also "mariadb") is MariaDB/MySQL.
func ParseEngine(s string) (Engine, error) {
	switch strings.ToLower(s) {
	case "", "postgres", "postgresql":
		return Postgres, nil
	case "mysql", "mariadb":
		return MySQL, nil
	}
	return "", &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("database engine %q: want postgres or mysql", s)}
}

// Kind is the manifest kind of the engine's dumps.
func (e Engine) Kind() string {
	if e == MySQL {
		return KindMySQL
	}
	return KindPostgres
}

// Sentinel errors: every *Error wraps exactly one.
var (
	// ErrInvalid: the target cannot be dumped as given (bad name, address, engine).
	ErrInvalid = errors.New("invalid dump target")
	// ErrAuth: the server rejected the user or password, or the user lacks a privilege.
	ErrAuth = errors.New("database authentication failed")
	// ErrNoDatabase: the database does not exist (or the user may not see it).
	ErrNoDatabase = errors.New("database does not exist")
	// ErrUnreachable: nothing answered at the address, or the connection closed before
	// the server greeted (a tunnel to a closed port). Retryable.
	ErrUnreachable = errors.New("database unreachable")
	// ErrConnectionLost: the connection broke during the dump (a dropped tunnel). Retryable.
	ErrConnectionLost = errors.New("database connection lost")
	// ErrIncomplete: the dump tool succeeded but the dump does not read back whole.
	ErrIncomplete = errors.New("dump incomplete")
	// ErrTool: a dump tool is missing or unusable on this machine.
	ErrTool = errors.New("dump tool unavailable")
	// ErrFailed: the dump tool failed for another reason (its message says which).
	ErrFailed = errors.New("dump failed")
)

// Error is a failed dump or verification. Msg is for people and never holds a secret
// (the tool's messages are quoted with the password, should it appear, redacted).
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the Kind sentinel.
func (e *Error) Unwrap() error { return e.Kind }

// Target is the database to dump.
type Target struct {
	Engine Engine
	// Addr is host:port, typically the listener of an SSH tunnel.
	Addr     string
	Database string
	// User is the database user; empty leaves it to the tool's default.
	User     string
	Password Password
}

// Check refuses targets that can never be dumped. Names are 1–63 letters, digits,
// '_', '-' or '$' (as contracts validates job requests), not starting with '-', so
// that no name can read as an option or a connection string.
func (t Target) Check() error {
	if t.Engine != Postgres && t.Engine != MySQL {
		return &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("database engine %q: want postgres or mysql", t.Engine)}
	}
	host, port, err := net.SplitHostPort(t.Addr)
	if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 || strings.HasPrefix(host, "-") {
		return &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("database address %q: want host:port", t.Addr)}
	}
	if !validName(t.Database) {
		return &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("database name %q: want 1–63 letters, digits, '_', '-' or '$', not starting with '-'", t.Database)}
	}
	if t.User != "" && !validName(t.User) {
		return &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("database user %q: want 1–63 letters, digits, '_', '-' or '$', not starting with '-'", t.User)}
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c == '-' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func (t Target) user() string {
	if t.User == "" {
		return "(the tool's default user)"
	}
	return strconv.Quote(t.User)
}

// Dumper runs the dump tools. The zero value finds them in PATH.
type Dumper struct {
	// PgDump, PgRestore and MySQLDump are the tools' paths; empty looks up pg_dump,
	// pg_restore and mariadb-dump (then mysqldump) in PATH.
	PgDump, PgRestore, MySQLDump string
	// TempDir holds the private directories of passfiles (default os.TempDir()).
	TempDir string
	// ConnectTimeout bounds connecting to a PostgreSQL server (default 30 s; mysqldump
	// has no such option: the step's deadline bounds it).
	ConnectTimeout time.Duration
	// ProgressInterval is how often Dump reports the dump's size (default 250 ms).
	ProgressInterval time.Duration
}

// maxStderr bounds the tool output kept for error messages.
const maxStderr = 32 << 10

func (d *Dumper) tool(configured string, names ...string) (string, error) {
	if configured != "" {
		names = []string{configured}
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", &Error{Kind: ErrTool, Msg: fmt.Sprintf("%s is not installed on this machine (not found in PATH)", strings.Join(names, " or "))}
}

// Dump dumps t into the file at path, which the caller created (empty, private to
// it): pg_dump -Fc for PostgreSQL (written to the file itself, so the archive keeps
// its data offsets for selective and parallel pg_restore), mariadb-dump/mysqldump
// --single-transaction for MariaDB/MySQL. progress, if not nil, gets the file's size
// every ProgressInterval. Dump returns nil only when the tool exited with status 0 and
// the dump reads back whole: a PostgreSQL dump is read by pg_restore while it is
// written (see follow.go) and its final table of contents read again; a MariaDB/MySQL
// dump must end with the tool's trailer (Verify checks a dump on its own the same
// ways). On failure the file holds garbage: remove it.
func (d *Dumper) Dump(ctx context.Context, t Target, path string, progress func(done int64)) error {
	if err := t.Check(); err != nil {
		return err
	}
	priv, err := os.MkdirTemp(d.TempDir, "ferry-dbdump-")
	if err != nil {
		return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("creating a private directory for the dump's passfile: %v", err)}
	}
	defer func() { _ = os.RemoveAll(priv) }()

	host, port, _ := net.SplitHostPort(t.Addr)
	timeout := d.ConnectTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	secs := strconv.Itoa(int((timeout + time.Second - 1) / time.Second))
	env := baseEnv(priv)
	var (
		bin  string
		args []string
	)
	switch t.Engine {
	case Postgres:
		if bin, err = d.tool(d.PgDump, "pg_dump"); err != nil {
			return err
		}
		// Without a password, the passfile does not exist and libpq finds none (and
		// never the service user's ~/.pgpass: HOME is the private directory).
		passfile := priv + "/pgpass"
		if t.Password.IsSet() {
			if passfile, err = writePrivate(priv, "pgpass", pgpassLine(t.Password)); err != nil {
				return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("writing the passfile: %v", err)}
			}
		}
		env = append(env, "PGPASSFILE="+passfile, "PGCONNECT_TIMEOUT="+secs, "PGAPPNAME=ferry-dump")
		args = []string{"--format=custom", "--no-password", "--file=" + path,
			"--host=" + host, "--port=" + port, "--dbname=" + t.Database}
		if t.User != "" {
			args = append(args, "--username="+t.User)
		}
	case MySQL:
		if bin, err = d.tool(d.MySQLDump, "mariadb-dump", "mysqldump"); err != nil {
			return err
		}
		opts := "[client]\n"
		if t.Password.IsSet() {
			opts += "password=" + mysqlOptionValue(t.Password) + "\n"
		}
		optfile, err := writePrivate(priv, "my.cnf", opts)
		if err != nil {
			return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("writing the option file: %v", err)}
		}
		// --defaults-extra-file must come first.
		args = []string{"--defaults-extra-file=" + optfile, "--protocol=TCP", "--host=" + host, "--port=" + port,
			"--single-transaction", "--quick", "--routines", "--triggers",
			"--hex-blob", "--default-character-set=utf8mb4", "--result-file=" + path}
		if t.User != "" {
			args = append(args, "--user="+t.User)
		}
		args = append(args, t.Database)
	}

	var restore string
	if t.Engine == Postgres {
		if restore, err = d.tool(d.PgRestore, "pg_restore"); err != nil {
			return err
		}
	}

	stderr := &boundedBuffer{max: maxStderr}
	cmd := command(ctx, bin, args, env, stderr)
	if err := cmd.Start(); err != nil {
		return &Error{Kind: ErrTool, Msg: fmt.Sprintf("starting %s: %v", bin, err)}
	}
	var follow *followVerify
	if t.Engine == Postgres {
		if follow, err = startFollowVerify(ctx, restore, path, priv); err != nil {
			_ = cmd.Cancel()
			_ = cmd.Wait()
			return err
		}
		defer follow.stop()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if progress != nil {
		wg.Go(func() { watchSize(path, d.ProgressInterval, stop, progress) })
	}
	err = cmd.Wait()
	close(stop)
	wg.Wait()
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("dump of %s database %q at %s stopped: %w", t.Engine, t.Database, t.Addr, cerr)
	}
	if err != nil {
		var size int64
		if fi, serr := os.Stat(path); serr == nil {
			size = fi.Size()
		}
		return classify(t, bin, err, stderr.String(), size)
	}
	if progress != nil {
		if fi, serr := os.Stat(path); serr == nil {
			progress(fi.Size())
		}
	}
	switch t.Engine {
	case Postgres:
		if err := follow.finish(ctx); err != nil {
			return err
		}
		return checkTOC(ctx, restore, path, priv)
	default:
		return verifyTrailer(path)
	}
}

// Verify reads the dump at path whole and fails with ErrIncomplete unless it is
// complete: pg_restore writes the whole archive as SQL to /dev/null (a truncated
// archive fails where pg_restore --list alone would not notice); a MariaDB/MySQL dump
// must end with the "-- Dump completed" trailer the tool writes last.
func (d *Dumper) Verify(ctx context.Context, e Engine, path string) error {
	switch e {
	case Postgres:
		bin, err := d.tool(d.PgRestore, "pg_restore")
		if err != nil {
			return err
		}
		priv, err := os.MkdirTemp(d.TempDir, "ferry-dbdump-")
		if err != nil {
			return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("creating a private directory: %v", err)}
		}
		defer func() { _ = os.RemoveAll(priv) }()
		return runRestore(ctx, bin, []string{"--file=/dev/null", "--exit-on-error", path}, priv, notWhole)
	case MySQL:
		return verifyTrailer(path)
	}
	return &Error{Kind: ErrInvalid, Msg: fmt.Sprintf("database engine %q: want postgres or mysql", e)}
}

// verifyTrailer checks that the last line of the dump is the "-- Dump completed"
// trailer (followed only by the tool's closing newlines).
func verifyTrailer(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("verifying the dump: %v", err)}
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("verifying the dump: %v", err)}
	}
	const tail = 4096
	off := max(fi.Size()-tail, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return &Error{Kind: ErrFailed, Msg: fmt.Sprintf("verifying the dump: %v", err)}
	}
	buf = bytes.TrimRight(buf, "\n")
	last := buf[bytes.LastIndexByte(buf, '\n')+1:]
	if !bytes.HasPrefix(last, []byte("-- Dump completed")) {
		return &Error{Kind: ErrIncomplete, Msg: fmt.Sprintf("the dump (%d bytes) does not end with the \"-- Dump completed\" trailer: it is truncated", fi.Size())}
	}
	return nil
}

// baseEnv is the tools' whole environment: nothing of the service's (no PG*, MYSQL*
// settings, no password variables) but PATH, messages in English for classify, and
// HOME in the private directory.
func baseEnv(home string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	return []string{"PATH=" + path, "HOME=" + home, "LC_ALL=C", "LANG=C", "TZ=UTC"}
}

// command builds the tool's process: its own process group, killed whole (SIGKILL)
// when ctx ends, and when this process dies.
func command(ctx context.Context, bin string, args, env []string, stderr io.Writer) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.Stdin = nil
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func watchSize(path string, every time.Duration, stop <-chan struct{}, progress func(int64)) {
	if every <= 0 {
		every = 250 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if fi, err := os.Stat(path); err == nil && fi.Size() != last {
				last = fi.Size()
				progress(last)
			}
		}
	}
}

// boundedBuffer keeps the first max bytes written to it.
type boundedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped int64
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.max - b.buf.Len()
	if room < len(p) {
		b.dropped += int64(len(p) - max(room, 0))
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if b.dropped > 0 {
		s += fmt.Sprintf("\n[%d more bytes]", b.dropped)
	}
	return s
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return err.Error()
}

// excerpt makes the tool's output one short line for an error message, with the
// password (should the tool ever echo it) redacted.
func excerpt(s string, p Password) string {
	if p.IsSet() && p.s != "" {
		s = strings.ReplaceAll(s, p.s, redacted)
	}
	s = strings.Join(strings.Fields(s), " ")
	const maxLen = 600
	if len(s) > maxLen {
		cut := maxLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + " …"
	}
	if s == "" {
		s = "(no message)"
	}
	return s
}
