-- Indexes only; no data lives here.

DROP INDEX agent_tasks_succeeded;
DROP INDEX agent_tasks_failed;
