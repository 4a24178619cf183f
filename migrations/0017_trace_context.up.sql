-- Self-telemetry: the W3C trace context (`traceparent`) that travels with desired
-- state. The api stores the one of the request that last wrote an experiment, a
-- deployment's current revision or a load run; the reconciler's pass continues it
-- and stores the one of the step that made each task; the agent continues the
-- task's. One trace then follows a change from the api to the agent that ran it.
-- NULL when the writer was not traced (no OpenTelemetry configured).
ALTER TABLE experiments ADD COLUMN traceparent TEXT;
ALTER TABLE pipeline_deployments ADD COLUMN traceparent TEXT;
ALTER TABLE load_runs ADD COLUMN traceparent TEXT;
ALTER TABLE agent_tasks ADD COLUMN traceparent TEXT;
