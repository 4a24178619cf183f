-- Reliability (issue 18).

-- A failed task of an experiment's collector or load is an event of that
-- experiment, recorded once (the pass that notices it names the task).
ALTER TABLE experiment_events ADD COLUMN task_id BIGINT;
CREATE UNIQUE INDEX experiment_events_by_task ON experiment_events (experiment, task_id)
    WHERE task_id IS NOT NULL;

-- Leadership epochs: each reconciler that takes the leader lock bumps the epoch;
-- every write of a leader checks, in its own transaction, that the epoch is still
-- the one it took, so a deposed leader's late write is refused.
CREATE TABLE reconciler_leadership (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       BIGINT NOT NULL,
    holder      TEXT NOT NULL DEFAULT '',
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO reconciler_leadership (id, epoch) VALUES (1, 0);

-- Retention: finished tasks and events are pruned by age.
CREATE INDEX agent_tasks_finished ON agent_tasks (updated_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX experiment_events_at ON experiment_events (at);
CREATE INDEX hosts_last_seen ON hosts (last_seen);
