-- subscribe, unsubscribe, pause, resume, channel, and who gets what.

SELECT outbox.subscribe('sub_a', ARRAY['orders']);
SELECT outbox.subscribe('sub_all', ARRAY['*']);
SELECT name, topics, max_attempts, lease, backoff_base, backoff_max, ordered, paused
  FROM outbox.subscription WHERE name LIKE 'sub\_%' ORDER BY name;

-- settings are updated in place, topics kept sorted and distinct
SELECT outbox.subscribe('sub_a', ARRAY['orders', 'invoices', 'orders'], max_attempts => 3,
                        lease => '5 seconds', backoff_base => '2 seconds',
                        backoff_max => '1 minute', ordered => true);
SELECT name, topics, max_attempts, lease, backoff_base, backoff_max, ordered, paused
  FROM outbox.subscription WHERE name = 'sub_a';
SELECT outbox.subscribe('sub_a', ARRAY['orders']);

-- fan-out and topic filters
SELECT outbox.subscribe('sub_b', ARRAY['orders']);
SELECT outbox.enqueue('orders', '{"n": 1}') > 0 AS enqueued;
SELECT outbox.enqueue('invoices', '{"n": 2}') > 0 AS enqueued;
SELECT 'sub_a' AS s, topic, payload FROM outbox.claim('sub_a', 10)
UNION ALL SELECT 'sub_b', topic, payload FROM outbox.claim('sub_b', 10)
UNION ALL SELECT 'sub_all', topic, payload FROM outbox.claim('sub_all', 10)
ORDER BY 1, 2;

-- a subscription created after an event does not get it
SELECT outbox.enqueue('orders', '{"n": 3}') > 0 AS enqueued;
SELECT outbox.subscribe('sub_late', ARRAY['orders']);
SELECT count(*) AS late_gets FROM outbox.claim('sub_late', 10);
SELECT outbox.enqueue('orders', '{"n": 4}') > 0 AS enqueued;
SELECT payload FROM outbox.claim('sub_late', 10);

-- re-subscribing keeps deliveries
SELECT outbox.subscribe('sub_late', ARRAY['orders'], max_attempts => 5);
SELECT ready, leased FROM outbox.stats WHERE subscription = 'sub_late';

-- pause: claim returns nothing, stats still count; resume: claimable again
SELECT outbox.pause('sub_b');
SELECT outbox.enqueue('orders', '{"n": 5}') > 0 AS enqueued;
SELECT count(*) AS while_paused FROM outbox.claim('sub_b', 10);
SELECT subscription, ready, paused FROM outbox.stats WHERE subscription = 'sub_b';
-- a paused subscription stays paused when subscribed again
SELECT outbox.subscribe('sub_b', ARRAY['orders']);
SELECT paused FROM outbox.stats WHERE subscription = 'sub_b';
SELECT outbox.resume('sub_b');
SELECT payload FROM outbox.claim('sub_b', 10);

-- the LISTEN channel
SELECT outbox.channel('sub_a');

-- unsubscribe drops it and everything it had
SELECT outbox.unsubscribe('sub_late');
SELECT count(*) AS gone FROM outbox.subscription WHERE name = 'sub_late';
SELECT outbox.subscribe('sub_late', ARRAY['orders']);
SELECT ready, leased FROM outbox.stats WHERE subscription = 'sub_late';

SELECT outbox.unsubscribe(s) FROM unnest(ARRAY['sub_a', 'sub_b', 'sub_all', 'sub_late']) s;
SELECT count(*) AS left_over FROM outbox.batch;
