// Package dbtest runs real, throwaway database servers for tests: PostgreSQL
// (initdb + postgres) and MariaDB (mariadb-install-db + mariadbd), each in its own
// temporary directory on a free loopback port, with password authentication over TCP
// for the users a test creates and an administrator reachable only through the
// server's unix socket. Servers stop in t.Cleanup.
//
// The servers refuse to run as root, so when the test runs as root they run as the
// engine's system user (postgres, mysql) that the Debian packages create. Missing
// binaries fail the test (scripts/test-deps.sh installs them); they never skip it.
package dbtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Engines, as contracts.DumpArgs names them.
const (
	Postgres = "postgres"
	MySQL    = "mysql"
)

// Server is a running database server.
type Server struct {
	// Engine is Postgres or MySQL.
	Engine string
	// Addr is the TCP address, 127.0.0.1:<port> (password authentication).
	Addr string

	t      testing.TB
	dir    string // owned by the server's user
	socket string // unix socket (MariaDB) or socket directory (PostgreSQL)
	port   int
	bin    string // PostgreSQL bin directory
	admin  string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
	cred   *syscall.Credential // nil: run as ourselves
}

// pgAdmin is the PostgreSQL superuser (trusted on the unix socket only).
const pgAdmin = "ferry_admin"

// PostgresBin returns the bin directory of the newest PostgreSQL installed under
// /usr/lib/postgresql, failing the test when there is none.
func PostgresBin(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return va - vb
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i]
		}
	}
	t.Fatal("dbtest: no PostgreSQL server under /usr/lib/postgresql/*/bin: run scripts/test-deps.sh")
	return ""
}

// StartPostgres initialises and starts a PostgreSQL server: scram-sha-256 for TCP
// connections, trust for the administrator on the unix socket.
func StartPostgres(t testing.TB) *Server {
	t.Helper()
	bin := PostgresBin(t)
	s := newServer(t, Postgres, "postgres")
	s.bin, s.admin, s.socket = bin, pgAdmin, s.dir
	data := filepath.Join(s.dir, "data")
	s.run(filepath.Join(bin, "initdb"), []string{"-D", data, "-U", pgAdmin, "-E", "UTF8", "--locale=C",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions"}, nil)
	s.start(func(port int) []string {
		return []string{filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(port), "-k", s.dir,
			"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
			"-c", "full_page_writes=off", "-c", "shared_buffers=32MB", "-c", "max_connections=30",
			"-c", "password_encryption=scram-sha-256", "-c", "log_min_messages=warning"}
	}, func() bool {
		return exec.Command(filepath.Join(bin, "pg_isready"), "-q", "-h", s.dir, "-p", strconv.Itoa(s.port), "-U", pgAdmin).Run() == nil
	})
	return s
}

// StartMariaDB initialises and starts a MariaDB server: root has no password and is
// reachable on the unix socket; users a test creates log in over TCP with a password.
func StartMariaDB(t testing.TB) *Server {
	t.Helper()
	mariadbd := lookPath(t, "/usr/sbin/mariadbd", "mariadbd")
	installDB := lookPath(t, "", "mariadb-install-db", "mysql_install_db")
	lookPath(t, "", "mariadb", "mysql")
	s := newServer(t, MySQL, "mysql")
	s.admin, s.socket = "root", filepath.Join(s.dir, "mysqld.sock")
	data := filepath.Join(s.dir, "data")
	s.run(installDB, []string{"--no-defaults", "--datadir=" + data, "--auth-root-authentication-method=normal",
		"--skip-test-db", "--skip-name-resolve"}, nil)
	s.start(func(port int) []string {
		return []string{mariadbd, "--no-defaults", "--datadir=" + data, "--socket=" + s.socket,
			"--port=" + strconv.Itoa(port), "--bind-address=127.0.0.1", "--skip-name-resolve",
			"--pid-file=" + filepath.Join(s.dir, "mysqld.pid"), "--tmpdir=" + s.dir,
			"--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M", "--innodb-flush-log-at-trx-commit=0",
			"--innodb-doublewrite=0", "--skip-log-bin", "--max-connections=50"}
	}, func() bool {
		_, err := s.query(context.Background(), "", "SELECT 1")
		return err == nil
	})
	return s
}

func lookPath(t testing.TB, abs string, names ...string) string {
	t.Helper()
	if abs != "" {
		if _, err := os.Stat(abs); err == nil {
			return abs
		}
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	t.Fatalf("dbtest: %s not installed: run scripts/test-deps.sh", strings.Join(names, " or "))
	return ""
}

// newServer makes the server's directory, owned by the system user sysUser when
// running as root. It is outside t.TempDir so that socket paths stay short and the
// unprivileged server can reach it.
func newServer(t testing.TB, engine, sysUser string) *Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "ferry-dbtest-")
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &Server{t: t, Engine: engine, dir: dir, log: filepath.Join(dir, "server.log")}
	if os.Geteuid() == 0 {
		u, err := user.Lookup(sysUser)
		if err != nil {
			t.Fatalf("dbtest: the %s server cannot run as root and there is no %q user: run scripts/test-deps.sh", engine, sysUser)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatalf("dbtest: %v", err)
		}
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	return s
}

// run runs a setup command as the server's user and fails the test on error.
func (s *Server) run(bin string, args []string, stdin io.Reader) {
	s.t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = s.dir
	cmd.Stdin = stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("dbtest: %s: %v\n%s", filepath.Base(bin), err, out)
	}
}

// start runs the server on a free port (retrying when the port was taken meanwhile)
// and waits until ready reports true.
func (s *Server) start(argv func(port int) []string, ready func() bool) {
	s.t.Helper()
	var lastErr error
	for range 3 {
		s.port = freePort(s.t)
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		if lastErr = s.startOnce(argv(s.port), ready); lastErr == nil {
			s.t.Cleanup(s.stop)
			return
		}
	}
	s.t.Fatalf("dbtest: %s server: %v", s.Engine, lastErr)
}

func (s *Server) startOnce(argv []string, ready func() bool) error {
	logf, err := os.OpenFile(s.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group; killed with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ready() {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited while starting:\n%s", s.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("not ready within 30s:\n%s", s.Log())
		}
	}
}

// stop shuts the server down (fast shutdown), killing it if it lingers.
func (s *Server) stop() {
	sig := syscall.SIGTERM
	if s.Engine == Postgres {
		sig = syscall.SIGINT // fast shutdown: abort sessions, no waiting for clients
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		s.kill()
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL) // stray backends
	if s.t.Failed() {
		s.t.Logf("dbtest: %s server log:\n%s", s.Engine, s.Log())
	}
}

func (s *Server) kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
}

// Log returns the server's log so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// Port returns the server's TCP port.
func (s *Server) Port() int { return s.port }

// Exec runs sql (any number of statements) in database db as the administrator,
// through the unix socket, and fails the test on error. The SQL goes on standard
// input, never on a command line.
func (s *Server) Exec(t testing.TB, db, sql string) {
	t.Helper()
	if _, err := s.query(context.Background(), db, sql); err != nil {
		t.Fatalf("dbtest: %v", err)
	}
}

// Query runs sql in database db as the administrator and returns its output:
// unaligned rows, fields separated by tabs, without headers, trimmed.
func (s *Server) Query(t testing.TB, db, sql string) string {
	t.Helper()
	out, err := s.query(context.Background(), db, sql)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	return out
}

func (s *Server) query(ctx context.Context, db, sql string) (string, error) {
	var cmd *exec.Cmd
	switch s.Engine {
	case Postgres:
		if db == "" {
			db = "postgres"
		}
		cmd = exec.CommandContext(ctx, filepath.Join(s.bin, "psql"), "-X", "-q", "-A", "-t", "-F", "\t",
			"-v", "ON_ERROR_STOP=1", "-h", s.socket, "-p", strconv.Itoa(s.port), "-U", s.admin, "-d", db, "-f", "-")
	default:
		args := []string{"--no-defaults", "--batch", "--skip-column-names", "-S", s.socket, "-u", s.admin}
		if db != "" {
			args = append(args, "-D", db)
		}
		cmd = exec.CommandContext(ctx, mariadbClient(), args...)
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "HOME=" + s.dir}
	cmd.Stdin = strings.NewReader(sql)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", s.Engine, firstLine(sql), err, errb.String())
	}
	return strings.TrimSpace(out.String()), nil
}

func mariadbClient() string {
	for _, n := range []string{"mariadb", "mysql"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return "mariadb"
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}

// Quote returns s as an SQL string literal for the server's engine.
func (s *Server) Quote(v string) string {
	if s.Engine == MySQL {
		v = strings.ReplaceAll(v, `\`, `\\`)
	}
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// CreateDatabase creates database db.
func (s *Server) CreateDatabase(t testing.TB, db string) {
	t.Helper()
	s.Exec(t, "", "CREATE DATABASE "+db)
}

// CreateUser creates a login with password that may read (and dump) the databases
// dbs: on PostgreSQL a role with pg_read_all_data, on MariaDB a user with the
// privileges mysqldump --single-transaction needs on each database.
func (s *Server) CreateUser(t testing.TB, name, password string, dbs ...string) {
	t.Helper()
	switch s.Engine {
	case Postgres:
		s.Exec(t, "", fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD %s; GRANT pg_read_all_data TO %s;", name, s.Quote(password), name))
	default:
		sql := fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY %s;\n", name, s.Quote(password))
		for _, db := range dbs {
			sql += fmt.Sprintf("GRANT SELECT, LOCK TABLES, SHOW VIEW, TRIGGER, EVENT ON `%s`.* TO '%s'@'%%';\n", db, name)
		}
		s.Exec(t, "", sql)
	}
}

// Seed creates the tables customers (rows rows), orders (2×rows, with a foreign key
// to customers) and notes (rows/2, non-ASCII text) in db and fills them. It returns
// the row count of each table.
func (s *Server) Seed(t testing.TB, db string, rows int) map[string]int64 {
	t.Helper()
	var sql string
	switch s.Engine {
	case Postgres:
		sql = fmt.Sprintf(`
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL REFERENCES customers(id), amount numeric(12,2));
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO customers (id, name) SELECT g, 'customer ' || g FROM generate_series(1, %[1]d) g;
INSERT INTO orders (customer, amount) SELECT 1 + g %% %[1]d, g * 1.25 FROM generate_series(1, %[2]d) g;
INSERT INTO notes SELECT g, 'Grüße, 日本語 #' || g || E' \\ '' "q"' FROM generate_series(1, %[3]d) g;
`, rows, 2*rows, rows/2)
	default:
		sql = fmt.Sprintf(`
CREATE TABLE customers (id int PRIMARY KEY, name varchar(100) NOT NULL, created timestamp NOT NULL DEFAULT current_timestamp) ENGINE=InnoDB;
CREATE TABLE orders (id bigint AUTO_INCREMENT PRIMARY KEY, customer int NOT NULL, amount decimal(12,2),
  FOREIGN KEY (customer) REFERENCES customers(id)) ENGINE=InnoDB;
CREATE TABLE notes (id int PRIMARY KEY, body text) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO customers (id, name) SELECT seq, concat('customer ', seq) FROM seq_1_to_%[1]d;
INSERT INTO orders (customer, amount) SELECT 1 + seq %% %[1]d, seq * 1.25 FROM seq_1_to_%[2]d;
INSERT INTO notes SELECT seq, concat('Grüße, 日本語 #', seq, ' \\ '' "q"') FROM seq_1_to_%[3]d;
`, rows, 2*rows, rows/2)
	}
	s.Exec(t, db, sql)
	return map[string]int64{"customers": int64(rows), "orders": int64(2 * rows), "notes": int64(rows / 2)}
}

// SeedBig creates table big in db with about mb MiB of poorly compressible text (hex
// digests), for dumps that take a while.
func (s *Server) SeedBig(t testing.TB, db string, mb int) int64 {
	t.Helper()
	rows := mb << 20 / 100 // ~100 bytes of payload a row
	var sql string
	switch s.Engine {
	case Postgres:
		sql = fmt.Sprintf(`CREATE TABLE big (id int PRIMARY KEY, a text, b text, c text);
INSERT INTO big SELECT g, md5(g::text), md5((g+1)::text), md5((g*7)::text)::varchar(36) FROM generate_series(1, %d) g;`, rows)
	default:
		sql = fmt.Sprintf(`CREATE TABLE big (id int PRIMARY KEY, a char(32), b char(32), c varchar(36)) ENGINE=InnoDB;
INSERT INTO big SELECT seq, md5(seq), md5(seq+1), md5(seq*7) FROM seq_1_to_%d;`, rows)
	}
	s.Exec(t, db, sql)
	return int64(rows)
}

// Count returns the number of rows of table in db.
func (s *Server) Count(t testing.TB, db, table string) int64 {
	t.Helper()
	out := s.Query(t, db, "SELECT count(*) FROM "+table)
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatalf("dbtest: count of %s.%s: %q", db, table, out)
	}
	return n
}

// Restore restores the dump at path into the new database db: pg_restore (custom
// format) for PostgreSQL, the mariadb client for MariaDB.
func (s *Server) Restore(t testing.TB, path, db string) {
	t.Helper()
	s.CreateDatabase(t, db)
	var cmd *exec.Cmd
	switch s.Engine {
	case Postgres:
		cmd = exec.Command(filepath.Join(s.bin, "pg_restore"), "--exit-on-error", "--no-owner", "--no-privileges",
			"-h", s.socket, "-p", strconv.Itoa(s.port), "-U", s.admin, "-d", db, path)
	default:
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = f.Close() }()
		cmd = exec.Command(mariadbClient(), "--no-defaults", "--batch", "-S", s.socket, "-u", s.admin, db)
		cmd.Stdin = f
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "HOME=" + s.dir}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dbtest: restoring %s into %s: %v\n%s", filepath.Base(path), db, err, out)
	}
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}
