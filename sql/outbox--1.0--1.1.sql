-- outbox 1.0 -> 1.1.  Applied by ALTER EXTENSION outbox UPDATE, and part of
-- the 1.1 install script (the Makefile builds outbox--1.1.sql as 1.0 plus
-- this file), so both ways give the same schema.  Each change below says
-- which fault or feature it is for.

\echo Use "ALTER EXTENSION outbox UPDATE" to load this file. \quit

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
