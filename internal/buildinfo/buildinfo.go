// Package buildinfo holds the version stamped into binaries at link time.
package buildinfo

// Version is set with -ldflags "-X github.com/wrenn-dev/wrenn/internal/buildinfo.Version=...".
var Version = "dev"
