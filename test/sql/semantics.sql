-- The contract where subscriptions change under their deliveries (issue 8,
-- faults 11 and 5), and what each function does under REPEATABLE READ and
-- SERIALIZABLE when no other session is involved (fault 10; the races are
-- in test/specs/).

--
-- Fault 11: re-subscribing with other topics keeps the undelivered
-- deliveries of the old topics: events committed while they were the
-- subscription's topics.
--
SELECT outbox.subscribe('sem_t', ARRAY['sem_a', 'sem_b']);
SELECT outbox.enqueue('sem_a', '{"n": "a1"}') > 0 AS ok;
SELECT outbox.enqueue('sem_b', '{"n": "b1"}') > 0 AS ok;
SELECT outbox.enqueue('sem_a', '{"n": "a2 delayed"}', deliver_at => now() + interval '1 hour') > 0 AS ok;
SELECT outbox.subscribe('sem_t', ARRAY['sem_b', 'sem_c']);
-- events of the dropped topic after the change are not for it
SELECT outbox.enqueue('sem_a', '{"n": "a3 after"}') > 0 AS ok;
SELECT outbox.enqueue('sem_c', '{"n": "c1"}') > 0 AS ok;
SELECT ready, scheduled, leased FROM outbox.stats WHERE subscription = 'sem_t';
SELECT topic, payload->>'n' AS n, attempt FROM outbox.claim('sem_t', 10) ORDER BY 2;
SELECT ready, scheduled, leased FROM outbox.stats WHERE subscription = 'sem_t';
-- from '*' to a list: the other topics' pending events are kept too
SELECT outbox.subscribe('sem_all', ARRAY['*']);
SELECT outbox.enqueue('sem_x', '{"n": "x1"}') > 0 AS ok;
SELECT outbox.enqueue('sem_y', '{"n": "y1"}') > 0 AS ok;
SELECT outbox.subscribe('sem_all', ARRAY['sem_y']);
SELECT outbox.enqueue('sem_x', '{"n": "x2 after"}') > 0 AS ok;
SELECT topic, payload->>'n' AS n FROM outbox.claim('sem_all', 10) ORDER BY 2;
-- ordered: a kept event of a dropped topic still waits behind an earlier
-- event of its key that the stream brings, one of the same transaction too
SELECT outbox.subscribe('sem_ot', ARRAY['sem_oa', 'sem_ob'], ordered => true);
BEGIN;
CREATE TEMP TABLE sem_oids AS
SELECT outbox.enqueue('sem_oa', '{"n": "k1 first, stays"}', key => 'k1') AS first_id,
       outbox.enqueue('sem_ob', '{"n": "k1 second, kept"}', key => 'k1') AS second_id;
COMMIT;
SELECT outbox.subscribe('sem_ot', ARRAY['sem_oa', 'sem_oc'], ordered => true);
SELECT payload->>'n' AS n FROM outbox.claim('sem_ot', 10);
SELECT outbox.ack('sem_ot', first_id) FROM sem_oids;
SELECT payload->>'n' AS n FROM outbox.claim('sem_ot', 10);

--
-- Fault 11: an ack of a delivery no claim has reached makes it done, and
-- stats stop counting it: ready, and scheduled (deliver_at ahead).
--
SELECT outbox.subscribe('sem_ack', ARRAY['sem_k']);
CREATE TEMP TABLE sem_ids AS
SELECT outbox.enqueue('sem_k', '{"n": 1}') AS ready_id,
       outbox.enqueue('sem_k', '{"n": 2}', deliver_at => now() + interval '1 hour') AS later_id,
       outbox.enqueue('sem_k', '{"n": 3}') AS other_id;
SELECT ready, scheduled, leased FROM outbox.stats WHERE subscription = 'sem_ack';
SELECT outbox.ack('sem_ack', ready_id) AS acked_ready, outbox.ack('sem_ack', later_id) AS acked_later
  FROM sem_ids;
SELECT ready, scheduled, leased FROM outbox.stats WHERE subscription = 'sem_ack';
SELECT payload->>'n' AS n FROM outbox.claim('sem_ack', 10);
SELECT ready, scheduled, leased FROM outbox.stats WHERE subscription = 'sem_ack';

--
-- Fault 5: switching ordered off releases what waits behind its key;
-- switching it on applies to deliveries not yet claimed.
--
SELECT outbox.subscribe('sem_o', ARRAY['sem_o'], ordered => true);
SELECT outbox.enqueue('sem_o', jsonb_build_object('n', 'k' || g), key => 'k') > 0 AS ok
  FROM generate_series(1, 3) g;
SELECT outbox.enqueue('sem_o', '{"n": "j1"}', key => 'j') > 0 AS ok;
CREATE TEMP TABLE sem_first AS SELECT * FROM outbox.claim('sem_o', 10);
SELECT key, payload->>'n' AS n FROM sem_first ORDER BY 1;
SELECT ready, scheduled, leased FROM outbox.stats WHERE subscription = 'sem_o';
SELECT outbox.subscribe('sem_o', ARRAY['sem_o'], ordered => false);
SELECT ready, scheduled, leased FROM outbox.stats WHERE subscription = 'sem_o';
SELECT key, payload->>'n' AS n FROM outbox.claim('sem_o', 10) ORDER BY 2;
SELECT count(*) AS still_waiting FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id
 WHERE s.name = 'sem_o' AND d.state = 'waiting';
SELECT outbox.ack('sem_o', array_agg(event_id)) FROM sem_first;
-- and back on: a key whose delivery is leased from before the switch
-- holds back its later events
SELECT outbox.enqueue('sem_o', '{"n": "m1"}', key => 'm') > 0 AS ok;
CREATE TEMP TABLE sem_m AS SELECT * FROM outbox.claim('sem_o', 10);
SELECT key, payload->>'n' AS n FROM sem_m;
SELECT outbox.subscribe('sem_o', ARRAY['sem_o'], ordered => true);
SELECT outbox.enqueue('sem_o', '{"n": "m2"}', key => 'm') > 0 AS ok;
SELECT outbox.enqueue('sem_o', '{"n": "n1"}', key => 'n') > 0 AS ok;
SELECT key, payload->>'n' AS n FROM outbox.claim('sem_o', 10);
SELECT outbox.fail('sem_o', event_id, 'again', retry_in => '0') FROM sem_m;
SELECT key, payload->>'n' AS n, attempt FROM outbox.claim('sem_o', 10);

SELECT outbox.unsubscribe(s) FROM unnest(ARRAY['sem_t', 'sem_all', 'sem_ack', 'sem_o']) s;
