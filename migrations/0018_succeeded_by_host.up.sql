-- A scoped reconcile pass reads the recent successes of the hosts it was given
-- (tasks::list_open): by host, one index lookup each, instead of every success of
-- the last ten minutes (the whole rollout's, 20,000 at 10,000 hosts) joined
-- against the list. See BENCHMARKS.md.
CREATE INDEX agent_tasks_succeeded_by_host ON agent_tasks (host_id) WHERE status = 'succeeded';
