package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/dbtest"
	"github.com/ferrydesk/ferry/pkg/sshdial"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// ferry backup db through the CLI, every service real: a real PostgreSQL and a real
// MariaDB behind the customer's real sshd, dumped through the connector's tunnel and
// delivered to the operator's home; restoring the delivered dump into a fresh database
// gives the same row counts.
func TestSystemDBBackup(t *testing.T) {
	s := startSystem(t, false)
	home, _, _ := testHome(t)
	t.Cleanup(func() { os.RemoveAll(filepath.Join(home, "ferry")) })
	env := map[string]string{"FERRY_NATS_URL": s.srv.URL}

	for _, engine := range []string{"postgres", "mysql"} {
		t.Run(engine, func(t *testing.T) {
			var db *dbtest.Server
			if engine == "postgres" {
				db = dbtest.StartPostgres(t)
			} else {
				db = dbtest.StartMariaDB(t)
			}
			const password = "canary-db-password-4711"
			db.CreateDatabase(t, "erp")
			want := db.Seed(t, "erp", 500)
			db.CreateUser(t, "backup", password, "erp")
			sshtest.WriteCredential(t, s.secrets, "erp-"+engine, map[string]string{sshdial.FilePassword: password})
			sshtest.WriteCredential(t, s.secrets, "erp-"+engine+"-wrong", map[string]string{sshdial.FilePassword: "not-it"})
			args := func(id, cred string) []string {
				return []string{"backup", "db", "--id", id, "--from", "customer", "--engine", engine, "--db", "erp",
					"--db-host", "127.0.0.1", "--db-port", strconv.Itoa(db.Port()), "--db-user", "backup",
					"--db-credential", cred, "--to", "operator-pc", "--wait"}
			}

			id := "db-" + engine
			r := ferry(t, env, args(id, "erp-"+engine)...)
			if r.code != 0 {
				t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			name := "erp-" + s.job(id).Created.UTC().Format(contracts.BackupTimeFormat) + ".dump"
			dump := filepath.Join(home, "ferry", "backups", "customer", name)
			raw, err := os.ReadFile(dump + ".manifest.json")
			if err != nil {
				t.Fatalf("no manifest beside the dump: %v", err)
			}
			var m contracts.Manifest
			if err := json.Unmarshal(raw, &m); err != nil || !strings.HasSuffix(m.Artifact.Kind, "dump") {
				t.Fatalf("manifest %s: %v", raw, err)
			}
			db.Restore(t, dump, "restored")
			for table, n := range want {
				if got := db.Count(t, "restored", table); got != n {
					t.Errorf("%s: %d rows restored, %d dumped", table, got, n)
				}
			}
			s.nothingLeft(id)

			// A wrong database password fails the dump step saying so; nothing is delivered.
			before, _ := os.ReadDir(filepath.Dir(dump))
			r = ferry(t, env, args(id+"-wrong", "erp-"+engine+"-wrong")...)
			if r.code != 1 || !strings.Contains(r.stderr, "dump") || !strings.Contains(r.stderr, "password") {
				t.Fatalf("wrong password: exit %d, stderr %q", r.code, r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, password) {
				t.Fatal("the database password reached the CLI's output")
			}
			if after, _ := os.ReadDir(filepath.Dir(dump)); len(after) != len(before) {
				t.Fatalf("a failed backup delivered something: %d entries before, %d after", len(before), len(after))
			}
			s.nothingLeft(id + "-wrong")
		})
	}
}
