-- Heartbeats renew hosts.last_seen. Without an index on last_seen, and with room left
-- on each page, that update is HOT: a new row version on the same page, no index
-- entry. With the index (0011) every renewal wrote to two indexes as well; at 25,000
-- hosts that was the largest share of an idle fleet's database time. Retention's
-- "silent since" scan reads the whole table instead, once per retention run.
DROP INDEX IF EXISTS hosts_last_seen;
ALTER TABLE hosts SET (fillfactor = 70);
