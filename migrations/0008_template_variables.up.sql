-- Typed template variables (issue 12): each template declares the variables its
-- config reads, with a type, a default and a doc
-- ([{name, type, default, doc, min?, max?}], phoenix_wire::variables::VariableDecl).
-- Values given by experiments and deployments are parsed by these types.
ALTER TABLE pipeline_templates ADD COLUMN variables JSONB NOT NULL DEFAULT '[]';
