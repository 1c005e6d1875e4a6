package api

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// Every $ref in the merged spec must resolve, every operationId must be
// unique, and every operation must declare its security and responses.
func TestSpecRefsResolveAndOperationsAreComplete(t *testing.T) {
	raw, err := buildSpec()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var refs []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if k == "$ref" {
					refs = append(refs, c.(string))
					continue
				}
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(doc)
	if len(refs) < 50 {
		t.Fatalf("only %d refs found; the walk is broken", len(refs))
	}
	for _, r := range refs {
		p, ok := strings.CutPrefix(r, "#/")
		if !ok {
			t.Errorf("non-local ref %s", r)
			continue
		}
		var cur any = doc
		for _, seg := range strings.Split(p, "/") {
			m, _ := cur.(map[string]any)
			cur = m[seg]
		}
		if cur == nil {
			t.Errorf("dangling ref %s", r)
		}
	}
	ids := map[string]string{}
	for path, item := range doc["paths"].(map[string]any) {
		if !strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/v1/hosts") {
			continue // other areas own their checks
		}
		for method, o := range item.(map[string]any) {
			op, ok := o.(map[string]any)
			if !ok || method == "parameters" {
				continue
			}
			id, _ := op["operationId"].(string)
			if id == "" {
				t.Errorf("%s %s has no operationId", method, path)
			} else if prev, dup := ids[id]; dup {
				t.Errorf("operationId %s used by %s and %s %s", id, prev, method, path)
			}
			ids[id] = method + " " + path
			if _, ok := op["security"]; !ok {
				t.Errorf("%s %s does not declare security", method, path)
			}
			if rs, _ := op["responses"].(map[string]any); len(rs) < 2 {
				t.Errorf("%s %s documents fewer than two responses", method, path)
			}
		}
	}
}
