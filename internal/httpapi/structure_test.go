package httpapi

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// boundaryFuncs are the decisions this package makes for every HTTP
// surface. A function of one of these names anywhere else is a second
// copy, which is how two surfaces come to disagree about a path.
var boundaryFuncs = map[string]bool{
	"truncate": true, "allowedMethods": true, "validMethod": true, "canonical": true,
	"canonicalPath": true, "encodedSeparator": true, "loopbackHost": true, "isLoopback": true,
	"muxPattern": true,
}

// wireShapes are JSON field sets that only package api may declare: the
// envelope, the token reply and the metadata (the JWT's claims, which name
// the machine too but carry no private_ip, are oidc's).
var wireShapes = [][]string{
	{"error", "code"},
	{"token", "expires_at"},
	{"machine_id", "machine_name", "private_ip"},
}

// TestStructure_OneBoundaryOneContract walks the module's non-test Go
// files: boundary helpers live only here, wire types only in package api.
func TestStructure_OneBoundaryOneContract(t *testing.T) {
	root := filepath.Join("..", "..")
	fset := token.NewFileSet()
	n := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && rel != "." || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		n++
		inAPI := filepath.Dir(rel) == "api"
		inHere := filepath.Dir(rel) == filepath.Join("internal", "httpapi")
		for _, decl := range f.Decls {
			if fn, ok := decl.(*ast.FuncDecl); ok && fn.Recv == nil && boundaryFuncs[fn.Name.Name] && !inHere {
				t.Errorf("%s: func %s duplicates internal/httpapi", rel, fn.Name.Name)
			}
		}
		if inAPI {
			return nil
		}
		ast.Inspect(f, func(node ast.Node) bool {
			st, ok := node.(*ast.StructType)
			if !ok {
				return true
			}
			names := map[string]bool{}
			for _, fld := range st.Fields.List {
				if fld.Tag == nil {
					continue
				}
				tag, _ := strconv.Unquote(fld.Tag.Value)
				name, _, _ := strings.Cut(reflect.StructTag(tag).Get("json"), ",")
				names[name] = true
			}
			for _, shape := range wireShapes {
				all := true
				for _, s := range shape {
					all = all && names[s]
				}
				if all {
					t.Errorf("%s: %s declares a wire type %v outside package api", rel, fset.Position(st.Pos()), shape)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 50 {
		t.Fatalf("read %d Go files: the walk did not reach the module", n)
	}
}
