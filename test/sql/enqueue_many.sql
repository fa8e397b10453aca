-- enqueue_many (contract 1.1): the same as enqueue once per element, in
-- order, in the caller's transaction.
--
-- Subscriptions are named em_*; all are removed at the end.

SELECT outbox.subscribe('em', ARRAY['em.t']);
SELECT outbox.subscribe('em_o', ARRAY['em.o'], ordered => true);

-- ids in the order of payloads, events in that order, with their keys and
-- headers
CREATE TEMP TABLE em_ids AS
SELECT outbox.enqueue_many('em.t', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[],
                           keys => ARRAY['a', NULL, 'c'],
                           headers => ARRAY['{"h": 1}', NULL, '{"h": 3}']::jsonb[]) AS ids;
SELECT cardinality(ids) AS n, ids[1] < ids[2] AND ids[2] < ids[3] AS ascending FROM em_ids;
SELECT c.event_id = (SELECT ids[c.n] FROM em_ids) AS same_id, c.payload, c.key, c.headers, c.attempt
  FROM (SELECT row_number() OVER (ORDER BY event_id) AS n, * FROM outbox.claim('em', 10)) c;

-- deliver_at holds all of them back
SELECT cardinality(outbox.enqueue_many('em.t', ARRAY['{"later": 1}', '{"later": 2}']::jsonb[],
                                       deliver_at => now() + interval '1 hour')) AS delayed;
SELECT count(*) AS claimable FROM outbox.claim('em', 10);
SELECT ready, scheduled FROM outbox.stats WHERE subscription = 'em';

-- dedup keys: a key already taken, also by an earlier element of the same
-- call, gives the existing event's id and adds nothing
SELECT outbox.enqueue('em.t', '{"first": true}', dedup_key => 'x') > 0 AS enqueued;
CREATE TEMP TABLE em_dedup AS
SELECT outbox.enqueue_many('em.t', ARRAY['{"d": 1}', '{"d": 2}', '{"d": 3}', '{"d": 4}']::jsonb[],
                           dedup_keys => ARRAY['y', NULL, 'y', 'x']) AS ids;
SELECT ids[1] = ids[3] AS same_key_same_id,
       ids[4] = (SELECT event_id FROM outbox.dedup WHERE topic = 'em.t' AND dedup_key = 'x') AS earlier_key_earlier_id,
       ids[2] <> ids[1] AS distinct_otherwise
  FROM em_dedup;
SELECT payload FROM outbox.claim('em', 10) ORDER BY event_id;

-- an empty array returns an empty array
SELECT outbox.enqueue_many('em.t', ARRAY[]::jsonb[]) AS empty;

-- rolled back: nothing
BEGIN;
SELECT cardinality(outbox.enqueue_many('em.t', ARRAY['{"gone": 1}', '{"gone": 2}']::jsonb[])) AS n;
ROLLBACK;
SELECT count(*) AS after_rollback FROM outbox.claim('em', 10);

-- ordered: per key, in element order
SELECT cardinality(outbox.enqueue_many('em.o', ARRAY['{"k": 1}', '{"k": 2}', '{"k": 3}']::jsonb[],
                                       keys => ARRAY['k1', 'k1', 'k2'])) AS n;
SELECT payload, key FROM outbox.claim('em_o', 10) ORDER BY event_id;

-- More rows than one multi-insert buffer holds (1,000), some large enough to
-- be toasted: every row stored once, in order, and reachable through the
-- id index.
CREATE TEMP TABLE em_big AS
SELECT outbox.enqueue_many('em.t',
	ARRAY(SELECT jsonb_build_object('i', i, 'pad', repeat(md5(i::text), CASE WHEN i % 700 = 0 THEN 400 ELSE 1 END))
		  FROM generate_series(1, 2500) i),
	keys => ARRAY(SELECT i::text FROM generate_series(1, 2500) i)) AS ids;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS found, count(*) FILTER (WHERE e.key = (e.payload->>'i')) AS keyed,
	   count(*) FILTER (WHERE length(e.payload->>'pad') = 12800) AS toasted
  FROM em_big b, unnest(b.ids) WITH ORDINALITY AS u(id, n)
  JOIN outbox.event e ON e.id = u.id
 WHERE (e.payload->>'i')::int = u.n;
RESET enable_seqscan;
RESET enable_bitmapscan;
SELECT count(*) FROM outbox.claim('em', 3000, '1 min');
DROP TABLE em_big;

-- errors
\set VERBOSITY terse
SELECT outbox.enqueue_many('em.t', NULL);
SELECT outbox.enqueue_many(NULL, ARRAY['{}']::jsonb[]);
SELECT outbox.enqueue_many('em.t', ARRAY['{}', NULL]::jsonb[]);
SELECT outbox.enqueue_many('em.t', ARRAY['{}', '{}']::jsonb[], keys => ARRAY['a']);
SELECT outbox.enqueue_many('em.t', ARRAY['{}']::jsonb[], headers => ARRAY['[1]']::jsonb[]);
SELECT outbox.enqueue_many('em.t', ARRAY['{}']::jsonb[], dedup_keys => ARRAY['a', 'b']);
SELECT outbox.enqueue_many('em.t', ARRAY['{}']::jsonb[], keys => ARRAY[repeat('k', 1025)]);
SELECT outbox.enqueue_many('', ARRAY['{}']::jsonb[]);
SELECT outbox.enqueue_many('em.t', ARRAY['{}']::jsonb[], deliver_at => 'infinity');
SELECT outbox.enqueue_many('em.t', ARRAY[['{}'], ['{}']]::jsonb[]);
\set VERBOSITY default

SELECT outbox.unsubscribe('em');
SELECT outbox.unsubscribe('em_o');
