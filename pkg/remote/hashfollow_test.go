package remote

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferrydesk/ferry/pkg/sshtest"
)

// withFollower has the test's pushes of 1 MiB or more hashed on the host while they
// land, in 4 MiB segments, by the follower in Python (the host has python3) or by the
// shell pipeline.
func withFollower(t *testing.T, python bool) {
	t.Helper()
	min, seg, py := followMin, followSegment, followPython
	followMin, followSegment, followPython = 1<<20, 4<<20, python
	t.Cleanup(func() { followMin, followSegment, followPython = min, seg, py })
	if python {
		// The host is this machine, logged in to as the test user (its PATH).
		if _, err := exec.LookPath("/usr/bin/python3"); err != nil {
			sshtest.Unavailable(t, "no /usr/bin/python3 on this machine: %v", err)
		}
	}
}

// The follower hashes what was written up to each acknowledged offset, from the file
// itself, and leaves none of it in the host's page cache. In Python, a file shorter
// than it was told fails; the shell pipeline hashes what there is (head stops at the
// end), and Put's size check against the manifest fails it instead.
func TestFollowerHashesWhatWasWritten(t *testing.T) {
	for _, tc := range []struct {
		name   string
		python bool
		output *regexp.Regexp // what the host printed: which follower ran
	}{
		{"python", true, regexp.MustCompile(`^[0-9a-f]{64}\n$`)},
		{"shell", false, regexp.MustCompile(`^[0-9a-f]{64} (\*stdin|  -)\n$`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withFollower(t, tc.python)
			e := newEnv(t, sshtest.Options{})
			c := e.open(Options{})
			ctx := context.Background()
			src := filepath.Join(t.TempDir(), "src")
			write(t, src, 9<<20+123)
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(e.dir, "landing")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			e.chown(p)

			fol := c.follow(ctx, p)
			if fol == nil {
				t.Fatal("no follower on a host that runs commands")
			}
			defer fol.close()
			// Written and acknowledged in uneven spans, as Put's segments.
			for _, end := range []int{1 << 20, 1<<20 + 1, 4 << 20, len(data)} {
				if _, err := f.WriteAt(data[fol.fed:end], fol.fed); err != nil {
					t.Fatal(err)
				}
				if err := fol.feed(int64(end)); err != nil {
					t.Fatal(err)
				}
			}
			sum, err := fol.sum(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := fileSHA(t, src); sum != want {
				t.Fatalf("follower's sum %s, want %s", sum, want)
			}
			if !tc.output.MatchString(fol.out.String()) {
				t.Fatalf("the host printed %q: not the %s follower", fol.out.String(), tc.name)
			}
			if n := cachedBytes(t, p); n > 1<<20 {
				t.Errorf("%d bytes of the %d hashed are still in the host's page cache", n, len(data))
			}

			if !tc.python {
				return
			}
			// Told of more than the file holds: an error, not the sum of less.
			short := c.follow(ctx, p)
			defer short.close()
			if err := short.feed(int64(len(data)) + 1); err != nil {
				t.Fatal(err)
			}
			if sum, err := short.sum(ctx); err == nil {
				t.Fatalf("a file shorter than fed: sum %s, want an error", sum)
			} else if !strings.Contains(err.Error(), "short read") {
				t.Fatalf("a file shorter than fed: %v, want a short read", err)
			}
		})
	}
}
