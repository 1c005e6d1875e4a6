-- +goose Up
-- Sign-in through external providers (GitHub first). A user may have no
-- password when they signed up through a provider; such a user signs in only
-- through their identities, so the last one cannot be removed.
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;

CREATE TABLE user_identities (
    user_id          text        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The registry name of the provider, e.g. github.
    provider         text        NOT NULL,
    -- The provider's stable account id (never the login, which can change).
    provider_user_id text        NOT NULL,
    -- What the provider reported at link time, for display only.
    login            text        NOT NULL DEFAULT '',
    email            text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider),
    -- One provider account signs in one user: no account can be linked twice.
    UNIQUE (provider, provider_user_id)
);

-- +goose Down
DROP TABLE user_identities;
-- Password-less accounts get an unusable hash (bcrypt never matches it).
UPDATE users SET password_hash = '!' WHERE password_hash IS NULL;
ALTER TABLE users ALTER COLUMN password_hash SET NOT NULL;
