-- lossy: experiments.traceparent, pipeline_deployments.traceparent, load_runs.traceparent, agent_tasks.traceparent
ALTER TABLE agent_tasks DROP COLUMN IF EXISTS traceparent;
ALTER TABLE load_runs DROP COLUMN IF EXISTS traceparent;
ALTER TABLE pipeline_deployments DROP COLUMN IF EXISTS traceparent;
ALTER TABLE experiments DROP COLUMN IF EXISTS traceparent;
