package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/pki"
)

func TestCAInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := Main(args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	if code, _, stderr := run("ca", "init"); code != ExitUsage || !strings.Contains(stderr, "--dir is required") {
		t.Fatalf("without --dir: %d %q", code, stderr)
	}
	code, stdout, stderr := run("ca", "init", "--dir", dir)
	if code != 0 {
		t.Fatalf("ca init: %d %s", code, stderr)
	}
	certPath, keyPath := filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile)
	if want := "WRENN_CA_CERT=" + certPath + "\nWRENN_CA_KEY=" + keyPath + "\n"; stdout != want {
		t.Fatalf("stdout %q, want %q", stdout, want)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, cerr, kerr := pki.LoadCA(certPath, keyPath, time.Now()); cerr != nil || kerr != nil {
		t.Fatalf("the written CA does not load: %v %v", cerr, kerr)
	}
	if st, _ := os.Stat(keyPath); st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v", st.Mode().Perm())
	}
	code, _, stderr = run("ca", "init", "--dir", dir)
	if code != 1 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("second init: %d %q", code, stderr)
	}
	if again, _ := os.ReadFile(keyPath); !bytes.Equal(again, keyPEM) {
		t.Fatal("the second init replaced the key")
	}
}
