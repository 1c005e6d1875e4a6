package api

import (
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// The error codes the API can produce are exactly those docs/api.md lists,
// each with the status the API sends for it: the codes table
// (service/errors.go) against the document's table, both ways, and the
// sources against the codes table (no code outside it, none unused).
func TestErrorCodesMatchTheDocs(t *testing.T) {
	documented := docCodes(t)
	codes := service.Codes()
	for code, kind := range codes {
		st, ok := documented[string(code)]
		switch {
		case !ok:
			t.Errorf("code %q (status %d) is missing from docs/api.md's error code table", code, StatusOf(kind))
		case st != StatusOf(kind):
			t.Errorf("code %q: docs/api.md says %d, the API answers %d", code, st, StatusOf(kind))
		}
	}
	for code := range documented {
		if _, ok := codes[service.Code(code)]; !ok {
			t.Errorf("docs/api.md lists %q, which the API never produces (not in service's codes table)", code)
		}
	}

	uses, problems := scanCodeUses(t, "..")
	for _, p := range problems {
		t.Error(p)
	}
	for code := range codes {
		if uses[constName(t, code)] == 0 {
			t.Errorf("code %q is in the codes table but nothing produces it", code)
		}
	}
}

var docRow = regexp.MustCompile("^\\| `([a-z_]+)` \\| (\\d{3}) \\|")

// docCodes reads the "Error codes" table of docs/api.md.
func docCodes(t *testing.T) map[string]int {
	t.Helper()
	b, err := os.ReadFile("../../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "\n## Error codes\n")
	if !ok {
		t.Fatal(`docs/api.md has no "## Error codes" section`)
	}
	if i := strings.Index(table, "\n## "); i >= 0 {
		table = table[:i]
	}
	out := map[string]int{}
	for _, line := range strings.Split(table, "\n") {
		m := docRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if _, dup := out[m[1]]; dup {
			t.Errorf("docs/api.md lists %q twice", m[1])
		}
		out[m[1]], _ = strconv.Atoi(m[2])
	}
	if len(out) == 0 {
		t.Fatal("docs/api.md's error code table has no rows")
	}
	return out
}

// constName finds the constant that declares code in service/errors.go.
func constName(t *testing.T, code service.Code) string {
	t.Helper()
	b, err := os.ReadFile("../service/errors.go")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\t(Code\w+)\s+Code = "` + string(code) + `"$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no constant declares code %q", code)
	}
	return string(m[1])
}

// errorConstructors take a code as their first argument (WriteError
// second, after the writer).
var errorConstructors = map[string]int{"Errorf": 0, "NotFound": 0, "Conflict": 0, "Forbidden": 0, "Unauthorized": 0, "WriteError": 1}

// scanCodeUses parses the control plane's non-test sources under root and
// counts the references to Code constants outside their declaration, and
// reports codes written as string literals (which would bypass the table)
// and Error literals whose Kind is not their code's.
func scanCodeUses(t *testing.T, root string) (uses map[string]int, problems []string) {
	t.Helper()
	uses = map[string]int{}
	fset := token.NewFileSet()
	isCode := regexp.MustCompile(`^Code[A-Z]\w*$`)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		declFile := strings.HasSuffix(filepath.ToSlash(path), "service/errors.go")
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.GenDecl:
				// The table itself declares every code: not a use.
				if declFile && declaresCodes(n) {
					return false
				}
			case *ast.Ident:
				if isCode.MatchString(n.Name) {
					uses[n.Name]++
				}
			case *ast.KeyValueExpr:
				if k, ok := n.Key.(*ast.Ident); ok && k.Name == "Code" {
					if lit, ok := n.Value.(*ast.BasicLit); ok {
						problems = append(problems, fset.Position(lit.Pos()).String()+": code "+lit.Value+" is a literal; use a constant of service's codes table")
					}
				}
			case *ast.CompositeLit:
				if p := kindMismatch(fset, n); p != "" {
					problems = append(problems, p)
				}
			case *ast.CallExpr:
				if i, ok := errorConstructors[calleeName(n.Fun)]; ok && len(n.Args) > i {
					if lit, ok := n.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						problems = append(problems, fset.Position(lit.Pos()).String()+": code "+lit.Value+" is a literal; use a constant of service's codes table")
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return uses, problems
}

func declaresCodes(d *ast.GenDecl) bool {
	for _, s := range d.Specs {
		vs, ok := s.(*ast.ValueSpec)
		if !ok {
			continue
		}
		if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "Code" {
			return true
		}
		for _, n := range vs.Names {
			if n.Name == "codes" {
				return true
			}
		}
	}
	return false
}

// calleeName is the name of a function of this package or of service
// (fmt.Errorf is not service.Errorf).
func calleeName(e ast.Expr) string {
	switch f := e.(type) {
	case *ast.Ident:
		return f.Name
	case *ast.SelectorExpr:
		if x, ok := f.X.(*ast.Ident); ok && x.Name == "service" {
			return f.Sel.Name
		}
	}
	return ""
}

// kindMismatch reports an Error literal setting Kind to anything but
// X.Kind() for its Code X.
func kindMismatch(fset *token.FileSet, lit *ast.CompositeLit) string {
	var kind, code ast.Expr
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		switch k, _ := kv.Key.(*ast.Ident); {
		case k == nil:
		case k.Name == "Kind":
			kind = kv.Value
		case k.Name == "Code":
			code = kv.Value
		}
	}
	if kind == nil || code == nil {
		return ""
	}
	if call, ok := kind.(*ast.CallExpr); ok {
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Kind" && render(fset, sel.X) == render(fset, code) {
			return ""
		}
	}
	return fset.Position(lit.Pos()).String() + ": an Error's Kind must be its Code's (" + render(fset, code) + ".Kind()), or use service.Errorf"
}

func render(fset *token.FileSet, e ast.Expr) string {
	var b strings.Builder
	_ = printer.Fprint(&b, fset, e)
	return b.String()
}
