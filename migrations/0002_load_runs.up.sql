-- Load simulation: standalone load runs (desired), the load runs agents report
-- (actual), and each host's load limit. Load tasks are `agent_tasks` rows with
-- kind 'load' whose collector_id is the unit id `load.<run id>`.

-- Desired ---------------------------------------------------------------------------

-- Runs started on their own (`phoenix loadsim start`). An experiment's load section
-- lives in its spec. A run is desired on its target hosts while phase is 'running'
-- and expires_at is in the future; 'expired' is derived from expires_at, not stored.
CREATE TABLE load_runs (
    name          TEXT PRIMARY KEY,
    -- {selector: {...}} or {names: [...]}, like an experiment's spec.hosts.
    hosts         JSONB NOT NULL,
    -- Resolved from `hosts` when the run is created.
    target_hosts  TEXT[] NOT NULL,
    profile       TEXT NOT NULL,
    -- The resolved LoadParameters (profile defaults plus overrides).
    parameters    JSONB NOT NULL,
    phase         TEXT NOT NULL DEFAULT 'running',   -- running | stopped
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL,
    stopped_at    TIMESTAMPTZ
);

-- Actual ----------------------------------------------------------------------------

-- What the host's agent reports (0: it runs no load, e.g. an older agent).
ALTER TABLE hosts ADD COLUMN max_load_processes INTEGER NOT NULL DEFAULT 0;

-- Replaced wholesale by each full status report of the host's agent.
CREATE TABLE host_loads (
    host_id         TEXT NOT NULL REFERENCES hosts (host_id) ON DELETE CASCADE,
    run_id          TEXT NOT NULL,
    owner           TEXT NOT NULL,
    profile         TEXT NOT NULL,
    spec_hash       TEXT NOT NULL,
    state           TEXT NOT NULL,                    -- running | finished
    live_processes  INTEGER NOT NULL DEFAULT 0,
    spawned_total   BIGINT NOT NULL DEFAULT 0,
    started_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    last_error      TEXT,
    reported_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, run_id)
);

-- Wake the reconciler when either changes (a hint; it also resyncs periodically).
CREATE TRIGGER load_runs_notify
    AFTER INSERT OR UPDATE OR DELETE ON load_runs
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();

CREATE TRIGGER host_loads_notify
    AFTER INSERT OR UPDATE OR DELETE ON host_loads
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();
