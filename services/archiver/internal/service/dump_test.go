package service

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/dbdump"
	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// fakeDumper returns a service whose mysqldump is a shell script that writes content
// to its --result-file and exits with status exit.
func fakeDumper(t *testing.T, content string, exit int) (*archiver, string) {
	t.Helper()
	a, dir := newService(t)
	data := filepath.Join(t.TempDir(), "content")
	if err := os.WriteFile(data, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	tool := filepath.Join(t.TempDir(), "mysqldump")
	script := "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --result-file=*) cp " + data + " \"${a#--result-file=}\";; esac; done\n" +
		"echo 'mysqldump: Got error: 2003: \"Can'\"'\"'t connect to server\"' >&2\nexit " + string(rune('0'+exit)) + "\n"
	if err := os.WriteFile(tool, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	a.dumper = &dbdump.Dumper{MySQLDump: tool, TempDir: t.TempDir()}
	a.secretsDir = t.TempDir()
	sshtest.WriteCredential(t, a.secretsDir, "db", map[string]string{"password": "pw"})
	return a, dir
}

var dumpArgs = contracts.DumpArgs{Engine: "mysql", Database: "app", Addr: "127.0.0.1:3306", User: "u", Credential: "db", Name: "app.sql"}

const completeDump = "-- MariaDB dump\nINSERT INTO t VALUES (1);\n-- Dump completed on 2026-01-01 10:00:00\n"

func TestDumpWritesVerifiedDumpAndManifest(t *testing.T) {
	a, dir := fakeDumper(t, completeDump, 0)
	res, err := a.dump(context.Background(), job, dumpArgs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, job, res.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	var m contracts.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if res.Size != int64(len(completeDump)) || m.Artifact.Kind != "mysql-dump" || m.Artifact.SHA256 != res.SHA256 || m.JobID != job {
		t.Errorf("result %+v, manifest %s", res, b)
	}

	// A dump that no longer matches its manifest is dumped again.
	if err := os.WriteFile(filepath.Join(dir, job, res.Name), []byte("tampered"), 0o640); err != nil {
		t.Fatal(err)
	}
	again, err := a.dump(context.Background(), job, dumpArgs)
	if err != nil || again.SHA256 != res.SHA256 {
		t.Errorf("after tampering: %+v %v", again, err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, job, res.Name)); string(got) != completeDump {
		t.Errorf("dump after tampering: %q", got)
	}
}

// A tool that exits 0 but leaves a truncated dump: verify_failed, retryable, nothing
// under the final name.
func TestDumpUnverifiedIsNeverDelivered(t *testing.T) {
	a, dir := fakeDumper(t, completeDump[:30], 0)
	_, err := a.dump(context.Background(), job, dumpArgs)
	if se := stepError(t, err); se.Code != contracts.CodeVerify || !se.Retryable {
		t.Errorf("error %+v, want retryable verify_failed", se)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, job))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			t.Errorf("%s left in staging", e.Name())
		}
	}

	a, _ = fakeDumper(t, completeDump, 1)
	_, err = a.dump(context.Background(), job, dumpArgs)
	if se := stepError(t, err); se.Code != contracts.CodeUnreachable || !se.Retryable {
		t.Errorf("error %+v, want retryable unreachable", se)
	}
}

func TestDumpArguments(t *testing.T) {
	a, _ := fakeDumper(t, completeDump, 0)
	for name, c := range map[string]struct {
		mod  func(*contracts.DumpArgs)
		code string
	}{
		"engine":        {func(d *contracts.DumpArgs) { d.Engine = "oracle" }, contracts.CodeInvalidCommand},
		"name":          {func(d *contracts.DumpArgs) { d.Name = "../app.sql" }, contracts.CodeInvalidCommand},
		"hidden name":   {func(d *contracts.DumpArgs) { d.Name = ".app.sql" }, contracts.CodeInvalidCommand},
		"manifest name": {func(d *contracts.DumpArgs) { d.Name = "x.manifest.json" }, contracts.CodeInvalidCommand},
		"database":      {func(d *contracts.DumpArgs) { d.Database = "host=evil" }, contracts.CodeInvalidCommand},
		"addr":          {func(d *contracts.DumpArgs) { d.Addr = "nowhere" }, contracts.CodeInvalidCommand},
		"credential":    {func(d *contracts.DumpArgs) { d.Credential = "../db" }, contracts.CodeInvalidCommand},
		"no credential": {func(d *contracts.DumpArgs) { d.Credential = "missing" }, contracts.CodeAuth},
	} {
		args := dumpArgs
		c.mod(&args)
		_, err := a.dump(context.Background(), job, args)
		if se := stepError(t, err); se.Code != c.code || se.Retryable {
			t.Errorf("%s: %+v, want permanent %s", name, se, c.code)
		}
	}
}

// A second delivery while the first still dumps is deferred, not run alongside.
func TestDumpLockDefersSecondDelivery(t *testing.T) {
	a, dir := fakeDumper(t, completeDump, 0)
	root, err := os.OpenRoot(filepath.Join(dir, job))
	if err != nil {
		if err := os.MkdirAll(filepath.Join(dir, job), 0o750); err != nil {
			t.Fatal(err)
		}
		if root, err = os.OpenRoot(filepath.Join(dir, job)); err != nil {
			t.Fatal(err)
		}
	}
	defer root.Close()
	unlock, err := lockName(root, dumpArgs.Name)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.dump(context.Background(), job, dumpArgs)
	var se *contracts.StepError
	if err == nil || errors.As(err, &se) || !strings.Contains(err.Error(), "in progress") {
		t.Errorf("second delivery: %v, want a deferral", err)
	}
	unlock()
	if _, err := a.dump(context.Background(), job, dumpArgs); err != nil {
		t.Errorf("after unlock: %v", err)
	}
}
