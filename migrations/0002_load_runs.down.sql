-- lossy: load_runs, host_loads, hosts.max_load_processes
-- Standalone load runs, the load agents reported and each host's load limit are
-- dropped. Load tasks stay in agent_tasks (kind 'load'), as history.

DROP TABLE host_loads;
DROP TABLE load_runs;
ALTER TABLE hosts DROP COLUMN max_load_processes;
