package e2e

// Static checks of the operators' observability files, in make test (no build tag, no
// stack): the alert rules pass promtool check rules and their unit tests (promtool test
// rules), prometheus.yml passes promtool check config, every dashboard is well formed
// (fixed datasource uid, template variables defined, every panel with a query) and its
// PromQL parses, and Grafana's provisioning points at the dashboards.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"
)

// unavailable is pkg/sshtest.Unavailable (this module does not import pkg): a missing test
// tool skips the test, unless FERRY_TEST_REQUIRE=1 (make test) makes it a failure.
func unavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("FERRY_TEST_REQUIRE") == "1" {
		t.Fatalf("%s (FERRY_TEST_REQUIRE=1: a missing test dependency is a failure; run scripts/test-deps.sh as root)", msg)
	}
	t.Skip(msg)
}

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		unavailable(t, "promtool not installed (Debian: apt-get install prometheus)")
	}
	c := exec.Command(bin, args...)
	c.Dir = repoRoot(t)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestObservabilityFiles(t *testing.T) {
	root := repoRoot(t)
	t.Run("rules", func(t *testing.T) {
		rules, _ := filepath.Glob(filepath.Join(root, "deployments/prometheus/rules/*.yml"))
		promtool(t, append([]string{"check", "rules"}, rules...)...)
		tests, _ := filepath.Glob(filepath.Join(root, "deployments/prometheus/tests/*.yml"))
		if len(tests) == 0 {
			t.Fatal("no rule tests in deployments/prometheus/tests")
		}
		promtool(t, append([]string{"test", "rules"}, tests...)...)
		// Every alert has a unit test that fires it.
		var tested strings.Builder
		for _, f := range tests {
			b, _ := os.ReadFile(f)
			tested.Write(b)
		}
		for _, r := range loadRules(t) {
			if !regexp.MustCompile(`alertname:\s*` + regexp.QuoteMeta(r.Name) + `\s`).MatchString(tested.String()) {
				t.Errorf("alert %s has no unit test in deployments/prometheus/tests", r.Name)
			}
		}
	})
	t.Run("prometheus.yml", func(t *testing.T) {
		promtool(t, "check", "config", "deployments/prometheus/prometheus.yml")
	})
	t.Run("dashboards", func(t *testing.T) {
		dashboards, queries := loadDashboards(t)
		uids := map[string]string{}
		for name, d := range dashboards {
			if d.UID == "" || d.Title == "" {
				t.Errorf("%s: no uid or title", name)
			}
			if other, dup := uids[d.UID]; dup {
				t.Errorf("%s and %s share uid %s", name, other, d.UID)
			}
			uids[d.UID] = name
			defined := map[string]bool{}
			for _, v := range d.Templating.List {
				defined[v.Name] = true
				if v.Type == "query" && !strings.Contains(string(v.Datasource), `"prometheus"`) {
					t.Errorf("%s: variable %s does not query the prometheus datasource", name, v.Name)
				}
				if v.Type == "query" && !strings.HasPrefix(v.Definition, "label_values(") {
					t.Errorf("%s: variable %s is not a label_values() query", name, v.Name)
				}
			}
			var walk func([]panel)
			walk = func(ps []panel) {
				for _, p := range ps {
					walk(p.Panels)
					if p.Type == "row" {
						continue
					}
					if p.Datasource == nil || p.Datasource.UID != "prometheus" {
						t.Errorf("%s: panel %q: datasource is not uid prometheus", name, p.Title)
					}
					if len(p.Targets) == 0 {
						t.Errorf("%s: panel %q has no query", name, p.Title)
					}
					for _, tg := range p.Targets {
						if strings.TrimSpace(tg.Expr) == "" {
							t.Errorf("%s: panel %q target %s has no expr", name, p.Title, tg.RefID)
						}
						for _, v := range exprVars(tg.Expr) {
							if !defined[v] {
								t.Errorf("%s: panel %q uses $%s, which the dashboard does not define", name, p.Title, v)
							}
						}
					}
				}
			}
			walk(d.Panels)
		}
		// The variables: action and host.
		for _, v := range []string{"action", "host"} {
			found := false
			for _, d := range dashboards {
				for _, tv := range d.Templating.List {
					found = found || tv.Name == v
				}
			}
			if !found {
				t.Errorf("no dashboard has a template variable %s", v)
			}
		}
		// Every expression parses: promtool checks them as recording rules.
		type rule struct {
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		}
		var rules []rule
		for i, q := range queries {
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: substitute(q.Expr)})
		}
		doc := map[string]any{"groups": []map[string]any{{"name": "dashboards", "rules": rules}}}
		raw, err := yaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "dashboards.yml")
		if err := os.WriteFile(f, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		out := promtool(t, "check", "rules", f)
		if want := fmt.Sprintf("%d rules found", len(queries)); !strings.Contains(out, want) {
			t.Errorf("promtool check rules: %s (want %s)", out, want)
		}
		t.Logf("%d dashboards, %d panel queries parse", len(dashboards), len(queries))
	})
	t.Run("provisioning", func(t *testing.T) {
		var ds struct {
			Datasources []struct {
				UID  string `yaml:"uid"`
				Type string `yaml:"type"`
				URL  string `yaml:"url"`
			} `yaml:"datasources"`
		}
		readYAML(t, filepath.Join(root, "deployments/grafana/provisioning/datasources/prometheus.yml"), &ds)
		if len(ds.Datasources) != 1 || ds.Datasources[0].UID != "prometheus" || ds.Datasources[0].Type != "prometheus" ||
			ds.Datasources[0].URL != "http://prometheus:9090" {
			t.Errorf("datasource provisioning: %+v", ds)
		}
		var dp struct {
			Providers []struct {
				Type    string `yaml:"type"`
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		readYAML(t, filepath.Join(root, "deployments/grafana/provisioning/dashboards/ferry.yml"), &dp)
		if len(dp.Providers) != 1 || dp.Providers[0].Type != "file" {
			t.Fatalf("dashboard provisioning: %+v", dp)
		}
		compose, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, mount := range []string{
			"./deployments/grafana/provisioning:/etc/grafana/provisioning",
			"./deployments/grafana/dashboards:" + dp.Providers[0].Options.Path,
		} {
			if !strings.Contains(string(compose), mount) {
				t.Errorf("docker-compose.yml does not mount %s", mount)
			}
		}
	})
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestObservabilityAgainstPrometheus runs every dashboard and rule query against the
// Prometheus at FERRY_PROMETHEUS_URL (e.g. one scraping `ferry dev --demo` after a few
// jobs, with deployments/prometheus/rules loaded); make e2e does the same against the
// compose stack (TestObservabilityQueries).
func TestObservabilityAgainstPrometheus(t *testing.T) {
	base := os.Getenv("FERRY_PROMETHEUS_URL")
	if base == "" {
		t.Skip("FERRY_PROMETHEUS_URL not set")
	}
	checkQueries(t, base, 30*time.Second)
	checkLoadedRules(t, newPrometheus(base))
}
