-- Content-addressed collector configs (issue 16). A rendered config body is the
-- same on every host (what differs per host travels in the task's environment),
-- so it is stored once, keyed by its SHA-256, and a collector task names it
-- (`config_sha256`, and `configRef` in the spec) instead of carrying it. Agents of
-- protocol 2.1 fetch a body they do not hold; older ones are served it inline.
CREATE TABLE collector_configs (
    sha256      TEXT PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    body        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE agent_tasks ADD COLUMN config_sha256 TEXT REFERENCES collector_configs (sha256);
CREATE INDEX agent_tasks_config_sha256 ON agent_tasks (config_sha256)
    WHERE config_sha256 IS NOT NULL;

-- Tasks written before move their bodies into the table (stored as of the
-- oldest task that carried each).
INSERT INTO collector_configs (sha256, body, created_at)
SELECT encode(sha256(convert_to(payload->>'config', 'UTF8')), 'hex'), payload->>'config', min(created_at)
FROM agent_tasks
WHERE kind = 'collector' AND payload->>'config' <> ''
GROUP BY payload->>'config';
UPDATE agent_tasks
SET config_sha256 = encode(sha256(convert_to(payload->>'config', 'UTF8')), 'hex'),
    payload = (payload - 'config')
        || jsonb_build_object('configRef', encode(sha256(convert_to(payload->>'config', 'UTF8')), 'hex'))
WHERE kind = 'collector' AND payload->>'config' <> '';
