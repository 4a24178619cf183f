-- Fleet scale (see BENCHMARKS.md): what every reconcile pass reads must not scan
-- the whole task history.

-- Failed starts, counted every pass to stop retrying a collector that keeps
-- failing (tasks::failures_since).
CREATE INDEX agent_tasks_failed ON agent_tasks (created_at) WHERE status = 'failed';

-- Succeeded tasks whose result the host has not reported yet count as in flight,
-- so a pass between an agent's answer and its next status report does not ask
-- for the same thing again (tasks::list_open).
CREATE INDEX agent_tasks_succeeded ON agent_tasks (updated_at) WHERE status = 'succeeded';
