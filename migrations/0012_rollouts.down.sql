-- lossy: deployment_rollouts, deployment_events
-- Reverses 0012_rollouts.up.sql. Without roll-outs every host a deployment selects
-- runs its current revision at once.
DROP TRIGGER IF EXISTS deployment_rollouts_notify ON deployment_rollouts;
DROP TRIGGER IF EXISTS deployment_events_stream ON deployment_events;
DROP FUNCTION IF EXISTS notify_deployment_event();
DROP TABLE IF EXISTS deployment_events;
DROP TABLE IF EXISTS deployment_rollouts;
