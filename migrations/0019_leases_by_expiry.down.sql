-- An index only: going down loses nothing.
DROP INDEX IF EXISTS agent_tasks_leases_by_expiry;
