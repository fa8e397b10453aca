-- Dedup: an enqueue whose (topic, dedup_key) matches a retained event
-- returns that event's id and adds nothing; the first payload wins.  Two
-- transactions racing on one key are in test/specs/dedup_race.spec; this
-- file is what one session sees.  Ids are kept in psql variables and only
-- compared, never printed.
SELECT outbox.subscribe('dd_s', ARRAY['dd_t', 'dd_t2']);

-- The same key in two transactions: the same event.
SELECT outbox.enqueue('dd_t', '{"n": "x first"}', dedup_key => 'x') AS x1 \gset
SELECT outbox.enqueue('dd_t', '{"n": "x second"}', dedup_key => 'x') AS x2 \gset
SELECT :x1 = :x2 AS same_event;

-- The same key twice in one transaction: the same event.
BEGIN;
SELECT outbox.enqueue('dd_t', '{"n": "y first"}', dedup_key => 'y') AS y1 \gset
SELECT outbox.enqueue('dd_t', '{"n": "y second"}', key => 'k',
                      headers => '{"h": 1}', dedup_key => 'y') AS y2 \gset
SELECT :y1 = :y2 AS same_event;
COMMIT;

-- The same key on another topic: a new event.
SELECT outbox.enqueue('dd_t2', '{"n": "x other topic"}', dedup_key => 'x') AS x3 \gset
SELECT :x3 = :x1 AS same_event;

-- No dedup key never dedups.
SELECT outbox.enqueue('dd_t', '{"n": "plain"}') AS p1 \gset
SELECT outbox.enqueue('dd_t', '{"n": "plain"}', dedup_key => NULL) AS p2 \gset
SELECT :p1 = :p2 AS same_event;

-- An enqueue that rolls back leaves its key free.
BEGIN;
SELECT outbox.enqueue('dd_t', '{"n": "z rolled back"}', dedup_key => 'z') AS z1 \gset
ROLLBACK;
SELECT outbox.enqueue('dd_t', '{"n": "z second"}', dedup_key => 'z') AS z2 \gset
SELECT :z1 = :z2 AS same_event;
SELECT outbox.enqueue('dd_t', '{"n": "z third"}', dedup_key => 'z') = :z2 AS same_event;

-- So does one in a subtransaction that rolls back.
BEGIN;
SAVEPOINT sp;
SELECT outbox.enqueue('dd_t', '{"n": "w rolled back"}', dedup_key => 'w') AS w1 \gset
ROLLBACK TO SAVEPOINT sp;
SELECT outbox.enqueue('dd_t', '{"n": "w second"}', dedup_key => 'w') AS w2 \gset
COMMIT;
SELECT :w1 = :w2 AS same_event;

-- The subscription gets each event once, with its first payload.
SELECT topic, payload->>'n' AS n, key, headers, attempt,
       outbox.ack('dd_s', event_id) AS acked
  FROM outbox.claim('dd_s', 100)
 ORDER BY topic, n;

-- A retained event still dedups once it is done, and is not delivered
-- again.
SELECT outbox.enqueue('dd_t', '{"n": "x again"}', dedup_key => 'x') = :x1 AS same_event;
SELECT count(*) AS claimed FROM outbox.claim('dd_s', 100);

-- Clean up.
SELECT outbox.unsubscribe('dd_s');
