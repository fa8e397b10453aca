-- Ordered subscriptions (ordered => true): per key, one delivery in flight
-- at a time, in commit order.  The races between producers are in
-- test/specs/ordering_race.spec; this file is what one session sees.
--
-- ord_s is ordered; ord_u reads the same topic unordered.  Each event's
-- payload carries a name "n"; ord_claimed remembers the id a claim
-- returned for each name, so that the test can ack and fail by name and
-- never prints an id.
SELECT outbox.subscribe('ord_s', ARRAY['ord_t'], ordered => true, max_attempts => 2);
SELECT outbox.subscribe('ord_u', ARRAY['ord_t']);

CREATE TABLE ord_claimed (n text PRIMARY KEY, event_id bigint NOT NULL);

-- claim, remember the ids, show key, name and attempt
CREATE FUNCTION ord_claim(sub text, batch int)
RETURNS TABLE (key text, n text, attempt int)
LANGUAGE sql AS $$
	WITH c AS (SELECT * FROM outbox.claim(sub, batch)),
	     r AS (INSERT INTO ord_claimed SELECT c.payload->>'n', c.event_id FROM c
	           ON CONFLICT DO NOTHING)
	SELECT c.key, c.payload->>'n', c.attempt FROM c ORDER BY 1, 2
$$;

CREATE FUNCTION ord_ack(sub text, name text)
RETURNS boolean
LANGUAGE sql AS $$
	SELECT outbox.ack(sub, event_id) FROM ord_claimed WHERE n = name
$$;

CREATE FUNCTION ord_fail(sub text, name text, retry_in interval)
RETURNS text
LANGUAGE sql AS $$
	SELECT outbox.fail(sub, event_id, error => 'failed ' || name, retry_in => retry_in)
	  FROM ord_claimed WHERE n = name
$$;

--
-- One key, three transactions committed in order: one event at a time,
-- in that order, however large the batch.
--
SELECT outbox.enqueue('ord_t', '{"n": "a1"}', key => 'a') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "a2"}', key => 'a') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "a3"}', key => 'a') > 0 AS enqueued;
SELECT * FROM ord_claim('ord_s', 10);
-- a1 is leased: nothing else of key a
SELECT * FROM ord_claim('ord_s', 10);
-- the unordered subscription gets all three at once
SELECT * FROM ord_claim('ord_u', 10);
SELECT outbox.ack('ord_u', array_agg(event_id)) FROM ord_claimed WHERE n LIKE 'a_';
-- the ack of a1 makes a2 claimable at once
SELECT ord_ack('ord_s', 'a1');
SELECT * FROM ord_claim('ord_s', 10);
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'a2');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'a3');
SELECT * FROM ord_claim('ord_s', 10);

-- The unordered subscription is done with everything from here on.
SELECT outbox.unsubscribe('ord_u');

--
-- Other keys are not held back: a batch holds one event per key.
--
SELECT outbox.enqueue('ord_t', '{"n": "b1"}', key => 'b') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "c1"}', key => 'c') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "b2"}', key => 'b') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "c2"}', key => 'c') > 0 AS enqueued;
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'b1');
-- b2 is free, c2 still waits for c1
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'c1');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'b2'), ord_ack('ord_s', 'c2');
SELECT * FROM ord_claim('ord_s', 10);

--
-- Events with a NULL key are unordered: all claimable at once.
--
SELECT outbox.enqueue('ord_t', '{"n": "n1"}') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "n2"}') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "n3"}', key => NULL) > 0 AS enqueued;
SELECT * FROM ord_claim('ord_s', 10);
SELECT outbox.ack('ord_s', array_agg(event_id)) FROM ord_claimed WHERE n LIKE 'n_';
SELECT * FROM ord_claim('ord_s', 10);

--
-- Events of one key in one transaction come in enqueue order, one at a
-- time.
--
BEGIN;
SELECT outbox.enqueue('ord_t', '{"n": "d1"}', key => 'd') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "d2"}', key => 'd') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "d3"}', key => 'd') > 0 AS enqueued;
COMMIT;
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'd1');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'd2');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'd3');
SELECT * FROM ord_claim('ord_s', 10);

--
-- A failed delivery keeps its key blocked while it waits for its retry,
-- and until the retry is acked.
--
SELECT outbox.enqueue('ord_t', '{"n": "e1"}', key => 'e') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "e2"}', key => 'e') > 0 AS enqueued;
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_fail('ord_s', 'e1', '300 ms');
-- e1 waits for its retry: e2 is not claimable
SELECT * FROM ord_claim('ord_s', 10);
SELECT pg_sleep(0.4);
-- the retry of e1, still without e2
SELECT * FROM ord_claim('ord_s', 10);
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'e1');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'e2');

--
-- A delivery that goes dead (max_attempts => 2 reached) stops blocking
-- its key: the next event is claimable at once.
--
SELECT outbox.enqueue('ord_t', '{"n": "g1"}', key => 'g') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "g2"}', key => 'g') > 0 AS enqueued;
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_fail('ord_s', 'g1', '0');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_fail('ord_s', 'g1', '0');
SELECT * FROM ord_claim('ord_s', 10);
SELECT key, payload->>'n' AS n, attempts, last_error
  FROM outbox.dead_letters WHERE subscription = 'ord_s';
SELECT ord_ack('ord_s', 'g2');
SELECT * FROM ord_claim('ord_s', 10);

--
-- A delayed event holds back the later events of its key until it is
-- delivered (key h).  A delayed event that comes due while earlier events
-- of its key are leased or waiting still goes after them (key m).
--
SELECT outbox.enqueue('ord_t', '{"n": "h1"}', key => 'h',
                      deliver_at => now() + interval '300 ms') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "h2"}', key => 'h') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "m1"}', key => 'm') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "m2"}', key => 'm') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "m3"}', key => 'm',
                      deliver_at => now() + interval '300 ms') > 0 AS enqueued;
-- h1 is not due: h2 waits for it
SELECT * FROM ord_claim('ord_s', 10);
SELECT pg_sleep(0.4);
-- h1 is due; m3 is due too, but m1 is still leased and m2 goes first
SELECT * FROM ord_claim('ord_s', 10);
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'h1'), ord_ack('ord_s', 'm1');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'h2'), ord_ack('ord_s', 'm2');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'm3');
SELECT * FROM ord_claim('ord_s', 10);

--
-- A claim that rolls back frees the key again: the same event, with its
-- attempt not counted, and the next one still waits.
--
SELECT outbox.enqueue('ord_t', '{"n": "j1"}', key => 'j') > 0 AS enqueued;
SELECT outbox.enqueue('ord_t', '{"n": "j2"}', key => 'j') > 0 AS enqueued;
BEGIN;
SELECT * FROM ord_claim('ord_s', 10);
ROLLBACK;
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'j1');
SELECT * FROM ord_claim('ord_s', 10);
SELECT ord_ack('ord_s', 'j2');
SELECT * FROM ord_claim('ord_s', 10);

-- Clean up.
SELECT outbox.unsubscribe('ord_s');
DROP FUNCTION ord_claim(text, int);
DROP FUNCTION ord_ack(text, text);
DROP FUNCTION ord_fail(text, text, interval);
DROP TABLE ord_claimed;
