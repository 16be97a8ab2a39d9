package dbtest_test

import (
	"testing"

	"github.com/ferrydesk/ferry/pkg/dbtest"
)

// TestServers starts both servers, seeds them and counts the rows back.
func TestServers(t *testing.T) {
	for _, start := range []func(testing.TB) *dbtest.Server{dbtest.StartPostgres, dbtest.StartMariaDB} {
		s := start(t)
		s.CreateDatabase(t, "app")
		want := s.Seed(t, "app", 100)
		s.CreateUser(t, "app_reader", `it's a \ "secret"`, "app")
		for table, n := range want {
			if got := s.Count(t, "app", table); got != n {
				t.Errorf("%s: %s has %d rows, want %d", s.Engine, table, got, n)
			}
		}
	}
}
