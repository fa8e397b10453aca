-- claim(..., wait) (contract 1.1): arguments, errors and what a wait
-- returns when nothing comes.  The races (a producer's commit, pause,
-- unsubscribe, another consumer) are in specs/claim_wait_race.spec; the
-- snapshot, locks, cancel and terminate in t/140_claim_wait.pl.
--
-- Subscriptions are named cw_*; all are removed at the end.

SELECT outbox.subscribe('cw', ARRAY['cw.t']);
SELECT outbox.subscribe('cw_other', ARRAY['cw.o']);

-- something claimable: returned at once, as without wait
SELECT outbox.enqueue('cw.t', '{"n": 1}') > 0 AS enqueued;
SELECT payload->>'n' AS n, attempt FROM outbox.claim('cw', 10, wait => '1 hour');

-- nothing claimable: no rows when the time runs out; the other
-- subscription's event stays where it is
SELECT outbox.enqueue('cw.o', '{"n": 2}') > 0 AS enqueued;
SELECT count(*) AS got FROM outbox.claim('cw', 10, wait => '50 milliseconds');
SELECT subscription, ready FROM outbox.stats WHERE subscription LIKE 'cw%' ORDER BY 1;

-- NULL and zero: no wait
SELECT count(*) AS got FROM outbox.claim('cw', 10, wait => NULL);
SELECT count(*) AS got FROM outbox.claim('cw', 10, '1 minute', '0');

-- a rolled-back wait leaves nothing leased; a wait that returned rows in a
-- transaction keeps them until its end
BEGIN;
SELECT payload->>'n' AS n FROM outbox.claim('cw_other', 1, wait => '1 second');
ROLLBACK;
SELECT subscription, ready, leased FROM outbox.stats WHERE subscription = 'cw_other';

-- errors come before any wait
SELECT * FROM outbox.claim('cw', 1, wait => '-1 second');
SELECT * FROM outbox.claim('cw', 1, wait => '101 years');
SELECT * FROM outbox.claim('cw_nosuch', 1, wait => '1 hour');
SELECT * FROM outbox.claim('CW', 1, wait => '1 hour');
SELECT * FROM outbox.claim(NULL, 1, wait => '1 hour');
SELECT * FROM outbox.claim('cw', NULL, wait => '1 hour');
SELECT * FROM outbox.claim('cw', 0, wait => '1 hour');

-- a snapshot that cannot see later commits cannot wait for them: 0A000,
-- with or without something to claim; without wait these claim as before
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM outbox.claim('cw', 1, wait => '1 hour');
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT * FROM outbox.claim('cw_other', 1, wait => '1 second');
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT payload->>'n' AS n FROM outbox.claim('cw_other', 1, wait => '0');
ROLLBACK;

-- a consumer is refused a subscription it has no grant for before it
-- waits (42501); with the grant it waits and claims as the owner would
CREATE ROLE cw_consumer;
SELECT outbox.grant_consume('cw_consumer', 'cw_other');
SET ROLE cw_consumer;
SELECT * FROM outbox.claim('cw', 1, wait => '1 hour');
SELECT payload->>'n' AS n, attempt FROM outbox.claim('cw_other', 1, wait => '1 hour');
RESET ROLE;

-- an error raised inside the wait's attempt (its own subtransaction)
-- leaves the caller's transaction as any error does: usable after
-- ROLLBACK TO, aborted without a savepoint
BEGIN;
SAVEPOINT s;
SELECT * FROM outbox.claim('cw_gone', 1, wait => '1 hour');
ROLLBACK TO s;
SELECT count(*) AS got FROM outbox.claim('cw', 1, wait => '10 milliseconds');
COMMIT;
BEGIN;
SELECT * FROM outbox.claim('cw_gone', 1, wait => '1 hour');
SELECT 1;
ROLLBACK;

SELECT outbox.revoke_consume('cw_consumer', 'cw_other');
DROP ROLE cw_consumer;
SELECT outbox.unsubscribe('cw');
SELECT outbox.unsubscribe('cw_other');
