-- Not marked lossy: the columns hold only trace context (which trace a change or a
-- task belongs to), never state Phoenix acts on; going down forgets the links
-- between traces and changes nothing else, so it needs no --force.
ALTER TABLE agent_tasks DROP COLUMN IF EXISTS traceparent;
ALTER TABLE load_runs DROP COLUMN IF EXISTS traceparent;
ALTER TABLE pipeline_deployments DROP COLUMN IF EXISTS traceparent;
ALTER TABLE experiments DROP COLUMN IF EXISTS traceparent;
