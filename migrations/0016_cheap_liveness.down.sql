ALTER TABLE hosts RESET (fillfactor);
CREATE INDEX hosts_last_seen ON hosts (last_seen);
