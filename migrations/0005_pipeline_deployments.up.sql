-- Pipeline deployments: standing pipelines for a host selector (or host names),
-- created by hand or by promoting an experiment, with their revision history.
-- Every host a deployment selects runs one collector `<name>.standing`; hosts are
-- resolved on every reconcile pass, so standing pipelines follow the fleet.

-- The current state of each deployment: a copy of its current revision's spec.
CREATE TABLE pipeline_deployments (
    name        TEXT PRIMARY KEY,
    labels      JSONB NOT NULL DEFAULT '{}',
    -- {hosts, pipeline, vars, criticalProcesses} (phoenix_wire::deployment::DeploymentSpec)
    spec        JSONB NOT NULL,
    -- The current revision (a row of pipeline_deployment_revisions).
    revision    BIGINT NOT NULL,
    managed_by  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Changed with the current revision (a deploy, a promote or a rollback).
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every spec a deployment ever had. A rollback marks the current revision rolled
-- back and makes the newest earlier revision that was not rolled back current
-- again; numbers count up and are never reused.
CREATE TABLE pipeline_deployment_revisions (
    deployment      TEXT NOT NULL REFERENCES pipeline_deployments (name) ON DELETE CASCADE,
    revision        BIGINT NOT NULL,
    spec            JSONB NOT NULL,
    -- The experiment whose promotion made this revision (no foreign key: the
    -- history outlives a deleted experiment).
    promoted_from   TEXT,
    -- What made it, for people: `deployed by user`, `promoted from experiment ...`.
    change          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    rolled_back_at  TIMESTAMPTZ,
    PRIMARY KEY (deployment, revision)
);

-- An experiment's rollback finds the revision its promotion made.
CREATE INDEX pipeline_deployment_revisions_promoted_from
    ON pipeline_deployment_revisions (promoted_from)
    WHERE promoted_from IS NOT NULL;

-- Desired state changed: wake the reconciler (a hint; it also resyncs periodically).
CREATE TRIGGER pipeline_deployments_notify
    AFTER INSERT OR UPDATE OR DELETE ON pipeline_deployments
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();
