-- The event stream's triggers and functions; no data lives here.

DROP TRIGGER agent_tasks_stream_finished ON agent_tasks;
DROP TRIGGER agent_tasks_stream_created ON agent_tasks;
DROP TRIGGER hosts_stream_status ON hosts;
DROP TRIGGER hosts_stream_registered ON hosts;
DROP TRIGGER experiment_events_stream ON experiment_events;

DROP FUNCTION notify_task_event();
DROP FUNCTION notify_host_event();
DROP FUNCTION notify_experiment_event();
DROP FUNCTION phoenix_task_experiment(TEXT);
DROP FUNCTION phoenix_event_time(TIMESTAMPTZ);
DROP FUNCTION phoenix_event_text(TEXT);
