// Command specdump prints the control plane's merged OpenAPI document;
// `make web` generates the dashboard's typed API client from it.
package main

import (
	"fmt"
	"os"

	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
)

func main() {
	spec, err := api.Spec()
	if err != nil {
		fmt.Fprintln(os.Stderr, "specdump:", err)
		os.Exit(1)
	}
	_, _ = os.Stdout.Write(spec)
}
