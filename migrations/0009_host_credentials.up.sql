-- Per-host agent identity (issue 12). An agent enrolls once with a bootstrap token
-- and receives a host credential bound to its host id; agent routes accept only
-- the credential of the host in their path. Only SHA-256 digests of the secrets
-- are stored; a token is `phoenix-bootstrap.<id>.<secret>` or
-- `phoenix-host.<id>.<secret>`, looked up by id and checked by digest.
CREATE TABLE bootstrap_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 BYTEA NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);

CREATE TABLE host_credentials (
    id TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    secret_sha256 BYTEA NOT NULL,
    -- The bootstrap token it was enrolled with.
    bootstrap_token_id TEXT NOT NULL REFERENCES bootstrap_tokens (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

-- A host holds at most one credential that is not revoked.
CREATE UNIQUE INDEX host_credentials_one_active ON host_credentials (host_id)
    WHERE revoked_at IS NULL;
