// Command wrenn is every role of the Wrenn platform in one binary: the
// control plane (server), the host agent (agent), the local all-in-one
// platform (dev) and the operator tools.
package main

import (
	"os"

	"github.com/wrenn-dev/wrenn/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
