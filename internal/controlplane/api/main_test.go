package api

import (
	"os"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// The real-agent tests build envd (envdtest.Build); its binary goes at the end.
func TestMain(m *testing.M) {
	code := testenv.Run(m)
	envdtest.RemoveBuild()
	os.Exit(code)
}
