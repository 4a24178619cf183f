-- lossy: reconciler_leadership, experiment_events.task_id
DROP INDEX IF EXISTS hosts_last_seen;
DROP INDEX IF EXISTS experiment_events_at;
DROP INDEX IF EXISTS agent_tasks_finished;
DROP TABLE IF EXISTS reconciler_leadership;
DROP INDEX IF EXISTS experiment_events_by_task;
ALTER TABLE experiment_events DROP COLUMN IF EXISTS task_id;
