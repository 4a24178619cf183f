-- Back to table-named wake-ups (every pass a full one); the triggers as 0001,
-- 0002 and 0007 left them. Nothing is stored by these triggers, so nothing is lost.
DROP TRIGGER agent_tasks_done_notify ON agent_tasks;
CREATE TRIGGER agent_tasks_done_notify
    AFTER UPDATE OF status ON agent_tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION notify_reconciler();

DROP TRIGGER host_loads_notify ON host_loads;
CREATE TRIGGER host_loads_notify
    AFTER INSERT OR UPDATE OR DELETE ON host_loads
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();

DROP TRIGGER host_collectors_notify ON host_collectors;
CREATE TRIGGER host_collectors_notify
    AFTER INSERT OR UPDATE OR DELETE ON host_collectors
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();

DROP TRIGGER hosts_notify ON hosts;
DROP FUNCTION notify_reconciler_host();
