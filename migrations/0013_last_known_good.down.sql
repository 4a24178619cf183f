-- lossy: host_collectors.rolled_back_from
ALTER TABLE host_collectors DROP COLUMN IF EXISTS rolled_back_from;
