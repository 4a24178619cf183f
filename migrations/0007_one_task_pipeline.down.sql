-- The columns get their collector names back, and the triggers their 0003 shape;
-- no data is lost.

DROP TRIGGER agent_tasks_done_notify ON agent_tasks;
CREATE TRIGGER agent_tasks_done_notify
    AFTER UPDATE OF status ON agent_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();

ALTER TABLE agent_tasks RENAME COLUMN unit_id TO collector_id;
ALTER TABLE agent_tasks RENAME COLUMN spec_hash TO config_hash;

CREATE OR REPLACE FUNCTION notify_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phoenix_events', json_build_object(
        'kind', 'task',
        'id', NEW.id,
        'host', NEW.host_id,
        'unit', NEW.collector_id,
        'experiment', phoenix_task_experiment(NEW.collector_id),
        'taskKind', NEW.kind,
        'action', NEW.action,
        'status', NEW.status,
        'attempts', NEW.attempts,
        'error', phoenix_event_text(NEW.error),
        'at', phoenix_event_time(NEW.updated_at))::text);
    RETURN NULL;
END;
$$;
