package api

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// The OpenAPI document is kept as one YAML file per area under openapi/
// (base, auth, sandboxes, ...) so areas can be edited independently; they
// are merged into the single document served at /openapi.yaml.
//
//go:embed openapi/*.yaml
var specFiles embed.FS

// Spec is the merged OpenAPI document served at /openapi.yaml (the
// dashboard's typed client is generated from it).
func Spec() ([]byte, error) { return buildSpec() }

// buildSpec merges the spec fragments: the first file (00-base.yaml) gives
// everything; later files may add paths, components.schemas,
// components.parameters, components.responses and tags. A duplicate key is an
// error, so two areas cannot silently overwrite each other.
func buildSpec() ([]byte, error) {
	names, err := fs.Glob(specFiles, "openapi/*.yaml")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var doc map[string]any
	for i, name := range names {
		raw, err := specFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		var part map[string]any
		if err := yaml.Unmarshal(raw, &part); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if i == 0 {
			doc = part
			continue
		}
		if err := mergeSection(doc, part, name, "paths"); err != nil {
			return nil, err
		}
		if tags, ok := part["tags"].([]any); ok {
			existing, _ := doc["tags"].([]any)
			doc["tags"] = append(existing, tags...)
		}
		comps, _ := part["components"].(map[string]any)
		for section := range comps {
			docComps, _ := doc["components"].(map[string]any)
			if docComps == nil {
				docComps = map[string]any{}
				doc["components"] = docComps
			}
			if err := mergeSection(docComps, comps, name, section); err != nil {
				return nil, err
			}
		}
	}
	addCommonResponses(doc)
	if err := aliasPaths(doc, "/v1/sandboxes", "/v1/capsules", "Capsule"); err != nil {
		return nil, err
	}
	return yaml.Marshal(doc)
}

// commonResponses are statuses every operation can answer (see
// components.responses in 00-base.yaml), so fragments need not repeat them.
var commonResponses = map[string]string{"500": "Internal", "503": "Unavailable"}

// addCommonResponses adds commonResponses to every operation that does not
// document those statuses itself.
func addCommonResponses(doc map[string]any) {
	paths, _ := doc["paths"].(map[string]any)
	for _, item := range paths {
		ops, _ := item.(map[string]any)
		for method, v := range ops {
			op, ok := v.(map[string]any)
			if !ok || method == "parameters" {
				continue
			}
			responses, _ := op["responses"].(map[string]any)
			if responses == nil {
				continue
			}
			for status, name := range commonResponses {
				if _, ok := responses[status]; !ok {
					responses[status] = map[string]any{"$ref": "#/components/responses/" + name}
				}
			}
		}
	}
}

// aliasPaths documents every path under from again under to (the router
// serves both), with operationIds suffixed so they stay unique.
func aliasPaths(doc map[string]any, from, to, suffix string) error {
	paths, _ := doc["paths"].(map[string]any)
	for p, item := range paths {
		rest, ok := strings.CutPrefix(p, from)
		if !ok || (rest != "" && !strings.HasPrefix(rest, "/")) {
			continue
		}
		raw, err := yaml.Marshal(item)
		if err != nil {
			return err
		}
		var cp map[string]any
		if err := yaml.Unmarshal(raw, &cp); err != nil {
			return err
		}
		for _, v := range cp {
			if o, ok := v.(map[string]any); ok {
				if id, ok := o["operationId"].(string); ok {
					o["operationId"] = id + suffix
				}
			}
		}
		if _, dup := paths[to+rest]; dup {
			return fmt.Errorf("path %s is documented twice", to+rest)
		}
		paths[to+rest] = cp
	}
	return nil
}

func mergeSection(dst, src map[string]any, file, section string) error {
	add, _ := src[section].(map[string]any)
	if len(add) == 0 {
		return nil
	}
	into, _ := dst[section].(map[string]any)
	if into == nil {
		into = map[string]any{}
		dst[section] = into
	}
	for k, v := range add {
		if _, dup := into[k]; dup {
			return fmt.Errorf("%s: %s %q is already defined by another spec file", file, section, k)
		}
		into[k] = v
	}
	return nil
}
