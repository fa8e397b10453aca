-- outbox 1.0: schema, SQL-level functions, views and privileges.
-- The hot paths (enqueue, claim, ack, fail) are C; see src/.

\echo Use "CREATE EXTENSION outbox" to load this file. \quit

--
-- Storage.  docs/design.md explains the design; in short: an event is stored
-- once; a subscription reads the stream by snapshot deltas and records one
-- batch row per claim; only exceptional deliveries get rows of their own.
--

CREATE TABLE outbox.subscription (
	id				integer PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	topics			text[],			-- NULL: every topic ('*')
	max_attempts	integer NOT NULL,
	lease			interval NOT NULL,
	backoff_base	interval NOT NULL,
	backoff_max		interval NOT NULL,
	ordered			boolean NOT NULL,
	paused			boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	-- transactions this snapshot sees as finished are not for the subscription
	origin			pg_snapshot NOT NULL
);
CREATE SEQUENCE outbox.subscription_id_seq AS integer OWNED BY outbox.subscription.id;

-- Bookkeeping of subscriptions (cursor, batch and settle rows) is written
-- insert-only into generation "gen" of four rotating partitions, like the
-- event buckets: the worker starts a new generation every
-- outbox.chain_rotation and empties the oldest with TRUNCATE once nothing in
-- it is needed.  So acks and folds leave no dead tuples behind, even while a
-- long-running transaction holds back vacuum.  The sequence's last value is
-- the current generation.
CREATE SEQUENCE outbox.chain_gen AS bigint MINVALUE 0 START 0;
SELECT pg_catalog.nextval('outbox.chain_gen');

-- Where the folded part of each subscription's stream ends: every event of
-- a transaction visible in "lo", and of the delta (lo, hi] up to id "pos"
-- (all of it when "ended"), has been handed out and settled.  Later
-- progress lives in outbox.batch rows (from batch_no "scan_from" on, in
-- generations "scan_gen" and later) until it is folded in here.  Each fold
-- inserts a row and the newest counts.
CREATE TABLE outbox.cursor (
	gen				bigint NOT NULL,
	sub_id			integer NOT NULL,
	fold_no			bigint NOT NULL,
	delta			bigint NOT NULL,
	lo				pg_snapshot NOT NULL,
	hi				pg_snapshot NOT NULL,
	pos				bigint NOT NULL,
	ended			boolean NOT NULL,
	scan_from		bigint NOT NULL,
	scan_gen		bigint NOT NULL
) PARTITION BY LIST ((gen % 4));
CREATE TABLE outbox.cursor_0 PARTITION OF outbox.cursor FOR VALUES IN (0);
CREATE TABLE outbox.cursor_1 PARTITION OF outbox.cursor FOR VALUES IN (1);
CREATE TABLE outbox.cursor_2 PARTITION OF outbox.cursor FOR VALUES IN (2);
CREATE TABLE outbox.cursor_3 PARTITION OF outbox.cursor FOR VALUES IN (3);
CREATE INDEX cursor_sub_idx ON outbox.cursor (sub_id, fold_no);

-- The newest cursor row of each subscription.
CREATE VIEW outbox.cursor_now AS
	SELECT DISTINCT ON (c.sub_id) c.*
	  FROM outbox.cursor c
	 ORDER BY c.sub_id, c.fold_no DESC;

-- Events, one row each whatever the number of subscriptions.  The id holds
-- the enqueuing transaction's xid in its high bits (see src/outbox.h).
-- Events go into one of four buckets, as PgQ's rotating tables: enqueue
-- writes to the current bucket; retention empties a whole old bucket with
-- TRUNCATE once every subscription is done with it, so the event tables
-- never hold dead tuples.  Which bucket an event is in does not matter to
-- consumers: they read the parent by id.
CREATE TABLE outbox.event (
	id				bigint NOT NULL,
	bucket			smallint NOT NULL,
	topic			text NOT NULL,
	key				text,
	payload			jsonb NOT NULL,
	headers			jsonb,
	deliver_at		timestamptz,
	enqueued_at		timestamptz NOT NULL
) PARTITION BY LIST (bucket);
CREATE TABLE outbox.event_0 PARTITION OF outbox.event FOR VALUES IN (0);
CREATE TABLE outbox.event_1 PARTITION OF outbox.event FOR VALUES IN (1);
CREATE TABLE outbox.event_2 PARTITION OF outbox.event FOR VALUES IN (2);
CREATE TABLE outbox.event_3 PARTITION OF outbox.event FOR VALUES IN (3);
-- Copies of events whose bucket was emptied while a dead letter still
-- needed them; removed when the dead letter goes.
CREATE TABLE outbox.event_kept PARTITION OF outbox.event FOR VALUES IN (4);
CREATE INDEX event_id_idx ON outbox.event (id);
-- The worker notifies when delayed events come due.
CREATE INDEX event_deliver_at_idx ON outbox.event (deliver_at)
	WHERE deliver_at IS NOT NULL;

-- Which bucket enqueue writes to.
CREATE TABLE outbox.state (
	one				boolean PRIMARY KEY DEFAULT true CHECK (one),
	bucket			smallint NOT NULL DEFAULT 0 CHECK (bucket BETWEEN 0 AND 3),
	bucket_since	timestamptz NOT NULL DEFAULT pg_catalog.now()
);
INSERT INTO outbox.state DEFAULT VALUES;

-- Dedup keys of retained events.  A unique index makes concurrent enqueues
-- of one key wait for each other.
CREATE TABLE outbox.dedup (
	topic			text NOT NULL,
	dedup_key		text NOT NULL,
	event_id		bigint NOT NULL,
	PRIMARY KEY (topic, dedup_key)
);

-- One row per claim of new events: the part of a delta it covered and the
-- ids it leased.  Rows of claiming transactions still in progress are read
-- with a dirty snapshot, so concurrent claimers never hand out the same
-- range and never wait for each other.  Rows are never updated: what of a
-- batch is settled is in outbox.settle.
CREATE TABLE outbox.batch (
	gen				bigint NOT NULL,
	sub_id			integer NOT NULL,
	batch_no		bigint NOT NULL,
	delta			bigint NOT NULL,
	lo				pg_snapshot NOT NULL,
	hi				pg_snapshot NOT NULL,
	pos_from		bigint NOT NULL,	-- covers ids > pos_from ...
	pos_to			bigint NOT NULL,	-- ... and <= pos_to
	ended			boolean NOT NULL,	-- reaches the end of its delta
	lease_until		timestamptz NOT NULL,
	ids				bigint[] NOT NULL,	-- leased, sorted
	keys			text[]				-- keys of ids (ordered subscriptions)
) PARTITION BY LIST ((gen % 4));
CREATE TABLE outbox.batch_0 PARTITION OF outbox.batch FOR VALUES IN (0);
CREATE TABLE outbox.batch_1 PARTITION OF outbox.batch FOR VALUES IN (1);
CREATE TABLE outbox.batch_2 PARTITION OF outbox.batch FOR VALUES IN (2);
CREATE TABLE outbox.batch_3 PARTITION OF outbox.batch FOR VALUES IN (3);
CREATE INDEX batch_sub_idx ON outbox.batch (sub_id, batch_no);
CREATE SEQUENCE outbox.batch_no_seq;

-- Ids of a batch that left it: acked, failed, or handed over to
-- outbox.delivery.  One row per ack or fail call and batch, in the
-- generation current when it was written (never older than its batch's).
CREATE TABLE outbox.settle (
	gen				bigint NOT NULL,
	sub_id			integer NOT NULL,
	batch_no		bigint NOT NULL,
	ids				bigint[] NOT NULL
) PARTITION BY LIST ((gen % 4));
CREATE TABLE outbox.settle_0 PARTITION OF outbox.settle FOR VALUES IN (0);
CREATE TABLE outbox.settle_1 PARTITION OF outbox.settle FOR VALUES IN (1);
CREATE TABLE outbox.settle_2 PARTITION OF outbox.settle FOR VALUES IN (2);
CREATE TABLE outbox.settle_3 PARTITION OF outbox.settle FOR VALUES IN (3);
CREATE INDEX settle_sub_idx ON outbox.settle (sub_id, batch_no);

-- Deliveries that left the stream: delayed, retried, dead, held behind an
-- earlier event of their key, or acked before they were claimed.
CREATE TABLE outbox.delivery (
	sub_id			integer NOT NULL,
	event_id		bigint NOT NULL,
	state			text NOT NULL CHECK (state IN ('ready', 'scheduled', 'leased', 'waiting', 'done', 'dead')),
	attempts		integer NOT NULL DEFAULT 0,
	visible_at		timestamptz,
	lease_until		timestamptz,
	key				text,
	seq				bigint,				-- commit order of the key (waiting)
	last_error		text,
	dead_at			timestamptz,
	PRIMARY KEY (sub_id, event_id)
);
CREATE INDEX delivery_due_idx ON outbox.delivery (sub_id, visible_at, event_id)
	WHERE state IN ('ready', 'scheduled');
CREATE INDEX delivery_key_idx ON outbox.delivery (sub_id, key)
	WHERE key IS NOT NULL AND state IN ('ready', 'scheduled', 'leased', 'waiting');
CREATE INDEX delivery_lease_idx ON outbox.delivery (lease_until)
	WHERE state = 'leased';
CREATE INDEX delivery_visible_idx ON outbox.delivery (visible_at)
	WHERE state IN ('ready', 'scheduled');
CREATE INDEX delivery_dead_idx ON outbox.delivery (sub_id, event_id)
	WHERE state = 'dead';

-- Commit order of keys that ordered subscriptions receive, written just
-- before commit under a per-key lock (src/enqueue.c).
CREATE TABLE outbox.key_commit (
	key_hash		bigint NOT NULL,
	xid				xid8 NOT NULL,
	seq				bigint NOT NULL,
	PRIMARY KEY (key_hash, xid)
);
CREATE SEQUENCE outbox.key_commit_seq;

-- Roles that may consume a subscription.
CREATE TABLE outbox.consumer (
	sub_id			integer NOT NULL,
	role			oid NOT NULL,
	PRIMARY KEY (sub_id, role)
);
CREATE TABLE outbox.producer (
	role			oid PRIMARY KEY
);

SELECT pg_catalog.pg_extension_config_dump('outbox.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.consumer', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.producer', '');

--
-- C functions.
--

CREATE FUNCTION outbox.enqueue(
	topic text,
	payload jsonb,
	key text DEFAULT NULL,
	headers jsonb DEFAULT NULL,
	deliver_at timestamptz DEFAULT NULL,
	dedup_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'outbox_enqueue'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION outbox.claim(
	subscription text,
	batch int DEFAULT 1,
	lease interval DEFAULT NULL)
RETURNS TABLE (event_id bigint, topic text, key text, payload jsonb,
			   headers jsonb, attempt int, enqueued_at timestamptz)
AS 'MODULE_PATHNAME', 'outbox_claim'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;

CREATE FUNCTION outbox.ack(subscription text, event_id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'outbox_ack'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION outbox.ack(subscription text, event_ids bigint[])
RETURNS int
AS 'MODULE_PATHNAME', 'outbox_ack_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION outbox.fail(
	subscription text,
	event_id bigint,
	error text DEFAULT NULL,
	retry_in interval DEFAULT NULL,
	attempt int DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'outbox_fail'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION outbox.channel(subscription text)
RETURNS text
AS 'MODULE_PATHNAME', 'outbox_channel'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION outbox._stats()
RETURNS TABLE (subscription text, ready bigint, scheduled bigint, leased bigint,
			   dead bigint, oldest_ready_at timestamptz, paused boolean)
AS 'MODULE_PATHNAME', 'outbox_stats'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION outbox._may_consume(sub_id integer)
RETURNS boolean
AS 'MODULE_PATHNAME', 'outbox_may_consume'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION outbox._check_name(subscription text)
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_check_name_sql'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION outbox._subscriptions_changed()
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_subscriptions_changed'
LANGUAGE C VOLATILE;

-- Wake the worker after commit, to notify every subscription.
CREATE FUNCTION outbox._wake()
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_wake_sql'
LANGUAGE C VOLATILE;

CREATE FUNCTION outbox.start_worker()
RETURNS boolean
AS 'MODULE_PATHNAME', 'outbox_start_worker'
LANGUAGE C VOLATILE;

CREATE FUNCTION outbox._worker_on_create()
RETURNS void
AS 'MODULE_PATHNAME', 'outbox_worker_on_create'
LANGUAGE C VOLATILE;

--
-- Administration: the owner (or a superuser) only, since nothing here is
-- executable by PUBLIC.  These run with the caller's rights; search_path is
-- pinned and every object schema-qualified all the same.
--

-- The subscription's id, or 42704.
CREATE FUNCTION outbox._sub_id(subscription text)
RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result integer;
BEGIN
	IF subscription IS NULL THEN
		RAISE EXCEPTION 'subscription must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM outbox._check_name(subscription);
	SELECT s.id INTO result FROM outbox.subscription s WHERE s.name OPERATOR(pg_catalog.=) subscription;
	IF result IS NULL THEN
		RAISE EXCEPTION 'subscription "%" does not exist', subscription
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN result;
END
$$;

CREATE FUNCTION outbox._check_interval(value interval, what text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF value IS NULL THEN
		RAISE EXCEPTION '% must not be null', what USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF value OPERATOR(pg_catalog.<) interval '0' THEN
		RAISE EXCEPTION '% must not be negative', what
			USING ERRCODE = 'invalid_parameter_value', DETAIL = pg_catalog.format('The value given was %s.', value);
	END IF;
END
$$;

CREATE FUNCTION outbox.subscribe(
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

	UPDATE outbox.subscription s
	   SET topics = stored, max_attempts = subscribe.max_attempts, lease = subscribe.lease,
		   backoff_base = subscribe.backoff_base, backoff_max = subscribe.backoff_max,
		   ordered = subscribe.ordered
	 WHERE s.name OPERATOR(pg_catalog.=) subscription;
	IF NOT FOUND THEN
		new_id := pg_catalog.nextval('outbox.subscription_id_seq'::pg_catalog.regclass);
		-- Events of transactions that this snapshot sees as finished are not
		-- for the new subscription; everything later is.
		origin := pg_catalog.pg_current_snapshot();
		INSERT INTO outbox.subscription (id, name, topics, max_attempts, lease, backoff_base, backoff_max, ordered, origin)
		VALUES (new_id, subscription, stored, max_attempts, lease, backoff_base, backoff_max, ordered, origin);
		gen := pg_catalog.pg_sequence_last_value('outbox.chain_gen'::pg_catalog.regclass);
		INSERT INTO outbox.cursor (gen, sub_id, fold_no, delta, lo, hi, pos, ended, scan_from, scan_gen)
		VALUES (gen, new_id, 0, 0, origin, origin, 0, true, 0, gen);
	END IF;
	PERFORM outbox._subscriptions_changed();
END
$$;

CREATE FUNCTION outbox.unsubscribe(subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	sid integer;
BEGIN
	sid := outbox._sub_id(subscription);
	DELETE FROM outbox.batch b WHERE b.sub_id OPERATOR(pg_catalog.=) sid;
	DELETE FROM outbox.settle b WHERE b.sub_id OPERATOR(pg_catalog.=) sid;
	DELETE FROM outbox.delivery d WHERE d.sub_id OPERATOR(pg_catalog.=) sid;
	DELETE FROM outbox.cursor c WHERE c.sub_id OPERATOR(pg_catalog.=) sid;
	DELETE FROM outbox.consumer c WHERE c.sub_id OPERATOR(pg_catalog.=) sid;
	DELETE FROM outbox.subscription s WHERE s.id OPERATOR(pg_catalog.=) sid;
	PERFORM outbox._subscriptions_changed();
END
$$;

CREATE FUNCTION outbox.pause(subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE outbox.subscription s SET paused = true
	 WHERE s.id OPERATOR(pg_catalog.=) outbox._sub_id(subscription);
	PERFORM outbox._subscriptions_changed();
END
$$;

CREATE FUNCTION outbox.resume(subscription text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE outbox.subscription s SET paused = false
	 WHERE s.id OPERATOR(pg_catalog.=) outbox._sub_id(subscription);
	PERFORM outbox._subscriptions_changed();
	PERFORM outbox._wake();
END
$$;

CREATE FUNCTION outbox.replay(subscription text, event_id bigint DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	sid integer;
	n integer;
BEGIN
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

--
-- Grants.  EXECUTE on the API functions goes to the roles that are granted;
-- which subscription a consumer may use is recorded in outbox.consumer and
-- checked by the C functions.
--

CREATE FUNCTION outbox._check_role(role name)
RETURNS oid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result oid;
BEGIN
	IF role IS NULL THEN
		RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT r.oid INTO result FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) role;
	IF result IS NULL THEN
		RAISE EXCEPTION 'role "%" does not exist', role USING ERRCODE = 'undefined_object';
	END IF;
	RETURN result;
END
$$;

CREATE FUNCTION outbox.grant_produce(role name)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r oid;
BEGIN
	r := outbox._check_role(role);
	INSERT INTO outbox.producer VALUES (r) ON CONFLICT DO NOTHING;
	EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA outbox TO %I', role);
	EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION outbox.enqueue(text, jsonb, text, jsonb, timestamptz, text) TO %I', role);
END
$$;

CREATE FUNCTION outbox.revoke_produce(role name)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r oid;
BEGIN
	r := outbox._check_role(role);
	DELETE FROM outbox.producer p WHERE p.role OPERATOR(pg_catalog.=) r;
	EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION outbox.enqueue(text, jsonb, text, jsonb, timestamptz, text) FROM %I', role);
	PERFORM outbox._sync_schema_usage(role, r);
END
$$;

-- The consumer functions and views; a role that consumes anything has
-- EXECUTE on all of them, and the C code checks which subscription.
CREATE FUNCTION outbox._consumer_objects()
RETURNS text[]
LANGUAGE sql IMMUTABLE
AS $$
	SELECT ARRAY[
		'FUNCTION outbox.claim(text, integer, interval)',
		'FUNCTION outbox.ack(text, bigint)',
		'FUNCTION outbox.ack(text, bigint[])',
		'FUNCTION outbox.fail(text, bigint, text, interval, integer)',
		'FUNCTION outbox.channel(text)',
		'FUNCTION outbox._stats()',
		'FUNCTION outbox._may_consume(integer)',
		'TABLE outbox.stats',
		'TABLE outbox.dead_letters']
$$;

-- Keep schema USAGE while the role still produces or consumes anything.
CREATE FUNCTION outbox._sync_schema_usage(role name, r oid)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM outbox.producer p WHERE p.role OPERATOR(pg_catalog.=) r)
	   AND NOT EXISTS (SELECT 1 FROM outbox.consumer c WHERE c.role OPERATOR(pg_catalog.=) r) THEN
		EXECUTE pg_catalog.format('REVOKE USAGE ON SCHEMA outbox FROM %I', role);
	END IF;
END
$$;

CREATE FUNCTION outbox.grant_consume(role name, subscription text)
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

CREATE FUNCTION outbox.revoke_consume(role name, subscription text)
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
-- Views.  Both filter to the subscriptions the caller may consume.
--

CREATE VIEW outbox.stats WITH (security_barrier) AS
	SELECT s.subscription, s.ready, s.scheduled, s.leased, s.dead,
		   s.oldest_ready_at, s.paused
	  FROM outbox._stats() s;

CREATE VIEW outbox.dead_letters WITH (security_barrier) AS
	SELECT s.name AS subscription, d.event_id, e.topic, e.key, e.payload,
		   e.headers, d.attempts, d.last_error, d.dead_at
	  FROM outbox.delivery d
	  JOIN outbox.subscription s ON s.id OPERATOR(pg_catalog.=) d.sub_id
	  JOIN outbox.event e ON e.id OPERATOR(pg_catalog.=) d.event_id
	 WHERE d.state OPERATOR(pg_catalog.=) 'dead' AND outbox._may_consume(d.sub_id);

--
-- Privileges: nothing for PUBLIC.
--
REVOKE ALL ON ALL TABLES IN SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON SCHEMA outbox FROM PUBLIC;

-- This database gets its worker when CREATE EXTENSION commits.
SELECT outbox._worker_on_create();
