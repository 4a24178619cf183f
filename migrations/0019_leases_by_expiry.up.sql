-- Once a pass the reconciler fails the leased tasks whose last allowed delivery
-- ran out (tasks::fail_exhausted). Without an index on the lease it read every
-- open task to find the few expired ones: 14 ms a pass in a 10,000-host rollout
-- (20,000 open tasks). By the lease's end, it reads only the expired ones.
CREATE INDEX agent_tasks_leases_by_expiry ON agent_tasks (lease_until) WHERE status = 'leased';
