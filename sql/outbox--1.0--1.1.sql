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

-- subscribe writes the first cursor row into the current generation.
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
		gen := outbox._chain_gen_for_insert();
		INSERT INTO outbox.cursor (gen, sub_id, fold_no, delta, lo, hi, pos, ended, scan_from, scan_gen)
		VALUES (gen, new_id, 0, 0, origin, origin, 0, true, 0, gen);
	END IF;
	PERFORM outbox._subscriptions_changed();
END
$$;
