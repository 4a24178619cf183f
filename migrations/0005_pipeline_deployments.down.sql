-- lossy: pipeline_deployments, pipeline_deployment_revisions
-- Every standing pipeline and its revision history is dropped; the reconciler of
-- the older release then stops the standing collectors.

DROP TABLE pipeline_deployment_revisions;
DROP TABLE pipeline_deployments;
