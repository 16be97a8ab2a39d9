package e2e

// Helpers of the observability tests: the PromQL of every dashboard panel and every
// alert rule, and running it against a Prometheus. Used by TestObservabilityFiles
// (static, in make test), TestObservabilityAgainstPrometheus (any Prometheus, by
// FERRY_PROMETHEUS_URL) and TestObservabilityQueries (the compose stack, make e2e).

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"
)

// repoRoot is the repository, from this package's directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// dashboard is the part of a Grafana dashboard JSON the tests read.
type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Datasource json.RawMessage `json:"datasource"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// panelQuery is one target of one dashboard panel.
type panelQuery struct {
	File, Dashboard, Panel, RefID, Expr string
}

func (q panelQuery) String() string {
	return fmt.Sprintf("%s / %q / %s", q.File, q.Panel, q.RefID)
}

// loadDashboards reads every dashboard of deployments/grafana/dashboards.
func loadDashboards(t testing.TB) (map[string]dashboard, []panelQuery) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deployments/grafana/dashboards/*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in deployments/grafana/dashboards (%v)", err)
	}
	dashboards := map[string]dashboard{}
	var queries []panelQuery
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		name := filepath.Base(f)
		dashboards[name] = d
		var walk func([]panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				walk(p.Panels)
				for _, tg := range p.Targets {
					queries = append(queries, panelQuery{File: name, Dashboard: d.Title, Panel: p.Title, RefID: tg.RefID, Expr: tg.Expr})
				}
			}
		}
		walk(d.Panels)
	}
	return dashboards, queries
}

// ruleQuery is the expression of one rule of deployments/prometheus/rules.
type ruleQuery struct {
	File, Group, Name, Expr string
}

func (q ruleQuery) String() string { return fmt.Sprintf("%s / %s / %s", q.File, q.Group, q.Name) }

// loadRules reads every rule of deployments/prometheus/rules/*.yml.
func loadRules(t testing.TB) []ruleQuery {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deployments/prometheus/rules/*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule files in deployments/prometheus/rules (%v)", err)
	}
	var rules []ruleQuery
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Groups []struct {
				Name  string `yaml:"name"`
				Rules []struct {
					Alert  string `yaml:"alert"`
					Record string `yaml:"record"`
					Expr   string `yaml:"expr"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, g := range doc.Groups {
			for _, r := range g.Rules {
				name := r.Alert
				if name == "" {
					name = r.Record
				}
				rules = append(rules, ruleQuery{File: filepath.Base(f), Group: g.Name, Name: name, Expr: r.Expr})
			}
		}
	}
	return rules
}

// grafanaVars are the values the tests give Grafana's variables: every template
// variable of the dashboards is a multi-value one with "All" = ".*".
var grafanaVars = map[string]string{
	"__rate_interval": "1m",
	"__interval":      "15s",
	"__range":         "1h",
	"__range_s":       "3600",
	"__interval_ms":   "15000",
}

var varRE = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}?`)

// substitute replaces Grafana's variables in expr as Grafana would with "All" selected.
func substitute(expr string) string {
	return varRE.ReplaceAllStringFunc(expr, func(m string) string {
		name := varRE.FindStringSubmatch(m)[1]
		if v, ok := grafanaVars[name]; ok {
			return v
		}
		return ".*"
	})
}

// exprVars are the variables an expression uses, Grafana's built-ins left out.
func exprVars(expr string) []string {
	var vars []string
	for _, m := range varRE.FindAllStringSubmatch(expr, -1) {
		if _, builtin := grafanaVars[m[1]]; !builtin {
			vars = append(vars, m[1])
		}
	}
	return vars
}

var metricRE = regexp.MustCompile(`\b(ferry_[a-zA-Z0-9_]+|up)\b`)

// referencedMetrics are the metric names in expr: ferry's (ferry_*) and up.
func referencedMetrics(expr string) []string {
	return metricRE.FindAllString(expr, -1)
}

// prometheus is a Prometheus HTTP API.
type prometheus struct {
	base string
	http *http.Client
}

func newPrometheus(base string) *prometheus {
	return &prometheus{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 30 * time.Second}}
}

type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

func (p *prometheus) get(path string, q url.Values) (json.RawMessage, error) {
	resp, err := p.http.Get(p.base + path + "?" + q.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r apiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	return r.Data, nil
}

// query runs an instant query and returns how many series it gave (1 for a scalar)
// and how many of them have a value that is a number (not NaN: a quantile of no
// observations, a ratio of nothing).
func (p *prometheus) query(expr string) (series, numbers int, err error) {
	data, err := p.get("/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return 0, 0, err
	}
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return 0, 0, err
	}
	var values [][2]any
	switch d.ResultType {
	case "vector":
		var vec []struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(d.Result, &vec); err != nil {
			return 0, 0, err
		}
		for _, v := range vec {
			values = append(values, v.Value)
		}
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return 0, 0, err
		}
		values = append(values, v)
	default:
		return 0, 0, fmt.Errorf("result type %s", d.ResultType)
	}
	for _, v := range values {
		if s, ok := v[1].(string); ok && s != "NaN" {
			numbers++
		}
	}
	return len(values), numbers, nil
}

// names are the metric names Prometheus holds.
func (p *prometheus) names() (map[string]bool, error) {
	data, err := p.get("/api/v1/label/__name__/values", url.Values{})
	if err != nil {
		return nil, err
	}
	var list []string
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for _, n := range list {
		m[n] = true
	}
	return m, nil
}

// checkQueries runs every dashboard panel's and every alert rule's PromQL against the
// Prometheus at base: each must parse, each panel target must return at least one
// series, and every metric a dashboard or rule names must be in Prometheus (exported
// by some service). Panels are retried until within passes, for the scrapes that
// follow the jobs the caller ran.
func checkQueries(t *testing.T, base string, within time.Duration) {
	t.Helper()
	p := newPrometheus(base)
	_, panels := loadDashboards(t)
	rules := loadRules(t)

	// Every metric named by a dashboard or a rule is exported.
	var names map[string]bool
	var missing []string
	deadline := time.Now().Add(within)
	for {
		var err error
		if names, err = p.names(); err != nil {
			t.Fatalf("metric names: %v", err)
		}
		missing = missing[:0]
		seen := map[string]bool{}
		for _, q := range panels {
			for _, n := range referencedMetrics(q.Expr) {
				if !names[n] && !seen[n] {
					seen[n] = true
					missing = append(missing, fmt.Sprintf("%s (dashboard %s)", n, q))
				}
			}
		}
		for _, r := range rules {
			for _, n := range referencedMetrics(r.Expr) {
				if !names[n] && !seen[n] {
					seen[n] = true
					missing = append(missing, fmt.Sprintf("%s (rule %s)", n, r))
				}
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Second)
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("no service exports %s", m)
	}

	// Every rule parses and evaluates.
	for _, r := range rules {
		if _, _, err := p.query(r.Expr); err != nil {
			t.Errorf("rule %s: %v\n%s", r, err, r.Expr)
		}
	}

	// Every panel target parses and returns data: at least one series whose value is
	// a number.
	pending := panels
	var withData, series int
	for {
		var still []panelQuery
		for _, q := range pending {
			n, numbers, err := p.query(substitute(q.Expr))
			switch {
			case err != nil:
				t.Errorf("panel %s: %v\n%s", q, err, substitute(q.Expr))
			case numbers == 0:
				still = append(still, q)
			default:
				withData++
				series += n
			}
		}
		pending = still
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Second)
	}
	for _, q := range pending {
		t.Errorf("panel %s returns no data:\n%s", q, substitute(q.Expr))
	}
	t.Logf("%d panel expressions, %d returned data (%d series); %d alert rules parse; against %s",
		len(panels), withData, series, len(rules), base)
}

// checkLoadedRules checks that Prometheus loaded every alert of the rule files and
// evaluates each without error.
func checkLoadedRules(t *testing.T, p *prometheus) {
	t.Helper()
	data, err := p.get("/api/v1/rules", nil)
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	var d struct {
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	loaded := map[string]string{}
	for _, g := range d.Groups {
		for _, r := range g.Rules {
			loaded[r.Name] = r.Health + " " + r.LastError
			if r.Health == "err" {
				t.Errorf("rule %s: %s", r.Name, r.LastError)
			}
		}
	}
	for _, r := range loadRules(t) {
		if _, ok := loaded[r.Name]; !ok {
			t.Errorf("Prometheus did not load rule %s (%s)", r.Name, r.File)
		}
	}
}
