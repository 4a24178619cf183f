-- lossy: pipeline_templates, experiments, experiment_events, hosts, host_collectors, agent_tasks
-- Back to an empty database: every experiment, template, host and task is gone.

DROP TABLE agent_tasks;
DROP TABLE host_collectors;
DROP TABLE hosts;
DROP TABLE experiment_events;
DROP TABLE experiments;
DROP TABLE pipeline_templates;

DROP FUNCTION notify_reconciler();
DROP FUNCTION notify_agent_task();
