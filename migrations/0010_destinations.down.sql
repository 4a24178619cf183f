-- Reverses 0010_destinations.up.sql. Deployments keep naming destinations in their
-- specs; without the table the reconciler renders them without those exporters.
DROP TRIGGER IF EXISTS destinations_notify ON destinations;
DROP TABLE IF EXISTS destinations;
