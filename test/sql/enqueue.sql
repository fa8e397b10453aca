-- enqueue: what is stored, transactional visibility, large payloads.

SELECT outbox.subscribe('enq', ARRAY['enq', 'enq.big']);

-- ids grow within a transaction and differ between transactions
BEGIN;
SELECT outbox.enqueue('enq', '{"n": 1}') AS a \gset
SELECT outbox.enqueue('enq', '{"n": 2}') AS b \gset
COMMIT;
SELECT outbox.enqueue('enq', '{"n": 3}', key => 'k1',
                      headers => '{"trace": "abc"}') AS c \gset
SELECT :a < :b AS increasing, :b <> :c AS distinct_ids;

-- everything given comes back
SELECT event_id = :c AS same_id, topic, key, payload, headers, attempt,
       enqueued_at <= clock_timestamp() AS enqueued_at_ok
  FROM outbox.claim('enq', 10) ORDER BY event_id;

-- a rolled-back enqueue reaches no one; a rolled-back savepoint neither
BEGIN;
SELECT outbox.enqueue('enq', '{"n": "rolled back"}') > 0 AS enqueued;
ROLLBACK;
BEGIN;
SELECT outbox.enqueue('enq', '{"n": "kept"}') > 0 AS enqueued;
SAVEPOINT s;
SELECT outbox.enqueue('enq', '{"n": "savepoint rolled back"}') > 0 AS enqueued;
ROLLBACK TO SAVEPOINT s;
SELECT outbox.enqueue('enq', '{"n": "kept too"}') > 0 AS enqueued;
COMMIT;
SELECT payload FROM outbox.claim('enq', 10);

-- not visible to a claim before the enqueuing transaction commits
BEGIN;
SELECT outbox.enqueue('enq', '{"n": "own"}') > 0 AS enqueued;
SELECT count(*) AS own_uncommitted FROM outbox.claim('enq', 10);
COMMIT;
SELECT payload FROM outbox.claim('enq', 10);

-- deliver_at: in the past claimable now, in the future scheduled
SELECT outbox.enqueue('enq', '{"n": "past"}', deliver_at => now() - interval '1 hour') > 0 AS enqueued;
SELECT outbox.enqueue('enq', '{"n": "soon"}', deliver_at => now() + interval '300 ms') > 0 AS enqueued;
SELECT outbox.enqueue('enq', '{"n": "later"}', deliver_at => now() + interval '1 day') > 0 AS enqueued;
SELECT payload FROM outbox.claim('enq', 10);
SELECT ready, scheduled FROM outbox.stats WHERE subscription = 'enq';
SELECT pg_sleep(0.4);
SELECT payload, attempt FROM outbox.claim('enq', 10);
SELECT ready, scheduled FROM outbox.stats WHERE subscription = 'enq';

-- large payloads round-trip: 1 MB and 8 MB
CREATE TEMP TABLE big AS
  SELECT n, jsonb_build_object('blob', repeat(md5(n::text), n * 1024 * 1024 / 32)) AS payload
    FROM (VALUES (1), (8)) v(n);
SELECT outbox.enqueue('enq.big', payload, key => n::text) > 0 AS enqueued FROM big ORDER BY n;
SELECT c.key, length(c.payload->>'blob') AS bytes, c.payload = b.payload AS same
  FROM outbox.claim('enq', 10) c JOIN big b ON b.n::text = c.key ORDER BY c.key;

SELECT outbox.unsubscribe('enq');
