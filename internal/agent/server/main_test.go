package server_test

import (
	"os"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
)

func TestMain(m *testing.M) { os.Exit(envdtest.Run(m)) }
