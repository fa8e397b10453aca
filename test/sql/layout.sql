-- The C code reads and writes some tables by column number.  A table whose
-- columns are not where it expects them (a schema of another version, or
-- one changed by hand) is a clear error, never a misread.
SELECT outbox.subscribe('lay', ARRAY['lay.t'], ordered => true);
SELECT outbox.enqueue('lay.t', '{"n": 1}', key => 'k') > 0 AS enqueued;

-- (terse: the detail names the current bucket's table)
\set VERBOSITY terse
BEGIN;
ALTER TABLE outbox.event RENAME COLUMN headers TO h;
SELECT outbox.enqueue('lay.t', '{"n": 2}');
ROLLBACK;

\set VERBOSITY default

BEGIN;
ALTER TABLE outbox.delivery RENAME COLUMN key TO k;
SELECT count(*) FROM outbox.claim('lay', 10);
ROLLBACK;

-- (terse again: the partition is the current generation's)
\set VERBOSITY terse
BEGIN;
ALTER TABLE outbox.batch ADD COLUMN extra int;
ALTER TABLE outbox.batch DROP COLUMN keys;
SELECT count(*) FROM outbox.claim('lay', 10);
ROLLBACK;

-- as it was: everything works again
SELECT outbox.enqueue('lay.t', '{"n": 3}', key => 'k') > 0 AS enqueued;
SELECT payload->>'n' AS n FROM outbox.claim('lay', 10);
SELECT outbox.unsubscribe('lay');
