-- Every task gets its body back inline; a body no task names is only a cache
-- (rendered again when wanted), so nothing of value is lost.
UPDATE agent_tasks t
SET payload = (t.payload - 'configRef') || jsonb_build_object('config', c.body)
FROM collector_configs c
WHERE t.config_sha256 = c.sha256;
DROP INDEX IF EXISTS agent_tasks_config_sha256;
ALTER TABLE agent_tasks DROP COLUMN IF EXISTS config_sha256;
DROP TABLE IF EXISTS collector_configs;
