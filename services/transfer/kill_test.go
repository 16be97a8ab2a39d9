package transfer_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydesk/ferry/contracts"
	"github.com/ferrydesk/ferry/pkg/bus"
	"github.com/ferrydesk/ferry/pkg/worker/workertest"
)

// The transfer process is killed (SIGKILL) at about 30 % of a 128 MiB push; JetStream
// redelivers the command to a second process, which completes the push. At no moment
// does the final name hold anything but the complete file.
func TestPushSurvivesKilledProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the transfer binary")
	}
	const job = "job-kill"
	const size = 128 << 20
	w := newWorld(t, bus.Topology{CommandAckWait: 2 * time.Second}, job)
	bin := filepath.Join(t.TempDir(), "transfer")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/transfer").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	m := w.stage(job, "update.tar.zst", size)
	dest := filepath.Join(w.home, "opt")
	os.Mkdir(dest, 0o755)
	w.chown(dest)
	final := filepath.Join(dest, "update.tar.zst")
	part := filepath.Join(dest, ".update.tar.zst.ferry-"+job+".part")

	start := func(name string) *exec.Cmd {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(),
			"FERRY_NATS_URL="+w.srv.URL, "FERRY_STAGING_DIR="+w.staging, "FERRY_SECRETS_DIR="+w.secrets,
			"FERRY_HTTP_ADDR=127.0.0.1:0", "FERRY_LOG_LEVEL=warn", "FERRY_TRANSFER_IN_PROGRESS_EVERY=300ms")
		logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("%s log:\n%s", name, b)
			}
		})
		return cmd
	}

	// Watch the final name for the whole test.
	var bad []int64
	quit, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if fi, err := os.Stat(final); err == nil && fi.Size() != size {
				bad = append(bad, fi.Size())
			}
			select {
			case <-quit:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()

	first := start("first")
	workertest.Send(t, w.js, contracts.ServiceTransfer, contracts.OpPush, job, "push",
		contracts.PushArgs{Host: "customer", Artifact: "update.tar.zst", DestDir: dest})
	deadline := time.Now().Add(30 * time.Second)
	var cut int64
	for {
		if fi, err := os.Stat(part); err == nil && fi.Size() >= size*3/10 {
			cut = fi.Size()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the push did not reach 30 % within 30 s")
		}
		time.Sleep(500 * time.Microsecond)
	}
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	if _, err := os.Stat(final); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the final name exists after the kill at %d bytes (or the push finished first): %v", cut, err)
	}
	t.Logf("killed the first process with %d of %d bytes in the temporary file", cut, size)

	start("second")
	evs := workertest.StepEvents(t, w.js, job, 1, 60*time.Second)
	close(quit)
	<-watched
	if len(evs) != 1 || evs[0].Kind != contracts.StepSucceeded {
		t.Fatalf("events %+v", evs)
	}
	if len(bad) > 0 {
		t.Fatalf("the final name held sizes %v", bad)
	}
	if got := sha(t, final); got != m.Artifact.SHA256 {
		t.Fatalf("landed sha %s, want %s", got, m.Artifact.SHA256)
	}
	if _, err := os.Stat(part); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("temporary file left")
	}
}
