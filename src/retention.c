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

/*
 * SQL: event e is still needed by some subscription.  By a delivery that is
 * not done (pending, leased, waiting, dead), or by a subscription of its
 * topic whose folded cursor has not passed its transaction (it may not have
 * been handed out yet, or only to a claim not settled).  Whatever retention
 * removes, such events are kept (in outbox.event_kept), so that neither a
 * quiet subscription nor a delivery due in a month holds the buckets.
 */
#define DELIVERY_HOLDS(e) \
	"EXISTS (SELECT 1 FROM outbox.delivery d WHERE d.event_id = " e ".id" \
	" AND d.state <> 'done')"
#define EVENT_NEEDED(e, cursors) \
	"(" DELIVERY_HOLDS(e) \
	" OR EXISTS (SELECT 1 FROM " cursors " c" \
	"  WHERE NOT pg_visible_in_snapshot(((" e ".id >> " CppAsString2(OUTBOX_SEQ_BITS) ")::text)::xid8, c.lo)" \
	"  AND (c.topics IS NULL OR " e ".topic = ANY (c.topics))))"

/*
 * SQL: every subscription's folded cursor and topics, as EVENT_NEEDED reads
 * them; with the slices the cursor passed (outbox.cursor_floor), whose
 * events are handed out again if their claim rolls back.
 */
#define CURSORS(where) \
	"(SELECT c.lo, s.topics FROM outbox.cursor_floor c" \
	" JOIN outbox.subscription s ON s.id = c.sub_id " where ")"

/* outbox.chain_rotation: milliseconds between generations of chain rows */
int			outbox_chain_rotation = 10000;



/*
 * Delete, a step at a time: done markers behind their subscription's
 * cursor, commit-order records no chain can need, and kept copies of events
 * that nothing needs any more (with their dedup keys and done markers).
 * (Old cursor, batch and settle rows go with their partition:
 * rotate_chain.)
 *
 * Kept copies are looked at a window of STEP_ROWS at a time, in id order,
 * from where the last round stopped: a round costs the same however many
 * copies a subscription whose consumer is away keeps (looking at all of
 * them every round, with every cursor for each, took 1.5 s a round at
 * 50,000).  A copy goes once no delivery that is not done holds it and
 * every cursor of its topic (and every cursor of all topics) has passed
 * its transaction's xid by the oldest xid its folded snapshot may not
 * see: a bound, not EVENT_NEEDED's exact test, so that each copy costs a
 * lookup of its topic; a copy the bound keeps goes in a later pass, once
 * the cursors that may need it have moved on.
 */
static void
clean_up_unit(void *arg)
{
	static SPIPlanPtr done_plan = NULL;
	static SPIPlanPtr keys_plan = NULL;
	static SPIPlanPtr kept_plan = NULL;
	static SPIPlanPtr tally_plan = NULL;
	static int64 kept_pos = 0;
	Datum		pos;
	Datum		max_id;
	bool		isnull;

	if (kept_plan == NULL)
	{
		Oid			t1[1] = {INT8OID};

		done_plan = outbox_prepare(
			"DELETE FROM outbox.delivery WHERE ctid IN ("
			" SELECT d.ctid FROM outbox.delivery d"
			" WHERE d.state = 'done'"
			" AND EXISTS (SELECT 1 FROM outbox.cursor_now c WHERE c.sub_id = d.sub_id)"
			" AND NOT EXISTS (SELECT 1 FROM outbox.cursor_floor c WHERE c.sub_id = d.sub_id"
			"  AND NOT pg_visible_in_snapshot(((d.event_id >> " CppAsString2(OUTBOX_SEQ_BITS) ")::text)::xid8, c.lo))"
			" LIMIT " CppAsString2(STEP_ROWS) ")", 0, NULL);
		keys_plan = outbox_prepare(
			"DELETE FROM outbox.key_commit WHERE ctid IN ("
			" SELECT ctid FROM outbox.key_commit WHERE xid < COALESCE("
			"  (SELECT min(pg_snapshot_xmin(lo)) FROM outbox.cursor_floor),"
			"  pg_snapshot_xmin(outbox._latest_snapshot()))"
			" LIMIT " CppAsString2(STEP_ROWS) ")", 0, NULL);
		/*
		 * Stretches of the tally (tally.c) that every chain has passed,
		 * whole stretches at a time (a reader counts from the oldest one
		 * left), never the newest (where the next one starts).
		 */
		tally_plan = outbox_prepare(
			"DELETE FROM outbox.tally WHERE upto IN ("
			" SELECT upto FROM outbox.tally WHERE topic = ''"
			" AND upto < (SELECT max(upto) FROM outbox.tally WHERE topic = '')"
			" AND upto < (COALESCE("
			"  (SELECT min(pg_snapshot_xmin(lo)) FROM outbox.cursor_floor),"
			"  pg_snapshot_xmin(outbox._latest_snapshot()))::text::bigint"
			"  << " CppAsString2(OUTBOX_SEQ_BITS) ")"
			" ORDER BY upto LIMIT 10)", 0, NULL);
		kept_plan = outbox_prepare(
			"WITH c AS MATERIALIZED " CURSORS("") ","
			" floor AS MATERIALIZED (SELECT t.topic,"
			"  pg_catalog.min(pg_snapshot_xmin(c.lo)::text::bigint) AS xmin"
			"  FROM c, pg_catalog.unnest(c.topics) t(topic) GROUP BY t.topic),"
			" floor_all AS MATERIALIZED (SELECT"
			"  pg_catalog.min(pg_snapshot_xmin(c.lo)::text::bigint) AS xmin"
			"  FROM c WHERE c.topics IS NULL),"
			" win AS MATERIALIZED (SELECT k.ctid, k.id, k.topic FROM outbox.event_kept k"
			"  WHERE k.id > $1 ORDER BY k.id LIMIT " CppAsString2(STEP_ROWS) "),"
			" gone AS (DELETE FROM outbox.event_kept k WHERE ctid IN ("
			"  SELECT w.ctid FROM win w LEFT JOIN floor f ON f.topic = w.topic, floor_all a"
			"  WHERE (w.id >> " CppAsString2(OUTBOX_SEQ_BITS) ") <"
			"   COALESCE(LEAST(f.xmin, a.xmin), 9223372036854775807)"
			"  AND NOT " DELIVERY_HOLDS("w") ") RETURNING k.id),"
			" dedup AS (DELETE FROM outbox.dedup WHERE event_id IN (SELECT id FROM gone)),"
			" markers AS (DELETE FROM outbox.delivery WHERE state = 'done'"
			"  AND event_id IN (SELECT id FROM gone))"
			" SELECT pg_catalog.max(id) FROM win", 1, t1);
	}
	if (SPI_execute_plan(done_plan, NULL, NULL, false, 0) != SPI_OK_DELETE ||
		SPI_execute_plan(keys_plan, NULL, NULL, false, 0) != SPI_OK_DELETE ||
		SPI_execute_plan(tally_plan, NULL, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "clean-up failed");
	pos = Int64GetDatum(kept_pos);
	if (SPI_execute_plan(kept_plan, &pos, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "clean-up of kept events failed");
	max_id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	/* the next window; after the last, from the start again */
	kept_pos = isnull ? 0 : DatumGetInt64(max_id);
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
 * Is bucket b due to be emptied?  When its newest event is older than
 * outbox.retention.  What is still needed of it is copied out first.
 */
static bool
bucket_due(int b, int64 max_id)
{
	return int8_result(psprintf("SELECT count(*) FROM outbox.event_%d WHERE id = " INT64_FORMAT
								" AND enqueued_at > now() - make_interval(secs => %d)",
								b, max_id, outbox_retention)) == 0;
}

/*
 * When bucket b, whose newest event is max_id, falls due (bucket_due).
 */
static TimestampTz
bucket_due_at(int b, int64 max_id)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute(psprintf("SELECT enqueued_at FROM outbox.event_%d WHERE id = " INT64_FORMAT,
							 b, max_id), false, 1) != SPI_OK_SELECT)
		elog(ERROR, "bucket age lookup failed");
	if (SPI_processed != 1)
		return 0;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return 0;
	return DatumGetTimestampTz(d) + (int64) outbox_retention * USECS_PER_SEC;
}

/*
 * Empty the buckets whose events are past retention, and rotate the current
 * bucket when it is old enough and the next one is empty.  Buckets rotate
 * every half retention, so about three of the four hold events.  Events a
 * subscription or delivery still needs are copied to outbox.event_kept
 * first (with their done markers and dedup keys left in place), so storage
 * is bounded by what is needed plus the retention window, whatever one
 * quiet subscription does.
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

	/*
	 * Not FOR UPDATE: a row lock is a write (an xid and WAL) every round,
	 * idle or not (issue 9).  Only the worker changes the row, and its
	 * UPDATE below checks the bucket it read.
	 */
	if (SPI_execute("SELECT bucket, bucket_since FROM outbox.state", false, 1) != SPI_OK_SELECT ||
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
		if (!bucket_due(b, max_id))
		{
			outbox_round_timer(bucket_due_at(b, max_id));
			continue;
		}
		snprintf(relname, sizeof(relname), "event_%d", b);
		relid = outbox_relid(relname);
		/* a claim or a late enqueue is using it: next round */
		if (!ConditionalLockRelationOid(relid, AccessExclusiveLock))
		{
			outbox_round_busy();
			continue;
		}
		/* a late enqueue may have added events before we locked */
		if (int8_result(psprintf("SELECT max(id) FROM outbox.event_%d", b)) != max_id ||
			!bucket_due(b, max_id))
		{
			outbox_round_busy();
			continue;
		}
		/* only cursors that have not passed the bucket's newest event matter */
		if (SPI_execute(psprintf("WITH lag AS MATERIALIZED " CURSORS("WHERE NOT ('" UINT64_FORMAT "'::xid8 < pg_snapshot_xmin(c.lo))")
								 " INSERT INTO outbox.event_kept"
								 " SELECT id, 4, topic, key, payload, headers, deliver_at, enqueued_at"
								 " FROM outbox.event_%d e WHERE " EVENT_NEEDED("e", "lag"),
								 OUTBOX_ID_XID(max_id), b),
						false, 0) != SPI_OK_INSERT ||
			SPI_execute(psprintf("DELETE FROM outbox.dedup WHERE event_id IN"
								 " (SELECT id FROM outbox.event_%d e WHERE NOT EXISTS"
								 "  (SELECT 1 FROM outbox.event_kept k WHERE k.id = e.id))", b),
						false, 0) != SPI_OK_DELETE ||
			SPI_execute(psprintf("DELETE FROM outbox.delivery WHERE state = 'done' AND event_id IN"
								 " (SELECT id FROM outbox.event_%d e WHERE NOT EXISTS"
								 "  (SELECT 1 FROM outbox.event_kept k WHERE k.id = e.id))", b),
						false, 0) != SPI_OK_DELETE ||
			SPI_execute(psprintf("TRUNCATE outbox.event_%d", b), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "emptying bucket %d failed", b);
		ereport(DEBUG1, (errmsg("outbox emptied bucket %d", b)));
		if (b == (current + 1) % OUTBOX_BUCKETS)
			next_empty = true;
	}

	/* in int64 microseconds: half of retention in int milliseconds overflows past 49.7 days */
	if (next_empty &&
		int8_result(psprintf("SELECT count(*) FROM (SELECT 1 FROM outbox.event_%d LIMIT 1) x",
							 current)) > 0)
	{
		int64		half = (int64) Max(outbox_retention / 2, 1) * USECS_PER_SEC;

		if (now - since < half)
		{
			/* rotate then (an empty bucket never rotates: issue 9) */
			outbox_round_timer(since + half);
			return;
		}
		if (SPI_execute(psprintf("UPDATE outbox.state SET bucket = %d, bucket_since = now()"
								 " WHERE bucket = %d",
								 (current + 1) % OUTBOX_BUCKETS, current), false, 0) != SPI_OK_UPDATE ||
			SPI_processed != 1)
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
 * SQL: the subscriptions whose chains still need generation "old" or an
 * older one: whose newest cursor row is in it, or whose unfolded batch rows
 * start in it or before, or whose cursor records a slice it passed there
 * (if that row went, the slice's claim would look rolled back); or that
 * have a batch row in it their cursor has not folded.  Older generations
 * are empty: rotation emptied each before it started the next.  "unite":
 * UNION or UNION ALL (a yes/no question needs no de-duplication, which
 * reads both halves whole before any LIMIT).
 */
static char *
chain_needers_sql(int64 old, const char *unite)
{
	return psprintf("SELECT c.sub_id FROM outbox.cursor_now c"
					" JOIN outbox.subscription s ON s.id = c.sub_id"
					" WHERE c.gen <= " INT64_FORMAT " OR c.scan_gen <= " INT64_FORMAT
					" OR EXISTS (SELECT 1 FROM unnest(c.held) h"
					"  WHERE h.batch_no >= 0 AND h.gen <= " INT64_FORMAT ")"
					" %s SELECT b.sub_id FROM outbox.batch_%d b"
					" JOIN outbox.cursor_now c ON c.sub_id = b.sub_id"
					" AND b.batch_no >= c.scan_from",
					old, old, old, unite, (int) (old % OUTBOX_CHAIN_PARTS));
}

/* Is the partition of generation "old" still needed? */
static bool
chain_part_needed(int64 old)
{
	return int8_result(psprintf("SELECT count(*) FROM (%s LIMIT 1) x",
								chain_needers_sql(old, "UNION ALL"))) != 0;
}

/*
 * The ids of the subscriptions that hold back the next rotation: whose
 * chains need the oldest generation, which must be emptied before a new
 * one starts (an advance gives each a fresh copy).  In ascending order.
 * For the worker's advances (maintain.c); caller is connected to SPI.
 */
List *
outbox_chain_stale_subs(void)
{
	int64		gen = outbox_chain_gen();
	List	   *ids = NIL;
	uint64		i;

	if (gen < OUTBOX_CHAIN_PARTS - 1)
		return NIL;				/* no generation was ever emptied yet */
	if (SPI_execute(psprintf("%s ORDER BY 1",
							 chain_needers_sql(gen - (OUTBOX_CHAIN_PARTS - 1), "UNION")),
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "stale chains lookup failed");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ids = lappend_int(ids, DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 1,
														   &isnull)));
	}
	return ids;
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
	bool		current_rows;	/* the current generation has rows */
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
	r->current_rows = !chain_part_empty((int) (r->gen % OUTBOX_CHAIN_PARTS));
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
	else
		outbox_round_busy();	/* held or needed again: next round */
}

/*
 * Start a new generation, if the current one has rows and the partitions
 * it moves into are empty.  Writers lock the partitions of the generation
 * they write before they check that it is still current enough
 * (outbox_chain_gen_still), so with these locks held no write into the
 * oldest partitions is in progress or can start.
 */
static void
rotate_start_unit(void *arg)
{
	RotateArgs *r = arg;
	int			oldest = r->oldest;

	if (!chain_part_empty((int) (r->gen % OUTBOX_CHAIN_PARTS)) &&
		ConditionalLockRelationOid(outbox_chain_part("cursor", oldest), ShareLock) &&
		ConditionalLockRelationOid(outbox_chain_part("batch", oldest), ShareLock) &&
		ConditionalLockRelationOid(outbox_chain_part("settle", oldest), ShareLock) &&
		chain_part_empty(oldest))
	{
		if (SPI_execute(psprintf("UPDATE outbox.chain_state SET gen = gen + 1"
								 " WHERE gen = " INT64_FORMAT, r->gen), false, 0) != SPI_OK_UPDATE ||
			SPI_processed != 1)
			elog(ERROR, "chain rotation failed");
		r->started = true;
		ereport(DEBUG1, (errmsg("outbox started chain generation " INT64_FORMAT, r->gen + 1)));
	}
	else if (!chain_part_empty((int) (r->gen % OUTBOX_CHAIN_PARTS)))
		outbox_round_busy();	/* due, but held: next round */
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

	/*
	 * A new generation, if the current one has rows and is old enough.  An
	 * empty one never rotates: rotation of what nothing wrote is what kept
	 * an idle database writing (issue 9).
	 */
	if (!r.current_rows)
		return;
	if (!TimestampDifferenceExceeds(since, r.now, outbox_chain_rotation))
		outbox_round_timer(TimestampTzPlusMilliseconds(since, outbox_chain_rotation));
	else
	{
		r.started = false;
		if (outbox_sub_unit("outbox: rotate", OUTBOX_DB_ROTATE, 0, 0, rotate_start_unit, &r) &&
			r.started)
			since = r.now;
	}
}
