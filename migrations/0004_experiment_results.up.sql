-- Results of an experiment's analysis: the measurement window (fixed when the
-- experiment leaves `running`), attempts against Prometheus, and the report with
-- its verdict once one was reached.
CREATE TABLE experiment_results (
    experiment    TEXT PRIMARY KEY REFERENCES experiments (name) ON DELETE CASCADE,
    window_start  TIMESTAMPTZ NOT NULL,
    window_end    TIMESTAMPTZ NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    verdict       TEXT,
    report        JSONB,
    analyzed_at   TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
