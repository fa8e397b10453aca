-- The benchmark database: outbox, PgQ, the plain-table ceilings and helpers.
-- Run once by bench/run on its throwaway cluster (pg-boss and
-- graphile-worker create their schemas through bench/peers.js setup).

CREATE EXTENSION outbox;
CREATE EXTENSION pgq;

-- The enqueue ceiling: the same row as an event, in an indexed table.
CREATE TABLE plain (
	id			bigserial PRIMARY KEY,
	topic		text NOT NULL,
	key			text,
	payload		jsonb NOT NULL,
	created_at	timestamptz NOT NULL
);

-- The drain ceiling: a plain table drained by DELETE ... SKIP LOCKED, one per
-- number of consumers (so that each has its own backlog), and one for the
-- held-xmin runs.
CREATE TABLE relay_c1 (LIKE plain INCLUDING ALL);
CREATE TABLE relay_c4 (LIKE plain INCLUDING ALL);
CREATE TABLE relay_c16 (LIKE plain INCLUDING ALL);
CREATE TABLE relay_c64 (LIKE plain INCLUDING ALL);
CREATE TABLE relay_hx (LIKE plain INCLUDING ALL);

-- Enqueue: topic t1 has one subscription, t4 four.
SELECT outbox.subscribe('e1', ARRAY['t1']);
SELECT outbox.subscribe('e4_' || i, ARRAY['t4']) FROM generate_series(0, 3) i;

-- PgQ: one queue for enqueue, one for drain with a tick every 100 events,
-- and consumers for 1, 4, 16 and 64 consumers (each PgQ consumer reads the
-- whole queue: N consumers are N times the deliveries).
SELECT pgq.create_queue('bench_enq');
SELECT pgq.create_queue('bench_drain');
SELECT pgq.set_queue_config('bench_drain', 'ticker_max_count', '100');
SELECT pgq.set_queue_config('bench_drain', 'ticker_max_lag', '1 hour');
SELECT pgq.set_queue_config('bench_drain', 'ticker_idle_period', '1 hour');
SELECT pgq.register_consumer('bench_drain', 'c' || n || '_' || i)
  FROM unnest(ARRAY[1, 4, 16, 64]) n, generate_series(0, n - 1) i;

-- One PgQ batch per call: what a PgQ consumer does, in one round trip.
CREATE FUNCTION bench_pgq_drain(q text, c text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
	b bigint;
	n int;
BEGIN
	b := pgq.next_batch(q, c);
	IF b IS NULL THEN
		RETURN 0;
	END IF;
	SELECT count(*) INTO n FROM pgq.get_batch_events(b);
	PERFORM pgq.finish_batch(b);
	RETURN n;
END $$;

-- The ~200-byte document every contender carries.
CREATE FUNCTION bench_payload(i bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT '{"order_id": ' || i || ', "customer": "customer-' || i || '", "status": "placed", '
	|| '"currency": "EUR", "total": 123.45, "lines": [{"sku": "SKU-10001", "qty": 2, '
	|| '"price": 19.90}, {"sku": "SKU-20002", "qty": 1, "price": 83.65}], "channel": "web"}'
$$;

-- Table + index + TOAST bytes of a system: outbox, pgq, pgboss, graphile, or
-- the name of a plain table.
CREATE FUNCTION bench_size(sys text) RETURNS bigint
LANGUAGE sql AS $$
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm')
   AND CASE sys
		WHEN 'outbox' THEN n.nspname = 'outbox'
		WHEN 'pgq' THEN n.nspname = 'pgq'
		WHEN 'pgboss' THEN n.nspname = 'pgboss'
		WHEN 'graphile' THEN n.nspname = 'graphile_worker'
		ELSE n.nspname = 'public' AND c.relname = sys
	   END
$$;

-- Backlog of every PgQ consumer of the drain queue.
CREATE VIEW bench_pgq_pending AS
SELECT consumer_name, pending_events
  FROM pgq.get_consumer_info('bench_drain');
