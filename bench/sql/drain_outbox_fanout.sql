-- Drain, fan-out: client i consumes subscription f4_i (4 subscriptions, one consumer each).
-- pgbench -M prepared script, run by bench/run.
WITH c AS (SELECT event_id FROM outbox.claim('f4_' || :client_id, 100)) SELECT outbox.ack('f4_' || :client_id, array_agg(event_id)) FROM c;
