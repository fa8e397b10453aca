-- Errors: every row of the contract's error table (spec/api.md, "Errors
-- (SQLSTATE)"), for every function where it applies.
--
-- Each call runs through pg_temp.try(), which prints "ok" or the error's
-- SQLSTATE and message, so the test asserts the code and not only the words.
-- Subscriptions are named err_*, the role regress_outbox_err_*; all are
-- removed at the end.

\set VERBOSITY terse

CREATE FUNCTION pg_temp.try(sql text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE ROLE regress_outbox_err_role;
SELECT outbox.subscribe('err_a', ARRAY['err.t']);

--
-- 22004: NULL for an argument without a default, a NULL in topics, NULL
-- settings or batch, a NULL element in event_ids.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.subscribe(NULL, ARRAY['err.t'])$$),
	($$SELECT outbox.subscribe('err_x', NULL)$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t', NULL])$$),
	($$SELECT outbox.subscribe('err_x', ARRAY[NULL]::text[])$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], max_attempts => NULL)$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], lease => NULL)$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], backoff_base => NULL)$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], backoff_max => NULL)$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], ordered => NULL)$$),
	($$SELECT outbox.enqueue(NULL, '{}')$$),
	($$SELECT outbox.enqueue('err.t', NULL)$$),
	($$SELECT outbox.claim(NULL)$$),
	($$SELECT outbox.claim('err_a', NULL)$$),
	($$SELECT outbox.ack(NULL, 1::bigint)$$),
	($$SELECT outbox.ack('err_a', NULL::bigint)$$),
	($$SELECT outbox.ack(NULL, ARRAY[1]::bigint[])$$),
	($$SELECT outbox.ack(NULL, NULL::bigint[])$$),
	($$SELECT outbox.ack('err_a', ARRAY[1, NULL]::bigint[])$$),
	($$SELECT outbox.ack('err_a', ARRAY[NULL]::bigint[])$$),
	($$SELECT outbox.fail(NULL, 1)$$),
	($$SELECT outbox.fail('err_a', NULL)$$),
	($$SELECT outbox.replay(NULL)$$),
	($$SELECT outbox.replay(NULL, 1)$$),
	($$SELECT outbox.pause(NULL)$$),
	($$SELECT outbox.resume(NULL)$$),
	($$SELECT outbox.unsubscribe(NULL)$$),
	($$SELECT outbox.channel(NULL)$$),
	($$SELECT outbox.grant_produce(NULL)$$),
	($$SELECT outbox.revoke_produce(NULL)$$),
	($$SELECT outbox.grant_consume(NULL, 'err_a')$$),
	($$SELECT outbox.grant_consume('regress_outbox_err_role', NULL)$$),
	($$SELECT outbox.revoke_consume(NULL, 'err_a')$$),
	($$SELECT outbox.revoke_consume('regress_outbox_err_role', NULL)$$)
) AS t(call);

-- none of the failed subscribes created anything
SELECT count(*) AS err_x FROM outbox.stats WHERE subscription = 'err_x';
-- a NULL array acks nothing and returns 0 (not an error), as does an empty one
SELECT outbox.ack('err_a', NULL::bigint[]) AS null_array,
       outbox.ack('err_a', '{}'::bigint[]) AS empty_array;

--
-- 42704: a well-formed but unknown subscription; the message names it.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.claim('err_nope')$$),
	($$SELECT outbox.ack('err_nope', 1::bigint)$$),
	($$SELECT outbox.ack('err_nope', ARRAY[1]::bigint[])$$),
	($$SELECT outbox.ack('err_nope', NULL::bigint[])$$),
	($$SELECT outbox.fail('err_nope', 1)$$),
	($$SELECT outbox.replay('err_nope')$$),
	($$SELECT outbox.replay('err_nope', 1)$$),
	($$SELECT outbox.pause('err_nope')$$),
	($$SELECT outbox.resume('err_nope')$$),
	($$SELECT outbox.unsubscribe('err_nope')$$),
	($$SELECT outbox.channel('err_nope')$$),
	($$SELECT outbox.grant_consume('regress_outbox_err_role', 'err_nope')$$),
	($$SELECT outbox.revoke_consume('regress_outbox_err_role', 'err_nope')$$),
	-- the longest well-formed name (48 characters) is unknown, not malformed
	($$SELECT outbox.claim('err_' || repeat('n', 44))$$)
) AS t(call);
-- an unknown role, likewise
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.grant_produce('regress_outbox_err_nobody')$$),
	($$SELECT outbox.revoke_produce('regress_outbox_err_nobody')$$),
	($$SELECT outbox.grant_consume('regress_outbox_err_nobody', 'err_a')$$),
	($$SELECT outbox.revoke_consume('regress_outbox_err_nobody', 'err_a')$$)
) AS t(call);

--
-- 22023: malformed subscription names, in every function that takes one.
-- Names match ^[a-z0-9_][a-z0-9_.-]{0,47}$.  Columns: the SQLSTATE for an
-- uppercase letter, 49 characters, a leading '.', a leading '-', the empty
-- string, a space, a non-ASCII letter.
--
SELECT fn,
       left(pg_temp.try(format(call, 'Err_a')), 5) AS upper,
       left(pg_temp.try(format(call, 'err_' || repeat('n', 45))), 5) AS len49,
       left(pg_temp.try(format(call, '.err_a')), 5) AS dot,
       left(pg_temp.try(format(call, '-err_a')), 5) AS dash,
       left(pg_temp.try(format(call, '')), 5) AS empty,
       left(pg_temp.try(format(call, 'err a')), 5) AS space,
       left(pg_temp.try(format(call, 'err_é')), 5) AS non_ascii
  FROM (VALUES
	('subscribe', $$SELECT outbox.subscribe(%L, ARRAY['err.t'])$$),
	('unsubscribe', $$SELECT outbox.unsubscribe(%L)$$),
	('pause', $$SELECT outbox.pause(%L)$$),
	('resume', $$SELECT outbox.resume(%L)$$),
	('replay', $$SELECT outbox.replay(%L)$$),
	('claim', $$SELECT outbox.claim(%L)$$),
	('ack(id)', $$SELECT outbox.ack(%L, 1::bigint)$$),
	('ack(ids)', $$SELECT outbox.ack(%L, ARRAY[1]::bigint[])$$),
	('ack(NULL ids)', $$SELECT outbox.ack(%L, NULL::bigint[])$$),
	('fail', $$SELECT outbox.fail(%L, 1)$$),
	('channel', $$SELECT outbox.channel(%L)$$),
	('grant_consume', $$SELECT outbox.grant_consume('regress_outbox_err_role', %L)$$),
	('revoke_consume', $$SELECT outbox.revoke_consume('regress_outbox_err_role', %L)$$)
  ) AS t(fn, call);
-- the whole message, once
SELECT pg_temp.try($$SELECT outbox.claim('Err_a')$$) AS result;
-- none of the malformed names was created
SELECT count(*) AS malformed_created FROM outbox.stats WHERE subscription !~ '^[a-z0-9_][a-z0-9_.-]{0,47}$';

-- well-formed names at the edges are accepted: 48 characters, a leading
-- digit or '_', '.' and '-' inside; the channel still fits in 63 bytes
CREATE TEMP TABLE edge_names (name) AS
  VALUES ('err_' || repeat('n', 44)), ('0err_x'), ('_err_x'), ('err_x.y-z');
SELECT name, pg_temp.try(format('SELECT outbox.subscribe(%L, ARRAY[''err.t''])', name)) AS subscribe
  FROM edge_names;
SELECT name, octet_length(outbox.channel(name)) <= 63 AS channel_fits FROM edge_names;
SELECT name, pg_temp.try(format('SELECT outbox.unsubscribe(%L)', name)) AS unsubscribe
  FROM edge_names;

--
-- 22023: an empty topic or one over 200 bytes, in enqueue and subscribe.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.enqueue('', '{}')$$),
	($$SELECT outbox.enqueue(repeat('t', 201), '{}')$$),
	($$SELECT outbox.enqueue(repeat('é', 101), '{}')$$),
	($$SELECT outbox.subscribe('err_x', ARRAY[''])$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t', ''])$$),
	($$SELECT outbox.subscribe('err_x', ARRAY[repeat('t', 201)])$$),
	($$SELECT outbox.subscribe('err_x', ARRAY[repeat('é', 101)])$$)
) AS t(call);
-- exactly 200 bytes is accepted by both, in ASCII and in 2-byte characters
SELECT octet_length(repeat('é', 100)) AS bytes;
SELECT outbox.subscribe('err_t200', ARRAY[repeat('t', 200), repeat('é', 100)]);
SELECT outbox.enqueue(repeat('t', 200), '{"n": 1}') > 0 AS enqueued;
SELECT outbox.enqueue(repeat('é', 100), '{"n": 2}') > 0 AS enqueued;
SELECT octet_length(topic) AS topic_bytes, payload FROM outbox.claim('err_t200', 10) ORDER BY payload->>'n';

--
-- 22023: batch outside 1 .. 10000; 1 and 10000 are accepted.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.claim('err_a', 0)$$),
	($$SELECT outbox.claim('err_a', -1)$$),
	($$SELECT outbox.claim('err_a', 10001)$$),
	($$SELECT outbox.claim('err_a', 2147483647)$$),
	($$SELECT outbox.claim('err_a', 1)$$),
	($$SELECT outbox.claim('err_a', 10000)$$)
) AS t(call);
SELECT outbox.enqueue('err.t', '{"n": 1}') > 0 AS enqueued;
SELECT outbox.enqueue('err.t', '{"n": 2}') > 0 AS enqueued;
SELECT payload, outbox.ack('err_a', event_id) AS acked FROM outbox.claim('err_a', 1);
SELECT payload, outbox.ack('err_a', event_id) AS acked FROM outbox.claim('err_a', 10000);

--
-- 22023: negative intervals (claim's lease, fail's retry_in, subscribe's
-- lease, backoff_base and backoff_max).  Mixed signs count as a whole.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.claim('err_a', 1, '-1 second')$$),
	($$SELECT outbox.claim('err_a', 1, '1 day -25 hours')$$),
	($$SELECT outbox.fail('err_a', 1, 'x', '-1 second')$$),
	($$SELECT outbox.fail('err_a', 1, retry_in => '-1 month')$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], lease => '-1 second')$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], backoff_base => '-1 second')$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], backoff_max => '-1 second')$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], backoff_max => '1 day -25 hours')$$),
	-- not negative: accepted
	($$SELECT outbox.claim('err_a', 1, '1 month -29 days')$$),
	($$SELECT outbox.fail('err_a', 1, retry_in => '0')$$)
) AS t(call);

--
-- 22023: max_attempts below 1.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], max_attempts => 0)$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t'], max_attempts => -1)$$)
) AS t(call);
SELECT count(*) AS err_x FROM outbox.stats WHERE subscription = 'err_x';
SELECT outbox.subscribe('err_x', ARRAY['err.t'], max_attempts => 1);
SELECT outbox.unsubscribe('err_x');

--
-- 22023: headers that are not a JSON object; an object (even empty) and
-- NULL are accepted.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.enqueue('err.h', '{}', headers => '[]')$$),
	($$SELECT outbox.enqueue('err.h', '{}', headers => '[{"a": 1}]')$$),
	($$SELECT outbox.enqueue('err.h', '{}', headers => '1')$$),
	($$SELECT outbox.enqueue('err.h', '{}', headers => '"x"')$$),
	($$SELECT outbox.enqueue('err.h', '{}', headers => 'true')$$),
	($$SELECT outbox.enqueue('err.h', '{}', headers => 'null')$$)
) AS t(call);
SELECT outbox.subscribe('err_h', ARRAY['err.h']);
SELECT outbox.enqueue('err.h', '{"n": 1}', headers => '{}') > 0 AS enqueued;
SELECT outbox.enqueue('err.h', '{"n": 2}', headers => '{"trace": "abc"}') > 0 AS enqueued;
SELECT outbox.enqueue('err.h', '{"n": 3}', headers => NULL) > 0 AS enqueued;
SELECT payload, headers FROM outbox.claim('err_h', 10) ORDER BY payload->>'n';

--
-- 22023: an empty topics array, or '*' mixed with topic names.
--
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.subscribe('err_x', ARRAY[]::text[])$$),
	($$SELECT outbox.subscribe('err_x', '{}')$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['*', 'err.t'])$$),
	($$SELECT outbox.subscribe('err_x', ARRAY['err.t', '*'])$$),
	-- '*' alone is every topic
	($$SELECT outbox.subscribe('err_x', ARRAY['*'])$$),
	($$SELECT outbox.unsubscribe('err_x')$$)
) AS t(call);
-- updating an existing subscription is checked the same way, and a failed
-- update leaves its topics alone
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.subscribe('err_a', ARRAY[]::text[])$$),
	($$SELECT outbox.subscribe('err_a', ARRAY['*', 'err.t'])$$),
	($$SELECT outbox.subscribe('err_a', ARRAY['err.t'], max_attempts => 0)$$),
	($$SELECT outbox.subscribe('err_a', ARRAY['err.t'], lease => '-1 second')$$),
	($$SELECT outbox.subscribe('err_a', NULL)$$)
) AS t(call);
SELECT outbox.enqueue('err.other', '{"n": 1}') > 0 AS enqueued;
SELECT outbox.enqueue('err.t', '{"n": 2}') > 0 AS enqueued;
SELECT topic, payload, outbox.ack('err_a', event_id) AS acked FROM outbox.claim('err_a', 10);

--
-- A failing enqueue leaves nothing behind: nothing is claimable afterwards,
-- and in a transaction the error takes the earlier enqueues with it.
--
SELECT ready, scheduled, leased, dead FROM outbox.stats WHERE subscription = 'err_a';
SELECT pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.enqueue('err.t', '{"bad": 1}', headers => '[]')$$),
	($$SELECT outbox.enqueue('err.t', NULL)$$),
	($$SELECT outbox.enqueue('err.t', '{"bad": 2}', headers => 'null')$$)
) AS t(call);
SELECT outbox.enqueue('err.t', '{"bad": 3}', headers => '"x"');
BEGIN;
SELECT outbox.enqueue('err.t', '{"bad": 4}') > 0 AS enqueued;
SELECT outbox.enqueue('', '{"bad": 5}');
COMMIT;
SELECT count(*) AS claimable FROM outbox.claim('err_a', 10000);
SELECT ready, scheduled, leased, dead FROM outbox.stats WHERE subscription = 'err_a';

--
-- Clean up.
--
SELECT outbox.unsubscribe(name)
  FROM (VALUES ('err_a'), ('err_t200'), ('err_h')) AS t(name);
SELECT count(*) AS left_behind FROM outbox.stats WHERE subscription ~ 'err_';
DROP ROLE regress_outbox_err_role;
