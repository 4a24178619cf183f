-- The reconciler's pass is incremental: a change that concerns one host (its
-- status report, its reported collectors and load runs, one of its tasks
-- finishing) names that host ('host:<id>'), so the next pass looks at that host
-- only. Every other change still names its table, and makes the next pass a full
-- one. Identical notifications of one transaction fold into one, so a report that
-- rewrites a host's rows wakes the reconciler once for that host.
CREATE FUNCTION notify_reconciler_host() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('phoenix_reconcile', 'host:' || OLD.host_id);
    ELSE
        PERFORM pg_notify('phoenix_reconcile', 'host:' || NEW.host_id);
    END IF;
    RETURN NULL;
END;
$$;

-- Registration and every status report (they set labels and status_at);
-- heartbeats touch last_seen only, and wake nothing.
CREATE TRIGGER hosts_notify
    AFTER INSERT OR DELETE OR UPDATE OF labels, status_at ON hosts
    FOR EACH ROW EXECUTE FUNCTION notify_reconciler_host();

DROP TRIGGER host_collectors_notify ON host_collectors;
CREATE TRIGGER host_collectors_notify
    AFTER INSERT OR UPDATE OR DELETE ON host_collectors
    FOR EACH ROW EXECUTE FUNCTION notify_reconciler_host();

DROP TRIGGER host_loads_notify ON host_loads;
CREATE TRIGGER host_loads_notify
    AFTER INSERT OR UPDATE OR DELETE ON host_loads
    FOR EACH ROW EXECUTE FUNCTION notify_reconciler_host();

DROP TRIGGER agent_tasks_done_notify ON agent_tasks;
CREATE TRIGGER agent_tasks_done_notify
    AFTER UPDATE OF status ON agent_tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION notify_reconciler_host();
