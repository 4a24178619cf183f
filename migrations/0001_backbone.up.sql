-- Phoenix backbone schema: desired state (experiments, pipeline templates), actual
-- state (hosts and the collectors their agents report), work (agent tasks), history
-- (experiment events).

-- Desired ---------------------------------------------------------------------------

CREATE TABLE pipeline_templates (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    config      TEXT NOT NULL,
    builtin     BOOLEAN NOT NULL DEFAULT FALSE,
    managed_by  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE experiments (
    name                TEXT PRIMARY KEY,
    uid                 UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    labels              JSONB NOT NULL DEFAULT '{}',
    spec                JSONB NOT NULL,
    generation          BIGINT NOT NULL DEFAULT 1,
    observed_generation BIGINT NOT NULL DEFAULT 0,
    phase               TEXT NOT NULL DEFAULT 'pending',
    reason              TEXT,
    -- Resolved from the selector when deploying starts; a host that joins later
    -- is not half-measured.
    target_hosts        TEXT[] NOT NULL DEFAULT '{}',
    managed_by          TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    phase_changed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX experiments_phase ON experiments (phase);

-- History: kept after an experiment is deleted, so no foreign key.
CREATE TABLE experiment_events (
    id          BIGSERIAL PRIMARY KEY,
    experiment  TEXT NOT NULL,
    from_phase  TEXT,
    to_phase    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX experiment_events_by_experiment ON experiment_events (experiment, id);

-- Actual ----------------------------------------------------------------------------

CREATE TABLE hosts (
    host_id       TEXT PRIMARY KEY,
    labels        JSONB NOT NULL DEFAULT '{}',
    agent_version TEXT NOT NULL DEFAULT '',
    last_seen     TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Replaced wholesale by each full status report of the host's agent.
CREATE TABLE host_collectors (
    host_id       TEXT NOT NULL REFERENCES hosts (host_id) ON DELETE CASCADE,
    collector_id  TEXT NOT NULL,
    owner         TEXT NOT NULL,
    variant       TEXT NOT NULL,
    pipeline      TEXT NOT NULL,
    config_hash   TEXT NOT NULL,
    pid           INTEGER,
    health        TEXT NOT NULL,
    restarts      INTEGER NOT NULL DEFAULT 0,
    cpu_seconds   DOUBLE PRECISION NOT NULL DEFAULT 0,
    rss_bytes     BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT,
    reported_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, collector_id)
);

-- Work ------------------------------------------------------------------------------

CREATE TABLE agent_tasks (
    id            BIGSERIAL PRIMARY KEY,
    host_id       TEXT NOT NULL,
    kind          TEXT NOT NULL DEFAULT 'collector',
    collector_id  TEXT NOT NULL,
    action        TEXT NOT NULL,
    config_hash   TEXT NOT NULL DEFAULT '',
    payload       JSONB,
    status        TEXT NOT NULL DEFAULT 'pending',   -- pending | leased | succeeded | failed
    attempts      INTEGER NOT NULL DEFAULT 0,
    lease_until   TIMESTAMPTZ,
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- No two open tasks for the same (host, collector, hash, action): a second
-- reconciler, or a second pass, inserting the same task is a no-op.
CREATE UNIQUE INDEX agent_tasks_one_open
    ON agent_tasks (host_id, collector_id, config_hash, action)
    WHERE status IN ('pending', 'leased');

-- The claim query: open tasks of one host, oldest first.
CREATE INDEX agent_tasks_claimable
    ON agent_tasks (host_id, id)
    WHERE status IN ('pending', 'leased');

-- A new task wakes the agent waiting for its host (through each API process's
-- single LISTEN connection). A hint only: agents also re-poll on their own.
CREATE FUNCTION notify_agent_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phoenix_agent_tasks', NEW.host_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_tasks_notify
    AFTER INSERT ON agent_tasks
    FOR EACH ROW EXECUTE FUNCTION notify_agent_task();

-- Desired state changed: wake the reconciler. A hint only; it also resyncs periodically.
CREATE FUNCTION notify_reconciler() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phoenix_reconcile', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER experiments_notify
    AFTER INSERT OR UPDATE OR DELETE ON experiments
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();

CREATE TRIGGER host_collectors_notify
    AFTER INSERT OR UPDATE OR DELETE ON host_collectors
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();

CREATE TRIGGER agent_tasks_done_notify
    AFTER UPDATE OF status ON agent_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();
