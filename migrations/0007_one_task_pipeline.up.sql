-- One task pipeline for every kind of unit (collectors, load runs): the columns
-- say what they hold for all kinds, not only for collectors.
ALTER TABLE agent_tasks RENAME COLUMN collector_id TO unit_id;
ALTER TABLE agent_tasks RENAME COLUMN config_hash TO spec_hash;

-- The stream trigger reads the renamed column.
CREATE OR REPLACE FUNCTION notify_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phoenix_events', json_build_object(
        'kind', 'task',
        'id', NEW.id,
        'host', NEW.host_id,
        'unit', NEW.unit_id,
        'experiment', phoenix_task_experiment(NEW.unit_id),
        'taskKind', NEW.kind,
        'action', NEW.action,
        'status', NEW.status,
        'attempts', NEW.attempts,
        'error', phoenix_event_text(NEW.error),
        'at', phoenix_event_time(NEW.updated_at))::text);
    RETURN NULL;
END;
$$;

-- The reconciler needs to hear of a task when it finishes (its outcome may change
-- what the next pass decides), not when it is claimed or when the reconciler
-- itself cancels it. One notification per transaction: identical NOTIFYs fold.
DROP TRIGGER agent_tasks_done_notify ON agent_tasks;
CREATE TRIGGER agent_tasks_done_notify
    AFTER UPDATE OF status ON agent_tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION notify_reconciler();
