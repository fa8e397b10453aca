-- ack, fail, backoff, dead letters, replay.

SELECT outbox.subscribe('stl', ARRAY['stl'], max_attempts => 3,
                        backoff_base => '10 seconds', backoff_max => '25 seconds');
SELECT outbox.enqueue('stl', jsonb_build_object('n', g)) > 0 AS enqueued
  FROM generate_series(1, 4) g;
CREATE TEMP TABLE ev AS SELECT payload->>'n' AS n, event_id FROM outbox.claim('stl', 4);
SELECT n FROM ev ORDER BY n;

-- ack: true once, then false; unknown ids false
SELECT outbox.ack('stl', event_id) AS first, outbox.ack('stl', event_id) AS again
  FROM ev WHERE n = '1';
SELECT outbox.ack('stl', 42) AS unknown;
-- the array form counts each id once; a NULL array acks nothing
SELECT outbox.ack('stl', ARRAY[e2.event_id, e2.event_id, e3.event_id, 42])
  FROM ev e2, ev e3 WHERE e2.n = '2' AND e3.n = '3';
SELECT outbox.ack('stl', NULL::bigint[]);
SELECT outbox.ack('stl', (SELECT array_agg(event_id) FROM outbox.claim('stl', 10)));

-- fail: scheduled after the backoff, 10 s * 2^0 with jitter in [0.5, 1.0]
SELECT outbox.fail('stl', event_id, 'smtp down') FROM ev WHERE n = '4';
SELECT d.state, d.attempts, d.last_error,
       d.visible_at BETWEEN now() + interval '5 seconds' AND now() + interval '10 seconds' AS in_window
  FROM outbox.delivery d JOIN ev ON ev.event_id = d.event_id WHERE ev.n = '4';
SELECT ready, scheduled, leased, dead FROM outbox.stats WHERE subscription = 'stl';
-- not leased any more: fail and a second fail do nothing
SELECT outbox.fail('stl', event_id) IS NULL AS not_leased FROM ev WHERE n = '4';
SELECT outbox.fail('stl', event_id) IS NULL AS acked_already FROM ev WHERE n = '1';
SELECT outbox.fail('stl', 42) IS NULL AS unknown;

-- due now (as if the backoff had passed): claimed again, second attempt
UPDATE outbox.delivery SET visible_at = now() - interval '1 second'
 WHERE event_id = (SELECT event_id FROM ev WHERE n = '4');
SELECT payload->>'n' AS n, attempt FROM outbox.claim('stl', 10);
-- the attempt guard: a stale consumer cannot fail the current claim
SELECT outbox.fail('stl', event_id, attempt => 1) IS NULL AS stale FROM ev WHERE n = '4';
SELECT outbox.fail('stl', event_id, 'again', attempt => 2) FROM ev WHERE n = '4';
-- second backoff: 10 s * 2^1 = 20 s, jitter [0.5, 1.0]
SELECT visible_at BETWEEN now() + interval '10 seconds' AND now() + interval '20 seconds' AS in_window
  FROM outbox.delivery WHERE event_id = (SELECT event_id FROM ev WHERE n = '4');

-- retry_in overrides the backoff
UPDATE outbox.delivery SET visible_at = now() - interval '1 second'
 WHERE event_id = (SELECT event_id FROM ev WHERE n = '4');
SELECT payload->>'n' AS n, attempt FROM outbox.claim('stl', 10);
-- third attempt is the last (max_attempts 3): dead, whatever retry_in says
SELECT outbox.fail('stl', event_id, 'gave up', retry_in => '1 second') FROM ev WHERE n = '4';
SELECT ready, scheduled, leased, dead FROM outbox.stats WHERE subscription = 'stl';
SELECT subscription, topic, payload, attempts, last_error, dead_at IS NOT NULL AS has_dead_at
  FROM outbox.dead_letters WHERE subscription = 'stl';
SELECT count(*) AS dead_not_claimable FROM outbox.claim('stl', 10);

-- replay: back to ready with attempts reset
SELECT outbox.replay('stl');
SELECT outbox.replay('stl') AS nothing_left;
SELECT count(*) AS dead_letters FROM outbox.dead_letters WHERE subscription = 'stl';
SELECT payload->>'n' AS n, attempt FROM outbox.claim('stl', 10);

-- the backoff is capped by backoff_max (25 s), and retry_in works on the stream's first attempt
SELECT outbox.enqueue('stl', '{"n": 5}') > 0 AS enqueued;
INSERT INTO ev SELECT payload->>'n', event_id FROM outbox.claim('stl', 10);
SELECT outbox.fail('stl', event_id, retry_in => '0') FROM ev WHERE n = '5';
SELECT payload->>'n' AS n, attempt FROM outbox.claim('stl', 10);
UPDATE outbox.subscription SET max_attempts = 10 WHERE name = 'stl';
UPDATE outbox.delivery SET attempts = 8 WHERE event_id = (SELECT event_id FROM ev WHERE n = '5');
SELECT outbox.fail('stl', event_id) FROM ev WHERE n = '5';
SELECT visible_at BETWEEN now() + interval '12.5 seconds' AND now() + interval '25 seconds' AS capped
  FROM outbox.delivery WHERE event_id = (SELECT event_id FROM ev WHERE n = '5');

-- a late ack still counts: a scheduled delivery becomes done
SELECT outbox.ack('stl', event_id) AS late_ack FROM ev WHERE n = '5';
SELECT ready, scheduled, leased, dead FROM outbox.stats WHERE subscription = 'stl';

-- an acked dead letter leaves the dead letters
SELECT outbox.fail('stl', event_id, 'dead again') FROM ev WHERE n = '4';
UPDATE outbox.delivery SET attempts = 10, state = 'leased'
 WHERE event_id = (SELECT event_id FROM ev WHERE n = '4');
SELECT outbox.fail('stl', event_id, 'dead again') FROM ev WHERE n = '4';
SELECT count(*) AS dead FROM outbox.dead_letters WHERE subscription = 'stl';
SELECT outbox.ack('stl', event_id) AS acked_dead FROM ev WHERE n = '4';
SELECT count(*) AS dead FROM outbox.dead_letters WHERE subscription = 'stl';

-- acking an event no claim has reached yet makes it done
SELECT outbox.enqueue('stl', '{"n": 6}') AS six \gset
SELECT outbox.ack('stl', :six) AS ack_before_claim;
SELECT count(*) AS not_delivered FROM outbox.claim('stl', 10);
-- ids of other topics are not this subscription's
SELECT outbox.enqueue('other', '{"n": 7}') AS seven \gset
SELECT outbox.ack('stl', :seven) AS other_topic;

SELECT outbox.unsubscribe('stl');
