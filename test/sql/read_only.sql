-- Read-only transactions (issue 8, fault 13): every function that writes
-- raises 25006 read_only_sql_transaction, as any write does, and writes
-- nothing; the functions that only read work.
--
-- Subscriptions are named ro_*, the role regress_outbox_ro; all are removed
-- at the end.

\set VERBOSITY terse

CREATE FUNCTION pg_temp.try(sql text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE ROLE regress_outbox_ro;
SELECT outbox.subscribe('ro_a', ARRAY['ro.t'], max_attempts => 1);
SELECT outbox.grant_consume('regress_outbox_ro', 'ro_a');
-- a leased delivery and a dead letter to try ack, fail and replay on
SELECT outbox.enqueue('ro.t', '{"n": 1}') > 0 AS enqueued;
SELECT outbox.enqueue('ro.t', '{"n": 2}') > 0 AS enqueued;
CREATE TEMP TABLE ro_ev AS SELECT payload->>'n' AS n, event_id FROM outbox.claim('ro_a', 2);
SELECT outbox.fail('ro_a', event_id, 'broken') FROM ro_ev WHERE n = '2';
SELECT outbox.enqueue('ro.t', '{"n": 3}') > 0 AS enqueued;

CREATE TEMP TABLE ro_before AS
	SELECT (SELECT count(*) FROM outbox.event) AS events,
		   -- the worker's advances write batch rows (no leased ids) and
		   -- rotation removes old ones: look for new leases only
		   (SELECT coalesce(max(batch_no), 0) FROM outbox.batch) AS batches,
		   (SELECT count(*) FROM outbox.settle) AS settles,
		   (SELECT count(*) FROM outbox.delivery) AS deliveries,
		   (SELECT count(*) FROM outbox.subscription) AS subscriptions,
		   (SELECT count(*) FROM outbox.consumer) AS consumers,
		   (SELECT count(*) FROM outbox.producer) AS producers,
		   (SELECT count(*) FROM outbox.dedup) AS dedup;

BEGIN TRANSACTION READ ONLY;
SELECT call, pg_temp.try(replace(call, '$leased', (SELECT event_id FROM ro_ev WHERE n = '1')::text)) AS result
  FROM (VALUES
	($$SELECT outbox.enqueue('ro.t', '{}')$$),
	($$SELECT outbox.enqueue('ro.t', '{}', key => 'k', dedup_key => 'd')$$),
	($$SELECT outbox.enqueue_many('ro.t', ARRAY['{}']::jsonb[])$$),
	($$SELECT outbox.claim('ro_a')$$),
	($$SELECT outbox.claim('ro_a', 10, '1 minute')$$),
	($$SELECT outbox.ack('ro_a', $leased::bigint)$$),
	($$SELECT outbox.ack('ro_a', ARRAY[$leased]::bigint[])$$),
	($$SELECT outbox.ack('ro_a', NULL::bigint[])$$),
	($$SELECT outbox.fail('ro_a', $leased, 'x')$$),
	($$SELECT outbox.fail('ro_a', $leased, 'x', dead => true)$$),
	($$SELECT outbox.release('ro_a', $leased)$$),
	($$SELECT outbox.extend_lease('ro_a', ARRAY[$leased]::bigint[], ARRAY[1])$$),
	($$SELECT outbox.subscribe('ro_x', ARRAY['ro.t'])$$),
	($$SELECT outbox.subscribe('ro_a', ARRAY['ro.t', 'ro.u'])$$),
	($$SELECT outbox.unsubscribe('ro_a')$$),
	($$SELECT outbox.pause('ro_a')$$),
	($$SELECT outbox.resume('ro_a')$$),
	($$SELECT outbox.replay('ro_a')$$),
	($$SELECT outbox.replay('ro_a', 1)$$),
	($$SELECT outbox.grant_produce('regress_outbox_ro')$$),
	($$SELECT outbox.revoke_produce('regress_outbox_ro')$$),
	($$SELECT outbox.grant_consume('regress_outbox_ro', 'ro_a')$$),
	($$SELECT outbox.revoke_consume('regress_outbox_ro', 'ro_a')$$)
  ) AS t(call);
-- reading works
SELECT outbox.channel('ro_a');
SELECT subscription, ready, scheduled, leased, dead, paused FROM outbox.stats WHERE subscription = 'ro_a';
SELECT event_id = (SELECT event_id FROM ro_ev WHERE n = '2') AS dead_letter FROM outbox.dead_letters
 WHERE subscription = 'ro_a';
COMMIT;

-- The same under SET TRANSACTION READ ONLY, and for a consumer role.
BEGIN;
SET TRANSACTION READ ONLY;
SET LOCAL ROLE regress_outbox_ro;
SELECT pg_temp.try($$SELECT outbox.claim('ro_a')$$) AS claim;
SELECT pg_temp.try($$SELECT outbox.ack('ro_a', 1::bigint)$$) AS ack;
COMMIT;
BEGIN;
SET TRANSACTION READ ONLY;
SELECT pg_temp.try($$SELECT outbox.enqueue('ro.t', '{}')$$) AS enqueue;
COMMIT;

-- nothing was written
SELECT (SELECT count(*) FROM outbox.event) = events AS events,
	   NOT EXISTS (SELECT 1 FROM outbox.batch b WHERE b.batch_no > batches
				   AND cardinality(b.ids) > 0) AS batches,
	   (SELECT count(*) FROM outbox.settle) = settles AS settles,
	   (SELECT count(*) FROM outbox.delivery) = deliveries AS deliveries,
	   (SELECT count(*) FROM outbox.subscription) = subscriptions AS subscriptions,
	   (SELECT count(*) FROM outbox.consumer) = consumers AS consumers,
	   (SELECT count(*) FROM outbox.producer) = producers AS producers,
	   (SELECT count(*) FROM outbox.dedup) = dedup AS dedup
  FROM ro_before;

-- and in a read-write transaction all is there as it was
SELECT payload->>'n' AS n, attempt, outbox.ack('ro_a', event_id) AS acked FROM outbox.claim('ro_a', 10);
SELECT outbox.ack('ro_a', event_id) AS acked FROM ro_ev WHERE n = '1';
SELECT outbox.replay('ro_a') AS replayed;
SELECT payload->>'n' AS n, outbox.ack('ro_a', event_id) AS acked FROM outbox.claim('ro_a', 10);

SELECT outbox.revoke_consume('regress_outbox_ro', 'ro_a');
SELECT outbox.unsubscribe('ro_a');
DROP ROLE regress_outbox_ro;
