package api

import (
	"encoding/json"

	"github.com/wrenn-dev/wrenn/internal/db"
)

func dbKey(id, team string) db.GetAPIKeyParams { return db.GetAPIKeyParams{ID: id, TeamID: team} }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
