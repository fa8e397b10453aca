-- release() and fail(..., dead => true) (contract 1.1): giving a leased
-- delivery back without using up an attempt, and dead-lettering at once.
--
-- Subscriptions are named gb_*; all are removed at the end.

SELECT outbox.subscribe('gb', ARRAY['gb.t'], max_attempts => 3);
SELECT outbox.subscribe('gb_o', ARRAY['gb.o'], ordered => true);
CREATE TEMP TABLE gb_ev AS
SELECT n, outbox.enqueue('gb.t', jsonb_build_object('n', n)) AS id FROM generate_series(1, 4) n;

-- release from the stream: ready at once, the next claim is attempt 1 again
SELECT payload->>'n' AS n, attempt FROM outbox.claim('gb', 2);
SELECT outbox.release('gb', (SELECT id FROM gb_ev WHERE n = 1)) AS released;
SELECT outbox.release('gb', (SELECT id FROM gb_ev WHERE n = 1)) AS released_again;
SELECT subscription, ready, scheduled, leased FROM outbox.stats WHERE subscription = 'gb';
SELECT payload->>'n' AS n, attempt FROM outbox.claim('gb', 1);

-- the attempt fence: a wrong attempt changes nothing
SELECT outbox.release('gb', (SELECT id FROM gb_ev WHERE n = 2), attempt => 2) AS wrong_attempt;
-- release for later: scheduled, with no attempt used up
SELECT outbox.release('gb', (SELECT id FROM gb_ev WHERE n = 2), attempt => 1,
                      retry_in => '1 hour') AS released_for_later;
SELECT state, attempts, visible_at > now() + interval '59 minutes' AS in_an_hour
  FROM outbox.delivery WHERE event_id = (SELECT id FROM gb_ev WHERE n = 2);

-- from a delivery row: a failed delivery, due again, claimed at attempt 2,
-- released, claimed at attempt 2 again; the error of the attempt before
-- stays
SELECT outbox.fail('gb', (SELECT id FROM gb_ev WHERE n = 1), 'try again', retry_in => '0') AS failed;
SELECT payload->>'n' AS n, attempt FROM outbox.claim('gb', 1);
SELECT outbox.release('gb', (SELECT id FROM gb_ev WHERE n = 1), attempt => 2) AS released;
SELECT state, attempts, last_error FROM outbox.delivery WHERE event_id = (SELECT id FROM gb_ev WHERE n = 1);
SELECT payload->>'n' AS n, attempt FROM outbox.claim('gb', 1);

-- not leased (acked, unknown): NULL, nothing changes
SELECT outbox.ack('gb', (SELECT id FROM gb_ev WHERE n = 1)) AS acked;
SELECT outbox.release('gb', (SELECT id FROM gb_ev WHERE n = 1)) AS not_leased;
SELECT outbox.release('gb', 12345) AS unknown;

-- fail(..., dead => true): dead at once, whatever the attempts left;
-- retry_in is ignored
SELECT payload->>'n' AS n, attempt FROM outbox.claim('gb', 1);
SELECT outbox.fail('gb', (SELECT id FROM gb_ev WHERE n = 3), 'cannot be handled',
                   retry_in => '1 minute', dead => true) AS failed;
SELECT payload->>'n' AS n, attempts, last_error, dead_at IS NOT NULL AS dead_at
  FROM outbox.dead_letters WHERE subscription = 'gb';
-- dead => false is fail as before
SELECT payload->>'n' AS n, attempt FROM outbox.claim('gb', 1);
SELECT outbox.fail('gb', (SELECT id FROM gb_ev WHERE n = 4), 'soon', dead => false) AS failed;
-- and a dead one, as any dead letter, replays
SELECT outbox.replay('gb', (SELECT id FROM gb_ev WHERE n = 3)) AS replayed;

-- ordered: a released delivery keeps its key's place
SELECT outbox.enqueue('gb.o', '{"k": 1}', key => 'k') > 0 AS e1,
       outbox.enqueue('gb.o', '{"k": 2}', key => 'k') > 0 AS e2;
SELECT payload->>'k' AS k, attempt FROM outbox.claim('gb_o', 10);
SELECT outbox.release('gb_o', (SELECT id FROM outbox.event WHERE topic = 'gb.o' ORDER BY id LIMIT 1)) AS released;
SELECT payload->>'k' AS k, attempt FROM outbox.claim('gb_o', 10);
-- dead at once frees the key
SELECT outbox.fail('gb_o', (SELECT id FROM outbox.event WHERE topic = 'gb.o' ORDER BY id LIMIT 1),
                   'poison', dead => true) AS failed;
SELECT payload->>'k' AS k, attempt FROM outbox.claim('gb_o', 10);

-- extend_lease: leases move for deliveries leased at exactly that attempt
SELECT outbox.subscribe('gb_l', ARRAY['gb.l']);
SELECT outbox.enqueue('gb.l', jsonb_build_object('n', n)) > 0 AS enqueued FROM generate_series(1, 3) n;
CREATE TEMP TABLE gb_claimed AS SELECT event_id, attempt FROM outbox.claim('gb_l', 3, '1 minute');
SELECT count(*) AS claimed FROM gb_claimed;
-- from the stream: handed over to leased rows of their own; a wrong
-- attempt and an unknown id are left out
SELECT cardinality(outbox.extend_lease('gb_l',
         array_append(ARRAY(SELECT event_id FROM gb_claimed ORDER BY event_id), 424242),
         array_append(ARRAY(SELECT CASE WHEN event_id = (SELECT max(event_id) FROM gb_claimed) THEN 2 ELSE attempt END
                              FROM gb_claimed ORDER BY event_id), 1),
         '1 hour')) AS extended;
SELECT count(*) FILTER (WHERE lease_until > now() + interval '59 minutes') AS for_an_hour,
       count(*) AS rows
  FROM outbox.delivery d JOIN gb_claimed c ON c.event_id = d.event_id WHERE d.state = 'leased';
-- again, now from the delivery rows; the default is the subscription's lease
SELECT cardinality(outbox.extend_lease('gb_l', ARRAY(SELECT event_id FROM gb_claimed),
                                       ARRAY(SELECT attempt FROM gb_claimed))) AS extended;
SELECT count(*) FILTER (WHERE lease_until < now() + interval '31 seconds') AS for_30_seconds
  FROM outbox.delivery d JOIN gb_claimed c ON c.event_id = d.event_id WHERE d.state = 'leased';
-- counted once in stats, and the extended deliveries ack
SELECT subscription, ready, leased FROM outbox.stats WHERE subscription = 'gb_l';
SELECT outbox.ack('gb_l', ARRAY(SELECT event_id FROM gb_claimed)) AS acked;
SELECT outbox.extend_lease('gb_l', ARRAY(SELECT event_id FROM gb_claimed),
                           ARRAY(SELECT attempt FROM gb_claimed)) AS after_ack;

-- errors
\set VERBOSITY terse
SELECT outbox.extend_lease('gb', ARRAY[1, 2]::bigint[], ARRAY[1]);
SELECT outbox.extend_lease('gb', ARRAY[NULL]::bigint[], ARRAY[1]);
SELECT outbox.extend_lease('gb', NULL, ARRAY[1]);
SELECT outbox.extend_lease('gb', ARRAY[1]::bigint[], ARRAY[1], '-1 minute');
SELECT outbox.release('gb', NULL);
SELECT outbox.release('gb', 1, retry_in => '-1 second');
SELECT outbox.release('gb_nope', 1);
SELECT outbox.release(NULL, 1);
SELECT outbox.fail('gb', NULL, dead => true);
\set VERBOSITY default

SELECT outbox.unsubscribe('gb');
SELECT outbox.unsubscribe('gb_o');
SELECT outbox.unsubscribe('gb_l');
