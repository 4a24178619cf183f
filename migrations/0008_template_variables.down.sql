-- lossy: pipeline_templates.variables
-- Every template's declared variables are dropped. Built-in templates get theirs
-- back when a phoenix-api that knows 0008 seeds the catalog again; templates made
-- by users come back with none declared.

ALTER TABLE pipeline_templates DROP COLUMN variables;
