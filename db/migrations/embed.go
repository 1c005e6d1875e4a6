// Package migrations embeds the goose SQL migrations so the wrenn binary can
// migrate a database without the source tree.
package migrations

import "embed"

// FS holds every *.sql migration in this folder.
//
//go:embed *.sql
var FS embed.FS
