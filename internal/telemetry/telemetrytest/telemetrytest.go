// Package telemetrytest scrapes a /metrics endpoint in tests and reads it
// with Prometheus's own text parser.
package telemetrytest

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Get fetches url with an optional bearer token and returns the status and body.
func Get(tb testing.TB, url, token string) (int, []byte) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, body
}

// Scrape fetches url and parses it; a status other than 200 or a body the
// parser refuses fails the test.
func Scrape(tb testing.TB, url, token string) map[string]*dto.MetricFamily {
	tb.Helper()
	code, body := Get(tb, url, token)
	if code != http.StatusOK {
		tb.Fatalf("scrape %s = %d: %s", url, code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("the scrape does not parse: %v\n%s", err, body)
	}
	return fams
}

// Find is the first series of family name whose labels include all of
// want, or nil.
func Find(fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	f, ok := fams[name]
	if !ok {
		return nil
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if got[k] != v {
				match = false
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// Names lists the families of a scrape, for failure messages.
func Names(fams map[string]*dto.MetricFamily) []string {
	out := make([]string, 0, len(fams))
	for n := range fams {
		out = append(out, n)
	}
	return out
}
