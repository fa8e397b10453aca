/*-------------------------------------------------------------------------
 *
 * tally.c
 *		Counts of the stream by topic (outbox.tally), kept by the worker
 *		and read by outbox.stats, so that stats need not read the backlog.
 *
 * The worker reads the events of each new stretch of ids once: ids up to
 * the first id of its snapshot's xmax, so every transaction that could
 * still add an event to the stretch has ended but those the snapshot sees
 * running, which the stretch's row of topic '' lists (open: stats read
 * their events), and the stretch's rows never change.  For each topic with
 * committed events (without deliver_at) in the stretch it writes one row:
 * a running total, and the stretch's ids and enqueue times.  A count over
 * ids (a, b] is then two running totals, less the ids of the two edge rows
 * past a and b; the oldest event is found in the first rows past a, since
 * a row also says before which time none of its events (or later ones) was
 * enqueued (since).
 *
 * A transaction held open (a consumer working inside its claim) costs
 * stats one lookup of its ids, not the stream after it; one that is
 * writing events is waited for a while (stretch_end).
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "maintain.h"
#include "tally.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/transam.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* events read by one unit at most; a longer stretch is split */
#define TALLY_MAX_EVENTS 100000

/*
 * Samples kept for the since bound, and how often the worker's rounds take
 * one.  The tally's own units come every TALLY_EVERY_MS; a burst that
 * commits several stretches between two of them would get, for all of
 * them, the bound of the unit before it, and stats would read row after
 * row of it for the oldest event.  Sampled at every round of the worker,
 * a stretch's bound is about its first commit's time.
 */
#define TALLY_RECENT 256
#define TALLY_SAMPLE_MS 100

/*
 * Samples, oldest first: the server's next xid read after "taken".  Every
 * xid at or past "next" was assigned after "taken", and enqueue assigns the
 * xid before it reads the clock for enqueued_at.  Outbox's xids are the
 * server's plus samples_shift (a restore sets it, restore.c), which takes a
 * transaction to read: the worker samples between its transactions.
 */
static struct
{
	uint64		next;
	TimestampTz taken;
}			recent[TALLY_RECENT];
static int	nrecent = 0;
static uint64 samples_shift = 0;

/* the last unit stopped at TALLY_MAX_EVENTS */
static bool tally_more = false;

/*
 * A stretch stops before a running transaction that has written events
 * (stats would read all of them, each time, for as long as the backlog
 * holds them), for up to TALLY_WAIT_MS: a bulk enqueue ends soon.  Past
 * that (a transaction held open) it is passed and listed as open.  One
 * that has written nothing yet (a consumer's) is passed at once.
 */
#define TALLY_WAIT_MS 10000

static uint64 waited_xid = 0;	/* the transaction the last stretch stopped at */
static TimestampTz waited_since = 0;

/* Has transaction xid (shifted) inserted events, committed or not? */
static bool
has_events(uint64 xid)
{
	SnapshotData dirty;
	char		name[NAMEDATALEN];
	bool		found = false;
	int			b;

	InitDirtySnapshot(dirty);
	for (b = 0; b <= OUTBOX_BUCKETS && !found; b++)
	{
		Relation	rel;
		SysScanDesc scan;
		ScanKeyData key[2];

		if (b < OUTBOX_BUCKETS)
			snprintf(name, sizeof(name), "event_%d", b);
		else
			strlcpy(name, "event_kept", sizeof(name));
		rel = table_open(outbox_relid(name), AccessShareLock);
		ScanKeyInit(&key[0], 1, BTGreaterEqualStrategyNumber, F_INT8GE,
					Int64GetDatum(OUTBOX_XID_FIRST_ID(xid)));
		ScanKeyInit(&key[1], 1, BTLessStrategyNumber, F_INT8LT,
					Int64GetDatum(OUTBOX_XID_FIRST_ID(xid + 1)));
		scan = systable_beginscan(rel, outbox_part_index(rel, "event_id_idx"), true,
								  &dirty, 2, key);
		found = HeapTupleIsValid(systable_getnext(scan));
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	return found;
}

/*
 * Where this stretch may end, at most: before the oldest running
 * transaction after "from" that has written events, while it has not
 * been waited for TALLY_WAIT_MS.
 */
static int64
stretch_end(OutboxSnap *os, int64 from, int64 horizon)
{
	uint32		i;

	for (i = 0; i < os->nxip; i++)
	{
		uint64		x = U64FromFullTransactionId(os->xip[i]);

		if (OUTBOX_XID_FIRST_ID(x + 1) - 1 <= from || !has_events(x))
			continue;
		if (x != waited_xid)
		{
			waited_xid = x;
			waited_since = GetCurrentTimestamp();
		}
		if (TimestampDifferenceExceeds(waited_since, GetCurrentTimestamp(), TALLY_WAIT_MS))
			continue;
		return Max(from, OUTBOX_XID_FIRST_ID(x) - 1);
	}
	return horizon;
}

/* one topic's events of the stretch */
typedef struct TopicTally
{
	char		topic[OUTBOX_MAX_TOPIC_LEN + 1];	/* the hash key */
	int			n;
	int			max;
	Datum	   *ids;
	Datum	   *ats;
} TopicTally;

static void
tally_add(TopicTally *t, int64 id, TimestampTz at)
{
	if (t->n == t->max)
	{
		t->max = t->max == 0 ? 16 : t->max * 2;
		t->ids = t->ids ? repalloc(t->ids, sizeof(Datum) * t->max) :
			palloc(sizeof(Datum) * t->max);
		t->ats = t->ats ? repalloc(t->ats, sizeof(Datum) * t->max) :
			palloc(sizeof(Datum) * t->max);
	}
	t->ids[t->n] = Int64GetDatum(id);
	t->ats[t->n++] = TimestampTzGetDatum(at);
}

/*
 * The since of the last stretch written, and where it started: it holds
 * for every stretch after that one too.
 */
static TimestampTz last_since = 0;
static int64 last_since_from = 0;

/* The latest time before which no event with an id past "from" was enqueued. */
static bool
since_bound(int64 from, TimestampTz *since)
{
	uint64		xid = OUTBOX_ID_XID(from + 1);
	bool		found = last_since != 0 && from >= last_since_from;
	int			i;

	*since = found ? last_since : 0;
	for (i = 0; i < nrecent; i++)
		if (recent[i].next + samples_shift <= xid && (!found || recent[i].taken > *since))
		{
			*since = recent[i].taken;
			found = true;
		}
	if (found)
	{
		last_since = *since;
		last_since_from = from;
	}
	return found;
}

/*
 * Keep a sample.  When the ring is full its older half is thinned to every
 * other sample: recent stretches keep a close bound, and a stretch counted
 * long after it committed (a catch-up after a burst) still finds one.
 */
static void
remember(uint64 next, TimestampTz taken)
{
	if (nrecent == TALLY_RECENT)
	{
		int			half = TALLY_RECENT / 2;
		int			j = 0;
		int			i;

		for (i = 1; i < half; i += 2)
			recent[j++] = recent[i];
		memmove(&recent[j], &recent[half], sizeof(recent[0]) * (TALLY_RECENT - half));
		nrecent = j + TALLY_RECENT - half;
	}
	recent[nrecent].next = next;
	recent[nrecent].taken = taken;
	nrecent++;
}

/*
 * A sample for the since bound, from a round of the worker, at most every
 * TALLY_SAMPLE_MS.  Needs no transaction.
 */
void
outbox_tally_sample(void)
{
	TimestampTz taken = GetCurrentTimestamp();

	if (nrecent > 0 &&
		!TimestampDifferenceExceeds(recent[nrecent - 1].taken, taken, TALLY_SAMPLE_MS))
		return;
	remember(U64FromFullTransactionId(ReadNextFullTransactionId()), taken);
}

/*
 * The rows of the stretch, in one statement: one per topic, and the row of
 * topic '' with every event and the transactions still running ("open").
 * A statement per row (and one more for its running total) cost the worker
 * a few milliseconds a round with a thousand topics, while notifications
 * waited.  The ids and times of all rows go in two arrays, each row taking
 * its slice.
 */
static void
write_topic_rows(HTAB *topics, TopicTally *all, int64 upto, int64 from,
				 TimestampTz since, bool has_since, Datum open)
{
	static SPIPlanPtr plan = NULL;
	long		nrows = hash_get_num_entries(topics) + 1;
	Datum	   *names = palloc(sizeof(Datum) * nrows);
	Datum	   *los = palloc(sizeof(Datum) * nrows);
	Datum	   *his = palloc(sizeof(Datum) * nrows);
	Datum	   *oldest = palloc(sizeof(Datum) * nrows);
	Datum	   *ids = palloc(sizeof(Datum) * Max(2 * all->n, 1));
	Datum	   *ats = palloc(sizeof(Datum) * Max(2 * all->n, 1));
	Datum		args[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	HASH_SEQ_STATUS seq;
	TopicTally *t;
	int			n = 0,
				k = 0,
				i;

	if (plan == NULL)
	{
		Oid			types[10] = {INT8OID, INT8OID, TIMESTAMPTZOID, TEXTARRAYOID,
			INT4ARRAYOID, INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
		INT8ARRAYOID, TIMESTAMPTZARRAYOID};

		plan = outbox_prepare(
			"INSERT INTO outbox.tally (topic, upto, start, total, ids, enqueued_at,"
			" n, first_id, last_id, oldest_at, since, open)"
			" SELECT s.topic, $1, $2,"
			"  coalesce((SELECT t.total FROM outbox.tally t"
			"   WHERE t.topic OPERATOR(pg_catalog.=) s.topic"
			"   ORDER BY t.upto DESC LIMIT 1), 0)"
			"  OPERATOR(pg_catalog.+) (s.hi OPERATOR(pg_catalog.-) s.lo OPERATOR(pg_catalog.+) 1),"
			"  $7[s.lo:s.hi], $8[s.lo:s.hi],"
			"  s.hi OPERATOR(pg_catalog.-) s.lo OPERATOR(pg_catalog.+) 1, $7[s.lo], $7[s.hi],"
			"  CASE WHEN s.hi OPERATOR(pg_catalog.>=) s.lo THEN s.oldest END, $3,"
			"  CASE WHEN s.topic OPERATOR(pg_catalog.=) '' THEN $9 END"
			" FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5),"
			"  pg_catalog.unnest($6), pg_catalog.unnest($10)) AS s(topic, lo, hi, oldest)",
			10, types);
	}
	/* every topic's rows, then the row of topic '' with all the events */
	hash_seq_init(&seq, topics);
	while (all != NULL)
	{
		/* the scan ends once, after which t is the '' row */
		if ((t = hash_seq_search(&seq)) == NULL)
		{
			t = all;
			all = NULL;
		}
		names[n] = CStringGetTextDatum(t->topic);
		los[n] = Int32GetDatum(k + 1);
		memcpy(&ids[k], t->ids, sizeof(Datum) * t->n);
		memcpy(&ats[k], t->ats, sizeof(Datum) * t->n);
		oldest[n] = TimestampTzGetDatum(0);	/* none: n = 0 */
		if (t->n > 0)
			oldest[n] = t->ats[0];
		for (i = 1; i < t->n; i++)
			if (DatumGetTimestampTz(t->ats[i]) < DatumGetTimestampTz(oldest[n]))
				oldest[n] = t->ats[i];
		k += t->n;
		his[n++] = Int32GetDatum(k);
	}
	args[0] = Int64GetDatum(upto);
	args[1] = Int64GetDatum(from);
	args[2] = TimestampTzGetDatum(since);
	nulls[2] = has_since ? ' ' : 'n';
	args[3] = outbox_make_array(names, n, TEXTOID);
	args[4] = outbox_make_array(los, n, INT4OID);
	args[5] = outbox_make_array(his, n, INT4OID);
	args[6] = outbox_make_array(ids, k, INT8OID);
	args[7] = outbox_make_array(ats, k, TIMESTAMPTZOID);
	args[8] = open;
	args[9] = outbox_make_array(oldest, n, TIMESTAMPTZOID);
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "tally insert failed");
}

/*
 * Count the next stretch: the events after the last row of topic '' (from
 * id 0 when there is none: after an update, or a restore, the stream there
 * is counted first) up to what no running transaction can add to.
 */
static void
tally_unit(void *arg)
{
	static SPIPlanPtr last_plan = NULL;
	static SPIPlanPtr events_plan = NULL;
	TimestampTz taken = GetCurrentTimestamp();
	uint64		next = U64FromFullTransactionId(ReadNextFullTransactionId());
	uint64		shift = outbox_xid_shift();
	Snapshot	snap;
	OutboxSnap *os;
	int64		from = 0,
				horizon,
				upto,
				prev = -1;
	Datum		args[2];
	Portal		portal;
	HASHCTL		ctl;
	HTAB	   *topics;
	TopicTally	all;
	int			nread = 0;
	bool		any = false;
	TimestampTz since = 0;
	bool		has_since;
	TopicTally *t;

	tally_more = false;
	if (last_plan == NULL)
	{
		Oid			t2[2] = {INT8OID, INT8OID};

		last_plan = outbox_prepare("SELECT upto FROM outbox.tally"
								   " WHERE topic OPERATOR(pg_catalog.=) ''"
								   " ORDER BY upto DESC LIMIT 1", 0, NULL);
		events_plan = outbox_prepare("SELECT id, topic, enqueued_at, deliver_at IS NULL"
									 " FROM outbox.event"
									 " WHERE id OPERATOR(pg_catalog.>) $1"
									 " AND id OPERATOR(pg_catalog.<=) $2 ORDER BY id", 2, t2);
	}
	/* retention's TRUNCATE is not MVCC-safe: as every reader of events */
	outbox_lock_event_tables();
	snap = RegisterSnapshot(GetLatestSnapshot());
	os = outbox_snap_from_snapshot(snap);
	horizon = OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(os->xmax)) - 1;
	if (shift != samples_shift)
	{
		/* a restore: what was sampled before says nothing of the new xids */
		nrecent = 0;
		last_since = 0;
		samples_shift = shift;
	}
	remember(next, taken);

	if (SPI_execute_plan(last_plan, NULL, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "tally lookup failed");
	if (SPI_processed > 0)
	{
		bool		isnull;

		from = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	}
	if (horizon > from)
		horizon = stretch_end(os, from, horizon);
	if (horizon <= from)
	{
		UnregisterSnapshot(snap);
		return;
	}

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(((TopicTally *) 0)->topic);
	ctl.entrysize = sizeof(TopicTally);
	ctl.hcxt = CurrentMemoryContext;
	topics = hash_create("outbox tally topics", 256, &ctl,
						 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	memset(&all, 0, sizeof(all));
	upto = horizon;
	args[0] = Int64GetDatum(from);
	args[1] = Int64GetDatum(horizon);
	PushActiveSnapshot(snap);
	portal = SPI_cursor_open(NULL, events_plan, args, NULL, true);
	PopActiveSnapshot();
	for (;;)
	{
		uint64		i;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			char	   *topic;
			TimestampTz at;
			bool		found;

			/* an event and its kept copy, while both exist */
			if (id == prev)
				continue;
			if (nread == TALLY_MAX_EVENTS)
			{
				/* the rest in the next unit: this stretch ends before id */
				upto = prev;
				tally_more = true;
				break;
			}
			prev = id;
			nread++;
			any = true;
			if (!DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull)))
				continue;		/* deliver_at: stats read these by their index */
			topic = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
			at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
			t = hash_search(topics, topic, HASH_ENTER, &found);
			if (!found)
			{
				t->n = t->max = 0;
				t->ids = t->ats = NULL;
			}
			tally_add(t, id, at);
			tally_add(&all, id, at);
			pfree(topic);
		}
		SPI_freetuptable(SPI_tuptable);
		if (tally_more)
			break;
	}
	SPI_cursor_close(portal);
	UnregisterSnapshot(snap);
	/* nothing committed there (yet, or ever): nothing to write */
	if (!any)
		return;

	has_since = since_bound(from, &since);

	/*
	 * The transactions of the stretch still running: their events, which
	 * the snapshot did not show, are read by stats.  They go in the row of
	 * topic '', which marks the stretch as counted.
	 */
	{
		Datum	   *open = palloc(sizeof(Datum) * Max(os->nxip, 1));
		int			nopen = 0;
		uint32		i;

		for (i = 0; i < os->nxip; i++)
		{
			uint64		x = U64FromFullTransactionId(os->xip[i]);

			if (OUTBOX_XID_FIRST_ID(x + 1) - 1 > from && OUTBOX_XID_FIRST_ID(x) <= upto)
				open[nopen++] = Int64GetDatum((int64) x);
		}
		write_topic_rows(topics, &all, upto, from, since, has_since,
						 outbox_make_array(open, nopen, INT8OID));
	}
	if (tally_more)
		outbox_round_busy();
}

/*
 * Count what committed since the last time: every TALLY_EVERY_MS while the
 * database's activity count keeps moving, at once when it stopped, and
 * twice more after that (as advance_subscriptions does: a transaction that
 * ended after the last round may still have left events), and until a
 * long stream is all counted.  slot NULL (no shared memory): every
 * TALLY_EVERY_MS.  Stats
 * read what is not counted yet, so counting more often buys them little,
 * and each time costs a row per topic and a unit that notifications wait
 * for (every second, with 1,000 topics, it raised the commit-to-notified
 * p99 of bench/scale.sh from about 5 to 12 ms).  A long stream (a burst,
 * or the stream there was before an update or a restore) takes units of
 * TALLY_MAX_EVENTS for up to TALLY_ROUND_MS a round, with notifications
 * sent between them.
 */
#define TALLY_EVERY_MS 5000
#define TALLY_ROUND_MS 500

void
outbox_tally(OutboxDbSlot *slot, uint32 activity)
{
	static uint32 tallied_activity = 0;
	static uint32 seen_activity = 0;
	static int	rounds = 0;
	static TimestampTz last = 0;
	TimestampTz start = GetCurrentTimestamp();
	bool		moving = slot == NULL || activity != seen_activity;

	seen_activity = activity;
	if (slot != NULL && activity == tallied_activity && rounds > 2 && !tally_more)
		return;
	if (moving && !tally_more && last != 0 &&
		!TimestampDifferenceExceeds(last, start, TALLY_EVERY_MS))
	{
		/* not yet; the next round looks again */
		outbox_round_busy();
		return;
	}
	last = start;
	if (slot == NULL || activity != tallied_activity)
		rounds = 0;
	tallied_activity = activity;
	rounds++;
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (!outbox_sub_unit("outbox: tally the stream", OUTBOX_DB_TALLY, 0, 0,
							 tally_unit, NULL) || !tally_more ||
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), TALLY_ROUND_MS))
			break;
		outbox_notify_between();
	}
}

/*
 * Reading the tally (stats.c).  The range it covers: (*start, *upto], from
 * the start of its oldest stretch to the end of its newest, and the xids
 * (sorted) whose events it does not count there, since they were running
 * when it counted.  False if it has none.
 */
bool
outbox_tally_bounds(Snapshot snap, int64 *start, int64 *upto, int64 **open,
					int *nopen)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr open_plan = NULL;
	bool		isnull1,
				isnull2;
	uint64		i;

	if (plan == NULL)
		plan = outbox_prepare("SELECT"
							  " (SELECT start FROM outbox.tally WHERE topic OPERATOR(pg_catalog.=) ''"
							  "  ORDER BY upto LIMIT 1),"
							  " (SELECT upto FROM outbox.tally WHERE topic OPERATOR(pg_catalog.=) ''"
							  "  ORDER BY upto DESC LIMIT 1)", 0, NULL);
	if (SPI_execute_snapshot(plan, NULL, NULL, snap, InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "tally lookup failed");
	*start = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										 1, &isnull1));
	*upto = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										2, &isnull2));
	SPI_freetuptable(SPI_tuptable);
	*nopen = 0;
	*open = NULL;
	if (isnull1 || isnull2 || *start >= *upto)
		return false;

	if (open_plan == NULL)
		open_plan = outbox_prepare("SELECT x FROM (SELECT open FROM outbox.tally"
								   "  WHERE open OPERATOR(pg_catalog.<>) '{}' ORDER BY upto) t,"
								   " pg_catalog.unnest(t.open) x", 0, NULL);
	if (SPI_execute_snapshot(open_plan, NULL, NULL, snap, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "tally lookup failed");
	*open = palloc(sizeof(int64) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		(*open)[(*nopen)++] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														  SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	return true;
}

/*
 * A tally row as a count reads it: its summary, and its ids and enqueue
 * times only when a range ends inside it or some of its ids are to be
 * left out (ids NULL otherwise: reading every row's arrays was a third of
 * what stats cost at 1,000 subscriptions).
 */
typedef struct RowIds
{
	int			n;
	int64		first;			/* ids[0], ids[n - 1]; when n > 0 */
	int64		last;
	TimestampTz oldest_at;		/* the least of ats */
	int64	   *ids;			/* or NULL */
	TimestampTz *ats;
} RowIds;

/*
 * Columns col .. col + 5 of tup: n, first_id, last_id, oldest_at, ids,
 * enqueued_at (these two may be NULL).
 */
static void
row_ids(HeapTuple tup, TupleDesc desc, int col, RowIds *r)
{
	bool		isnull;
	Datum		d;

	memset(r, 0, sizeof(*r));
	r->n = DatumGetInt32(SPI_getbinval(tup, desc, col, &isnull));
	if (r->n == 0)
		return;
	r->first = DatumGetInt64(SPI_getbinval(tup, desc, col + 1, &isnull));
	r->last = DatumGetInt64(SPI_getbinval(tup, desc, col + 2, &isnull));
	r->oldest_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, col + 3, &isnull));
	d = SPI_getbinval(tup, desc, col + 4, &isnull);
	if (!isnull)
		r->ids = (int64 *) ARR_DATA_PTR(DatumGetArrayTypePCopy(d));
	d = SPI_getbinval(tup, desc, col + 5, &isnull);
	if (!isnull)
		r->ats = (TimestampTz *) ARR_DATA_PTR(DatumGetArrayTypePCopy(d));
}

/* rows past a that the count reads with its first row, for the oldest */
#define TALLY_ROWS_AHEAD 3

/* a row past a probe's a, as the count reads it */
typedef struct AheadRow
{
	int64		upto;
	int64		total;
	Datum		since;
	bool		since_null;
	RowIds		row;
} AheadRow;

typedef struct AheadRows
{
	int			n;
	AheadRow	rows[TALLY_ROWS_AHEAD];
} AheadRows;

static int
cmp_ahead(const void *a, const void *b)
{
	int64		x = ((const AheadRow *) a)->upto;
	int64		y = ((const AheadRow *) b)->upto;

	return (x > y) - (x < y);
}

/*
 * SQL: the columns row_ids reads of tally row t, its arrays only if one of
 * the probe's ends (q.a, q.b) falls inside it or the probe leaves ids out
 * (q.skip).
 */
#define ROW_COLUMNS(t) \
	t ".n, " t ".first_id, " t ".last_id, " t ".oldest_at," \
	" CASE WHEN " ROW_NEEDS_ARRAYS(t) " THEN (SELECT r.ids FROM outbox.tally r" \
	"  WHERE r.topic OPERATOR(pg_catalog.=) q.topic" \
	"  AND r.upto OPERATOR(pg_catalog.=) " t ".upto) END," \
	" CASE WHEN " ROW_NEEDS_ARRAYS(t) " THEN (SELECT r.enqueued_at FROM outbox.tally r" \
	"  WHERE r.topic OPERATOR(pg_catalog.=) q.topic" \
	"  AND r.upto OPERATOR(pg_catalog.=) " t ".upto) END"

/*
 * What the laterals over the tally select: no arrays, which ROW_COLUMNS
 * fetches by the key where needed.  With a few rows per topic the planner
 * reads a topic's rows with a bitmap scan and sorts them, whole: with the
 * arrays, copying them was 80 % of the statement (at 1M events, ten rows
 * per topic).
 */
#define NARROW_COLUMNS \
	"t.upto, t.total, t.since, t.n, t.first_id, t.last_id, t.oldest_at"
#define ROW_NEEDS_ARRAYS(t) \
	"(q.skip OR (q.a OPERATOR(pg_catalog.>=) " t ".first_id" \
	" AND q.a OPERATOR(pg_catalog.<) " t ".last_id)" \
	" OR (q.b OPERATOR(pg_catalog.>=) " t ".first_id" \
	" AND q.b OPERATOR(pg_catalog.<) " t ".last_id))"

/* how many of the row's ids (sorted) are greater than x */
static int
ids_after(RowIds *r, int64 x)
{
	int			lo = 0,
				hi = r->n;

	if (r->n == 0 || x < r->first)
		return r->n;
	if (x >= r->last)
		return 0;
	if (r->ids == NULL)			/* ROW_NEEDS_ARRAYS says otherwise */
		elog(ERROR, "tally row lacks the ids of a range that ends inside it");
	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (r->ids[mid] <= x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return r->n - lo;
}

/* The oldest enqueue time of the row's ids in (a, b] that skip lacks. */
static void
row_oldest(OutboxTallyProbe *p, RowIds *r)
{
	int			i;

	if (r->n == 0 || r->last <= p->a || r->first > p->b)
		return;					/* none in (a, b] */
	if (r->ids == NULL)
	{
		/* the whole row is in (a, b], none left out (ROW_NEEDS_ARRAYS) */
		if (p->oldest == 0 || r->oldest_at < p->oldest)
			p->oldest = r->oldest_at;
		return;
	}
	for (i = 0; i < r->n; i++)
	{
		if (r->ids[i] <= p->a)
			continue;
		if (r->ids[i] > p->b)
			break;
		if (p->skip != NULL && hash_search(p->skip, &r->ids[i], HASH_FIND, NULL) != NULL)
			continue;
		if (p->oldest == 0 || r->ats[i] < p->oldest)
			p->oldest = r->ats[i];
	}
}

/*
 * For each probe: how many events of its topic without deliver_at the
 * tally counts in ids (a, b], and the oldest enqueue time among them
 * (leaving out the ids in skip).  a and b must lie within the bounds read
 * with the same snapshot (outbox_tally_bounds), newest the newest stretch's
 * end.
 *
 * One statement reads, per probe, what the count at b takes (the first row
 * past b, or the last one up to b) and the first TALLY_ROWS_AHEAD rows
 * past a: the first gives the count at a, and they give the oldest until
 * a row's since says that nothing from it on is older than what was found.
 * Only a probe whose oldest is not settled by then reads on, row by row.
 * (Reading the rows past a one statement at a time cost stats a round of
 * index lookups per row; a burst of bulk enqueues makes a few rows whose
 * since is older than their events.)
 */
void
outbox_tally_count(OutboxTallyProbe *probes, int n, int64 newest, Snapshot snap)
{
	static SPIPlanPtr count_plan = NULL;
	static SPIPlanPtr next_plan = NULL;
	Datum	   *nos = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *topics = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *as = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *bs = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *skips = palloc(sizeof(Datum) * Max(n, 1));
	int64	   *cum_b = palloc(sizeof(int64) * Max(n, 1));
	int64	   *after = palloc(sizeof(int64) * Max(n, 1));
	AheadRows  *ahead = palloc0(sizeof(AheadRows) * Max(n, 1));
	Datum		args[6];
	int			nestlevel;
	int			i,
				m;
	uint64		r;

	if (n == 0)
		return;
	if (count_plan == NULL)
	{
		Oid			t6[6] = {INT4ARRAYOID, TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID, INT8OID,
		BOOLARRAYOID};
		Oid			t5n[5] = {INT4ARRAYOID, TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
		BOOLARRAYOID};

		/* kind 0: the count at b; kind 1: the rows past a */
		count_plan = outbox_prepare(
			"SELECT 0, q.n, fb.upto, fb.total, NULL::pg_catalog.timestamptz, "
			ROW_COLUMNS("fb") ", lb.total"
			" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
			"  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($6))"
			"  AS q(n, topic, a, b, skip)"
			/* none past the newest stretch ($5): no lookup */
			" LEFT JOIN LATERAL (SELECT " NARROW_COLUMNS
			"  FROM outbox.tally t WHERE q.b OPERATOR(pg_catalog.<) $5"
			"  AND t.topic OPERATOR(pg_catalog.=) q.topic"
			"  AND t.upto OPERATOR(pg_catalog.>) q.b ORDER BY t.upto LIMIT 1) fb ON true"
			/* and the last row up to b only where there is none past it */
			" LEFT JOIN LATERAL (SELECT t.total"
			"  FROM outbox.tally t WHERE fb.upto IS NULL"
			"  AND t.topic OPERATOR(pg_catalog.=) q.topic"
			"  AND t.upto OPERATOR(pg_catalog.<=) q.b ORDER BY t.upto DESC LIMIT 1) lb ON true"
			" UNION ALL"
			" SELECT 1, q.n, fa.upto, fa.total, fa.since, " ROW_COLUMNS("fa") ", NULL"
			" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
			"  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($6))"
			"  AS q(n, topic, a, b, skip)"
			" JOIN LATERAL (SELECT " NARROW_COLUMNS
			"  FROM outbox.tally t WHERE t.topic OPERATOR(pg_catalog.=) q.topic"
			"  AND t.upto OPERATOR(pg_catalog.>) q.a ORDER BY t.upto"
			"  LIMIT " CppAsString2(TALLY_ROWS_AHEAD) ") fa ON true",
			6, t6);
		next_plan = outbox_prepare(
			"SELECT q.n, t.upto, t.since, " ROW_COLUMNS("t")
			" FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
			"  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))"
			"  AS q(n, topic, a, b, skip)"
			" JOIN LATERAL (SELECT " NARROW_COLUMNS
			"  FROM outbox.tally t WHERE t.topic OPERATOR(pg_catalog.=) q.topic"
			"  AND t.upto OPERATOR(pg_catalog.>) q.a ORDER BY t.upto LIMIT 1) t ON true",
			5, t5n);
	}
	for (i = 0; i < n; i++)
	{
		probes[i].count = 0;
		probes[i].oldest = 0;
		nos[i] = Int32GetDatum(i);
		topics[i] = CStringGetTextDatum(probes[i].topic);
		as[i] = Int64GetDatum(probes[i].a);
		bs[i] = Int64GetDatum(probes[i].b);
		skips[i] = BoolGetDatum(probes[i].skip != NULL);
		cum_b[i] = -1;
		after[i] = -1;			/* no more rows to read for the oldest */
	}
	args[0] = outbox_make_array(nos, n, INT4OID);
	args[1] = outbox_make_array(topics, n, TEXTOID);
	args[2] = outbox_make_array(as, n, INT8OID);
	args[3] = outbox_make_array(bs, n, INT8OID);
	args[4] = Int64GetDatum(newest);
	args[5] = outbox_make_array(skips, n, BOOLOID);
	/*
	 * Planned without bitmap scans: the planner cannot know how many of a
	 * topic's rows lie past a, guesses a third, and then reads every row of
	 * the topic with a bitmap scan (each in a block of its own: rows are
	 * written a stretch at a time) to sort them for the first three, where
	 * an index scan in upto order stops after three.  At ten rows per topic
	 * that was 30 us a probe against 5.
	 */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_execute_snapshot(count_plan, args, NULL, snap, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "tally count failed");
	AtEOXact_GUC(true, nestlevel);
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int			kind = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		Datum		upto;
		AheadRow   *a;

		i = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		upto = SPI_getbinval(tup, desc, 3, &isnull);
		if (kind == 0)
		{
			if (!isnull)
			{
				RowIds		fb;

				row_ids(tup, desc, 6, &fb);
				cum_b[i] = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull)) -
					ids_after(&fb, probes[i].b);
			}
			else
			{
				Datum		lb = SPI_getbinval(tup, desc, 12, &isnull);

				/* none: no row of the topic at all up to b (checked below) */
				if (!isnull)
					cum_b[i] = DatumGetInt64(lb);
			}
			continue;
		}
		if (ahead[i].n == TALLY_ROWS_AHEAD)
			elog(ERROR, "tally count read too many rows");
		a = &ahead[i].rows[ahead[i].n++];
		a->upto = DatumGetInt64(upto);
		a->total = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		a->since = SPI_getbinval(tup, desc, 5, &a->since_null);
		row_ids(tup, desc, 6, &a->row);
	}
	SPI_freetuptable(SPI_tuptable);

	for (i = 0; i < n; i++)
	{
		OutboxTallyProbe *p = &probes[i];
		AheadRows  *ah = &ahead[i];
		int			k;

		if (ah->n == 0)
			continue;			/* no event of the topic past a */
		/* a row past a and none past b: there is one up to b */
		if (cum_b[i] < 0)
			elog(ERROR, "tally of topic \"%s\" has no row up to " INT64_FORMAT,
				 p->topic, p->b);
		/* in upto order, whatever order the rows came in */
		if (ah->n > 1)
			qsort(ah->rows, ah->n, sizeof(AheadRow), cmp_ahead);
		p->count = cum_b[i] - (ah->rows[0].total - ids_after(&ah->rows[0].row, p->a));
		if (p->count <= 0)
			continue;
		row_oldest(p, &ah->rows[0].row);
		for (k = 1; k < ah->n && ah->rows[k - 1].upto < p->b; k++)
		{
			/* nothing of this row on was enqueued before what was found */
			if (p->oldest != 0 && !ah->rows[k].since_null &&
				DatumGetTimestampTz(ah->rows[k].since) >= p->oldest)
				break;
			row_oldest(p, &ah->rows[k].row);
		}
		/* all rows read were needed, and there are more up to b */
		if (k == ah->n && ah->n == TALLY_ROWS_AHEAD && ah->rows[k - 1].upto < p->b)
			after[i] = ah->rows[k - 1].upto;
	}

	/* the oldest, where the rows read did not settle it: row after row */
	for (;;)
	{
		m = 0;
		for (i = 0; i < n; i++)
			if (after[i] >= 0)
			{
				nos[m] = Int32GetDatum(i);
				topics[m] = CStringGetTextDatum(probes[i].topic);
				as[m] = Int64GetDatum(after[i]);
				bs[m] = Int64GetDatum(probes[i].b);
				skips[m++] = BoolGetDatum(probes[i].skip != NULL);
				after[i] = -1;
			}
		if (m == 0)
			break;
		CHECK_FOR_INTERRUPTS();
		args[0] = outbox_make_array(nos, m, INT4OID);
		args[1] = outbox_make_array(topics, m, TEXTOID);
		args[2] = outbox_make_array(as, m, INT8OID);
		args[3] = outbox_make_array(bs, m, INT8OID);
		args[4] = outbox_make_array(skips, m, BOOLOID);
		if (SPI_execute_snapshot(next_plan, args, NULL, snap, InvalidSnapshot,
								 true, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "tally lookup failed");
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			OutboxTallyProbe *p;
			int64		upto;
			Datum		since;
			RowIds		row;

			i = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			p = &probes[i];
			upto = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			since = SPI_getbinval(tup, desc, 3, &isnull);
			/* nothing of this row on was enqueued before what was found */
			if (p->oldest != 0 && !isnull && DatumGetTimestampTz(since) >= p->oldest)
				continue;
			row_ids(tup, desc, 4, &row);
			row_oldest(p, &row);
			if (upto < p->b)
				after[i] = upto;
		}
		SPI_freetuptable(SPI_tuptable);
	}
}
