-- Destinations: the user's own backends (OTLP gRPC, OTLP HTTP, Prometheus remote
-- write) that standing collectors export to, declared by an admin. `spec` is a
-- phoenix_wire::destination::DestinationSpec: endpoint, plain headers, TLS settings,
-- and credentials as references only (a file in the agent's credentials directory
-- or an environment variable of the agent); no secret value is ever stored here.
-- A deployment names its destinations in its spec (`spec.destinations`).
CREATE TABLE destinations (
    name        TEXT PRIMARY KEY,
    labels      JSONB NOT NULL DEFAULT '{}',
    spec        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A changed destination changes what standing collectors run: wake the reconciler.
CREATE TRIGGER destinations_notify
    AFTER INSERT OR UPDATE OR DELETE ON destinations
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reconciler();
