-- event_status (contract 1.1): what became of one event, per subscription
-- that receives it.
--
-- Subscriptions are named es_*, the role regress_outbox_es; all are
-- removed at the end.

SELECT outbox.subscribe('es_a', ARRAY['es.t'], lease => '1 minute');
SELECT outbox.subscribe('es_b', ARRAY['es.t'], max_attempts => 1);
SELECT outbox.subscribe('es_other', ARRAY['es.other']);
CREATE TEMP TABLE es_ev (n int, id bigint);
INSERT INTO es_ev SELECT 1, outbox.enqueue('es.t', '{"n": 1}');

CREATE FUNCTION pg_temp.status(n int) RETURNS TABLE (subscription text, state text, attempts int,
	visible text, lease text, last_error text, done text)
LANGUAGE sql AS $$
	SELECT s.subscription, s.state, s.attempts,
	       CASE WHEN s.visible_at IS NULL THEN 'null'
	            WHEN s.visible_at > now() + interval '50 minutes' THEN 'in an hour' ELSE 'set' END,
	       CASE WHEN s.lease_until IS NULL THEN 'null'
	            WHEN s.lease_until > now() + interval '50 minutes' THEN 'in an hour' ELSE 'set' END,
	       s.last_error,
	       CASE WHEN s.done_at IS NULL THEN 'null' ELSE 'set' END
	  FROM outbox.event_status((SELECT id FROM es_ev WHERE es_ev.n = status.n)) s
$$;

-- not claimed yet: ready, claimable since it was enqueued; a subscription
-- of another topic has no row
SELECT * FROM pg_temp.status(1);

-- leased from the stream, then acked
SELECT count(*) AS claimed FROM outbox.claim('es_a');
SELECT * FROM pg_temp.status(1);
SELECT outbox.ack('es_a', (SELECT id FROM es_ev WHERE n = 1)) AS acked;
-- dead at its only attempt, with its error
SELECT outbox.fail('es_b', event_id, 'boom') AS failed FROM outbox.claim('es_b');
SELECT * FROM pg_temp.status(1);

-- delayed: scheduled until its time
INSERT INTO es_ev SELECT 2, outbox.enqueue('es.t', '{"n": 2}', deliver_at => now() + interval '1 hour');
SELECT * FROM pg_temp.status(2);

-- waiting for a retry, with the error it failed with; then an extended lease
INSERT INTO es_ev SELECT 3, outbox.enqueue('es.t', '{"n": 3}');
SELECT outbox.fail('es_a', event_id, 'try later', retry_in => '1 hour') AS failed FROM outbox.claim('es_a');
SELECT count(*) AS claimed FROM outbox.claim('es_b');
SELECT cardinality(outbox.extend_lease('es_b', ARRAY[(SELECT id FROM es_ev WHERE n = 3)], ARRAY[1], '1 hour')) AS extended;
SELECT * FROM pg_temp.status(3);
-- released for later: scheduled, no attempt used
SELECT outbox.release('es_b', (SELECT id FROM es_ev WHERE n = 3), 1, '1 hour') AS released;
SELECT * FROM pg_temp.status(3) WHERE subscription = 'es_b';

-- acked ahead of any claim: done
INSERT INTO es_ev SELECT 4, outbox.enqueue('es.t', '{"n": 4}');
SELECT outbox.ack('es_a', (SELECT id FROM es_ev WHERE n = 4)) AS acked_ahead;
SELECT * FROM pg_temp.status(4) WHERE subscription = 'es_a';

-- a subscription made after the event does not receive it
SELECT outbox.subscribe('es_late', ARRAY['es.t']);
SELECT subscription FROM pg_temp.status(4) ORDER BY 1;

-- a consumer sees only the subscriptions it may consume
CREATE ROLE regress_outbox_es;
SELECT outbox.grant_consume('regress_outbox_es', 'es_a');
SELECT id AS es_one FROM es_ev WHERE n = 1 \gset
SET ROLE regress_outbox_es;
SELECT subscription, state FROM outbox.event_status(:es_one);
RESET ROLE;
SELECT outbox.revoke_consume('regress_outbox_es', 'es_a');
DROP ROLE regress_outbox_es;

-- unknown: no rows; NULL: an error
SELECT count(*) AS unknown FROM outbox.event_status(42);
\set VERBOSITY terse
SELECT * FROM outbox.event_status(NULL);
\set VERBOSITY default

SELECT outbox.unsubscribe(s) FROM unnest(ARRAY['es_a', 'es_b', 'es_other', 'es_late']) s;
