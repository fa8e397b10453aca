-- claim: batches, oldest first, leases, both consumer styles, long drains.

SELECT outbox.subscribe('clm', ARRAY['clm'], lease => '10 minutes');
SELECT outbox.enqueue('clm', jsonb_build_object('n', g)) > 0 AS enqueued
  FROM generate_series(1, 5) g;

-- oldest first, batch respected, first attempt
SELECT payload->>'n' AS n, attempt FROM outbox.claim('clm', 2);
SELECT payload->>'n' AS n, attempt FROM outbox.claim('clm');
SELECT ready, leased FROM outbox.stats WHERE subscription = 'clm';

-- the lease argument overrides the subscription's
SELECT payload->>'n' AS n FROM outbox.claim('clm', 1, lease => '1 hour');
SELECT lease_until > now() + interval '50 minutes' AS long_lease
  FROM outbox.batch b JOIN outbox.subscription s ON s.id = b.sub_id
 WHERE s.name = 'clm' ORDER BY b.batch_no DESC LIMIT 1;

-- take the rest; then an idle claim returns no rows and writes nothing
SELECT payload->>'n' AS n FROM outbox.claim('clm', 10);
SELECT last_value AS batch_no_before FROM outbox.batch_no_seq \gset
SELECT count(*) FROM outbox.claim('clm', 10);
SELECT last_value = :batch_no_before AS idle_claim_wrote_nothing FROM outbox.batch_no_seq;

-- style 1: claim, work and ack in one transaction (exactly-once effects)
CREATE TABLE clm_work (n int PRIMARY KEY);
SELECT outbox.enqueue('clm', jsonb_build_object('n', g)) > 0 AS enqueued
  FROM generate_series(6, 8) g;
BEGIN;
WITH c AS (SELECT * FROM outbox.claim('clm', 10)),
     w AS (INSERT INTO clm_work SELECT (payload->>'n')::int FROM c RETURNING n)
SELECT outbox.ack('clm', array_agg(event_id)) AS acked FROM c;
COMMIT;
SELECT n FROM clm_work ORDER BY n;

-- a rolled-back unit of work leaves the deliveries claimable
SELECT outbox.enqueue('clm', '{"n": 9}') > 0 AS enqueued;
BEGIN;
WITH c AS (SELECT * FROM outbox.claim('clm', 10)),
     w AS (INSERT INTO clm_work SELECT (payload->>'n')::int FROM c RETURNING n)
SELECT outbox.ack('clm', array_agg(event_id)) AS acked FROM c;
ROLLBACK;
SELECT payload->>'n' AS n, attempt FROM outbox.claim('clm', 10);

-- style 2: claim and commit, do the work outside, then ack or fail
SELECT outbox.enqueue('clm', '{"n": 10}') > 0 AS enqueued;
SELECT event_id AS ev FROM outbox.claim('clm', 1) \gset
SELECT leased FROM outbox.stats WHERE subscription = 'clm';
SELECT outbox.ack('clm', :ev) AS acked;

-- a long drain: every event exactly once, and the batch rows are folded
SELECT outbox.subscribe('clm_drain', ARRAY['clm.drain']);
SELECT count(outbox.enqueue('clm.drain', jsonb_build_object('n', g))) FROM generate_series(1, 3000) g;
-- a slow consumer holds one lease through the whole drain
SELECT event_id AS slow FROM outbox.claim('clm_drain', 1) \gset
CREATE TEMP TABLE drained (n int);
DO $$
DECLARE
	got int;
BEGIN
	LOOP
		WITH c AS (SELECT * FROM outbox.claim('clm_drain', 37)),
		     i AS (INSERT INTO drained SELECT (payload->>'n')::int FROM c)
		SELECT outbox.ack('clm_drain', array_agg(event_id)) INTO got FROM c;
		COMMIT;
		EXIT WHEN got = 0;
	END LOOP;
END
$$;
SELECT count(*) AS events, count(DISTINCT n) AS distinct_events, min(n), max(n) FROM drained;
-- folded batch rows stay until their partition is emptied, below scan_from
SELECT count(*) < 10 AS batches_folded
  FROM outbox.batch b JOIN outbox.subscription s ON s.id = b.sub_id
  JOIN outbox.cursor_now c ON c.sub_id = s.id
 WHERE s.name = 'clm_drain' AND b.batch_no >= c.scan_from;
SELECT ready, leased FROM outbox.stats WHERE subscription = 'clm_drain';
-- its lease was handed over so that folding could go on; it still acks
SELECT count(*) AS handed_over FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id
 WHERE s.name = 'clm_drain' AND d.state = 'leased' AND d.event_id = :slow;
SELECT outbox.ack('clm_drain', :slow) AS slow_ack;
SELECT ready, leased FROM outbox.stats WHERE subscription = 'clm_drain';

-- a subscription on an idle topic is not held back by traffic on others
SELECT outbox.enqueue('clm', '{"n": 11}') > 0 AS enqueued;
SELECT payload->>'n' AS n FROM outbox.claim('clm', 10);

DROP TABLE clm_work;
SELECT outbox.unsubscribe('clm');
SELECT outbox.unsubscribe('clm_drain');
