package sshtest

import (
	"fmt"
	"os"
	"testing"
)

// EnvRequire names the environment variable that turns a missing real peer into a
// test failure: `make test` and `make bench` set FERRY_TEST_REQUIRE=1, so a machine
// without sshd, ssh-agent or root fails loudly instead of passing with skipped tests.
const EnvRequire = "FERRY_TEST_REQUIRE"

// Unavailable skips t because a real peer the test needs is missing, or fails it when
// FERRY_TEST_REQUIRE=1.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%s (%s=1: a missing test dependency is a failure; run scripts/test-deps.sh as root)", msg, EnvRequire)
	}
	t.Skip(msg)
}
