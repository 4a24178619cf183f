-- The event stream: every experiment transition, every host registration or full
-- status report, and every agent task's creation and end are announced on the
-- channel `phoenix_events` as the JSON of a `phoenix_wire::events::Event`. Each API
-- replica holds one LISTEN connection and forwards the payload unchanged to its
-- WebSocket subscribers, so every replica sees every event without re-querying.
--
-- Payloads stay small, well under NOTIFY's 8000-byte limit: identifiers are
-- bounded by the name rules and each free text (reason, error, agent version) is
-- cut at 500 characters (at most ~3000 bytes even if every character needed a JSON
-- escape). A client fetches the details from the API. Heartbeats (`last_seen`
-- only, written in batches for thousands of hosts) announce nothing.

-- A free text cut for a payload; the ellipsis shows it was cut.
CREATE FUNCTION phoenix_event_text(t TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN char_length(t) > 500 THEN left(t, 499) || '…' ELSE t END
$$;

-- RFC 3339 in UTC, whatever the writing session's time zone.
CREATE FUNCTION phoenix_event_time(t TIMESTAMPTZ) RETURNS TEXT LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- The experiment a task works for, from its unit id: `<experiment>.baseline`,
-- `<experiment>.candidate`, or `load.experiment.<experiment>` (an experiment's
-- load); NULL for anything else (standing pipelines, load runs of their own).
CREATE FUNCTION phoenix_task_experiment(unit TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN unit LIKE 'load.experiment.%' THEN substr(unit, length('load.experiment.') + 1)
        WHEN unit ~ '^[a-z0-9-]+\.(baseline|candidate)$' THEN split_part(unit, '.', 1)
    END
$$;

CREATE FUNCTION notify_experiment_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phoenix_events', json_build_object(
        'kind', 'experiment',
        'id', NEW.id,
        'experiment', NEW.experiment,
        'fromPhase', NEW.from_phase,
        'toPhase', NEW.to_phase,
        'reason', phoenix_event_text(NEW.reason),
        'at', phoenix_event_time(NEW.at))::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER experiment_events_stream
    AFTER INSERT ON experiment_events
    FOR EACH ROW EXECUTE FUNCTION notify_experiment_event();

CREATE FUNCTION notify_host_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('phoenix_events', json_build_object(
        'kind', 'host',
        'host', NEW.host_id,
        'change', CASE TG_OP WHEN 'INSERT' THEN 'registered' ELSE 'status' END,
        'agentVersion', phoenix_event_text(NEW.agent_version),
        'at', phoenix_event_time(NEW.status_at))::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER hosts_stream_registered
    AFTER INSERT ON hosts
    FOR EACH ROW EXECUTE FUNCTION notify_host_event();

-- A full status report sets status_at; a heartbeat only last_seen.
CREATE TRIGGER hosts_stream_status
    AFTER UPDATE ON hosts
    FOR EACH ROW WHEN (OLD.status_at IS DISTINCT FROM NEW.status_at)
    EXECUTE FUNCTION notify_host_event();

CREATE FUNCTION notify_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- A duplicate insert (ON CONFLICT DO NOTHING) inserts no row and announces nothing.
CREATE TRIGGER agent_tasks_stream_created
    AFTER INSERT ON agent_tasks
    FOR EACH ROW EXECUTE FUNCTION notify_task_event();

-- Leasing (pending -> leased, and each re-delivery) is not announced; the end is.
CREATE TRIGGER agent_tasks_stream_finished
    AFTER UPDATE OF status ON agent_tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION notify_task_event();
