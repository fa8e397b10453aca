-- outbox 1.0 -> 1.1.  Applied by ALTER EXTENSION outbox UPDATE, and part of
-- the 1.1 install script (the Makefile builds outbox--1.1.sql as 1.0 plus
-- this file), so both ways give the same schema.  Each change below says
-- which fault or feature it is for.

\echo Use "ALTER EXTENSION outbox UPDATE" to load this file. \quit

--
-- The current generation of chain bookkeeping (issue 8, fault 1).  In 1.0
-- it was the last value of the sequence outbox.chain_gen, which crash
-- recovery and standby promotion can move ahead (sequences are WAL-logged
-- ahead of use): readers then took a stale cursor for the newest, and
-- events whose ack had committed were handed out again.  A table row moves
-- only when the worker's advance commits.
--
CREATE TABLE outbox.chain_state (
	one				boolean PRIMARY KEY DEFAULT true CHECK (one),
	gen				bigint NOT NULL CHECK (gen >= 0)
);
-- A live 1.0 database continues from the newest generation it has used.
INSERT INTO outbox.chain_state (gen)
SELECT pg_catalog.max(g) FROM (
	SELECT pg_catalog.pg_sequence_last_value('outbox.chain_gen'::pg_catalog.regclass)
	UNION ALL SELECT pg_catalog.max(c.gen) FROM outbox.cursor c
	UNION ALL SELECT pg_catalog.max(b.gen) FROM outbox.batch b
	UNION ALL SELECT pg_catalog.max(s.gen) FROM outbox.settle s
	UNION ALL SELECT 0) x(g);
REVOKE ALL ON outbox.chain_state FROM PUBLIC;
DROP SEQUENCE outbox.chain_gen;

-- The current generation, its cursor partition locked for writing.
CREATE FUNCTION outbox._chain_gen_for_insert()
RETURNS bigint
AS 'MODULE_PATHNAME', 'outbox_chain_gen_sql'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION outbox._chain_gen_for_insert() FROM PUBLIC;

--
-- Faults 5, 6, 10 and 11 of issue 8 (subscriptions changing under their
-- deliveries; isolation levels): src/lifecycle.c.
--
-- unsubscribe, and subscribe of an existing subscription, take the
-- subscription's lifetime lock exclusively, so they wait for every open
-- transaction that may write its rows (consumers and the worker hold it in
-- share mode to their end): no orphan rows (fault 6), and a change of
-- topics or of "ordered" sees every delivery as it is.  Re-subscribing
-- keeps the undelivered events of dropped topics (fault 11) and applies a
-- switch of "ordered" to the deliveries not yet claimed (fault 5).  A new
-- subscription's origin is a snapshot taken when subscribe runs, not the
-- transaction's (fault 10: REPEATABLE READ).
--

CREATE FUNCTION outbox._hold_subscription(subscription text)
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_hold_subscription_sql'
LANGUAGE C VOLATILE;

CREATE FUNCTION outbox._drop_subscription(subscription text)
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_drop_subscription'
LANGUAGE C VOLATILE;

CREATE FUNCTION outbox._resubscribed(subscription text, old_topics text[], old_ordered boolean)
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_resubscribed'
LANGUAGE C VOLATILE;

CREATE FUNCTION outbox._latest_snapshot()
RETURNS pg_snapshot
AS 'MODULE_PATHNAME', 'outbox_latest_snapshot'
LANGUAGE C VOLATILE;

REVOKE ALL ON FUNCTION outbox._hold_subscription(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox._drop_subscription(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox._resubscribed(text, text[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox._latest_snapshot() FROM PUBLIC;

CREATE OR REPLACE FUNCTION outbox.subscribe(
	subscription text,
	topics text[],
	max_attempts int DEFAULT 10,
	lease interval DEFAULT '30 seconds',
	backoff_base interval DEFAULT '1 second',
	backoff_max interval DEFAULT '1 hour',
	ordered boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t text;
	new_id integer;
	gen bigint;
	stored text[];
	origin pg_catalog.pg_snapshot;
	old_id integer;
	old_topics text[];
	old_ordered boolean;
BEGIN
	IF subscription IS NULL THEN
		RAISE EXCEPTION 'subscription must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM outbox._check_name(subscription);
	IF topics IS NULL THEN
		RAISE EXCEPTION 'topics must not be null' USING ERRCODE = 'null_value_not_allowed',
			HINT = 'Use ARRAY[''*''] to subscribe to every topic.';
	END IF;
	IF max_attempts IS NULL OR ordered IS NULL THEN
		RAISE EXCEPTION 'settings must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF pg_catalog.cardinality(topics) OPERATOR(pg_catalog.=) 0 THEN
		RAISE EXCEPTION 'topics must not be empty' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Use ARRAY[''*''] to subscribe to every topic.';
	END IF;
	FOREACH t IN ARRAY topics LOOP
		IF t IS NULL THEN
			RAISE EXCEPTION 'topics must not contain null' USING ERRCODE = 'null_value_not_allowed';
		END IF;
		IF t OPERATOR(pg_catalog.=) '' OR pg_catalog.octet_length(t) OPERATOR(pg_catalog.>) 200 THEN
			RAISE EXCEPTION 'topic must be 1 to 200 bytes long' USING ERRCODE = 'invalid_parameter_value',
				DETAIL = pg_catalog.format('The topic given was %s bytes long.', pg_catalog.octet_length(t));
		END IF;
		IF t OPERATOR(pg_catalog.=) '*' AND pg_catalog.cardinality(topics) OPERATOR(pg_catalog.>) 1 THEN
			RAISE EXCEPTION 'topic ''*'' cannot be mixed with topic names' USING ERRCODE = 'invalid_parameter_value',
				HINT = 'Subscribe to ARRAY[''*''] alone to receive every topic.';
		END IF;
	END LOOP;
	IF max_attempts OPERATOR(pg_catalog.<) 1 THEN
		RAISE EXCEPTION 'max_attempts must be at least 1' USING ERRCODE = 'invalid_parameter_value',
			DETAIL = pg_catalog.format('The value given was %s.', max_attempts);
	END IF;
	PERFORM outbox._check_interval(lease, 'lease');
	PERFORM outbox._check_interval(backoff_base, 'backoff_base');
	PERFORM outbox._check_interval(backoff_max, 'backoff_max');

	IF topics OPERATOR(pg_catalog.=) ARRAY['*'] THEN
		stored := NULL;
	ELSE
		SELECT pg_catalog.array_agg(DISTINCT u.x ORDER BY u.x) INTO stored FROM pg_catalog.unnest(topics) AS u(x);
	END IF;

	-- No consumer or worker transaction of this subscription is open from
	-- here on, and none starts before this one ends.
	PERFORM outbox._hold_subscription(subscription);
	SELECT s.id, s.topics, s.ordered INTO old_id, old_topics, old_ordered
	  FROM outbox.subscription s WHERE s.name OPERATOR(pg_catalog.=) subscription;
	IF old_id IS NOT NULL THEN
		-- REPEATABLE READ, SERIALIZABLE: changed or dropped since this
		-- transaction's snapshot is a serialization failure (40001)
		UPDATE outbox.subscription s
		   SET topics = stored, max_attempts = subscribe.max_attempts, lease = subscribe.lease,
			   backoff_base = subscribe.backoff_base, backoff_max = subscribe.backoff_max,
			   ordered = subscribe.ordered
		 WHERE s.id OPERATOR(pg_catalog.=) old_id;
		IF old_topics IS DISTINCT FROM stored OR old_ordered IS DISTINCT FROM subscribe.ordered THEN
			PERFORM outbox._resubscribed(subscription, old_topics, old_ordered);
		END IF;
	ELSE
		new_id := pg_catalog.nextval('outbox.subscription_id_seq'::pg_catalog.regclass);
		-- Events of transactions that have finished now are not for the new
		-- subscription; everything later is.  Taken now, not from an older
		-- transaction snapshot (REPEATABLE READ).
		origin := outbox._latest_snapshot();
		BEGIN
			INSERT INTO outbox.subscription (id, name, topics, max_attempts, lease, backoff_base, backoff_max, ordered, origin)
			VALUES (new_id, subscription, stored, max_attempts, lease, backoff_base, backoff_max, ordered, origin);
		EXCEPTION WHEN unique_violation THEN
			-- created since this transaction's snapshot was taken
			RAISE EXCEPTION 'could not serialize access due to concurrent subscribe'
				USING ERRCODE = 'serialization_failure';
		END;
		gen := outbox._chain_gen_for_insert();
		INSERT INTO outbox.cursor (gen, sub_id, fold_no, delta, lo, hi, pos, ended, scan_from, scan_gen)
		VALUES (gen, new_id, 0, 0, origin, origin, 0, true, 0, gen);
	END IF;
	PERFORM outbox._subscriptions_changed();
END
$$;

CREATE OR REPLACE FUNCTION outbox.unsubscribe(subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- waits for open transactions that may write its rows, then deletes
	-- them all, as they are now
	PERFORM outbox._drop_subscription(subscription);
	PERFORM outbox._subscriptions_changed();
END
$$;

--
-- Fault 4 of issue 8: out-of-range intervals broke the worker.  1.0 only
-- refused negative intervals, so a backoff_base of a million years was
-- stored and made every lease-expiry round fail ("timestamp out of range").
-- The check is now the C one that claim and fail use too: at most 100 years,
-- each of the interval's parts as well (src/subscription.c).
--
CREATE OR REPLACE FUNCTION outbox._check_interval(value interval, what text)
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_check_interval_sql'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
-- Settings stored by 1.0 beyond the limit are brought down to it, so that
-- claims with the subscription's lease cannot overflow either.
UPDATE outbox.subscription
   SET lease = LEAST(lease, interval '36000 days'),
	   backoff_base = LEAST(backoff_base, interval '36000 days'),
	   backoff_max = LEAST(backoff_max, interval '36000 days')
 WHERE lease > interval '36000 days' OR backoff_base > interval '36000 days'
	OR backoff_max > interval '36000 days';

--
-- Fault 9 of issue 8: one claim held open slowed everyone.  A fold stopped
-- at the first slice whose claiming transaction was still open, so a
-- consumer working for minutes inside its claim's transaction made the
-- chain behind it grow, and every other claim read all of it.  A fold now
-- passes such a slice (once enough settled slices follow it) and records
-- it in the new cursor row: its batch row (gen, batch_no) and its whole
-- description, because if that transaction rolls back the row is gone and
-- its range must be handed out again.  batch_no -1: the row is known to be
-- gone, only the range is left (src/chain.c, outbox_chain_fold).  NULL, as
-- in rows written before: nothing passed.
--
CREATE TYPE outbox.held_slice AS (
	gen				bigint,
	batch_no		bigint,
	delta			bigint,
	lo				pg_snapshot,
	hi				pg_snapshot,
	pos_from		bigint,
	pos_to			bigint,
	ended			boolean
);
ALTER TABLE outbox.cursor ADD COLUMN held outbox.held_slice[];
CREATE OR REPLACE VIEW outbox.cursor_now AS
	SELECT DISTINCT ON (c.sub_id) c.*
	  FROM outbox.cursor c
	 ORDER BY c.sub_id, c.fold_no DESC;
-- Every snapshot from which a subscription's stream may still have to be
-- read: its folded cursor's and those of the slices it passed.  Retention
-- keeps what any of them has not passed.
CREATE VIEW outbox.cursor_floor AS
	SELECT c.sub_id, c.lo FROM outbox.cursor_now c
	UNION ALL
	SELECT c.sub_id, h.lo FROM outbox.cursor_now c, pg_catalog.unnest(c.held) h;
REVOKE ALL ON outbox.cursor_floor FROM PUBLIC;

-- Whether a delivery that is not done holds an event, by the event's id
-- (issue 9): retention asks it of every event it keeps or removes, which
-- without an index read the whole table for each.
CREATE INDEX delivery_event_idx ON outbox.delivery (event_id) WHERE state <> 'done';

--
-- The stats of one subscription (issue 9): a filter on the view outbox.stats
-- cannot reach into outbox._stats(), which computed every subscription's
-- row for it; outbox.stats('name') computes that one.  A consumer function
-- like the others: existing consumers get it, and grant_consume grants it.
--
CREATE FUNCTION outbox.stats(subscription text)
RETURNS SETOF outbox.stats
AS 'MODULE_PATHNAME', 'outbox_stats'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.stats(text) FROM PUBLIC;

-- What the consume grant covers, 1.1's functions included (roles that have
-- the grant get the new ones at the end of this script).
CREATE OR REPLACE FUNCTION outbox._consumer_objects()
RETURNS text[]
LANGUAGE sql IMMUTABLE
AS $$
	SELECT ARRAY[
		'FUNCTION outbox.claim(text, integer, interval, interval)',
		'FUNCTION outbox.ack(text, bigint)',
		'FUNCTION outbox.ack(text, bigint[])',
		'FUNCTION outbox.fail(text, bigint, text, interval, integer, boolean)',
		'FUNCTION outbox.release(text, bigint, integer, interval)',
		'FUNCTION outbox.extend_lease(text, bigint[], integer[], interval)',
		'FUNCTION outbox.event_status(bigint)',
		'FUNCTION outbox.channel(text)',
		'FUNCTION outbox._stats()',
		'FUNCTION outbox.stats(text)',
		'FUNCTION outbox._may_consume(integer)',
		'TABLE outbox.stats',
		'TABLE outbox.dead_letters']
$$;

--
-- Issue 9: DROP EXTENSION whatever else runs.  Every transaction that uses
-- outbox's tables takes a share lock on the extension before any of them
-- (outbox_lock_extension), so that DROP EXTENSION, which takes it
-- exclusively first, waits holding nothing, or is waited for.  The C
-- functions did; the administration functions in PL/pgSQL did not: one
-- that held a table and then wanted another that DROP EXTENSION had locked
-- deadlocked with it.  Now their first statement takes the lock.
--
CREATE FUNCTION outbox._lock_extension()
RETURNS void
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'outbox_lock_extension_sql';
REVOKE ALL ON FUNCTION outbox._lock_extension() FROM PUBLIC;

CREATE OR REPLACE FUNCTION outbox.pause(subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM outbox._lock_extension();
	UPDATE outbox.subscription s SET paused = true
	 WHERE s.id OPERATOR(pg_catalog.=) outbox._sub_id(subscription);
	PERFORM outbox._subscriptions_changed();
END
$$;

CREATE OR REPLACE FUNCTION outbox.resume(subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM outbox._lock_extension();
	UPDATE outbox.subscription s SET paused = false
	 WHERE s.id OPERATOR(pg_catalog.=) outbox._sub_id(subscription);
	PERFORM outbox._subscriptions_changed();
	PERFORM outbox._wake();
END
$$;

CREATE OR REPLACE FUNCTION outbox.replay(subscription text, event_id bigint DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	sid integer;
	n integer;
BEGIN
	PERFORM outbox._lock_extension();
	sid := outbox._sub_id(subscription);
	-- In an ordered subscription a replayed event queues behind whatever
	-- of its key is in flight: claim releases it when the key is free.
	UPDATE outbox.delivery d
	   SET state = CASE WHEN s.ordered AND d.key IS NOT NULL THEN 'waiting' ELSE 'ready' END,
		   attempts = 0, visible_at = CASE WHEN s.ordered AND d.key IS NOT NULL THEN NULL ELSE pg_catalog.now() END,
		   lease_until = NULL, last_error = NULL, dead_at = NULL
	  FROM outbox.subscription s
	 WHERE s.id OPERATOR(pg_catalog.=) sid
	   AND d.sub_id OPERATOR(pg_catalog.=) sid AND d.state OPERATOR(pg_catalog.=) 'dead'
	   AND (replay.event_id IS NULL OR d.event_id OPERATOR(pg_catalog.=) replay.event_id);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n OPERATOR(pg_catalog.>) 0 THEN
		PERFORM outbox._wake();
	END IF;
	RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION outbox.grant_produce(role name)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r oid;
BEGIN
	PERFORM outbox._lock_extension();
	r := outbox._check_role(role);
	INSERT INTO outbox.producer VALUES (r) ON CONFLICT DO NOTHING;
	EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA outbox TO %I', role);
	EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION outbox.enqueue(text, jsonb, text, jsonb, timestamptz, text) TO %I', role);
	EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION outbox.enqueue_many(text, jsonb[], text[], jsonb[], timestamptz, text[]) TO %I', role);
END
$$;

CREATE OR REPLACE FUNCTION outbox.revoke_produce(role name)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r oid;
BEGIN
	PERFORM outbox._lock_extension();
	r := outbox._check_role(role);
	DELETE FROM outbox.producer p WHERE p.role OPERATOR(pg_catalog.=) r;
	EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION outbox.enqueue(text, jsonb, text, jsonb, timestamptz, text) FROM %I', role);
	EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION outbox.enqueue_many(text, jsonb[], text[], jsonb[], timestamptz, text[]) FROM %I', role);
	PERFORM outbox._sync_schema_usage(role, r);
END
$$;

CREATE OR REPLACE FUNCTION outbox.grant_consume(role name, subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r oid;
	sid integer;
	obj text;
	priv text;
BEGIN
	PERFORM outbox._lock_extension();
	r := outbox._check_role(role);
	sid := outbox._sub_id(subscription);
	INSERT INTO outbox.consumer VALUES (sid, r) ON CONFLICT DO NOTHING;
	EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA outbox TO %I', role);
	FOREACH obj IN ARRAY outbox._consumer_objects() LOOP
		priv := CASE WHEN obj LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END;
		EXECUTE pg_catalog.format('GRANT %s ON %s TO %I', priv, obj, role);
	END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION outbox.revoke_consume(role name, subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r oid;
	sid integer;
	obj text;
	priv text;
BEGIN
	PERFORM outbox._lock_extension();
	r := outbox._check_role(role);
	sid := outbox._sub_id(subscription);
	DELETE FROM outbox.consumer c WHERE c.sub_id OPERATOR(pg_catalog.=) sid AND c.role OPERATOR(pg_catalog.=) r;
	IF NOT EXISTS (SELECT 1 FROM outbox.consumer c WHERE c.role OPERATOR(pg_catalog.=) r) THEN
		FOREACH obj IN ARRAY outbox._consumer_objects() LOOP
			priv := CASE WHEN obj LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END;
			EXECUTE pg_catalog.format('REVOKE %s ON %s FROM %I', priv, obj, role);
		END LOOP;
	END IF;
	PERFORM outbox._sync_schema_usage(role, r);
END
$$;

--
-- Dump and restore (issue 10): src/restore.c, README "Backups, replicas and
-- upgrades".
--
-- Everything a subscription's position needs is dumped: the events, the
-- chain (cursor, batch and settle rows), deliveries, dedup keys, the commit
-- order of keys and the sequences.  outbox.state and outbox.chain_state are
-- not: CREATE EXTENSION makes their rows, and finish_restore() derives them
-- from what was restored.
--
SELECT pg_catalog.pg_extension_config_dump('outbox.event_0', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.event_1', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.event_2', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.event_3', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.event_kept', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.cursor_0', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.cursor_1', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.cursor_2', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.cursor_3', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.batch_0', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.batch_1', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.batch_2', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.batch_3', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.settle_0', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.settle_1', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.settle_2', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.settle_3', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.delivery', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.dedup', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.key_commit', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.subscription_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.batch_no_seq', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.key_commit_seq', '');

-- Grants name their role: a dump writes a regrole as the role's name, and
-- a restore looks the name up, where an oid would have come back attached
-- to whichever role has that number in the new cluster.  Grants of roles
-- dropped since are left out of dumps (a dropped role's regrole prints as
-- its number).
ALTER TABLE outbox.consumer ALTER COLUMN role TYPE regrole;
ALTER TABLE outbox.producer ALTER COLUMN role TYPE regrole;
SELECT pg_catalog.pg_extension_config_dump('outbox.consumer',
	'WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) role)');
SELECT pg_catalog.pg_extension_config_dump('outbox.producer',
	'WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) role)');

-- Xids as outbox stores them are the server's plus xid_shift; stored xids
-- below xid_floor came from the cluster a dump was taken from.  Both are 0
-- until a restore.  While "restoring", every call refuses and the worker
-- does nothing.
ALTER TABLE outbox.state
	ADD COLUMN xid_shift bigint NOT NULL DEFAULT 0 CHECK (xid_shift >= 0),
	ADD COLUMN xid_floor bigint NOT NULL DEFAULT 0 CHECK (xid_floor >= 0),
	ADD COLUMN restoring boolean NOT NULL DEFAULT false;

-- A restore script of pg_dump, pg_dumpall or pg_restore creates the
-- extension with check_function_bodies and row_security off, and then loads
-- the tables; nothing may act on them before it is done.
UPDATE outbox.state SET restoring = true
 WHERE NOT pg_catalog.current_setting('check_function_bodies')::boolean
   AND NOT pg_catalog.current_setting('row_security')::boolean
   AND NOT EXISTS (SELECT FROM outbox.subscription)
   AND NOT EXISTS (SELECT FROM outbox.event);

CREATE FUNCTION outbox._state_changed()
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_state_changed'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION outbox._state_changed() FROM PUBLIC;

-- Refuses what writes on a standby or in a read-only transaction with
-- 25006, as PreventCommandIfReadOnly does for the C functions; for the
-- functions written in PL/pgSQL (finish_restore, create_cdc_publication,
-- cdc_resend).
CREATE FUNCTION outbox._refuse_read_only(what text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION 'cannot execute %() during recovery', what
			USING ERRCODE = 'read_only_sql_transaction';
	ELSIF current_setting('transaction_read_only')::boolean THEN
		RAISE EXCEPTION 'cannot execute %() in a read-only transaction', what
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
END
$$;
REVOKE ALL ON FUNCTION outbox._refuse_read_only(text) FROM PUBLIC;

-- Ends restore mode: every xid the server hands out from now on, shifted,
-- sorts after every xid restored (event ids, snapshots, key commits), so
-- restored chains carry on and new events follow restored ones.
CREATE FUNCTION outbox.finish_restore()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	oldest bigint;
	bound bigint;
	st record;
	gen bigint;
BEGIN
	PERFORM outbox._refuse_read_only('finish_restore');
	-- at most every xid running or yet to come, taken before this
	-- transaction has one of its own
	oldest := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
	LOCK TABLE outbox.state IN EXCLUSIVE MODE;
	SELECT s.xid_shift, s.xid_floor, s.restoring INTO st FROM outbox.state s;
	IF NOT st.restoring THEN
		RAISE NOTICE 'outbox is not waiting for a restore in this database';
		RETURN;
	END IF;
	bound := GREATEST(
		(SELECT max(e.id >> 20) + 1 FROM outbox.event e),
		(SELECT max(d.event_id >> 20) + 1 FROM outbox.delivery d),
		(SELECT max(x.event_id >> 20) + 1 FROM outbox.dedup x),
		(SELECT max(k.xid::text::bigint) + 1 FROM outbox.key_commit k),
		(SELECT max(pg_snapshot_xmax(s.origin)::text::bigint) FROM outbox.subscription s),
		(SELECT max(pg_snapshot_xmax(c.hi)::text::bigint) FROM outbox.cursor c),
		(SELECT max(pg_snapshot_xmax(h.hi)::text::bigint)
		   FROM outbox.cursor c, unnest(c.held) h),
		(SELECT max(pg_snapshot_xmax(b.hi)::text::bigint) FROM outbox.batch b),
		st.xid_floor);
	UPDATE outbox.chain_state c
	   SET gen = GREATEST(c.gen, (SELECT max(g) FROM (
			SELECT max(x.gen) FROM outbox.cursor x
			UNION ALL SELECT max(x.gen) FROM outbox.batch x
			UNION ALL SELECT max(x.gen) FROM outbox.settle x) m(g)));
	UPDATE outbox.state s
	   SET xid_shift = GREATEST(st.xid_shift, COALESCE(bound, 0) - oldest),
		   xid_floor = COALESCE(bound, st.xid_floor),
		   bucket = COALESCE((SELECT e.bucket FROM outbox.event e WHERE e.bucket < 4
							  ORDER BY e.id DESC LIMIT 1), s.bucket),
		   bucket_since = now(),
		   restoring = false;
	-- Leases taken before the dump have no holder here: they come back
	-- claimable at once, with the attempt they had, as a release would give
	-- them back.  Stream leases are the ids of unfolded (or passed) batch
	-- rows that no settle row took; they are settled into delivery rows.
	gen := outbox._chain_gen_for_insert();
	WITH b AS (
		SELECT b.sub_id, b.batch_no, b.ids, b.keys
		  FROM outbox.cursor_now c JOIN outbox.batch b ON b.sub_id = c.sub_id
		 WHERE b.batch_no >= c.scan_from
		    OR b.batch_no IN (SELECT h.batch_no FROM unnest(c.held) h)),
	u AS (
		SELECT b.sub_id, b.batch_no, x.id, x.key
		  FROM b, unnest(b.ids, b.keys) x(id, key)
		 WHERE x.id IS NOT NULL
		   AND NOT EXISTS (SELECT FROM outbox.settle t
						    WHERE t.sub_id = b.sub_id AND t.batch_no = b.batch_no
							  AND x.id = ANY (t.ids))),
	settled AS (
		INSERT INTO outbox.settle (gen, sub_id, batch_no, ids)
		SELECT gen, u.sub_id, u.batch_no, array_agg(u.id ORDER BY u.id)
		  FROM u GROUP BY u.sub_id, u.batch_no)
	INSERT INTO outbox.delivery (sub_id, event_id, state, attempts, visible_at, key)
	SELECT u.sub_id, u.id, 'ready', 0, now(), u.key FROM u
	ON CONFLICT (sub_id, event_id) DO NOTHING;
	UPDATE outbox.delivery d
	   SET state = 'ready', visible_at = now(), lease_until = NULL,
		   attempts = GREATEST(d.attempts - 1, 0)
	 WHERE d.state = 'leased';

	-- a dump of version 1.0 has subscriptions but no chain: they start at
	-- their origin (the events of a 1.0 dump were not in it)
	IF EXISTS (SELECT FROM outbox.subscription s
				WHERE NOT EXISTS (SELECT FROM outbox.cursor c WHERE c.sub_id = s.id)) THEN
		INSERT INTO outbox.cursor (gen, sub_id, fold_no, delta, lo, hi, pos, ended, scan_from, scan_gen)
		SELECT gen, s.id, 0, 0, s.origin, s.origin, 0, true, 0, gen
		  FROM outbox.subscription s
		 WHERE NOT EXISTS (SELECT FROM outbox.cursor c WHERE c.sub_id = s.id);
	END IF;
	-- the worker counts the restored stream afresh (outbox.tally)
	DELETE FROM outbox.tally;
	PERFORM outbox._state_changed();
	PERFORM outbox._subscriptions_changed();
END
$$;
REVOKE ALL ON FUNCTION outbox.finish_restore() FROM PUBLIC;

--
-- The 1.1 additions of the contract (issue 11): fail(..., dead), release,
-- extend_lease, event_status, claim(..., wait); enqueue_many below.
--
DROP FUNCTION outbox.claim(text, integer, interval);
-- With wait, a claim that finds nothing waits for deliveries (src/wait.c).
CREATE FUNCTION outbox.claim(
	subscription text,
	batch int DEFAULT 1,
	lease interval DEFAULT NULL,
	wait interval DEFAULT NULL)
RETURNS TABLE (event_id bigint, topic text, key text, payload jsonb,
			   headers jsonb, attempt int, enqueued_at timestamptz)
AS 'MODULE_PATHNAME', 'outbox_claim'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;
REVOKE ALL ON FUNCTION outbox.claim(text, integer, interval, interval) FROM PUBLIC;

DROP FUNCTION outbox.fail(text, bigint, text, interval, integer);
CREATE FUNCTION outbox.fail(
	subscription text,
	event_id bigint,
	error text DEFAULT NULL,
	retry_in interval DEFAULT NULL,
	attempt int DEFAULT NULL,
	dead boolean DEFAULT false)
RETURNS text
AS 'MODULE_PATHNAME', 'outbox_fail'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.fail(text, bigint, text, interval, integer, boolean) FROM PUBLIC;

-- Gives a leased delivery back without using up an attempt.
CREATE FUNCTION outbox.release(
	subscription text,
	event_id bigint,
	attempt int DEFAULT NULL,
	retry_in interval DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'outbox_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.release(text, bigint, integer, interval) FROM PUBLIC;

-- Moves the leases of deliveries a consumer still works on.
CREATE FUNCTION outbox.extend_lease(
	subscription text,
	event_ids bigint[],
	attempts int[],
	lease interval DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'outbox_extend_lease'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.extend_lease(text, bigint[], integer[], interval) FROM PUBLIC;

-- What became of one event, per subscription (contract 1.1): from the
-- delivery row, the chain, or the slice that leased it.  It needs when a
-- delivery was acked: the time of the settle row that took it from its
-- slice, or of the delivery row's ack.
ALTER TABLE outbox.settle ADD COLUMN at timestamptz NOT NULL DEFAULT pg_catalog.now();
ALTER TABLE outbox.delivery ADD COLUMN done_at timestamptz;
CREATE FUNCTION outbox.event_status(event_id bigint)
RETURNS TABLE (subscription text, state text, attempts int, visible_at timestamptz,
			   lease_until timestamptz, last_error text, done_at timestamptz)
AS 'MODULE_PATHNAME', 'outbox_event_status'
LANGUAGE C STABLE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.event_status(bigint) FROM PUBLIC;

-- The roles that have the consume grant get what 1.1 added to it
-- (outbox._consumer_objects(), above)
DO $$
DECLARE
	role name;
	obj text;
BEGIN
	FOR role IN SELECT DISTINCT r.rolname FROM outbox.consumer c
				JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.role LOOP
		FOREACH obj IN ARRAY outbox._consumer_objects() LOOP
			EXECUTE pg_catalog.format('GRANT %s ON %s TO %I',
				CASE WHEN obj LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END, obj, role);
		END LOOP;
	END LOOP;
END
$$;

-- Many events of one topic in one call, at about the cost of a multi-row
-- INSERT (contract 1.1).  The produce grant covers it (grant_produce and
-- revoke_produce above); roles that have it get it now.
CREATE FUNCTION outbox.enqueue_many(
	topic text,
	payloads jsonb[],
	keys text[] DEFAULT NULL,
	headers jsonb[] DEFAULT NULL,
	deliver_at timestamptz DEFAULT NULL,
	dedup_keys text[] DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'outbox_enqueue_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.enqueue_many(text, jsonb[], text[], jsonb[], timestamptz, text[]) FROM PUBLIC;

DO $$
DECLARE
	role name;
BEGIN
	FOR role IN SELECT r.rolname FROM outbox.producer p
				JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) p.role LOOP
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION outbox.enqueue_many(text, jsonb[], text[], jsonb[], timestamptz, text[]) TO %I', role);
	END LOOP;
END
$$;

-- Rows reach the event buckets only through enqueue, which inserts them
-- directly and fires no trigger, or through a restore of a dump (COPY or
-- INSERT).  A restore into a database where the extension was created
-- beforehand is not recognised by the install script: the first rows it
-- loads into a bucket switch restore mode on, so that the worker leaves the
-- half-loaded tables alone until finish_restore().
CREATE FUNCTION outbox._restore_started()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE outbox.state SET restoring = true WHERE NOT restoring;
	IF FOUND THEN
		PERFORM outbox._state_changed();
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION outbox._restore_started() FROM PUBLIC;
CREATE TRIGGER restore_started BEFORE INSERT ON outbox.event_0
	FOR EACH STATEMENT EXECUTE FUNCTION outbox._restore_started();
CREATE TRIGGER restore_started BEFORE INSERT ON outbox.event_1
	FOR EACH STATEMENT EXECUTE FUNCTION outbox._restore_started();
CREATE TRIGGER restore_started BEFORE INSERT ON outbox.event_2
	FOR EACH STATEMENT EXECUTE FUNCTION outbox._restore_started();
CREATE TRIGGER restore_started BEFORE INSERT ON outbox.event_3
	FOR EACH STATEMENT EXECUTE FUNCTION outbox._restore_started();

--
-- Issue 12: the way to Kafka when a customer outgrows one PostgreSQL.
-- Debezium's PostgreSQL connector (pgoutput) reads the events from outbox's
-- own event table through this publication; enqueue is unchanged and writes
-- nothing more (docs/design.md, "Events to Kafka").  The publication is on
-- the partitioned parent, published as the parent: every bucket, present
-- or attached later, arrives as outbox.event.  It carries inserts only (no
-- truncate of a bucket, no delete of a kept copy, so no replica identity is
-- needed), and only the rotating buckets: bucket 4 (event_kept) holds
-- copies of events already published.  An upgrade that changes which
-- partitions hold events must ALTER PUBLICATION ... SET TABLE every
-- publication of outbox.event to the new filter (README, "Upgrading").
--
-- outbox.cdc_resend has the event table's columns and is in the publication
-- too: cdc_resend() inserts copies of retained events there, for a consumer
-- that lost some (a replication slot lost in a failover), and deletes them
-- again at once; the publication carries the inserts from the WAL.
CREATE TABLE outbox.cdc_resend (
	id				bigint NOT NULL,
	bucket			smallint NOT NULL,
	topic			text NOT NULL,
	key				text,
	payload			jsonb NOT NULL,
	headers			jsonb,
	deliver_at		timestamptz,
	enqueued_at		timestamptz NOT NULL
);

CREATE FUNCTION outbox.create_cdc_publication(name text DEFAULT 'outbox_cdc')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM outbox._refuse_read_only('create_cdc_publication');
	IF name IS NULL THEN
		RAISE EXCEPTION 'name must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	EXECUTE pg_catalog.format(
		'CREATE PUBLICATION %I FOR TABLE outbox.event WHERE (bucket < 4), outbox.cdc_resend'
		' WITH (publish = %L, publish_via_partition_root = true)', name, 'insert');
END
$$;
REVOKE ALL ON FUNCTION outbox.create_cdc_publication(text) FROM PUBLIC;

-- Sends the retained events with ids from from_id to to_id (NULL: no end)
-- through the publication again, in id order; returns how many.
CREATE FUNCTION outbox.cdc_resend(from_id bigint, to_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	PERFORM outbox._refuse_read_only('cdc_resend');
	IF from_id IS NULL THEN
		RAISE EXCEPTION 'from_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- an event once: from its bucket, or its kept copy if the bucket is gone
	INSERT INTO outbox.cdc_resend
		SELECT DISTINCT ON (e.id) e.id, e.bucket, e.topic, e.key, e.payload,
			   e.headers, e.deliver_at, e.enqueued_at
		  FROM outbox.event e
		 WHERE e.id OPERATOR(pg_catalog.>=) from_id
		   AND (to_id IS NULL OR e.id OPERATOR(pg_catalog.<=) to_id)
		 ORDER BY e.id, e.bucket;
	GET DIAGNOSTICS n = ROW_COUNT;
	-- the inserts are in the WAL, which is all the publication reads
	DELETE FROM outbox.cdc_resend;
	RETURN n;
END
$$;
REVOKE ALL ON FUNCTION outbox.cdc_resend(bigint, bigint) FROM PUBLIC;

--
-- Counts of the stream by topic, kept by the worker (issue 9: outbox.stats
-- read the whole backlog, 0.3-0.6 s at 1M events).  A row covers the
-- topic's committed events without deliver_at in one stretch of ids
-- (start, upto] that no transaction could add to any more but those still
-- running then (open), so the row never changes: total counts them and
-- all earlier stretches' (a running count, so a range costs two rows),
-- ids and enqueued_at list them for the edges, n, first_id, last_id and
-- oldest_at sum them up, so that a range that covers a row whole reads no
-- array.  Topic '' (no topic is empty) counts every topic, and its rows
-- mark the stretches (one may have n = 0: a stretch of delayed events
-- only).  since:
-- every event after start was enqueued after it (NULL: not known), so that
-- stats find the oldest event without reading every row.  Not dumped: a
-- restore starts counting afresh.
--
CREATE TABLE outbox.tally (
	topic			text NOT NULL,
	upto			bigint NOT NULL,
	start			bigint NOT NULL,
	total			bigint NOT NULL,
	ids				bigint[] NOT NULL,
	enqueued_at		timestamptz[] NOT NULL,
	n				integer NOT NULL,	-- cardinality(ids)
	first_id		bigint,				-- ids[1]; NULL when n = 0
	last_id			bigint,				-- ids[n]
	oldest_at		timestamptz,		-- min(enqueued_at)
	since			timestamptz,
	open			bigint[],			-- topic '': xids running when counted
	PRIMARY KEY (topic, upto)
);
-- the worker deletes whole stretches, oldest first, once no chain needs them
CREATE INDEX tally_upto_idx ON outbox.tally (upto);
-- stats read every stretch's open transactions (few)
CREATE INDEX tally_open_idx ON outbox.tally (upto) WHERE open <> '{}';
REVOKE ALL ON outbox.tally FROM PUBLIC;
