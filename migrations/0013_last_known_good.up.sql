-- Last known good: a collector whose update failed on its host (start health
-- check, or a crash loop) runs its previous config again; the agent reports the
-- config it left ({"configHash", "pipeline", "error"}), and the reconciler does not
-- send that config to the host again while it is reported.
ALTER TABLE host_collectors ADD COLUMN rolled_back_from JSONB;
