//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
)

// The update of the seed's first list: the update on the operator's PC is copied into
// its home, streamed from there into an archive in staging (pulled and archived in
// one pass: the bundle step) and pushed to the customer, where it lands verified. Then
// the same with --unpack: the tree itself, each file as on the PC.
func TestActionsUpdate(t *testing.T) {
	ctx := context.Background()
	id := fmt.Sprintf("e2e-update-%d", time.Now().UnixNano())
	if _, err := st.cli(ctx, "helpdesk", "update", "--id", id, "--from", "operator-pc", "--files", "updates/app-2.3.1",
		"--to", "customer", "--dest", "/opt/app/releases", "--wait"); err != nil {
		t.Fatal(err)
	}
	j := st.job(t, id)
	if j.State != contracts.JobSucceeded {
		t.Fatalf("update %s: %+v", j.State, j.Failure)
	}
	// The archive and its manifest are on the customer, and the archive's SHA-256 on
	// the customer is the manifest's.
	var m contracts.Manifest
	listing := st.exec(t, "customer", "ls", "/opt/app/releases")
	var archive string
	for _, name := range strings.Fields(listing) {
		if strings.HasSuffix(name, ".tar.zst") {
			archive = name
		}
		if strings.Contains(name, ".part") || strings.HasPrefix(name, ".") {
			t.Errorf("temporary file on the customer: %s", name)
		}
	}
	if archive == "" {
		t.Fatalf("no archive in /opt/app/releases: %s", listing)
	}
	raw := st.exec(t, "customer", "cat", path.Join("/opt/app/releases", archive+".manifest.json"))
	mustJSON(t, raw, &m)
	sum := strings.Fields(st.exec(t, "customer", "sha256sum", path.Join("/opt/app/releases", archive)))[0]
	if sum != m.Artifact.SHA256 {
		t.Fatalf("archive on the customer has SHA-256 %s, its manifest says %s", sum, m.Artifact.SHA256)
	}
	// Every file of the update is in the manifest with the operator PC's SHA-256.
	onPC := sums(st.exec(t, "operator-pc", "sh", "-c", "cd /home/operator/updates && find app-2.3.1 -type f -exec sha256sum {} +"))
	if len(m.Files) != len(onPC) {
		t.Fatalf("manifest lists %d files, the operator PC has %d", len(m.Files), len(onPC))
	}
	for _, f := range m.Files {
		if onPC[f.Path] != f.SHA256 {
			t.Errorf("%s: manifest SHA-256 %s, operator PC %s", f.Path, f.SHA256, onPC[f.Path])
		}
	}
	st.nothingLeft(t)

	// --unpack: the tree lands in place of the archive.
	id2 := id + "-unpack"
	if _, err := st.cli(ctx, "helpdesk", "update", "--id", id2, "--from", "operator-pc", "--files", "updates/app-2.3.1",
		"--to", "customer", "--dest", "/opt/app/current", "--unpack", "--wait"); err != nil {
		t.Fatal(err)
	}
	onCustomer := sums(st.exec(t, "customer", "sh", "-c", "cd /opt/app/current && find app-2.3.1 -type f -exec sha256sum {} +"))
	for p, s := range onPC {
		if onCustomer[p] != s {
			t.Errorf("%s on the customer: %q, on the operator PC: %q", p, onCustomer[p], s)
		}
	}
	st.nothingLeft(t)
}

// The database backup: pg_dump through the tunnel on the helpdesk side, delivered to
// the operator's PC, where pg_restore reads it whole; restored into a fresh database
// it has the seeded row counts.
func TestActionsDBBackup(t *testing.T) {
	ctx := context.Background()
	id := fmt.Sprintf("e2e-db-%d", time.Now().UnixNano())
	if _, err := st.cli(ctx, "helpdesk", "backup", "db", "--id", id, "--from", "customer", "--db", "shop",
		"--db-user", "ferry", "--db-credential", "customer-db", "--to", "operator-pc", "--wait"); err != nil {
		t.Fatal(err)
	}
	j := st.job(t, id)
	name := "shop-" + j.Created.UTC().Format(contracts.BackupTimeFormat) + ".dump"
	dump := path.Join("/home/operator/ferry/backups/customer", name)
	var m contracts.Manifest
	mustJSON(t, st.exec(t, "operator-pc", "cat", dump+".manifest.json"), &m)
	if sum := strings.Fields(st.exec(t, "operator-pc", "sha256sum", dump))[0]; sum != m.Artifact.SHA256 {
		t.Fatalf("dump on the operator PC has SHA-256 %s, its manifest says %s", sum, m.Artifact.SHA256)
	}
	toc := st.exec(t, "operator-pc", "pg_restore", "--list", dump)
	for _, table := range []string{"customers", "orders", "products"} {
		if !strings.Contains(toc, "TABLE DATA public "+table) {
			t.Errorf("the dump has no data of table %s:\n%s", table, toc)
		}
	}
	st.exec(t, "operator-pc", "pg_restore", "--file=/dev/null", "--exit-on-error", dump)
	// Restored into a fresh database on the customer's server, the row counts are the
	// seed's.
	local := t.TempDir() + "/" + name
	docker(t, "cp", st.container(t, "operator-pc")+":"+dump, local)
	docker(t, "cp", local, st.container(t, "customer")+":/tmp/restore.dump")
	db := "restore_" + strings.ReplaceAll(id, "-", "_")
	st.exec(t, "customer", "su", "postgres", "-c", "createdb "+db+" && pg_restore --no-owner --exit-on-error -d "+db+" /tmp/restore.dump")
	for table, want := range map[string]string{"customers": "1000", "orders": "500", "products": "50"} {
		for _, d := range []string{"shop", db} {
			got := strings.TrimSpace(st.exec(t, "customer", "su", "postgres", "-c", "psql -tAc 'SELECT count(*) FROM "+table+"' "+d))
			if got != want {
				t.Errorf("%s.%s: %s rows, want %s", d, table, got, want)
			}
		}
	}
	st.exec(t, "customer", "su", "postgres", "-c", "dropdb "+db)
	st.nothingLeft(t)
}

// The log backup: the customer's logs, rotated and compressed ones included, bundled
// and delivered to the operator's PC.
func TestActionsLogBackup(t *testing.T) {
	ctx := context.Background()
	id := fmt.Sprintf("e2e-logs-%d", time.Now().UnixNano())
	if _, err := st.cli(ctx, "helpdesk", "backup", "logs", "--id", id, "--from", "customer", "--paths", "/var/log/app/*.log*",
		"--to", "operator-pc", "--wait"); err != nil {
		t.Fatal(err)
	}
	j := st.job(t, id)
	bundle := path.Join("/home/operator/ferry/logs/customer", j.Created.UTC().Format(contracts.BackupTimeFormat)+".tar.zst")
	var m contracts.Manifest
	mustJSON(t, st.exec(t, "operator-pc", "cat", bundle+".manifest.json"), &m)
	if sum := strings.Fields(st.exec(t, "operator-pc", "sha256sum", bundle))[0]; sum != m.Artifact.SHA256 {
		t.Fatalf("bundle has SHA-256 %s, its manifest says %s", sum, m.Artifact.SHA256)
	}
	onCustomer := sums(st.exec(t, "customer", "sh", "-c", "cd /var/log/app && sha256sum *.log*"))
	if len(m.Files) != len(onCustomer) {
		t.Fatalf("bundle lists %d files, the customer has %d", len(m.Files), len(onCustomer))
	}
	for _, f := range m.Files {
		if onCustomer[path.Base(f.Path)] != f.SHA256 {
			t.Errorf("%s: bundle SHA-256 %s, customer %s", f.Path, f.SHA256, onCustomer[path.Base(f.Path)])
		}
	}
	st.nothingLeft(t)
}

func mustJSON(t testing.TB, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v:\n%s", err, s)
	}
}

// sums parses sha256sum's output into path → SHA-256.
func sums(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if sum, p, ok := strings.Cut(line, "  "); ok {
			m[p] = sum
		}
	}
	return m
}
