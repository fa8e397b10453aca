/*-------------------------------------------------------------------------
 *
 * maintain.c
 *		What the worker does in a round: notifications, lease expiry,
 *		retention.
 *
 * Every unit runs in a transaction of its own, connected to SPI as the
 * worker (the bootstrap superuser), with search_path pinned by the worker.
 * Units work in small steps: no statement touches more than a bounded
 * number of rows, and the only strong lock, on a bucket being emptied, is
 * taken without waiting.
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

/* outbox.chain_rotation: milliseconds between generations of chain rows */
int			outbox_chain_rotation = 10000;

static void
unit_begin(const char *what)
{
	pgstat_report_activity(STATE_RUNNING, what);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
unit_end(void)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
}

TimestampTz
outbox_earliest(TimestampTz a, TimestampTz b)
{
	if (a == 0)
		return b;
	if (b == 0)
		return a;
	return Min(a, b);
}

static void
notify_sub(const char *name)
{
	char		channel[NAMEDATALEN];

	snprintf(channel, sizeof(channel), "outbox.%s", name);
	Async_Notify(channel, name);
}

/*
 * Notify the subscriptions (not paused) that read any of the topics whose
 * bits are set.  Without shared memory there are no bits: look at the
 * events and ready deliveries that appeared since the last round instead.
 */
static void notify_matching(uint64 bits);

static void
notify_ready(uint64 bits)
{
	static SPIPlanPtr new_topics_plan = NULL;
	static SPIPlanPtr ready_plan = NULL;
	static int64 seen_id = -1;
	uint64		i;

	if (ready_plan == NULL)
	{
		Oid			t1[1] = {INT8OID};

		new_topics_plan = outbox_prepare("SELECT DISTINCT topic, max(id) OVER ()"
										 " FROM outbox.event WHERE id > $1", 1, t1);
		ready_plan = outbox_prepare("SELECT DISTINCT d.sub_id FROM outbox.delivery d"
									" WHERE d.state = 'ready'", 0, NULL);
	}

	if (outbox_shared == NULL)
	{
		Datum		arg;

		if (seen_id < 0)
		{
			/* first round: anything may be waiting */
			bits = OUTBOX_WAKE_ALL;
			seen_id = 0;
		}
		arg = Int64GetDatum(seen_id);
		if (SPI_execute_plan(new_topics_plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "new events lookup failed");
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			bits |= outbox_topic_bit(TextDatumGetCString(
				SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)));
			seen_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 2, &isnull));
		}
		if (SPI_execute_plan(ready_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "ready deliveries lookup failed");
		if (SPI_processed > 0)
			bits = OUTBOX_WAKE_ALL;
	}

	notify_matching(bits);
}

/* subscriptions as notify_matching needs them, cached in the worker */
typedef struct SubBits
{
	char	   *name;
	uint64		bits;			/* OUTBOX_WAKE_ALL for every topic */
} SubBits;

static List *sub_cache = NIL;
static bool sub_cache_valid = false;
static Oid	sub_cache_relid = InvalidOid;

static void
sub_cache_invalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == sub_cache_relid)
		sub_cache_valid = false;
}

/* A commit changed subscriptions: reload the list before notifying again. */
void
outbox_forget_subscriptions(void)
{
	sub_cache_valid = false;
}

/*
 * The subscriptions that are not paused, with their topic bits.  Reloaded
 * after subscribe, unsubscribe, pause and resume, which send a relcache
 * invalidation on outbox.subscription.
 */
static List *
subscriptions(void)
{
	static SPIPlanPtr plan = NULL;
	static bool registered = false;
	MemoryContext oldcxt;
	ListCell   *lc;
	uint64		i;

	if (sub_cache_valid)
		return sub_cache;
	if (!registered)
	{
		CacheRegisterRelcacheCallback(sub_cache_invalidate, (Datum) 0);
		registered = true;
	}
	sub_cache_relid = outbox_relid("subscription");
	sub_cache_valid = true;
	if (plan == NULL)
		plan = outbox_prepare("SELECT name, topics FROM outbox.subscription"
							  " WHERE NOT paused", 0, NULL);
	/*
	 * A fresh snapshot, not the unit's: an invalidation accepted earlier in
	 * this transaction may be for a commit its snapshot does not see, and
	 * the list would then stay stale until the next change.
	 */
	if (SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
	{
		sub_cache_valid = false;
		elog(ERROR, "subscription lookup failed");
	}
	foreach(lc, sub_cache)
		pfree(((SubBits *) lfirst(lc))->name);
	list_free_deep(sub_cache);
	sub_cache = NIL;
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		bool		all_topics;
		SubBits    *sb = palloc(sizeof(SubBits));
		Datum		topics = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &all_topics);

		sb->name = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull));
		sb->bits = 0;
		if (all_topics)
			sb->bits = OUTBOX_WAKE_ALL;
		else
		{
			Datum	   *elems;
			int			nelems,
						j;

			deconstruct_array(DatumGetArrayTypeP(topics), TEXTOID, -1, false,
							  TYPALIGN_INT, &elems, NULL, &nelems);
			for (j = 0; j < nelems; j++)
				sb->bits |= outbox_topic_bit(TextDatumGetCString(elems[j]));
		}
		sub_cache = lappend(sub_cache, sb);
	}
	MemoryContextSwitchTo(oldcxt);
	return sub_cache;
}

/*
 * Notify every subscription (not paused) with a topic whose bit is set.
 */
static void
notify_matching(uint64 bits)
{
	ListCell   *lc;

	if (bits == 0)
		return;
	foreach(lc, subscriptions())
	{
		SubBits    *sb = lfirst(lc);

		if (bits == OUTBOX_WAKE_ALL || (sb->bits & bits) != 0)
			notify_sub(sb->name);
	}
}

/*
 * Leases that passed, of claims that committed, are treated as
 * fail(..., error => 'lease expired'): scheduled at the backoff, or dead
 * at max_attempts.  A claim whose transaction is still open is invisible
 * here, so its leases are not touched.  Returns when the next known lease
 * ends.
 */
static TimestampTz
expire_leases(void)
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

		/* the backoff of fail(), in SQL: 2^(attempts-1) capped to stay finite */
		dplan = outbox_prepare(
			"WITH due AS ("
			" SELECT d.sub_id, d.event_id FROM outbox.delivery d"
			" WHERE d.state = 'leased' AND d.lease_until < pg_catalog.clock_timestamp()"
			" ORDER BY d.lease_until LIMIT 1000 FOR UPDATE SKIP LOCKED)"
			" UPDATE outbox.delivery d SET"
			"  state = CASE WHEN d.attempts >= s.max_attempts THEN 'dead' ELSE 'scheduled' END,"
			"  visible_at = CASE WHEN d.attempts >= s.max_attempts THEN NULL ELSE"
			"   now() + LEAST(s.backoff_max, s.backoff_base * power(2, LEAST(d.attempts - 1, 30)))"
			"   * (0.5 + random() * 0.5) END,"
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
			"   now() + LEAST(s.backoff_max, s.backoff_base) * (0.5 + random() * 0.5) END,"
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
		notify_sub(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
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
		char	   *name = TextDatumGetCString(SPI_getbinval(tab->vals[i], tab->tupdesc, 4, &isnull));
		int64	   *taken;
		Datum	   *keys;
		bool	   *key_nulls;
		int			ntaken;
		Datum		args[3];

		/* an ack or fail of this batch in progress: next round */
		ntaken = outbox_batch_take(sub_id, gen, batch_no, NULL, 0, true,
								   &taken, &keys, &key_nulls);
		if (ntaken <= 0)
			continue;
		args[0] = Int32GetDatum(sub_id);
		outbox_taken_arrays(taken, keys, key_nulls, ntaken, &args[1], &args[2]);
		if (SPI_execute_plan(bins, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "lease expiry insert failed");
		notify_sub(name);
	}

	if (SPI_execute_plan(next_plan, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next lease lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		next = DatumGetTimestampTz(d);
	return next;
}

/*
 * Notify the subscriptions whose delayed or retried deliveries came due
 * since the last round.  Returns when the next one comes due.
 */
static TimestampTz
notify_due(void)
{
	static SPIPlanPtr due_plan = NULL;
	static SPIPlanPtr next_plan = NULL;
	static SPIPlanPtr delayed_plan = NULL;
	static SPIPlanPtr next_delayed_plan = NULL;
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = 0;
	Datum		args[2];
	uint64		i;
	bool		isnull;
	Datum		d;
	uint64		bits = 0;

	if (next_delayed_plan == NULL)
	{
		Oid			t2[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
		Oid			t1[1] = {TIMESTAMPTZOID};

		due_plan = outbox_prepare(
			"SELECT DISTINCT s.name FROM outbox.delivery d"
			" JOIN outbox.subscription s ON s.id = d.sub_id"
			" WHERE d.state IN ('ready', 'scheduled')"
			" AND d.visible_at > $1 AND d.visible_at <= $2 AND NOT s.paused", 2, t2);
		next_plan = outbox_prepare(
			"SELECT min(visible_at) FROM outbox.delivery"
			" WHERE state IN ('ready', 'scheduled') AND visible_at > $1", 1, t1);
		/* delayed events no claim has reached yet are only in the stream */
		delayed_plan = outbox_prepare(
			"SELECT DISTINCT topic FROM outbox.event"
			" WHERE deliver_at > $1 AND deliver_at <= $2", 2, t2);
		next_delayed_plan = outbox_prepare(
			"SELECT min(deliver_at) FROM outbox.event WHERE deliver_at > $1", 1, t1);
	}
	args[0] = TimestampTzGetDatum(last);
	args[1] = TimestampTzGetDatum(now);
	if (SPI_execute_plan(due_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "due deliveries lookup failed");
	for (i = 0; i < SPI_processed; i++)
		notify_sub(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull)));
	if (SPI_execute_plan(delayed_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "delayed events lookup failed");
	for (i = 0; i < SPI_processed; i++)
		bits |= outbox_topic_bit(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																   SPI_tuptable->tupdesc, 1, &isnull)));
	notify_matching(bits);

	if (SPI_execute_plan(next_plan, &args[1], NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next due lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		next = DatumGetTimestampTz(d);
	if (SPI_execute_plan(next_delayed_plan, &args[1], NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next delayed event lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		next = outbox_earliest(next, DatumGetTimestampTz(d));
	last = now;
	return next;
}

/*
 * The notifying part of a round, in one transaction, so that a
 * subscription gets at most one notification per round (PostgreSQL folds
 * identical notifications of a transaction into one): for commits that
 * made deliveries ready, for leases returned, for deliveries that came
 * due.  Returns when the next lease or delivery falls due.
 */
TimestampTz
outbox_notify_round(uint64 bits, bool timed)
{
	TimestampTz next = 0;

	if (bits == 0 && !timed)
		return 0;
	if (!timed && outbox_shared != NULL)
	{
		/*
		 * The usual wake-up: with the subscriptions cached (the check is
		 * made after the transaction has taken in invalidations) there is
		 * no query to run, only notifications to send.
		 */
		pgstat_report_activity(STATE_RUNNING, "outbox: notify");
		StartTransactionCommand();
		if (sub_cache_valid)
		{
			notify_matching(bits);
			CommitTransactionCommand();
			return 0;
		}
		CommitTransactionCommand();
	}
	unit_begin("outbox: notify");
	if (bits != 0 || (timed && outbox_shared == NULL))
		notify_ready(bits);
	if (timed)
	{
		next = expire_leases();
		next = outbox_earliest(next, notify_due());
	}
	unit_end();
	return next;
}

/*
 * Move every subscription's chain past what is not for it and fold what
 * is settled, each subscription in its own short transaction.
 */
static void
advance_subscriptions(void)
{
	static SPIPlanPtr plan = NULL;
	List	   *names = NIL;
	ListCell   *lc;
	uint64		i;
	MemoryContext outer = CurrentMemoryContext;

	unit_begin("outbox: advance");
	if (plan == NULL)
		plan = outbox_prepare("SELECT name FROM outbox.subscription ORDER BY id", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "subscription list failed");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(outer);

		names = lappend(names, TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc, 1, &isnull)));
		MemoryContextSwitchTo(old);
	}
	unit_end();

	foreach(lc, names)
	{
		unit_begin("outbox: advance");
		PG_TRY();
		{
			outbox_claim_advance(outbox_lookup_sub((char *) lfirst(lc)));
		}
		PG_CATCH();
		{
			/* unsubscribed meanwhile: nothing to do */
			if (geterrcode() != ERRCODE_UNDEFINED_OBJECT)
				PG_RE_THROW();
			FlushErrorState();
			AbortCurrentTransaction();
			continue;
		}
		PG_END_TRY();
		unit_end();
		outbox_notify_between();
	}
}

/*
 * Delete, a step at a time: done markers behind their subscription's
 * cursor, commit-order records no chain can need, and kept copies of events
 * that no longer have a dead letter.  (Old cursor, batch and settle rows go
 * with their partition: rotate_chain.)
 */
static void
clean_up(void)
{
	static SPIPlanPtr done_plan = NULL;
	static SPIPlanPtr keys_plan = NULL;
	static SPIPlanPtr kept_plan = NULL;

	unit_begin("outbox: clean up");
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
	unit_end();
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
rotate_and_truncate(void)
{
	int			current;
	TimestampTz since;
	TimestampTz now = GetCurrentTimestamp();
	int			b;
	bool		isnull;
	bool		next_empty = false;
	Oid			state_relid;

	unit_begin("outbox: retention");
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
	unit_end();
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
static void
rotate_chain(void)
{
	static TimestampTz since = 0;
	TimestampTz now = GetCurrentTimestamp();
	int64		gen;
	int			oldest;

	if (since == 0)
		since = now;
	unit_begin("outbox: rotate");
	gen = outbox_chain_gen();
	oldest = (int) ((gen + 1) % OUTBOX_CHAIN_PARTS);

	/* the oldest generation, gen - 3: empty it if nothing needs it */
	if (gen >= OUTBOX_CHAIN_PARTS - 1 && !chain_part_empty(oldest) &&
		!chain_part_needed(gen - (OUTBOX_CHAIN_PARTS - 1)))
	{
		unit_end();
		unit_begin("outbox: rotate");
		if (ConditionalLockRelationOid(outbox_chain_part("cursor", oldest), AccessExclusiveLock) &&
			ConditionalLockRelationOid(outbox_chain_part("batch", oldest), AccessExclusiveLock) &&
			ConditionalLockRelationOid(outbox_chain_part("settle", oldest), AccessExclusiveLock) &&
			!chain_part_needed(gen - (OUTBOX_CHAIN_PARTS - 1)))
		{
			if (SPI_execute(psprintf("TRUNCATE outbox.cursor_%d, outbox.batch_%d, outbox.settle_%d",
									 oldest, oldest, oldest), false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "emptying chain partition %d failed", oldest);
			ereport(DEBUG1, (errmsg("outbox emptied chain generation " INT64_FORMAT,
									gen - (OUTBOX_CHAIN_PARTS - 1))));
		}
		unit_end();
		unit_begin("outbox: rotate");
	}

	/* a new generation, if the current one has rows and is old enough */
	if (TimestampDifferenceExceeds(since, now, outbox_chain_rotation) &&
		!chain_part_empty((int) (gen % OUTBOX_CHAIN_PARTS)) && chain_part_empty(oldest))
	{
		if (SPI_execute("SELECT pg_catalog.nextval('outbox.chain_gen')", false, 1) != SPI_OK_SELECT)
			elog(ERROR, "chain rotation failed");
		since = now;
		ereport(DEBUG1, (errmsg("outbox started chain generation " INT64_FORMAT, gen + 1)));
	}
	unit_end();
}

/*
 * Maintenance, at most once a second.
 */
void
outbox_maintain(void)
{
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (!TimestampDifferenceExceeds(last, now, Min(outbox_naptime, 1000)))
		return;
	last = now;
	advance_subscriptions();
	clean_up();
	outbox_notify_between();
	rotate_and_truncate();
	outbox_notify_between();
	rotate_chain();
}
