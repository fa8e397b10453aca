-- Limits: no input, however large or odd, may be stored in a way that makes
-- a later claim, fail or worker round fail (issue 8, faults 3 and 4).
--
-- Texts that reach a btree index (key, dedup_key) are refused above 1024
-- bytes; intervals above 100 years, and infinite deliver_at, are refused.
-- Values at the limits are stored and then go through every path that
-- writes them again: claim, fail, retry, dead letter, ack.
--
-- Subscriptions are named lim_*; all are removed at the end.

\set VERBOSITY terse

-- "ok", or the error's SQLSTATE, message and detail
CREATE FUNCTION pg_temp.try(sql text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	detail text;
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
	RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' (' || nullif(detail, '') || ')', '');
END
$$;

-- Text of exactly n bytes that compresses badly: an index keeps it at its
-- full size, as it would a random key.
CREATE FUNCTION pg_temp.noise(n int) RETURNS text
LANGUAGE sql AS $$
	SELECT left(string_agg(md5(i::text || 'outbox'), '' ORDER BY i), n)
	  FROM generate_series(1, n / 32 + 1) i
$$;

--
-- 22023: key and dedup_key over 1024 bytes, in ASCII and in 2-byte
-- characters; the message gives the limit, the detail the size given.
--
SELECT octet_length(repeat('é', 512)) AS bytes_512, octet_length(repeat('é', 513)) AS bytes_513;
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.enqueue('lim.t', '{}', key => repeat('k', 1025))$$),
	($$SELECT outbox.enqueue('lim.t', '{}', key => repeat('é', 513))$$),
	($$SELECT outbox.enqueue('lim.t', '{}', key => pg_temp.noise(3800))$$),
	($$SELECT outbox.enqueue('lim.t', '{}', dedup_key => repeat('d', 1025))$$),
	($$SELECT outbox.enqueue('lim.t', '{}', dedup_key => repeat('é', 513))$$),
	($$SELECT outbox.enqueue('lim.t', '{}', dedup_key => pg_temp.noise(3000))$$)
) AS t(call);
-- an empty key is a key like any other
SELECT pg_temp.try($$SELECT outbox.enqueue('lim.t', '{}', key => '')$$) AS empty_key;

--
-- The old wedge: an event whose key is too long for delivery_key_idx made
-- every later claim of an ordered subscription fail.  The longest allowed
-- key, incompressible, goes to an ordered and an unordered subscription:
-- claimed, failed (a delivery row with the key), claimed again, failed
-- for good (a dead letter with the key), replayed, claimed and acked; and
-- the event behind it on another key is claimed all along.
--
SELECT outbox.subscribe('lim_ordered', ARRAY['lim.k'], max_attempts => 2, ordered => true);
SELECT outbox.subscribe('lim_plain', ARRAY['lim.k'], max_attempts => 2);
CREATE TEMP TABLE long_key AS SELECT pg_temp.noise(1024) AS k;
SELECT octet_length(k) AS key_bytes FROM long_key;
CREATE TEMP TABLE lk AS
	SELECT outbox.enqueue('lim.k', '{"n": 1}', key => k) AS id FROM long_key;
SELECT outbox.enqueue('lim.k', '{"n": 2}', key => 'short') > 0 AS enqueued;
SELECT outbox.enqueue('lim.k', '{"n": 3}', key => k) > 0 AS enqueued FROM long_key;

CREATE FUNCTION pg_temp.round(sub text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	out text := '';
	r record;
BEGIN
	FOR r IN SELECT c.event_id, c.payload->>'n' AS n, c.attempt, c.key = (SELECT k FROM long_key) AS long
			   FROM outbox.claim(sub, 10) c ORDER BY c.event_id LOOP
		out := out || format('%s(attempt %s%s) ', r.n, r.attempt, CASE WHEN r.long THEN ', long key' ELSE '' END);
		IF r.event_id = (SELECT id FROM lk) THEN
			out := out || coalesce(outbox.fail(sub, r.event_id, 'again', retry_in => '0'), 'null') || ' ';
		ELSE
			out := out || CASE WHEN outbox.ack(sub, r.event_id) THEN 'acked ' ELSE 'not acked ' END;
		END IF;
	END LOOP;
	RETURN out;
END
$$;
-- first round: event 1 fails (ordered: 3 waits behind it), 2 is acked
SELECT sub, pg_temp.round(sub) FROM (VALUES ('lim_ordered'), ('lim_plain')) s(sub);
SELECT s.name, d.state, d.attempts, octet_length(d.key) AS key_bytes
  FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id
 WHERE s.name LIKE 'lim_%' ORDER BY 1, d.event_id;
-- second round: event 1 fails for good (a dead letter; ordered: frees 3)
SELECT sub, pg_temp.round(sub) FROM (VALUES ('lim_ordered'), ('lim_plain')) s(sub);
SELECT subscription, octet_length(key) AS key_bytes, attempts, last_error FROM outbox.dead_letters
 WHERE subscription LIKE 'lim_%' ORDER BY 1;
-- third round: ordered gets 3 now
SELECT sub, pg_temp.round(sub) FROM (VALUES ('lim_ordered'), ('lim_plain')) s(sub);
-- replayed, claimed and acked
SELECT outbox.replay('lim_ordered'), outbox.replay('lim_plain');
SELECT sub, c.payload->>'n' AS n, c.attempt, octet_length(c.key) AS key_bytes, outbox.ack(sub, c.event_id) AS acked
  FROM (VALUES ('lim_ordered'), ('lim_plain')) s(sub), LATERAL outbox.claim(sub, 10) c ORDER BY 1, 2;
SELECT subscription, ready, scheduled, leased, dead FROM outbox.stats
 WHERE subscription LIKE 'lim_%' ORDER BY 1;

-- The longest topic and dedup_key, incompressible: stored in the dedup
-- index, and a second enqueue finds the first event.
SELECT outbox.subscribe('lim_dedup', ARRAY[pg_temp.noise(200)]);
SELECT outbox.enqueue(pg_temp.noise(200), '{"n": 1}', dedup_key => pg_temp.noise(1024))
     = outbox.enqueue(pg_temp.noise(200), '{"n": 2}', dedup_key => pg_temp.noise(1024)) AS same_event;
SELECT c.payload, outbox.ack('lim_dedup', c.event_id) FROM outbox.claim('lim_dedup', 10) c;

--
-- 22023: intervals over 100 years (claim's lease, fail's retry_in,
-- subscribe's lease, backoff_base and backoff_max), also when only a part
-- of the interval is out of range; infinite deliver_at.  Exactly 100 years
-- and any finite deliver_at are accepted.
--
SELECT outbox.subscribe('lim_a', ARRAY['lim.a']);
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], lease => '1000000 years')$$),
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], backoff_base => '1000000 years')$$),
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], backoff_max => '100 years 1 second')$$),
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], backoff_max => '36001 days')$$),
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], lease => '864000001 seconds')$$),
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], lease => '1000000 years -359990000 days')$$),
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], lease => make_interval(days => -106000000, secs => 9158400003600))$$),
	($$SELECT outbox.claim('lim_a', 1, '1000000 years')$$),
	($$SELECT outbox.claim('lim_a', 1, '200 years')$$),
	($$SELECT outbox.claim('lim_a', 1, make_interval(days => -106000000, secs => 9158400003600))$$),
	($$SELECT outbox.fail('lim_a', 1, 'x', '1000000 years')$$),
	($$SELECT outbox.fail('lim_a', 1, retry_in => '101 years')$$),
	($$SELECT outbox.enqueue('lim.a', '{}', deliver_at => 'infinity')$$),
	($$SELECT outbox.enqueue('lim.a', '{}', deliver_at => '-infinity')$$),
	-- accepted
	($$SELECT outbox.subscribe('lim_x', ARRAY['lim.x'], lease => '100 years', backoff_base => '100 years', backoff_max => '36000 days')$$),
	($$SELECT outbox.claim('lim_a', 1, '100 years')$$),
	($$SELECT outbox.fail('lim_a', 1, retry_in => '100 years')$$),
	($$SELECT outbox.enqueue('lim.a', '{}', deliver_at => '9999-12-31 00:00:00+00')$$),
	($$SELECT outbox.enqueue('lim.a', '{}', deliver_at => '4000-01-01 00:00:00+00 BC')$$),
	($$SELECT outbox.unsubscribe('lim_x')$$)
) AS t(call);

--
-- The backoff at extreme values: no attempts count, base or max makes it
-- overflow.  The backoff is least(backoff_max, backoff_base *
-- 2^(attempts - 1)) with jitter in [0.5, 1.0].  (Days, not years, so that
-- epoch seconds measure them as the backoff does.)
--
SELECT outbox.subscribe('lim_far', ARRAY['lim.b'], max_attempts => 2147483647,
	backoff_base => '36000 days', backoff_max => '36000 days');
SELECT outbox.subscribe('lim_zero', ARRAY['lim.b'], max_attempts => 2147483647,
	backoff_base => '0', backoff_max => '1 hour');
SELECT outbox.subscribe('lim_tiny', ARRAY['lim.b'], max_attempts => 2147483647,
	backoff_base => '1 microsecond', backoff_max => '36000 days');
SELECT outbox.subscribe('lim_over', ARRAY['lim.b'], max_attempts => 2147483647,
	backoff_base => '36000 days', backoff_max => '1 hour');
SELECT outbox.enqueue('lim.b', '{}') > 0 AS enqueued;
-- Is each delivery's visible_at within the backoff window of its attempts?
CREATE TEMP TABLE backoffs (name text, attempts int, ok boolean);
CREATE FUNCTION pg_temp.check_backoffs() RETURNS void
LANGUAGE sql AS $$
	INSERT INTO backoffs
	SELECT s.name, d.attempts,
		   extract(epoch FROM d.visible_at - now())
			 BETWEEN w.d / 2 - 0.000001 AND w.d
	  FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id,
		   LATERAL (SELECT least(extract(epoch FROM s.backoff_max),
								 extract(epoch FROM s.backoff_base) * 2::numeric ^ least(d.attempts - 1, 100)) AS d) w
	 WHERE s.name IN ('lim_far', 'lim_zero', 'lim_tiny', 'lim_over') AND d.state = 'scheduled'
$$;
-- Claim (as if the delivery were due and had used attempts - 1 attempts)
-- and fail each subscription's delivery.
CREATE FUNCTION pg_temp.fail_at(a int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	r record;
BEGIN
	UPDATE outbox.delivery d SET visible_at = now() - interval '1 second', attempts = a - 1
	  FROM outbox.subscription s
	 WHERE s.id = d.sub_id AND s.name IN ('lim_far', 'lim_zero', 'lim_tiny', 'lim_over');
	FOR r IN SELECT sub, c.event_id, c.attempt
			   FROM (VALUES ('lim_far'), ('lim_zero'), ('lim_tiny'), ('lim_over')) s(sub),
					LATERAL outbox.claim(sub) c LOOP
		IF r.attempt <> a OR outbox.fail(r.sub, r.event_id) <> 'scheduled' THEN
			RAISE 'attempt % of % not failed as expected', a, r.sub;
		END IF;
	END LOOP;
	PERFORM pg_temp.check_backoffs();
END
$$;
-- first attempt: from the stream, no delivery row yet
BEGIN;
SELECT sub, c.attempt, outbox.fail(sub, c.event_id)
  FROM (VALUES ('lim_far'), ('lim_zero'), ('lim_tiny'), ('lim_over')) s(sub),
	   LATERAL outbox.claim(sub) c ORDER BY 1;
SELECT pg_temp.check_backoffs();
COMMIT;
-- then 2 .. 70 (2^(attempts - 1) microseconds passes 36000 days at 53,
-- and what an int64 holds at 64), and the last attempts an int holds
SELECT pg_temp.fail_at(a) FROM generate_series(2, 70) a;
SELECT pg_temp.fail_at(a) FROM generate_series(2147483600, 2147483646, 23) a;
SELECT name, count(*) AS fails, min(attempts), max(attempts), bool_and(ok) AS all_in_window
  FROM backoffs GROUP BY name ORDER BY 1;
SELECT name, attempts FROM backoffs WHERE NOT ok ORDER BY 1, 2 LIMIT 10;
-- the last attempt makes a dead letter
UPDATE outbox.delivery d SET visible_at = now() - interval '1 second', attempts = 2147483646
  FROM outbox.subscription s WHERE s.id = d.sub_id AND s.name = 'lim_far';
SELECT c.attempt, outbox.fail('lim_far', c.event_id) FROM outbox.claim('lim_far') c;

SELECT outbox.unsubscribe(name) FROM outbox.subscription WHERE name LIKE 'lim_%' ORDER BY name;
