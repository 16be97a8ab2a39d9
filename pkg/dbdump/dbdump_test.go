package dbdump

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshdial"
)

const canary = `canary-pw-41c9:\"#' x`

// fakeTool writes a shell script standing in for a dump tool: it records its argv,
// its environment and the secret file it was given (with its mode), writes some
// output to the --file/--result-file argument, then runs body.
func fakeTool(t *testing.T, body string) (tool, record string) {
	t.Helper()
	dir := t.TempDir()
	record = filepath.Join(dir, "record")
	script := `#!/bin/sh
rec=` + record + `
: >"$rec.argv"
out=
for a in "$@"; do
  printf '%s\n' "$a" >>"$rec.argv"
  case "$a" in
    --file=*) out="${a#--file=}" ;;
    --result-file=*) out="${a#--result-file=}" ;;
    --defaults-extra-file=*) f="${a#--defaults-extra-file=}"; cp "$f" "$rec.secret"; stat -c %a "$f" >"$rec.mode" ;;
  esac
done
env >"$rec.env"
if [ -n "$PGPASSFILE" ] && [ -f "$PGPASSFILE" ]; then cp "$PGPASSFILE" "$rec.secret"; stat -c %a "$PGPASSFILE" >"$rec.mode"; fi
printf 'partial' >"$out"
` + body + "\n"
	tool = filepath.Join(dir, "tool")
	if err := os.WriteFile(tool, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return tool, record
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSecretReachesToolOnlyThroughPrivateFile runs stand-in tools and checks that the
// password reaches them only through a 0600 passfile / option file, escaped so the
// tool reads it back, never through argv or the environment, and that the private
// directory is gone afterwards.
func TestSecretReachesToolOnlyThroughPrivateFile(t *testing.T) {
	for _, engine := range []Engine{Postgres, MySQL} {
		// The stand-in dump ends with mysqldump's trailer; the stand-in pg_restore keeps
		// what it was given to read while the dump was written.
		tool, rec := fakeTool(t, `printf '\n-- Dump completed on 2026-01-01 10:00:00\n' >>"$out"; exit 0`)
		restore := filepath.Join(t.TempDir(), "pg_restore")
		script := "#!/bin/sh\ncase \"$*\" in *--list*) exit 0;; esac\ncat >" + rec + ".restored\n"
		if err := os.WriteFile(restore, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		tmp := t.TempDir()
		d := &Dumper{PgDump: tool, PgRestore: restore, MySQLDump: tool, TempDir: tmp}
		out := filepath.Join(t.TempDir(), "out")
		var progress []int64
		err := d.Dump(context.Background(), Target{Engine: engine, Addr: "127.0.0.1:5432", Database: "app", User: "backup",
			Password: NewPassword(canary)}, out, func(n int64) { progress = append(progress, n) })
		if err != nil {
			t.Fatalf("%s: %v", engine, err)
		}
		argv, env := read(t, rec+".argv"), read(t, rec+".env")
		for what, s := range map[string]string{"argv": argv, "environment": env} {
			if strings.Contains(s, "canary-pw") {
				t.Errorf("%s: the password is in the tool's %s:\n%s", engine, what, s)
			}
		}
		if strings.Contains(env, "PGPASSWORD") || strings.Contains(env, "MYSQL_PWD") {
			t.Errorf("%s: a password variable in the environment:\n%s", engine, env)
		}
		if mode := strings.TrimSpace(read(t, rec+".mode")); mode != "600" {
			t.Errorf("%s: secret file mode %s, want 600", engine, mode)
		}
		secret := read(t, rec+".secret")
		switch engine {
		case Postgres:
			if got, want := read(t, rec+".restored"), read(t, out); got != want {
				t.Errorf("pg_restore read %q while the dump was written, the dump is %q", got, want)
			}
			if want := "*:*:*:*:" + `canary-pw-41c9\:\\"#' x` + "\n"; secret != want {
				t.Errorf("passfile %q, want %q", secret, want)
			}
			for _, a := range []string{"--format=custom", "--no-password", "--host=127.0.0.1", "--port=5432", "--dbname=app", "--username=backup", "--file=" + out} {
				if !strings.Contains(argv, a+"\n") {
					t.Errorf("pg_dump argv lacks %s:\n%s", a, argv)
				}
			}
			if !strings.Contains(env, "HOME="+tmp) || !strings.Contains(env, "LC_ALL=C") {
				t.Errorf("pg_dump environment:\n%s", env)
			}
		case MySQL:
			if want := "[client]\npassword=\"" + `canary-pw-41c9:\\\"#\' x` + "\"\n"; secret != want {
				t.Errorf("option file %q, want %q", secret, want)
			}
			if !strings.HasPrefix(argv, "--defaults-extra-file=") {
				t.Errorf("mysqldump argv does not start with --defaults-extra-file:\n%s", argv)
			}
			for _, a := range []string{"--protocol=TCP", "--single-transaction", "--user=backup", "--result-file=" + out, "app"} {
				if !strings.Contains(argv, a+"\n") {
					t.Errorf("mysqldump argv lacks %s:\n%s", a, argv)
				}
			}
		}
		if fi, err := os.Stat(out); err != nil || len(progress) == 0 || progress[len(progress)-1] != fi.Size() {
			t.Errorf("%s: progress %v", engine, progress)
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("%s: private directory left behind: %v", engine, left)
		}
	}
}

// TestCancelKillsProcessGroup cancels a dump whose tool started a child of its own:
// Dump returns promptly and the whole group is gone.
func TestCancelKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	tool, _ := fakeTool(t, `sleep 60 & echo $! >`+pidFile+`; wait`)
	d := &Dumper{PgDump: tool, TempDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			if _, err := os.Stat(pidFile); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	err := d.Dump(ctx, Target{Engine: Postgres, Addr: "127.0.0.1:5432", Database: "app"}, filepath.Join(t.TempDir(), "out"), nil)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 10*time.Second {
		t.Fatalf("Dump = %v after %v, want context.Canceled promptly", err, time.Since(start))
	}
	var pid int
	if _, err := fmt.Sscan(read(t, pidFile), &pid); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		// A zombie until reaped by init: check its state.
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil || strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tool's child %d survived the cancellation", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFailureIsClassified(t *testing.T) {
	msg := filepath.Join(t.TempDir(), "msg")
	if err := os.WriteFile(msg, []byte(`pg_dump: error: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "backup" (`+canary+")\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tool, _ := fakeTool(t, `cat `+msg+` >&2; exit 1`)
	d := &Dumper{PgDump: tool, TempDir: t.TempDir()}
	err := d.Dump(context.Background(), Target{Engine: Postgres, Addr: "127.0.0.1:5432", Database: "app", User: "backup", Password: NewPassword(canary)},
		filepath.Join(t.TempDir(), "out"), nil)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), `database password rejected for user "backup"`) {
		t.Fatalf("Dump = %v, want ErrAuth", err)
	}
	if strings.Contains(err.Error(), "canary-pw") || !strings.Contains(err.Error(), redacted) {
		t.Errorf("the tool's echo of the password is not redacted: %v", err)
	}
}

func TestClassify(t *testing.T) {
	pg := Target{Engine: Postgres, Addr: "127.0.0.1:1", Database: "app", User: "u", Password: NewPassword("x")}
	my := Target{Engine: MySQL, Addr: "127.0.0.1:1", Database: "app", User: "u", Password: NewPassword("x")}
	exit := errors.New("exit status 1")
	cases := []struct {
		t    Target
		out  string
		size int64
		want error
		says string
	}{
		{pg, `FATAL:  password authentication failed for user "u"`, 0, ErrAuth, "password rejected"},
		{pg, `FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "u", database "app"`, 0, ErrAuth, "rejected"},
		{pg, `FATAL:  database "app" does not exist`, 0, ErrNoDatabase, "database app does not exist"},
		{pg, `connection to server at "127.0.0.1", port 1 failed: Connection refused`, 0, ErrUnreachable, "closed or unreachable"},
		{pg, `failed: server closed the connection unexpectedly`, 0, ErrUnreachable, "closed or unreachable"},
		{pg, `Dumping the contents of table "big" failed: PQgetCopyData() failed. server closed the connection unexpectedly`, 0, ErrConnectionLost, "lost during the dump"},
		{pg, `pg_dump: error: query failed: ERROR:  permission denied for table secrets`, 0, ErrAuth, "lacks a privilege"},
		{pg, `pg_dump: error: aborting because of server version mismatch`, 0, ErrTool, "cannot dump"},
		{pg, `pg_dump: error: something else`, 0, ErrFailed, "something else"},
		{my, `Got error: 1045: "Access denied for user 'u'@'127.0.0.1' (using password: YES)" when trying to connect`, 0, ErrAuth, "password rejected"},
		{my, `Got error: 1049: "Unknown database 'app'" when selecting the database`, 300, ErrNoDatabase, "database app does not exist"},
		{my, `Got error: 1044: "Access denied for user 'u'@'%' to database 'app'" when selecting the database`, 300, ErrNoDatabase, "database app does not exist"},
		{my, `Got error: 2002: "Can't connect to server on '127.0.0.1' (115)" when trying to connect`, 0, ErrUnreachable, "closed or unreachable"},
		{my, `Got error: 2013: "Lost connection to server at 'handshake: reading initial communication packet', system error: 11"`, 0, ErrUnreachable, "closed or unreachable"},
		{my, "Error 2013: Lost connection to server during query when dumping table `big` at row: 5", 0, ErrConnectionLost, "lost during the dump"},
		{my, `Got error: 2006: "Server has gone away"`, 4096, ErrConnectionLost, "lost during the dump"},
		{my, `Couldn't execute 'SHOW CREATE PROCEDURE': Access denied; you need (at least one of) the SELECT privilege(s)`, 100, ErrAuth, "lacks a privilege"},
	}
	for _, c := range cases {
		err := classify(c.t, "/usr/bin/tool", exit, c.out, c.size)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s %q: %v (%v), want %v saying %q", c.t.Engine, c.out, err, err.Kind, c.want, c.says)
		}
	}
}

func TestTargetCheck(t *testing.T) {
	ok := Target{Engine: Postgres, Addr: "127.0.0.1:5432", Database: "app_1$", User: "backup-user"}
	if err := ok.Check(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Target){
		"engine":          func(t *Target) { t.Engine = "oracle" },
		"no port":         func(t *Target) { t.Addr = "127.0.0.1" },
		"bad port":        func(t *Target) { t.Addr = "127.0.0.1:99999" },
		"option host":     func(t *Target) { t.Addr = "-h:1" },
		"empty db":        func(t *Target) { t.Database = "" },
		"conninfo db":     func(t *Target) { t.Database = "host=evil dbname=x" },
		"option db":       func(t *Target) { t.Database = "-Fp" },
		"uri db":          func(t *Target) { t.Database = "postgresql://evil/x" },
		"long db":         func(t *Target) { t.Database = strings.Repeat("a", 64) },
		"option user":     func(t *Target) { t.User = "--help" },
		"user with quote": func(t *Target) { t.User = "a'b" },
	} {
		tt := ok
		mod(&tt)
		if err := tt.Check(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Check = %v, want ErrInvalid", name, err)
		}
	}
	for in, want := range map[string]Engine{"": Postgres, "postgres": Postgres, "PostgreSQL": Postgres, "mysql": MySQL, "mariadb": MySQL} {
		if got, err := ParseEngine(in); got != want || err != nil {
			t.Errorf("ParseEngine(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseEngine("sqlite"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseEngine(sqlite) = %v", err)
	}
}

func TestLoadPassword(t *testing.T) {
	dir := t.TempDir()
	write := func(ref, content string, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Join(dir, ref), 0o700); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, ref, "password")
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("ok", canary+"\n", 0o600)
	write("ro", canary, 0o400)
	write("loose", canary, 0o640)
	write("lines", canary+"\nsecond\n", 0o600)
	if err := os.MkdirAll(filepath.Join(dir, "link"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "ok", "password"), filepath.Join(dir, "link", "password")); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"ok", "ro"} {
		p, err := LoadPassword(dir, ref)
		if err != nil || p.s != canary || !p.IsSet() {
			t.Errorf("%s: %v", ref, err)
		}
	}
	for ref, says := range map[string]string{"loose": "mode 0640", "lines": "more than one line", "link": "symbolic link",
		"missing": "no database password file", "../ok": "invalid credential reference"} {
		_, err := LoadPassword(dir, ref)
		if !errors.Is(err, sshdial.ErrCredential) || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want a credential error saying %q", ref, err, says)
		}
		if err != nil && strings.Contains(err.Error(), "canary-pw") {
			t.Errorf("%s: error leaks the password: %v", ref, err)
		}
	}
}

func TestPasswordNeverPrints(t *testing.T) {
	p := NewPassword(canary)
	tg := Target{Engine: Postgres, Database: "app", Password: p}
	var logs strings.Builder
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "password", p, "target", tg)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "password", p, "target", tg)
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s %q %x", p, p, p, p, p, p),
		fmt.Sprintf("%v %+v %#v", tg, tg, tg), logs.String()} {
		if strings.Contains(s, "canary-pw") {
			t.Errorf("the password prints: %s", s)
		}
	}
}

func TestVerifyTrailer(t *testing.T) {
	dir := t.TempDir()
	full := "-- MariaDB dump\nINSERT INTO t VALUES (1);\n\n-- Dump completed on 2026-01-01 10:00:00\n"
	for name, content := range map[string]string{"full": full, "truncated": full[:30], "empty": ""} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		err := (&Dumper{}).Verify(context.Background(), MySQL, p)
		if (name == "full") != (err == nil) || (err != nil && !errors.Is(err, ErrIncomplete)) {
			t.Errorf("%s: Verify = %v", name, err)
		}
	}
}
