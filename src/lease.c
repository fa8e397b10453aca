/*-------------------------------------------------------------------------
 *
 * lease.c
 *		Lease expiry: leases that ran out, of claims that committed, are
 *		treated as fail(..., 'lease expired') by the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "shmem.h"
#include "maintain.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* batches of expired leases returned per round */
#define EXPIRE_BATCHES 100

/*
 * SQL: batch row b still has ids that no settle row took.  Costly per row:
 * the queries below apply it only to batch rows not folded yet, which the
 * "OFFSET 0" keeps the planner from scanning all of outbox.batch for.
 */
#define UNSETTLED \
	"EXISTS (SELECT 1 FROM pg_catalog.unnest(b.ids) AS u(id) WHERE NOT EXISTS (" \
	" SELECT 1 FROM outbox.settle t WHERE t.sub_id = b.sub_id" \
	" AND t.batch_no = b.batch_no AND u.id = ANY (t.ids)))"

/*
 * SQL: the backoff of fail() (outbox_backoff) after "n" attempts, jitter
 * included, for subscription "s".  In double precision seconds, which
 * neither the doubling nor the cap can overflow (an interval times 2^30
 * does, from a base of a few days), capped like outbox_backoff.
 */
#define BACKOFF_SQL(n) \
	"make_interval(secs => LEAST(date_part('epoch', s.backoff_max)," \
	" date_part('epoch', s.backoff_base) * power(2::float8, LEAST(GREATEST(" n " - 1, 0), 62))," \
	" " CppAsString2(OUTBOX_MAX_INTERVAL_DAYS) " * 86400.0) * (0.5 + random() * 0.5))"

/*
 * Leases that passed, of claims that committed, are treated as
 * fail(..., error => 'lease expired'): scheduled at the backoff, or dead
 * at max_attempts.  A claim whose transaction is still open is invisible
 * here, so its leases are not touched.  Returns when the next known lease
 * ends.
 */
TimestampTz
outbox_expire_leases(void)
{
	static SPIPlanPtr dplan = NULL;
	static SPIPlanPtr bsel = NULL;
	static SPIPlanPtr bins = NULL;
	static SPIPlanPtr next_plan = NULL;
	SPITupleTable *tab;
	uint64		n,
				i;
	TimestampTz next = 0;
	bool		isnull;
	Datum		d;

	if (next_plan == NULL)
	{
		Oid			t3[3] = {INT4OID, INT8ARRAYOID, TEXTARRAYOID};

		dplan = outbox_prepare(
			"WITH due AS ("
			" SELECT d.sub_id, d.event_id FROM outbox.delivery d"
			" WHERE d.state = 'leased' AND d.lease_until < pg_catalog.clock_timestamp()"
			" ORDER BY d.lease_until LIMIT 1000 FOR UPDATE SKIP LOCKED)"
			" UPDATE outbox.delivery d SET"
			"  state = CASE WHEN d.attempts >= s.max_attempts THEN 'dead' ELSE 'scheduled' END,"
			"  visible_at = CASE WHEN d.attempts >= s.max_attempts THEN NULL ELSE"
			"   now() + " BACKOFF_SQL("d.attempts") " END,"
			"  dead_at = CASE WHEN d.attempts >= s.max_attempts THEN now() END,"
			"  lease_until = NULL, last_error = 'lease expired'"
			" FROM due, outbox.subscription s"
			" WHERE d.sub_id = due.sub_id AND d.event_id = due.event_id AND s.id = d.sub_id"
			" RETURNING s.name",
			0, NULL);
		bsel = outbox_prepare(
			"SELECT b.sub_id, b.gen, b.batch_no,"
			" (SELECT s.name FROM outbox.subscription s WHERE s.id = b.sub_id)"
			" FROM outbox.cursor_now c, LATERAL ("
			"  SELECT * FROM outbox.batch b WHERE b.sub_id = c.sub_id"
			"  AND b.batch_no >= c.scan_from OFFSET 0) b"
			" WHERE b.lease_until < pg_catalog.clock_timestamp() AND " UNSETTLED
			" ORDER BY b.lease_until LIMIT " CppAsString2(EXPIRE_BATCHES), 0, NULL);
		bins = outbox_prepare(
			"INSERT INTO outbox.delivery"
			" (sub_id, event_id, state, attempts, visible_at, key, last_error, dead_at)"
			" SELECT $1, u.id, CASE WHEN s.max_attempts <= 1 THEN 'dead' ELSE 'scheduled' END, 1,"
			"  CASE WHEN s.max_attempts <= 1 THEN NULL ELSE"
			"   now() + " BACKOFF_SQL("1") " END,"
			"  u.key, 'lease expired', CASE WHEN s.max_attempts <= 1 THEN now() END"
			" FROM unnest($2, $3) AS u(id, key), outbox.subscription s"
			" WHERE s.id = $1 AND u.id IS NOT NULL"
			" ON CONFLICT (sub_id, event_id) DO NOTHING", 3, t3);
		next_plan = outbox_prepare(
			"SELECT LEAST((SELECT min(lease_until) FROM outbox.delivery WHERE state = 'leased'),"
			" (SELECT min(b.lease_until) FROM outbox.cursor_now c, LATERAL ("
			"  SELECT * FROM outbox.batch b WHERE b.sub_id = c.sub_id"
			"  AND b.batch_no >= c.scan_from OFFSET 0) b WHERE " UNSETTLED "))",
			0, NULL);
	}

	if (SPI_execute_plan(dplan, NULL, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "lease expiry of deliveries failed");
	/* consumers learn of returned leases (and of keys a dead one freed) */
	for (i = 0; i < SPI_processed; i++)
		outbox_notify_sub(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull)));

	if (SPI_execute_plan(bsel, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "lease expiry lookup failed");
	tab = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		int32		sub_id = DatumGetInt32(SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull));
		int64		gen = DatumGetInt64(SPI_getbinval(tab->vals[i], tab->tupdesc, 2, &isnull));
		int64		batch_no = DatumGetInt64(SPI_getbinval(tab->vals[i], tab->tupdesc, 3, &isnull));
		Datum		named = SPI_getbinval(tab->vals[i], tab->tupdesc, 4, &isnull);
		char	   *name;
		int64	   *taken;
		Datum	   *keys;
		bool	   *key_nulls;
		int			ntaken;
		Datum		args[3];

		/*
		 * Not while unsubscribe waits or runs (lifecycle.c): rows written
		 * for a subscription it is deleting would outlive it.
		 */
		if (isnull)
			continue;
		name = TextDatumGetCString(named);
		if (!outbox_try_hold_sub(name) || !outbox_sub_exists(sub_id))
			continue;
		/* an ack or fail of this batch in progress: next round */
		ntaken = outbox_batch_take(sub_id, gen, batch_no, NULL, 0, true,
								   &taken, &keys, &key_nulls);
		if (ntaken <= 0)
			continue;
		args[0] = Int32GetDatum(sub_id);
		outbox_taken_arrays(taken, keys, key_nulls, ntaken, &args[1], &args[2]);
		if (SPI_execute_plan(bins, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "lease expiry insert failed");
		outbox_notify_sub(name);
	}

	if (SPI_execute_plan(next_plan, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next lease lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		next = DatumGetTimestampTz(d);
	return next;
}
