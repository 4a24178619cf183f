-- Staged roll-outs (issue 14): a deployment's new revision reaches its hosts in
-- batches, each batch's new collectors healthy (and writing series) before the
-- next; a host that fails stops the roll-out and the deployment goes back to the
-- revision it came from.

-- One roll-out per revision that became current by a deploy or a promotion (a
-- revision restored by a rollback is not rolled out again: it runs at once).
-- `hosts` is {host: {batch, state, since, reason}} for every host a batch reached
-- (phoenix_wire::rollout::RolloutHost); hosts not in it still run `from_revision`.
CREATE TABLE deployment_rollouts (
    deployment      TEXT NOT NULL REFERENCES pipeline_deployments (name) ON DELETE CASCADE,
    revision        BIGINT NOT NULL,
    -- What the hosts ran before: NULL for a deployment's first revision (hosts not
    -- reached yet run nothing of it).
    from_revision   BIGINT,
    -- pending | rolling | done | rolled-back | failed | superseded
    state           TEXT NOT NULL,
    -- The batch in progress (0 before the first).
    batch           INTEGER NOT NULL DEFAULT 0,
    batch_started_at TIMESTAMPTZ,
    hosts           JSONB NOT NULL DEFAULT '{}',
    reason          TEXT,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    PRIMARY KEY (deployment, revision)
);

CREATE INDEX deployment_rollouts_open ON deployment_rollouts (deployment)
    WHERE state IN ('pending', 'rolling');

-- Deployments that exist already run their current revision everywhere: settled.
INSERT INTO deployment_rollouts (deployment, revision, state, reason, finished_at)
    SELECT name, revision, 'done', 'running before staged roll-outs existed', now()
    FROM pipeline_deployments;

-- Each step of a roll-out, for people and the event stream. History outlives a
-- deleted deployment, like experiment_events: no foreign key.
CREATE TABLE deployment_events (
    id          BIGSERIAL PRIMARY KEY,
    deployment  TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    -- The experiment whose promotion made the revision, if one did.
    experiment  TEXT,
    -- started | batch-started | host-healthy | batch-done | host-failed |
    -- rolled-back | failed | done | superseded
    step        TEXT NOT NULL,
    batch       INTEGER,
    host        TEXT,
    reason      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment, id);
CREATE INDEX deployment_events_at ON deployment_events (at);

CREATE FUNCTION notify_deployment_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phoenix_events', json_build_object(
        'kind', 'rollout',
        'id', NEW.id,
        'deployment', NEW.deployment,
        'revision', NEW.revision,
        'experiment', NEW.experiment,
        'step', NEW.step,
        'batch', NEW.batch,
        'host', NEW.host,
        'reason', phoenix_event_text(NEW.reason),
        'at', phoenix_event_time(NEW.at))::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER deployment_events_stream
    AFTER INSERT ON deployment_events
    FOR EACH ROW EXECUTE FUNCTION notify_deployment_event();

-- A roll-out moving to its next batch changes what hosts should run.
CREATE TRIGGER deployment_rollouts_notify
    AFTER INSERT OR UPDATE ON deployment_rollouts
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();
