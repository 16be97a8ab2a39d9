package remote

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// TestThroughput measures loopback throughput of Put and Pull against scp and sftp run
// against the same sshd. It runs only with FERRY_THROUGHPUT=1 (run it without -race):
//
//	FERRY_THROUGHPUT=1 go test -run TestThroughput -v ./remote/
func TestThroughput(t *testing.T) {
	if os.Getenv("FERRY_THROUGHPUT") == "" {
		t.Skip("set FERRY_THROUGHPUT=1 to measure")
	}
	e := newEnv(t, sshtest.Options{})
	key := sshtest.NewClientKey(t, sshtest.KeyEd25519, "")
	e.sshd.Authorize(key.Public())
	keyFile := filepath.Join(t.TempDir(), "id")
	if err := os.WriteFile(keyFile, key.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	const big = 256 << 20
	local := filepath.Join(t.TempDir(), "big.bin")
	write(t, local, big)
	remoteBig := filepath.Join(e.dir, "src", "big.bin")
	write(t, remoteBig, big)
	small := filepath.Join(e.dir, "small")
	var smallBytes int64
	for i := range 2000 {
		n := int64(1 + i%4096)
		smallBytes += n
		write(t, filepath.Join(small, fmt.Sprintf("d%02d", i%20), fmt.Sprintf("f%04d", i)), n)
	}
	os.MkdirAll(filepath.Join(e.dir, "dest"), 0o755)
	e.chown(e.dir)
	c := e.open(Options{})
	roots, _ := c.Roots(nil)
	ctx := context.Background()
	report := func(what string, bytes int64, d time.Duration) {
		t.Logf("%-40s %8.1f MB/s  (%d bytes in %s)", what, float64(bytes)/d.Seconds()/1e6, bytes, d.Round(time.Millisecond))
	}

	start := time.Now()
	var sent atomic.Int64
	if err := c.Put(ctx, upload(t, local, filepath.Join(e.dir, "dest"), "big.bin", "bench"), nil, &sent); err != nil {
		t.Fatal(err)
	}
	report("ferry push 256 MiB (incl. verify)", big, time.Since(start))

	start = time.Now()
	if _, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(remoteBig)}, Dir: t.TempDir()}, nil); err != nil {
		t.Fatal(err)
	}
	report("ferry pull 256 MiB", big, time.Since(start))

	start = time.Now()
	if _, err := c.Pull(ctx, roots, PullSpec{Paths: []string{e.rel(small)}, Dir: t.TempDir()}, nil); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	report("ferry pull 2,000 small files", smallBytes, d)
	t.Logf("%-40s %8.0f files/s", "", 2000/d.Seconds())

	sshOpts := []string{"-i", keyFile, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-c", "aes128-gcm@openssh.com"}
	userAt := e.sshd.User().Name + "@127.0.0.1:"
	run := func(what string, bytes int64, name string, args ...string) {
		start := time.Now()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		report(what, bytes, time.Since(start))
	}
	port := strconv.Itoa(e.sshd.Port())
	scp := append([]string{"-q", "-P", port}, sshOpts...)
	run("scp upload 256 MiB", big, "scp", append(scp, local, userAt+filepath.Join(e.dir, "dest", "scp.bin"))...)
	run("scp download 256 MiB", big, "scp", append(scp, userAt+remoteBig, filepath.Join(t.TempDir(), "x"))...)
	run("scp -r 2,000 small files", smallBytes, "scp", append(append(scp, "-r"), userAt+small, t.TempDir())...)
	batch := filepath.Join(t.TempDir(), "batch")
	os.WriteFile(batch, []byte("put "+local+" "+filepath.Join(e.dir, "dest", "sftp.bin")+"\nget "+remoteBig+" "+filepath.Join(t.TempDir(), "y")+"\n"), 0o600)
	run("sftp put+get 256 MiB each (sum)", 2*big, "sftp", append(append([]string{"-q", "-P", port, "-b", batch}, sshOpts...), e.sshd.User().Name+"@127.0.0.1")...)
	batch2 := filepath.Join(t.TempDir(), "batch2")
	os.WriteFile(batch2, []byte("get -r "+small+" "+t.TempDir()+"\n"), 0o600)
	run("sftp get -r 2,000 small files", smallBytes, "sftp", append(append([]string{"-q", "-P", port, "-b", batch2}, sshOpts...), e.sshd.User().Name+"@127.0.0.1")...)
}
