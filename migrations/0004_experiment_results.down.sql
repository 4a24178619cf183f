-- lossy: experiment_results
-- Every measurement window and report (with its verdict) is dropped; experiments
-- keep their phase.

DROP TABLE experiment_results;
