/*-------------------------------------------------------------------------
 *
 * retention.c
 *		Retention: clean-up of rows nothing needs, event buckets emptied and
 *		rotated, and generations of chain bookkeeping emptied and started.
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


/* rows a single cleanup statement touches at most */
#define STEP_ROWS	1000

/* outbox.chain_rotation: milliseconds between generations of chain rows */
int			outbox_chain_rotation = 10000;



/*
 * Delete, a step at a time: done markers behind their subscription's
 * cursor, commit-order records no chain can need, and kept copies of events
 * that no longer have a dead letter.  (Old cursor, batch and settle rows go
 * with their partition: rotate_chain.)
 */
static void
clean_up_unit(void *arg)
{
	static SPIPlanPtr done_plan = NULL;
	static SPIPlanPtr keys_plan = NULL;
	static SPIPlanPtr kept_plan = NULL;

	if (kept_plan == NULL)
	{
		done_plan = outbox_prepare(
			"DELETE FROM outbox.delivery WHERE ctid IN ("
			" SELECT d.ctid FROM outbox.delivery d JOIN outbox.cursor_now c ON c.sub_id = d.sub_id"
			" WHERE d.state = 'done'"
			" AND pg_visible_in_snapshot(((d.event_id >> " CppAsString2(OUTBOX_SEQ_BITS) ")::text)::xid8, c.lo)"
			" LIMIT " CppAsString2(STEP_ROWS) ")", 0, NULL);
		keys_plan = outbox_prepare(
			"DELETE FROM outbox.key_commit WHERE ctid IN ("
			" SELECT ctid FROM outbox.key_commit WHERE xid < COALESCE("
			"  (SELECT min(pg_snapshot_xmin(lo)) FROM outbox.cursor_now),"
			"  pg_snapshot_xmin(pg_current_snapshot()))"
			" LIMIT " CppAsString2(STEP_ROWS) ")", 0, NULL);
		kept_plan = outbox_prepare(
			"DELETE FROM outbox.event_kept k WHERE ctid IN ("
			" SELECT ctid FROM outbox.event_kept k WHERE NOT EXISTS ("
			"  SELECT 1 FROM outbox.delivery d WHERE d.event_id = k.id AND d.state <> 'done')"
			" LIMIT " CppAsString2(STEP_ROWS) ")", 0, NULL);
	}
	if (SPI_execute_plan(done_plan, NULL, NULL, false, 0) != SPI_OK_DELETE ||
		SPI_execute_plan(keys_plan, NULL, NULL, false, 0) != SPI_OK_DELETE ||
		SPI_execute_plan(kept_plan, NULL, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "clean-up failed");
}

void
outbox_clean_up(void)
{
	(void) outbox_sub_unit("outbox: clean up", OUTBOX_DB_CLEAN_UP, 0, 0, clean_up_unit, NULL);
}

static int64
int8_result(const char *sql)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute(sql, false, 1) < 0)
		elog(ERROR, "query failed: %s", sql);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? -1 : DatumGetInt64(d);
}

/*
 * Can bucket b be emptied?  Every subscription's folded cursor must be past
 * its newest event, no delivery may still need one of its events (dead
 * letters excepted: those events are kept), and its newest event must be
 * older than outbox.retention.
 */
static bool
bucket_done(int b, int64 max_id, TimestampTz now)
{
	char	   *sql;

	sql = psprintf("SELECT count(*) FROM outbox.event_%d WHERE id = " INT64_FORMAT
				   " AND enqueued_at > now() - make_interval(secs => %d)",
				   b, max_id, outbox_retention);
	if (int8_result(sql) != 0)
		return false;
	sql = psprintf("SELECT count(*) FROM outbox.cursor_now"
				   " WHERE NOT ('" UINT64_FORMAT "'::xid8 < pg_snapshot_xmin(lo))",
				   OUTBOX_ID_XID(max_id));
	if (int8_result(sql) != 0)
		return false;
	sql = psprintf("SELECT count(*) FROM (SELECT 1 FROM outbox.delivery d"
				   " JOIN outbox.event_%d e ON e.id = d.event_id"
				   " WHERE d.state IN ('ready', 'scheduled', 'leased', 'waiting') LIMIT 1) x", b);
	if (int8_result(sql) != 0)
		return false;
	return true;
}

/*
 * Empty the buckets nothing needs any more, and rotate the current bucket
 * when it is old enough and the next one is empty.  Buckets rotate every
 * half retention, so about three of the four hold events.
 */
static void
rotate_and_truncate_unit(void *arg)
{
	int			current;
	TimestampTz since;
	TimestampTz now = GetCurrentTimestamp();
	int			b;
	bool		isnull;
	bool		next_empty = false;
	Oid			state_relid;

	if (SPI_execute("SELECT bucket, bucket_since FROM outbox.state FOR UPDATE", false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "outbox.state is missing its row");
	current = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	since = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

	for (b = 0; b < OUTBOX_BUCKETS; b++)
	{
		char		relname[NAMEDATALEN];
		Oid			relid;
		int64		max_id;

		if (b == current)
			continue;
		max_id = int8_result(psprintf("SELECT max(id) FROM outbox.event_%d", b));
		if (max_id < 0)
		{
			if (b == (current + 1) % OUTBOX_BUCKETS)
				next_empty = true;
			continue;
		}
		if (!bucket_done(b, max_id, now))
			continue;
		snprintf(relname, sizeof(relname), "event_%d", b);
		relid = outbox_relid(relname);
		/* a claim or a late enqueue is using it: next round */
		if (!ConditionalLockRelationOid(relid, AccessExclusiveLock))
			continue;
		/* a late enqueue may have added events before we locked */
		if (int8_result(psprintf("SELECT max(id) FROM outbox.event_%d", b)) != max_id ||
			!bucket_done(b, max_id, now))
			continue;
		if (SPI_execute(psprintf("INSERT INTO outbox.event_kept"
								 " SELECT id, 4, topic, key, payload, headers, deliver_at, enqueued_at"
								 " FROM outbox.event_%d e WHERE EXISTS (SELECT 1 FROM outbox.delivery d"
								 "  WHERE d.event_id = e.id AND d.state = 'dead')", b), false, 0) != SPI_OK_INSERT ||
			SPI_execute(psprintf("DELETE FROM outbox.dedup WHERE event_id IN"
								 " (SELECT id FROM outbox.event_%d)", b), false, 0) != SPI_OK_DELETE ||
			SPI_execute(psprintf("DELETE FROM outbox.delivery WHERE state = 'done' AND event_id IN"
								 " (SELECT id FROM outbox.event_%d)", b), false, 0) != SPI_OK_DELETE ||
			SPI_execute(psprintf("TRUNCATE outbox.event_%d", b), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "emptying bucket %d failed", b);
		ereport(DEBUG1, (errmsg("outbox emptied bucket %d", b)));
		if (b == (current + 1) % OUTBOX_BUCKETS)
			next_empty = true;
	}

	if (next_empty &&
		TimestampDifferenceExceeds(since, now, Max(outbox_retention / 2, 1) * 1000) &&
		int8_result(psprintf("SELECT count(*) FROM (SELECT 1 FROM outbox.event_%d LIMIT 1) x",
							 current)) > 0)
	{
		if (SPI_execute(psprintf("UPDATE outbox.state SET bucket = %d, bucket_since = now()",
								 (current + 1) % OUTBOX_BUCKETS), false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "bucket rotation failed");
		/* producers cache the current bucket */
		state_relid = outbox_relid("state");
		CacheInvalidateRelcacheByRelid(state_relid);
	}
}

void
outbox_rotate_and_truncate(void)
{
	(void) outbox_sub_unit("outbox: retention", OUTBOX_DB_RETENTION, 0, 0,
						   rotate_and_truncate_unit, NULL);
}

/*
 * Is the partition of generation "old" still needed?  By a subscription
 * whose newest cursor row is in it, or whose unfolded batch rows start in it
 * or before; or by a batch row in it that some cursor has not folded.
 */
static bool
chain_part_needed(int64 old)
{
	int			part = (int) (old % OUTBOX_CHAIN_PARTS);

	if (int8_result(psprintf("SELECT count(*) FROM outbox.cursor_now c"
							 " JOIN outbox.subscription s ON s.id = c.sub_id"
							 " WHERE c.gen <= " INT64_FORMAT " OR c.scan_gen <= " INT64_FORMAT,
							 old, old)) != 0)
		return true;
	return int8_result(psprintf("SELECT count(*) FROM (SELECT 1 FROM outbox.batch_%d b"
								" JOIN outbox.cursor_now c ON c.sub_id = b.sub_id"
								" AND b.batch_no >= c.scan_from LIMIT 1) x", part)) != 0;
}

static bool
chain_part_empty(int part)
{
	return int8_result(psprintf("SELECT count(*) FROM (SELECT 1 FROM outbox.cursor_%d"
								" UNION ALL SELECT 1 FROM outbox.batch_%d"
								" UNION ALL SELECT 1 FROM outbox.settle_%d LIMIT 1) x",
								part, part, part)) == 0;
}

/*
 * Cursor, batch and settle rows are only ever inserted, into the partitions
 * of the current generation; this empties the oldest generation with
 * TRUNCATE once nothing in it is needed, and starts a new generation every
 * outbox.chain_rotation when there is an empty partition for it.  So a
 * transaction that holds back vacuum for hours does not make these tables
 * bloat.  Readers lock only the partitions of the generations they read,
 * and a subscription whose newest cursor row is in an old generation gets a
 * fresh copy from advance_subscriptions, so the oldest partition is
 * normally free to take; if a transaction still holds it, the next round
 * tries again.
 */
/* what the units of outbox_rotate_chain share */
typedef struct RotateArgs
{
	int64		gen;
	int			oldest;
	bool		truncate;		/* the oldest generation is to be emptied */
	bool		started;		/* a new generation was started */
	TimestampTz now;
} RotateArgs;

/* Is the oldest generation to be emptied? */
static void
rotate_check_unit(void *arg)
{
	RotateArgs *r = arg;

	r->gen = outbox_chain_gen();
	r->oldest = (int) ((r->gen + 1) % OUTBOX_CHAIN_PARTS);
	r->truncate = r->gen >= OUTBOX_CHAIN_PARTS - 1 && !chain_part_empty(r->oldest) &&
		!chain_part_needed(r->gen - (OUTBOX_CHAIN_PARTS - 1));
}

/* Empty it, if its partitions can be locked at once and it is still unneeded. */
static void
rotate_truncate_unit(void *arg)
{
	RotateArgs *r = arg;
	int			oldest = r->oldest;

	if (ConditionalLockRelationOid(outbox_chain_part("cursor", oldest), AccessExclusiveLock) &&
		ConditionalLockRelationOid(outbox_chain_part("batch", oldest), AccessExclusiveLock) &&
		ConditionalLockRelationOid(outbox_chain_part("settle", oldest), AccessExclusiveLock) &&
		!chain_part_needed(r->gen - (OUTBOX_CHAIN_PARTS - 1)))
	{
		if (SPI_execute(psprintf("TRUNCATE outbox.cursor_%d, outbox.batch_%d, outbox.settle_%d",
								 oldest, oldest, oldest), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "emptying chain partition %d failed", oldest);
		ereport(DEBUG1, (errmsg("outbox emptied chain generation " INT64_FORMAT,
								r->gen - (OUTBOX_CHAIN_PARTS - 1))));
	}
}

/* Start a new generation, if the current one has rows and is old enough. */
static void
rotate_start_unit(void *arg)
{
	RotateArgs *r = arg;

	if (!chain_part_empty((int) (r->gen % OUTBOX_CHAIN_PARTS)) && chain_part_empty(r->oldest))
	{
		if (SPI_execute("SELECT pg_catalog.nextval('outbox.chain_gen')", false, 1) != SPI_OK_SELECT)
			elog(ERROR, "chain rotation failed");
		r->started = true;
		ereport(DEBUG1, (errmsg("outbox started chain generation " INT64_FORMAT, r->gen + 1)));
	}
}

void
outbox_rotate_chain(void)
{
	static TimestampTz since = 0;
	RotateArgs	r;

	r.now = GetCurrentTimestamp();
	if (since == 0)
		since = r.now;

	/* the oldest generation, gen - 3: empty it if nothing needs it */
	if (!outbox_sub_unit("outbox: rotate", OUTBOX_DB_ROTATE, 0, 0, rotate_check_unit, &r))
		return;
	if (r.truncate)
		(void) outbox_sub_unit("outbox: rotate", OUTBOX_DB_ROTATE, 0, 0, rotate_truncate_unit, &r);

	/* a new generation, if the current one has rows and is old enough */
	if (TimestampDifferenceExceeds(since, r.now, outbox_chain_rotation))
	{
		r.started = false;
		if (outbox_sub_unit("outbox: rotate", OUTBOX_DB_ROTATE, 0, 0, rotate_start_unit, &r) &&
			r.started)
			since = r.now;
	}
}
