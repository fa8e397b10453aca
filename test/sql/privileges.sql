-- Privileges (spec/api.md, "Privileges"): nothing for PUBLIC; grant_produce
-- and grant_consume give exactly what they say, revoke_* take it back; role
-- membership follows PostgreSQL's rules; the tables are never writable
-- directly; a caller's search_path cannot hijack the functions.
--
-- Calls that may fail run through pg_temp.try(), which prints "ok" or the
-- error's SQLSTATE and message.  Subscriptions are named priv_*, roles
-- regress_outbox_*; all are removed at the end.

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

CREATE ROLE regress_outbox_nobody;
CREATE ROLE regress_outbox_producer;
CREATE ROLE regress_outbox_consumer;
CREATE ROLE regress_outbox_group NOLOGIN;
CREATE ROLE regress_outbox_member INHERIT IN ROLE regress_outbox_group;
CREATE ROLE regress_outbox_noinherit NOINHERIT IN ROLE regress_outbox_group;

-- max_attempts 1: the first fail dead-letters.  priv_b also reads a topic
-- of its own, whose payload no consumer of priv_a may see.
SELECT outbox.subscribe('priv_a', ARRAY['priv.t'], max_attempts => 1);
SELECT outbox.subscribe('priv_b', ARRAY['priv.t', 'priv.secret'], max_attempts => 1);
-- an ordered subscription, for the search_path test at the end
SELECT outbox.subscribe('priv_o', ARRAY['priv.o'], ordered => true);
-- dead letters: n 1 in both, the secret in priv_b
SELECT outbox.enqueue('priv.t', '{"n": 1}') > 0 AS enqueued;
SELECT outbox.enqueue('priv.secret', '{"secret": "b"}') > 0 AS enqueued;
SELECT payload, outbox.fail('priv_a', event_id, 'failed by the owner') FROM outbox.claim('priv_a', 10);
SELECT payload, outbox.fail('priv_b', event_id, 'failed by the owner') FROM outbox.claim('priv_b', 10)
 ORDER BY payload::text;

--
-- Nothing in schema outbox is usable by PUBLIC.
--
-- no function has a NULL ACL (which would mean EXECUTE for PUBLIC) or an
-- entry for PUBLIC (grantee 0)
SELECT count(*) > 0 AS has_functions,
       count(*) FILTER (WHERE p.proacl IS NULL
                           OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)) AS public_functions
  FROM pg_proc p WHERE p.pronamespace = 'outbox'::regnamespace;
SELECT count(*) > 0 AS has_relations,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0)) AS public_relations
  FROM pg_class c WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f');
SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a
                WHERE n.nspname = 'outbox' AND a.grantee = 0) AS public_schema_rights;
-- and so a fresh role can execute, read or write nothing
SELECT p.oid::regprocedure AS executable
  FROM pg_proc p
 WHERE p.pronamespace = 'outbox'::regnamespace
   AND has_function_privilege('regress_outbox_nobody', p.oid, 'EXECUTE');
SELECT c.oid::regclass AS accessible
  FROM pg_class c
 WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND has_table_privilege('regress_outbox_nobody', c.oid,
                           'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER');
SELECT c.oid::regclass AS accessible
  FROM pg_class c
 WHERE c.relnamespace = 'outbox'::regnamespace
   AND CASE WHEN c.relkind = 'S'
            THEN has_sequence_privilege('regress_outbox_nobody', c.oid, 'USAGE, SELECT, UPDATE') END;
SELECT has_schema_privilege('regress_outbox_nobody', 'outbox', 'USAGE') AS usage,
       has_schema_privilege('regress_outbox_nobody', 'outbox', 'CREATE') AS "create";

--
-- A role without a grant gets 42501 from every function and view.
--
SET ROLE regress_outbox_nobody;
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.enqueue('priv.t', '{}')$$),
	($$SELECT outbox.enqueue_many('priv.t', ARRAY['{}']::jsonb[])$$),
	($$SELECT outbox.claim('priv_a')$$),
	($$SELECT outbox.ack('priv_a', 1::bigint)$$),
	($$SELECT outbox.ack('priv_a', ARRAY[1]::bigint[])$$),
	($$SELECT outbox.ack('priv_a', NULL::bigint[])$$),
	($$SELECT outbox.fail('priv_a', 1)$$),
	($$SELECT outbox.release('priv_a', 1)$$),
	($$SELECT outbox.extend_lease('priv_a', ARRAY[1]::bigint[], ARRAY[1])$$),
	($$SELECT outbox.channel('priv_a')$$),
	($$SELECT * FROM outbox.stats$$),
	($$SELECT * FROM outbox.dead_letters$$),
	($$SELECT outbox.subscribe('priv_c', ARRAY['priv.t'])$$),
	($$SELECT outbox.unsubscribe('priv_a')$$),
	($$SELECT outbox.pause('priv_a')$$),
	($$SELECT outbox.resume('priv_a')$$),
	($$SELECT outbox.replay('priv_a')$$),
	($$SELECT outbox.grant_produce('regress_outbox_nobody')$$),
	($$SELECT outbox.grant_consume('regress_outbox_nobody', 'priv_a')$$),
	($$SELECT outbox.revoke_produce('regress_outbox_nobody')$$),
	($$SELECT outbox.revoke_consume('regress_outbox_nobody', 'priv_a')$$),
	($$SELECT * FROM outbox.event$$),
	($$INSERT INTO outbox.event (id, topic, payload, enqueued_at) VALUES (1, 'priv.t', '{}', now())$$)
) AS t(call);
RESET ROLE;

--
-- grant_produce: enqueue, and nothing else.
--
SELECT outbox.grant_produce('regress_outbox_producer');
SELECT p.oid::regprocedure AS executable
  FROM pg_proc p
 WHERE p.pronamespace = 'outbox'::regnamespace
   AND has_function_privilege('regress_outbox_producer', p.oid, 'EXECUTE')
 ORDER BY p.proname, p.oid::regprocedure::text COLLATE "C";
SELECT c.oid::regclass AS accessible
  FROM pg_class c
 WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND has_table_privilege('regress_outbox_producer', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE');
SET ROLE regress_outbox_producer;
SELECT outbox.enqueue('priv.t', '{"n": 2}') > 0 AS enqueued;
SELECT outbox.enqueue('priv.t', '{"n": 3}', key => 'k', headers => '{"h": 1}',
                      dedup_key => 'priv-3') > 0 AS enqueued;
SELECT cardinality(outbox.enqueue_many('priv.none', ARRAY['{"n": 31}']::jsonb[])) AS enqueued_many;
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.claim('priv_a')$$),
	($$SELECT outbox.ack('priv_a', 1::bigint)$$),
	($$SELECT outbox.ack('priv_a', ARRAY[1]::bigint[])$$),
	($$SELECT outbox.fail('priv_a', 1)$$),
	($$SELECT outbox.release('priv_a', 1)$$),
	($$SELECT outbox.extend_lease('priv_a', ARRAY[1]::bigint[], ARRAY[1])$$),
	($$SELECT outbox.channel('priv_a')$$),
	($$SELECT * FROM outbox.stats$$),
	($$SELECT * FROM outbox.dead_letters$$),
	($$SELECT outbox.subscribe('priv_c', ARRAY['priv.t'])$$),
	($$SELECT outbox.unsubscribe('priv_a')$$),
	($$SELECT outbox.pause('priv_a')$$),
	($$SELECT outbox.resume('priv_a')$$),
	($$SELECT outbox.replay('priv_a')$$),
	($$SELECT outbox.grant_consume('regress_outbox_producer', 'priv_a')$$),
	($$SELECT outbox.grant_produce('regress_outbox_nobody')$$),
	($$SELECT * FROM outbox.event$$),
	($$INSERT INTO outbox.event (id, topic, payload, enqueued_at) VALUES (1, 'priv.t', '{}', now())$$),
	($$UPDATE outbox.event SET payload = '{}'$$),
	($$DELETE FROM outbox.event$$),
	($$TRUNCATE outbox.event$$),
	($$INSERT INTO outbox.dedup VALUES ('priv.t', 'priv-4', 1)$$)
) AS t(call);
RESET ROLE;
-- the producer's events reached both subscriptions
SELECT subscription, ready, scheduled, leased, dead
  FROM outbox.stats WHERE subscription LIKE 'priv\_%' ORDER BY 1;

--
-- grant_consume(role, 'priv_a'): claim, ack, fail, channel on priv_a and
-- its own rows of the views; nothing on priv_b, no administration.
--
SELECT outbox.grant_consume('regress_outbox_consumer', 'priv_a');
SELECT p.oid::regprocedure AS executable
  FROM pg_proc p
 WHERE p.pronamespace = 'outbox'::regnamespace AND p.proname !~ '^_'
   AND has_function_privilege('regress_outbox_consumer', p.oid, 'EXECUTE')
 ORDER BY p.proname, p.oid::regprocedure::text COLLATE "C";
SELECT c.oid::regclass AS accessible,
       has_table_privilege('regress_outbox_consumer', c.oid, 'SELECT') AS "select",
       has_table_privilege('regress_outbox_consumer', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS write
  FROM pg_class c
 WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND has_table_privilege('regress_outbox_consumer', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
 ORDER BY c.relname COLLATE "C";
SET ROLE regress_outbox_consumer;
SELECT payload, outbox.ack('priv_a', event_id) AS acked FROM outbox.claim('priv_a');
SELECT payload, key, headers, attempt, outbox.fail('priv_a', event_id, 'failed by the consumer') AS fail
  FROM outbox.claim('priv_a');
SELECT count(*) AS nothing_left FROM outbox.claim('priv_a', 10);
SELECT outbox.ack('priv_a', NULL::bigint[]) AS null_array, outbox.ack('priv_a', '{}'::bigint[]) AS empty_array;
SELECT octet_length(outbox.channel('priv_a')) <= 63 AS has_channel;
-- the views show priv_a only
SELECT subscription, ready, scheduled, leased, dead, paused FROM outbox.stats ORDER BY 1;
SELECT subscription, topic, payload, attempts, last_error
  FROM outbox.dead_letters ORDER BY subscription, payload->>'n';
-- priv_b, administration and the tables: 42501
SELECT call, pg_temp.try(call) AS result FROM (VALUES
	($$SELECT outbox.claim('priv_b')$$),
	($$SELECT outbox.claim('priv_b', 10, '1 minute')$$),
	($$SELECT outbox.ack('priv_b', 1::bigint)$$),
	($$SELECT outbox.ack('priv_b', ARRAY[1]::bigint[])$$),
	($$SELECT outbox.ack('priv_b', NULL::bigint[])$$),
	($$SELECT outbox.fail('priv_b', 1)$$),
	($$SELECT outbox.release('priv_b', 1)$$),
	($$SELECT outbox.extend_lease('priv_b', ARRAY[1]::bigint[], ARRAY[1])$$),
	($$SELECT outbox.channel('priv_b')$$),
	($$SELECT outbox.enqueue('priv.t', '{}')$$),
	($$SELECT outbox.enqueue_many('priv.t', ARRAY['{}']::jsonb[])$$),
	($$SELECT outbox.subscribe('priv_c', ARRAY['priv.t'])$$),
	($$SELECT outbox.subscribe('priv_a', ARRAY['*'])$$),
	($$SELECT outbox.unsubscribe('priv_a')$$),
	($$SELECT outbox.pause('priv_a')$$),
	($$SELECT outbox.resume('priv_a')$$),
	($$SELECT outbox.replay('priv_a')$$),
	($$SELECT outbox.grant_consume('regress_outbox_consumer', 'priv_b')$$),
	($$SELECT outbox.grant_produce('regress_outbox_consumer')$$),
	($$SELECT outbox.revoke_consume('regress_outbox_consumer', 'priv_a')$$),
	($$SELECT * FROM outbox.event$$),
	($$SELECT * FROM outbox.delivery$$),
	($$SELECT * FROM outbox.subscription$$),
	($$INSERT INTO outbox.event (id, topic, payload, enqueued_at) VALUES (1, 'priv.t', '{}', now())$$),
	($$INSERT INTO outbox.consumer SELECT sub_id, 'regress_outbox_consumer'::regrole::oid FROM outbox.consumer$$),
	($$UPDATE outbox.delivery SET state = 'ready'$$),
	($$UPDATE outbox.subscription SET paused = true$$),
	($$DELETE FROM outbox.batch$$),
	($$TRUNCATE outbox.delivery$$)
) AS t(call);
RESET ROLE;
-- priv_b is untouched: two ready, one dead; priv_a has two dead
SELECT subscription, ready, scheduled, leased, dead, paused
  FROM outbox.stats WHERE subscription LIKE 'priv\_%' ORDER BY 1;

--
-- revoke_consume and revoke_produce take the rights away again.
--
SELECT outbox.grant_consume('regress_outbox_consumer', 'priv_b');
SET ROLE regress_outbox_consumer;
SELECT subscription FROM outbox.stats ORDER BY 1;
RESET ROLE;
SELECT outbox.revoke_consume('regress_outbox_consumer', 'priv_b');
SET ROLE regress_outbox_consumer;
SELECT subscription FROM outbox.stats ORDER BY 1;
SELECT DISTINCT subscription FROM outbox.dead_letters ORDER BY 1;
SELECT count(*) AS claimed FROM outbox.claim('priv_a');
SELECT pg_temp.try($$SELECT outbox.claim('priv_b')$$) AS claim_priv_b;
RESET ROLE;
SELECT outbox.revoke_consume('regress_outbox_consumer', 'priv_a');
SET ROLE regress_outbox_consumer;
SELECT call, left(pg_temp.try(call), 5) AS result FROM (VALUES
	($$SELECT outbox.claim('priv_a')$$),
	($$SELECT outbox.ack('priv_a', 1::bigint)$$),
	($$SELECT outbox.fail('priv_a', 1)$$),
	($$SELECT outbox.release('priv_a', 1)$$),
	($$SELECT outbox.extend_lease('priv_a', ARRAY[1]::bigint[], ARRAY[1])$$),
	($$SELECT outbox.channel('priv_a')$$),
	($$SELECT * FROM outbox.stats$$),
	($$SELECT * FROM outbox.dead_letters$$)
) AS t(call);
RESET ROLE;
SELECT outbox.revoke_produce('regress_outbox_producer');
SET ROLE regress_outbox_producer;
SELECT left(pg_temp.try($$SELECT outbox.enqueue('priv.t', '{}')$$), 5) AS enqueue,
       left(pg_temp.try($$SELECT outbox.enqueue_many('priv.t', ARRAY['{}']::jsonb[])$$), 5) AS enqueue_many;
RESET ROLE;
-- nothing is left of either grant
SELECT r.rolname,
       has_schema_privilege(r.oid, 'outbox', 'USAGE') AS usage,
       (SELECT count(*) FROM pg_proc p
         WHERE p.pronamespace = 'outbox'::regnamespace
           AND has_function_privilege(r.oid, p.oid, 'EXECUTE')) AS functions,
       (SELECT count(*) FROM pg_class c
         WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
           AND has_table_privilege(r.oid, c.oid, 'SELECT')) AS relations
  FROM pg_roles r
 WHERE r.rolname IN ('regress_outbox_producer', 'regress_outbox_consumer') ORDER BY 1;
-- a produce grant and a consume grant are independent of each other
SELECT outbox.grant_produce('regress_outbox_consumer');
SELECT outbox.grant_consume('regress_outbox_consumer', 'priv_a');
SELECT outbox.revoke_produce('regress_outbox_consumer');
SET ROLE regress_outbox_consumer;
SELECT left(pg_temp.try($$SELECT outbox.enqueue('priv.t', '{}')$$), 5) AS enqueue,
       left(pg_temp.try($$SELECT outbox.claim('priv_a')$$), 5) AS claim;
RESET ROLE;
SELECT outbox.grant_produce('regress_outbox_consumer');
SELECT outbox.revoke_consume('regress_outbox_consumer', 'priv_a');
SET ROLE regress_outbox_consumer;
SELECT left(pg_temp.try($$SELECT outbox.enqueue('priv.t', '{"n": 4}')$$), 5) AS enqueue,
       left(pg_temp.try($$SELECT outbox.claim('priv_a')$$), 5) AS claim;
RESET ROLE;
SELECT outbox.revoke_produce('regress_outbox_consumer');

--
-- Role membership: grants to a group role reach its INHERIT members; a
-- NOINHERIT member has them only after SET ROLE to the group.
--
SELECT outbox.grant_produce('regress_outbox_group');
SELECT outbox.grant_consume('regress_outbox_group', 'priv_b');
SET ROLE regress_outbox_member;
SELECT outbox.enqueue('priv.t', '{"n": 5}') > 0 AS enqueued;
SELECT payload, outbox.ack('priv_b', event_id) AS acked FROM outbox.claim('priv_b', 10) ORDER BY payload->>'n';
SELECT subscription FROM outbox.stats ORDER BY 1;
SELECT left(pg_temp.try($$SELECT outbox.claim('priv_a')$$), 5) AS claim_priv_a;
RESET ROLE;
SET ROLE regress_outbox_noinherit;
SELECT call, left(pg_temp.try(call), 5) AS result FROM (VALUES
	($$SELECT outbox.enqueue('priv.t', '{}')$$),
	($$SELECT outbox.enqueue_many('priv.t', ARRAY['{}']::jsonb[])$$),
	($$SELECT outbox.claim('priv_b')$$),
	($$SELECT outbox.ack('priv_b', 1::bigint)$$),
	($$SELECT outbox.channel('priv_b')$$),
	($$SELECT * FROM outbox.stats$$)
) AS t(call);
SET ROLE regress_outbox_group;
SELECT outbox.enqueue('priv.t', '{"n": 6}') > 0 AS enqueued;
SELECT payload, outbox.ack('priv_b', event_id) AS acked FROM outbox.claim('priv_b', 10);
SELECT subscription FROM outbox.stats ORDER BY 1;
RESET ROLE;
SELECT outbox.revoke_consume('regress_outbox_group', 'priv_b');
SELECT outbox.revoke_produce('regress_outbox_group');
SET ROLE regress_outbox_member;
SELECT left(pg_temp.try($$SELECT outbox.enqueue('priv.t', '{}')$$), 5) AS enqueue,
       left(pg_temp.try($$SELECT outbox.claim('priv_b')$$), 5) AS claim;
RESET ROLE;

--
-- search_path: objects a consumer creates in its own schema, first in its
-- search_path (even before pg_catalog), change nothing in what claim, ack,
-- fail, enqueue and the views do.  Every shadowing object raises if called.
--
SELECT count(*) FILTER (WHERE acked) AS drained
  FROM (SELECT outbox.ack('priv_a', event_id) AS acked FROM outbox.claim('priv_a', 10000)) s;
SELECT outbox.grant_consume('regress_outbox_consumer', 'priv_a');
SELECT outbox.grant_consume('regress_outbox_consumer', 'priv_o');
SELECT outbox.grant_produce('regress_outbox_consumer');
CREATE SCHEMA regress_outbox_evil AUTHORIZATION regress_outbox_consumer;
SET ROLE regress_outbox_consumer;
CREATE FUNCTION regress_outbox_evil.hijack() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'hijacked by %', current_user;
END
$$;
CREATE FUNCTION regress_outbox_evil.eq(text, text) RETURNS boolean
	LANGUAGE sql AS 'SELECT regress_outbox_evil.hijack()';
CREATE FUNCTION regress_outbox_evil.eq(integer, integer) RETURNS boolean
	LANGUAGE sql AS 'SELECT regress_outbox_evil.hijack()';
CREATE FUNCTION regress_outbox_evil.eq(bigint, bigint) RETURNS boolean
	LANGUAGE sql AS 'SELECT regress_outbox_evil.hijack()';
CREATE FUNCTION regress_outbox_evil.overlap(bigint[], bigint[]) RETURNS boolean
	LANGUAGE sql AS 'SELECT regress_outbox_evil.hijack()';
CREATE FUNCTION regress_outbox_evil.le(timestamptz, timestamptz) RETURNS boolean
	LANGUAGE sql AS 'SELECT regress_outbox_evil.hijack()';
CREATE OPERATOR regress_outbox_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_outbox_evil.eq);
CREATE OPERATOR regress_outbox_evil.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = regress_outbox_evil.eq);
CREATE OPERATOR regress_outbox_evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = regress_outbox_evil.eq);
CREATE OPERATOR regress_outbox_evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_outbox_evil.eq);
CREATE OPERATOR regress_outbox_evil.&& (LEFTARG = bigint[], RIGHTARG = bigint[], FUNCTION = regress_outbox_evil.overlap);
CREATE OPERATOR regress_outbox_evil.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = regress_outbox_evil.le);
CREATE FUNCTION regress_outbox_evil.now() RETURNS timestamptz
	LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked by %', current_user; END $$;
CREATE FUNCTION regress_outbox_evil.nextval(regclass) RETURNS bigint
	LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked by %', current_user; END $$;
CREATE FUNCTION regress_outbox_evil.cardinality(anyarray) RETURNS integer
	LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked by %', current_user; END $$;
CREATE TABLE regress_outbox_evil.subscription (id integer, name text, topics text[], paused boolean);
CREATE TABLE regress_outbox_evil.event (id bigint, topic text, payload jsonb);
CREATE TABLE regress_outbox_evil.delivery (sub_id integer, event_id bigint, state text);
CREATE TABLE regress_outbox_evil.batch (sub_id integer, ids bigint[]);
CREATE TABLE regress_outbox_evil.consumer (sub_id integer, role oid);
INSERT INTO regress_outbox_evil.subscription VALUES (1, 'priv_a', ARRAY['evil'], true);
-- a function that would leak whatever rows it is shown
CREATE TABLE regress_outbox_evil.seen (payload jsonb);
CREATE FUNCTION regress_outbox_evil.leak(p jsonb) RETURNS boolean
	LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO regress_outbox_evil.seen VALUES (p);
	RETURN true;
END
$$;
SET search_path = regress_outbox_evil, pg_catalog;
SELECT outbox.enqueue('priv.t', '{"n": 7}') > 0 AS enqueued;
SELECT outbox.enqueue('priv.t', '{"n": 8}', key => 'k', headers => '{}', dedup_key => 'priv-8') > 0 AS enqueued;
SELECT outbox.enqueue('priv.t', '{"n": 9}') > 0 AS enqueued;
SELECT payload, outbox.ack('priv_a', event_id) AS acked FROM outbox.claim('priv_a');
SELECT outbox.ack('priv_a', (SELECT array_agg(event_id) FROM outbox.claim('priv_a'))) AS acked;
SELECT payload, outbox.fail('priv_a', event_id, 'failed under an evil search_path') AS fail
  FROM outbox.claim('priv_a');
SELECT count(*) AS nothing_left FROM outbox.claim('priv_a', 10);
SELECT octet_length(outbox.channel('priv_a')) <= 63 AS has_channel;
-- ordered: one key's events one at a time, in order
SELECT outbox.enqueue('priv.o', '{"n": 1}', key => 'k') > 0 AS enqueued;
SELECT outbox.enqueue('priv.o', '{"n": 2}', key => 'k') > 0 AS enqueued;
SELECT outbox.enqueue('priv.o', '{"n": 3}', key => 'k') > 0 AS enqueued;
SELECT payload, outbox.ack('priv_o', event_id) AS acked FROM outbox.claim('priv_o', 10);
SELECT payload, outbox.fail('priv_o', event_id, retry_in => '0') AS fail FROM outbox.claim('priv_o', 10);
SELECT payload, attempt, outbox.ack('priv_o', event_id) AS acked FROM outbox.claim('priv_o', 10);
SELECT payload, outbox.ack('priv_o', event_id) AS acked FROM outbox.claim('priv_o', 10);
SELECT subscription, ready, scheduled, leased, dead, paused FROM outbox.stats ORDER BY 1;
-- the view filters before the caller's functions see a row: only priv_a's
-- dead letters reach leak(), never priv_b's secret
SELECT subscription, payload, last_error FROM outbox.dead_letters
 WHERE regress_outbox_evil.leak(payload) ORDER BY payload->>'n';
SELECT payload FROM (SELECT DISTINCT payload FROM regress_outbox_evil.seen) s ORDER BY payload->>'n';
RESET search_path;
RESET ROLE;
-- priv_b got the same events, none of them touched
SELECT payload FROM outbox.claim('priv_b', 10) ORDER BY payload->>'n';

--
-- outbox.stats(subscription) (1.1): one subscription's row, for a role that
-- may consume it, with the errors of claim otherwise.
--
SET ROLE regress_outbox_consumer;
SELECT (SELECT s FROM outbox.stats('priv_a') s) = (SELECT v FROM outbox.stats v WHERE subscription = 'priv_a')
  AS same_as_the_view;
SELECT * FROM outbox.stats('priv_b');
SELECT * FROM outbox.stats('priv_nope');
SELECT * FROM outbox.stats(NULL);
SELECT * FROM outbox.stats('Not A Name');
RESET ROLE;
SET ROLE regress_outbox_nobody;
SELECT * FROM outbox.stats('priv_a');
RESET ROLE;

--
-- Clean up.
--
DROP SCHEMA regress_outbox_evil CASCADE;
SELECT outbox.revoke_consume('regress_outbox_consumer', 'priv_a');
SELECT outbox.revoke_consume('regress_outbox_consumer', 'priv_o');
SELECT outbox.revoke_produce('regress_outbox_consumer');
SELECT outbox.unsubscribe(name) FROM (VALUES ('priv_a'), ('priv_b'), ('priv_o')) AS t(name);
SELECT count(*) AS left_behind FROM outbox.stats WHERE subscription LIKE 'priv\_%';
-- DROP ROLE fails if a grant was left behind
DROP ROLE regress_outbox_nobody, regress_outbox_producer, regress_outbox_consumer,
          regress_outbox_member, regress_outbox_noinherit, regress_outbox_group;
