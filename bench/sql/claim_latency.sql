-- Claim latency: claim 100 (timed separately by pgbench -r), then ack them.
-- pgbench -M prepared script, run by bench/run (-D sub=...).
BEGIN;
SELECT array_agg(event_id) AS ids FROM outbox.claim(:sub, 100) \gset
SELECT outbox.ack(:sub, :ids::bigint[]);
COMMIT;
