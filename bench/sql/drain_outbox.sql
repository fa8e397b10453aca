-- Drain: claim 100 and ack them in one transaction (-D sub=...).
-- pgbench -M prepared script, run by bench/run.
WITH c AS (SELECT event_id FROM outbox.claim(:sub, 100)) SELECT outbox.ack(:sub, array_agg(event_id)) FROM c;
