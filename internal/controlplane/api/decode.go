package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// decodeJSON reads exactly one JSON object into v, refusing unknown fields,
// wrong types and trailing data; every problem is a 400 naming the field
// when one is at fault. An empty body is allowed only when optional.
func decodeJSON(r *http.Request, v any, optional bool) error {
	return decodeStrictness(r, v, optional, true)
}

// DecodeLenient decodes an optional JSON body whose unknown fields are
// ignored: E2B's SDKs send fields the E2B API (e2bapi) does not use.
func DecodeLenient(r *http.Request, v any) error {
	return decodeStrictness(r, v, true, false)
}

func decodeStrictness(r *http.Request, v any, optional, strict bool) error {
	if r.Body == nil || r.Body == http.NoBody {
		if optional {
			return nil
		}
		return service.Invalid("", "a JSON request body is required")
	}
	dec := json.NewDecoder(r.Body)
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			if optional {
				return nil
			}
			return service.Invalid("", "a JSON request body is required")
		}
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return jsonError(err)
		}
		return service.Invalid("", "the request body must hold a single JSON object")
	}
	return nil
}

func jsonError(err error) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
		mbe *http.MaxBytesError
	)
	switch {
	case errors.As(err, &mbe):
		return &service.Error{Kind: service.CodeTooLarge.Kind(), Code: service.CodeTooLarge, Message: fmt.Sprintf("the request body is larger than %d bytes", mbe.Limit)}
	case errors.As(err, &syn):
		return service.Invalid("", "malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		field := jsonPath(typ.Field)
		if field == "" {
			return service.Invalid("", "the request body must be a JSON object")
		}
		return service.Invalid(field, "%s must be %s, not %s", field, jsonKind(typ.Type.Kind().String()), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return service.Invalid("", "the JSON body ends too early")
	}
	// encoding/json reports unknown fields only as text: `json: unknown field "x"`.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return service.Invalid(name, "unknown field %q", name)
	}
	return service.Invalid("", "invalid JSON body")
}

// jsonPath drops the Go names of embedded structs from a field path
// ("ExecInput.args" -> "args"); every JSON name of this API is lowercase.
func jsonPath(p string) string {
	var keep []string
	for _, seg := range strings.Split(p, ".") {
		if seg != "" && !(seg[0] >= 'A' && seg[0] <= 'Z') {
			keep = append(keep, seg)
		}
	}
	return strings.Join(keep, ".")
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "int", "int32", "int64", "uint", "uint32", "uint64", "float64":
		return "a number"
	case "bool":
		return "a boolean"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	case "ptr":
		return "a value of another type"
	}
	return "another type"
}
