-- name: GetTemplateByName :one
-- Team templates shadow platform templates of the same name.
SELECT * FROM templates
WHERE name = sqlc.arg(name) AND (team_id = sqlc.narg(team_id) OR team_id IS NULL)
ORDER BY team_id NULLS LAST
LIMIT 1;

-- name: ListTemplates :many
SELECT * FROM templates
WHERE team_id = sqlc.narg(team_id) OR team_id IS NULL
ORDER BY name;
