/*-------------------------------------------------------------------------
 *
 * stats.c
 *		outbox._stats(), behind the outbox.stats view.
 *
 * Counts come from three places: outbox.delivery (exceptions), the ids
 * still listed in outbox.batch (leased from the stream), and the stream
 * itself past the subscription's chain (ready, or scheduled when delayed).
 * The slices are read before the delivery rows, and the delivery rows with
 * one snapshot for all unordered subscriptions (count_unordered), so that
 * a delivery moving from one to another while stats runs (a hand-over, a
 * fail, lease expiry) is counted once; the statement's own snapshot,
 * older, would miss it.  Ordered subscriptions read theirs at the chain's
 * snapshot, one by one.
 *
 * The stream: each segment of a chain is cut into the ranges of ids whose
 * events are in its delta if they committed (contained_ranges).  What of
 * them the worker has tallied (tally.c) is counted from the tally, two
 * rows per topic and range, whatever the backlog (count_tallied); the rest
 * (mostly what the tally has not reached yet, a few seconds of traffic)
 * is read in one pass shared by all unordered subscriptions (shared_scan),
 * each event looked up by its topic among the subscriptions that read it.
 * Ordered subscriptions, whose count depends on keys in stream order, read
 * their own segments.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "shmem.h"
#include "tally.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(outbox_stats);

/* from this many subscriptions on, chains are read in bulk */
#define PREFETCH_MIN_SUBS 2

typedef struct Counts
{
	int64		ready;
	int64		scheduled;
	int64		leased;
	int64		dead;
	TimestampTz oldest;			/* 0: none */
	HTAB	   *keys;			/* ordered: keys a claim could not take now */
} Counts;

/*
 * Ordered subscriptions: a claim takes at most one event per key, and none
 * of a key with a delivery in flight.  Returns true if an event of this key
 * counts as ready, and marks the key so that its later events do not.
 */
static bool
key_takes(Counts *c, const char *key)
{
	int64		h;
	bool		found;

	if (c->keys == NULL || key == NULL)
		return true;
	h = outbox_key_hash(key);
	hash_search(c->keys, &h, HASH_ENTER, &found);
	return !found;
}

static void
key_block(Counts *c, const char *key)
{
	int64		h = outbox_key_hash(key);
	bool		found;

	hash_search(c->keys, &h, HASH_ENTER, &found);
}

static void
note_ready(Counts *c, TimestampTz since)
{
	c->ready++;
	if (c->oldest == 0 || since < c->oldest)
		c->oldest = since;
}

/* Call fn for each row of the portal, 10,000 rows at a time. */
static void
each_row(Portal portal, void (*fn) (HeapTuple tup, TupleDesc desc, void *arg),
		 void *arg)
{
	for (;;)
	{
		uint64		i;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
			fn(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, arg);
		SPI_freetuptable(SPI_tuptable);
	}
}

/* An ordered subscription's segment being counted. */
typedef struct SegmentCount
{
	OutboxSegment *seg;
	Counts	   *c;
	TimestampTz now;
} SegmentCount;

/* Count an event of the segment's scan, if the segment contains it. */
static void
count_segment_row(HeapTuple tup, TupleDesc desc, void *arg)
{
	SegmentCount *sc = arg;
	bool		isnull,
				da_null,
				key_null;
	int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	Datum		da = SPI_getbinval(tup, desc, 2, &da_null);
	Datum		key;

	if (!outbox_segment_contains(sc->seg, id))
		return;
	key = SPI_getbinval(tup, desc, 4, &key_null);
	if (!key_takes(sc->c, key_null ? NULL : TextDatumGetCString(key)))
		sc->c->scheduled++;		/* held behind an earlier event of its key */
	else if (!da_null && DatumGetTimestampTz(da) > sc->now)
		sc->c->scheduled++;
	else
		note_ready(sc->c, da_null ?
				   DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull)) :
				   DatumGetTimestampTz(da));
}

/*
 * The ids of a segment a stream count must read (> *lo_id and <= *hi_id):
 * its range, within the ids its delta's transactions can have.  False if
 * that is empty, or no transaction of the delta enqueued the
 * subscription's topics (claim.c, scan_segment).
 */
static bool
segment_span(OutboxSub *sub, OutboxSegment *seg, int64 *lo_id, int64 *hi_id)
{
	*lo_id = Max(seg->from,
				 OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(seg->lo->xmin)) - 1);
	*hi_id = Min(seg->to,
				 OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(seg->hi->xmax)) - 1);
	return *lo_id < *hi_id && !outbox_topics_quiet_since(sub->topics, seg->lo->xmin);
}

/*
 * Count the events of the stream that no claim has reached.
 */
static void
count_stream(OutboxSub *sub, OutboxChain *chain, Counts *c, TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	List	   *segs;
	ListCell   *lc;

	if (plan == NULL)
	{
		Oid			types[4] = {INT8OID, INT8OID, TEXTARRAYOID, INT4OID};

		/*
		 * Events with a delivery row (acked ahead of any claim, or kept by
		 * a change of topics) are counted from that row, if at all.
		 */
		plan = outbox_prepare("SELECT e.id, e.deliver_at, e.enqueued_at, e.key FROM outbox.event e"
							  " WHERE e.id OPERATOR(pg_catalog.>) $1 AND e.id OPERATOR(pg_catalog.<=) $2"
							  " AND ($3 IS NULL OR e.topic OPERATOR(pg_catalog.=) ANY ($3))"
							  " AND NOT EXISTS (SELECT 1 FROM outbox.delivery d"
							  "  WHERE d.sub_id OPERATOR(pg_catalog.=) $4"
							  "  AND d.event_id OPERATOR(pg_catalog.=) e.id)"
							  " ORDER BY e.id", 4, types);
	}
	segs = outbox_chain_segments(chain);
	foreach(lc, segs)
	{
		OutboxSegment *seg = lfirst(lc);
		Datum		args[4];
		char		nulls[4] = {' ', ' ', ' ', ' '};
		Portal		portal;
		int64		lo_id,
					hi_id;

		if (!segment_span(sub, seg, &lo_id, &hi_id))
			continue;
		args[0] = Int64GetDatum(lo_id);
		args[1] = Int64GetDatum(hi_id);
		args[2] = sub->topics ? PointerGetDatum(sub->topics) : (Datum) 0;
		nulls[2] = sub->topics ? ' ' : 'n';
		args[3] = Int32GetDatum(sub->id);
		/* the chain's snapshot, like every count of this subscription */
		PushActiveSnapshot(chain->snapshot);
		portal = SPI_cursor_open(NULL, plan, args, nulls, true);
		PopActiveSnapshot();
		{
			SegmentCount sc = {seg, c, now};

			each_row(portal, count_segment_row, &sc);
		}
		SPI_cursor_close(portal);
	}
}

/*
 * An unordered subscription whose stream part the shared scan counts: its
 * chain (read, with its snapshot), the segments that may hold events of its
 * topics, the span of their ids, and the ids in that span that have a
 * delivery row (counted from the row, if at all).
 */
typedef struct StreamSub
{
	OutboxSub  *sub;
	OutboxChain *chain;
	Counts		c;
	int			nsegs;
	OutboxSegment **segs;
	int64	   *seg_lo;			/* ids > seg_lo[i] ... */
	int64	   *seg_hi;			/* ... and <= seg_hi[i] */
	int		   *nmids;			/* of which the tally counts nmids[i] ranges */
	OutboxRange **mids;			/* mids[i], sorted, disjoint */
	int		   *nscans;			/* and the stream is read in nscans[i] */
	OutboxRange **scans;		/* scans[i] (count_tallied) */
	int64		span_lo;		/* the ids of all segments: > span_lo ... */
	int64		span_hi;		/* ... and <= span_hi */
	HTAB	   *rows;			/* ids with a delivery row (RowId), or NULL */
	int			nleased;		/* ids of committed slices no committed */
	int64	   *leased;			/* settlement took (count_leased) */
} StreamSub;

/*
 * Subscriptions reading a topic, for the shared scan.  A topic is at most
 * OUTBOX_MAX_TOPIC_LEN bytes, so the key holds it whole and a topic's text
 * is looked up as it is.
 */
typedef struct TopicSubs
{
	char		topic[OUTBOX_MAX_TOPIC_LEN + 1];	/* the hash key */
	List	   *subs;			/* of StreamSub * */
} TopicSubs;

/*
 * The segments of a subscription's chain that may hold events of its
 * topics, and the span of their ids.
 */
static void
stream_sub_prepare(StreamSub *ss)
{
	List	   *segs = outbox_chain_segments(ss->chain);
	ListCell   *lc;

	ss->segs = palloc(sizeof(OutboxSegment *) * Max(list_length(segs), 1));
	ss->seg_lo = palloc(sizeof(int64) * Max(list_length(segs), 1));
	ss->seg_hi = palloc(sizeof(int64) * Max(list_length(segs), 1));
	ss->nmids = palloc0(sizeof(int) * Max(list_length(segs), 1));
	ss->mids = palloc0(sizeof(OutboxRange *) * Max(list_length(segs), 1));
	ss->nscans = palloc0(sizeof(int) * Max(list_length(segs), 1));
	ss->scans = palloc0(sizeof(OutboxRange *) * Max(list_length(segs), 1));
	ss->span_lo = PG_INT64_MAX;
	ss->span_hi = PG_INT64_MIN;
	foreach(lc, segs)
	{
		OutboxSegment *seg = lfirst(lc);
		int64		lo_id,
					hi_id;

		if (!segment_span(ss->sub, seg, &lo_id, &hi_id))
			continue;
		ss->segs[ss->nsegs] = seg;
		ss->seg_lo[ss->nsegs] = lo_id;
		ss->seg_hi[ss->nsegs++] = hi_id;
		ss->span_lo = Min(ss->span_lo, lo_id);
		ss->span_hi = Max(ss->span_hi, hi_id);
	}
}

/*
 * An event of the stream with a delivery row: counted from the row, if at
 * all.  tallied: the tally counts it for this subscription (committed, of
 * its topics, without deliver_at), so a tallied range must subtract it.
 */
typedef struct RowId
{
	int64		id;				/* the hash key */
	bool		tallied;
} RowId;

/* Note that a delivery row of the subscription exists for this event. */
static void
stream_sub_row(StreamSub *ss, int64 id, bool tallied)
{
	RowId	   *r;

	if (ss->rows == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(RowId);
		ctl.hcxt = CurrentMemoryContext;
		ss->rows = hash_create("outbox stats rows", 16, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	r = hash_search(ss->rows, &id, HASH_ENTER, NULL);
	r->tallied = tallied;
}

/* Is the id in one of the segment's ranges that the tally counts? */
static bool
in_mids(StreamSub *ss, int i, int64 id)
{
	int			k;

	for (k = 0; k < ss->nmids[i]; k++)
		if (id > ss->mids[i][k].from && id <= ss->mids[i][k].to)
			return true;
	return false;
}

/*
 * Count one event of the stream for a subscription that reads its topic.
 * tallied: the event was read among those with deliver_at, for the ranges
 * the tally counts (which leaves them out); otherwise, it was read for the
 * ranges the tally does not count.
 */
static void
stream_sub_count(StreamSub *ss, int64 id, Datum deliver_at, bool da_null,
				 Datum enqueued_at, TimestampTz now, bool tallied)
{
	int			i;

	for (i = 0; i < ss->nsegs; i++)
		if (id > ss->seg_lo[i] && id <= ss->seg_hi[i] &&
			in_mids(ss, i, id) == tallied &&
			outbox_segment_contains(ss->segs[i], id))
			break;
	if (i == ss->nsegs)
		return;
	if (ss->rows != NULL && hash_search(ss->rows, &id, HASH_FIND, NULL) != NULL)
		return;
	if (!da_null && DatumGetTimestampTz(deliver_at) > now)
		ss->c.scheduled++;
	else
		note_ready(&ss->c, da_null ? DatumGetTimestampTz(enqueued_at) :
				   DatumGetTimestampTz(deliver_at));
}

/* The shared scan's subscriptions: by topic, and those of every topic. */
typedef struct SharedScan
{
	HTAB	   *by_topic;
	List	   *every;
	TimestampTz now;
	bool		tallied;		/* reading delayed events of tallied ranges */
} SharedScan;

/* Hand an event to the subscriptions of its topic. */
static void
shared_scan_event(SharedScan *sh, int64 id, char *topic, Datum da, bool da_null,
				  Datum ea)
{
	TopicSubs  *ts;
	ListCell   *lc;

	foreach(lc, sh->every)
		stream_sub_count(lfirst(lc), id, da, da_null, ea, sh->now, sh->tallied);
	ts = hash_search(sh->by_topic, topic, HASH_FIND, NULL);
	if (ts != NULL)
	{
		foreach(lc, ts->subs)
			stream_sub_count(lfirst(lc), id, da, da_null, ea, sh->now, sh->tallied);
	}
}

/* An event of the shared scan's query. */
static void
shared_scan_row(HeapTuple tup, TupleDesc desc, void *arg)
{
	bool		isnull,
				da_null;
	int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	char	   *topic = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
	Datum		da = SPI_getbinval(tup, desc, 3, &da_null);
	Datum		ea = SPI_getbinval(tup, desc, 4, &isnull);

	shared_scan_event(arg, id, topic, da, da_null, ea);
	pfree(topic);
}

/* outbox.event's columns read here (outbox_event_columns) */
#define EVENT_ID		1
#define EVENT_TOPIC		3
#define EVENT_DELIVER_AT 7
#define EVENT_ENQUEUED_AT 8

/*
 * The events with deliver_at, which the tally leaves out, through their
 * partial index in each bucket (a query's plan could read the buckets
 * whole when it takes most events for delayed), for the ranges the tally
 * counts.
 */
static void
shared_scan_delayed(SharedScan *sh, Snapshot snap)
{
	char		name[NAMEDATALEN];
	int			b;

	for (b = 0; b <= OUTBOX_BUCKETS; b++)
	{
		Relation	rel;
		SysScanDesc scan;
		HeapTuple	tup;

		if (b < OUTBOX_BUCKETS)
			snprintf(name, sizeof(name), "event_%d", b);
		else
			strlcpy(name, "event_kept", sizeof(name));
		rel = table_open(outbox_relid(name), AccessShareLock);
		outbox_check_columns(rel, outbox_event_columns, OUTBOX_EVENT_NCOLUMNS, true);
		scan = systable_beginscan(rel, outbox_part_index(rel, "event_deliver_at_idx"),
								  true, snap, 0, NULL);
		while (HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			TupleDesc	desc = RelationGetDescr(rel);
			bool		isnull,
						da_null;
			Datum		id = heap_getattr(tup, EVENT_ID, desc, &isnull);
			char	   *topic = TextDatumGetCString(heap_getattr(tup, EVENT_TOPIC, desc, &isnull));
			Datum		da = heap_getattr(tup, EVENT_DELIVER_AT, desc, &da_null);
			Datum		ea = heap_getattr(tup, EVENT_ENQUEUED_AT, desc, &isnull);

			CHECK_FOR_INTERRUPTS();
			shared_scan_event(sh, DatumGetInt64(id), topic, da, da_null, ea);
			pfree(topic);
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
}

/*
 * Count the stream for the unordered subscriptions in one pass: the union
 * of their segments' spans is read once, in id order, and each event goes
 * to the subscriptions that read its topic.  The events are read with a
 * snapshot newer than every chain's; what each chain's segments contain
 * decides, so what committed after a chain was read is not counted for it.
 */
static void
shared_scan(StreamSub *subs, int nsubs, TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	bool		any_tallied = false;
	HASHCTL		ctl;
	SharedScan	sh;
	OutboxRange *ranges;
	int			nranges = 0;
	int			i,
				j,
				r;
	Snapshot	snap;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(((TopicSubs *) 0)->topic);
	ctl.entrysize = sizeof(TopicSubs);
	ctl.hcxt = CurrentMemoryContext;
	sh.by_topic = hash_create("outbox stats topics", 256, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	sh.every = NIL;
	sh.now = now;
	sh.tallied = false;
	for (i = 0; i < nsubs; i++)
		for (j = 0; j < subs[i].nsegs; j++)
			nranges += subs[i].nscans[j];
	ranges = palloc(sizeof(OutboxRange) * Max(nranges, 1));
	nranges = 0;
	for (i = 0; i < nsubs; i++)
	{
		StreamSub  *ss = &subs[i];
		Datum	   *elems;
		int			n;

		if (ss->nsegs == 0)
			continue;
		/* what the tally does not count */
		for (j = 0; j < ss->nsegs; j++)
		{
			if (ss->nmids[j] > 0)
				any_tallied = true;
			memcpy(&ranges[nranges], ss->scans[j], sizeof(OutboxRange) * ss->nscans[j]);
			nranges += ss->nscans[j];
		}
		if (ss->sub->topics == NULL)
		{
			sh.every = lappend(sh.every, ss);
			continue;
		}
		deconstruct_array(ss->sub->topics, TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, NULL, &n);
		for (j = 0; j < n; j++)
		{
			TopicSubs  *ts;
			bool		found;

			ts = hash_search(sh.by_topic, TextDatumGetCString(elems[j]),
							 HASH_ENTER, &found);
			if (!found)
				ts->subs = NIL;
			ts->subs = lappend(ts->subs, ss);
		}
	}
	if (nranges == 0 && !any_tallied)
		return;
	qsort(ranges, nranges, sizeof(OutboxRange), outbox_cmp_range);

	if (plan == NULL)
	{
		Oid			types[2] = {INT8OID, INT8OID};

		plan = outbox_prepare("SELECT id, topic, deliver_at, enqueued_at FROM outbox.event"
							  " WHERE id OPERATOR(pg_catalog.>) $1 AND id OPERATOR(pg_catalog.<=) $2"
							  " ORDER BY id", 2, types);
	}
	snap = RegisterSnapshot(GetLatestSnapshot());
	for (r = 0; r < nranges; r++)
	{
		int64		lo = ranges[r].from;
		int64		hi = ranges[r].to;
		Datum		args[2];
		Portal		portal;

		/* merge the spans that overlap or touch this one */
		while (r + 1 < nranges && ranges[r + 1].from <= hi)
		{
			r++;
			hi = Max(hi, ranges[r].to);
		}
		args[0] = Int64GetDatum(lo);
		args[1] = Int64GetDatum(hi);
		PushActiveSnapshot(snap);
		portal = SPI_cursor_open(NULL, plan, args, NULL, true);
		PopActiveSnapshot();
		each_row(portal, shared_scan_row, &sh);
		SPI_cursor_close(portal);
	}
	/*
	 * The tally leaves out events with deliver_at (whether one is ready or
	 * scheduled depends on when stats run): all of them are read, and
	 * counted where they fall in a range the tally counts.
	 */
	if (any_tallied)
	{
		sh.tallied = true;
		shared_scan_delayed(&sh, snap);
	}
	UnregisterSnapshot(snap);
}

/*
 * Ids leased from the stream that no committed settlement took (an ack in
 * progress may still roll back), into *ids; returns how many.  Those of a
 * claim whose transaction is still open are not leased as far as any
 * committed state goes (a rollback gives them back at once): they count as
 * ready, in c.  The slices are read before the snapshot the callers count
 * delivery rows with: an id that a hand-over, a fail or lease expiry moved
 * to a delivery row in between is counted from that row, not twice (the
 * callers subtract ids that have one).
 */
static int
slice_leases(OutboxChain *chain, Counts *c, int64 **ids)
{
	int			n = 0,
				j,
				k;

	for (j = 0; j < chain->nslices; j++)
	{
		if (chain->slices[j].visible)
			n += chain->slices[j].nlive;
		else
			c->ready += chain->slices[j].nlive;
	}
	*ids = palloc(sizeof(int64) * Max(n, 1));
	n = 0;
	for (j = 0; j < chain->nslices; j++)
		if (chain->slices[j].visible)
			for (k = 0; k < chain->slices[j].nlive; k++)
				(*ids)[n++] = chain->slices[j].live_ids[k];
	return n;
}

/* The leases of an ordered subscription's slices, read at its chain's snapshot. */
static void
count_batches(OutboxSub *sub, OutboxChain *chain, Counts *c)
{
	static SPIPlanPtr plan = NULL;
	int64	   *leased_ids;
	int			n = slice_leases(chain, c, &leased_ids);
	Datum	   *ids;
	Datum		args[2];
	bool		isnull;
	int			j;

	if (n == 0)
		return;
	if (plan == NULL)
	{
		Oid			types[2] = {INT4OID, INT8ARRAYOID};

		plan = outbox_prepare("SELECT pg_catalog.count(*) FROM outbox.delivery"
							  " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							  " AND event_id OPERATOR(pg_catalog.=) ANY ($2)", 2, types);
	}
	ids = palloc(sizeof(Datum) * n);
	for (j = 0; j < n; j++)
		ids[j] = Int64GetDatum(leased_ids[j]);
	args[0] = Int32GetDatum(sub->id);
	args[1] = outbox_make_array(ids, n, INT8OID);
	if (SPI_execute_snapshot(plan, args, NULL, chain->snapshot, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "delivery count failed");
	c->leased += n - DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The unordered subscriptions' counts that do not come from the stream, for
 * all of them at once (a query per subscription cost an executor start
 * each, most of the view's time at a small backlog).  Read with one
 * snapshot taken after every chain was read, which keeps each delivery
 * counted once (see slice_leases): the slices were read before it, and
 * the stream's ids that have a delivery row at it are left out of the
 * stream (stream_rows).
 *
 * First the ids of committed slices that no committed settlement took:
 * leased, unless a hand-over, fail or lease expiry has given them a
 * delivery row since.  Those of a claim still in progress count as ready.
 */
static void
collect_leased(StreamSub *ss)
{
	ss->nleased = slice_leases(ss->chain, &ss->c, &ss->leased);
}

/* sub_id -> StreamSub of the unordered subscriptions */
typedef struct SubEntry
{
	int32		sub_id;
	StreamSub  *ss;
} SubEntry;

static StreamSub *
sub_entry(HTAB *by_id, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int32		id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	SubEntry   *e = hash_search(by_id, &id, HASH_FIND, NULL);

	if (e == NULL)
		elog(ERROR, "stats row of unknown subscription %d", id);
	return e->ss;
}

/* outbox.delivery, counted by state for every unordered subscription */
static void
count_rows(HTAB *by_id, Datum *sub_ids, int nsubs, Snapshot snap,
		   TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2];
	uint64		i;

	if (plan == NULL)
	{
		Oid			types[2] = {INT4ARRAYOID, TIMESTAMPTZOID};

		plan = outbox_prepare(
			"SELECT sub_id,"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'ready'"
			"  OR (state OPERATOR(pg_catalog.=) 'scheduled' AND visible_at OPERATOR(pg_catalog.<=) $2)),"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'waiting'"
			"  OR (state OPERATOR(pg_catalog.=) 'scheduled' AND visible_at OPERATOR(pg_catalog.>) $2)),"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'leased'),"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'dead'),"
			" pg_catalog.min(visible_at) FILTER (WHERE state OPERATOR(pg_catalog.=) 'ready'"
			"  OR (state OPERATOR(pg_catalog.=) 'scheduled' AND visible_at OPERATOR(pg_catalog.<=) $2))"
			" FROM outbox.delivery WHERE sub_id OPERATOR(pg_catalog.=) ANY ($1)"
			" AND state OPERATOR(pg_catalog.<>) 'done'"
			" GROUP BY sub_id", 2, types);
	}
	args[0] = outbox_make_array(sub_ids, nsubs, INT4OID);
	args[1] = TimestampTzGetDatum(now);
	if (SPI_execute_snapshot(plan, args, NULL, snap, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "delivery count failed");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Counts	   *c = &sub_entry(by_id, tup, desc)->c;
		bool		isnull;
		Datum		d;

		c->ready += DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		c->scheduled += DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		c->leased += DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		c->dead += DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		d = SPI_getbinval(tup, desc, 6, &isnull);
		if (!isnull && (c->oldest == 0 || DatumGetTimestampTz(d) < c->oldest))
			c->oldest = DatumGetTimestampTz(d);
	}
	SPI_freetuptable(SPI_tuptable);
}

/* The slices' ids: leased, less those with a delivery row (counted there). */
static void
count_leased(HTAB *by_id, StreamSub *subs, int nsubs, Snapshot snap)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *sub_ids;
	Datum	   *ids;
	Datum		args[2];
	int			n = 0,
				i,
				k;
	uint64		r;

	for (i = 0; i < nsubs; i++)
		if (!subs[i].sub->ordered)
		{
			subs[i].c.leased += subs[i].nleased;
			n += subs[i].nleased;
		}
	if (n == 0)
		return;
	sub_ids = palloc(sizeof(Datum) * n);
	ids = palloc(sizeof(Datum) * n);
	n = 0;
	for (i = 0; i < nsubs; i++)
		if (!subs[i].sub->ordered)
			for (k = 0; k < subs[i].nleased; k++)
			{
				sub_ids[n] = Int32GetDatum(subs[i].sub->id);
				ids[n++] = Int64GetDatum(subs[i].leased[k]);
			}
	if (plan == NULL)
	{
		Oid			types[2] = {INT4ARRAYOID, INT8ARRAYOID};

		plan = outbox_prepare("SELECT d.sub_id, pg_catalog.count(*)"
							  " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS s(sub_id, event_id)"
							  " JOIN outbox.delivery d"
							  " ON d.sub_id OPERATOR(pg_catalog.=) s.sub_id"
							  " AND d.event_id OPERATOR(pg_catalog.=) s.event_id"
							  " GROUP BY d.sub_id", 2, types);
	}
	args[0] = outbox_make_array(sub_ids, n, INT4OID);
	args[1] = outbox_make_array(ids, n, INT8OID);
	if (SPI_execute_snapshot(plan, args, NULL, snap, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "delivery count failed");
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		HeapTuple	tup = SPI_tuptable->vals[r];

		sub_entry(by_id, tup, SPI_tuptable->tupdesc)->c.leased -=
			DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * The ids in each unordered subscription's stream span that have a
 * delivery row: counted from the row, if at all, not from the stream.
 */
static void
stream_rows(HTAB *by_id, StreamSub *subs, int nsubs, Snapshot snap)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *sub_ids = palloc(sizeof(Datum) * Max(nsubs, 1));
	Datum	   *los = palloc(sizeof(Datum) * Max(nsubs, 1));
	Datum	   *his = palloc(sizeof(Datum) * Max(nsubs, 1));
	Datum		args[3];
	int			n = 0,
				i;
	uint64		r;

	for (i = 0; i < nsubs; i++)
		if (!subs[i].sub->ordered && subs[i].nsegs > 0)
		{
			sub_ids[n] = Int32GetDatum(subs[i].sub->id);
			los[n] = Int64GetDatum(subs[i].span_lo);
			his[n++] = Int64GetDatum(subs[i].span_hi);
		}
	if (n == 0)
		return;
	if (plan == NULL)
	{
		Oid			types[3] = {INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};

		plan = outbox_prepare("SELECT d.sub_id, d.event_id, e.topic, e.plain"
							  " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) AS s(sub_id, lo, hi)"
							  " JOIN outbox.delivery d"
							  " ON d.sub_id OPERATOR(pg_catalog.=) s.sub_id"
							  " AND d.event_id OPERATOR(pg_catalog.>) s.lo"
							  " AND d.event_id OPERATOR(pg_catalog.<=) s.hi"
							  " LEFT JOIN LATERAL (SELECT e.topic, e.deliver_at IS NULL AS plain"
							  "  FROM outbox.event e WHERE e.id OPERATOR(pg_catalog.=) d.event_id"
							  "  LIMIT 1) e ON true", 3, types);
	}
	args[0] = outbox_make_array(sub_ids, n, INT4OID);
	args[1] = outbox_make_array(los, n, INT8OID);
	args[2] = outbox_make_array(his, n, INT8OID);
	if (SPI_execute_snapshot(plan, args, NULL, snap, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "delivery lookup failed");
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull,
					topic_null;
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		StreamSub  *ss = sub_entry(by_id, tup, desc);
		Datum		topic = SPI_getbinval(tup, desc, 3, &topic_null);
		bool		plain = !topic_null &&
			DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));

		stream_sub_row(ss, DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull)),
					   plain && outbox_sub_receives(ss->sub, TextDatumGetCString(topic)));
	}
	SPI_freetuptable(SPI_tuptable);
}

/* most ranges of a segment told apart; past that, all of it is read */
#define MAX_RANGES 32

static int
cmp_uint64(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * The ranges of ids in (lo_id, hi_id] whose events are all in the
 * segment's delta if they committed: those of transactions its first
 * snapshot does not see and its last one sees as ended; the ids of the
 * others (running at the end, or seen by the first snapshot) are not in
 * it, and need no reading.  Visibility changes only at a snapshot's xmin,
 * xmax and the xids it lists (and the next xid after each), so each
 * stretch between two such points is in or out as a whole.  Returns how
 * many (at most MAX_RANGES: past that, the whole span as one).
 */
static int
contained_ranges(OutboxSegment *seg, int64 lo_id, int64 hi_id, OutboxRange *out)
{
	const OutboxSnap *f = seg->lo;
	const OutboxSnap *s = seg->hi;
	int			npts = 0,
				n = 0,
				i;
	uint64	   *pts = palloc(sizeof(uint64) * (4 + 2 * (f->nxip + s->nxip)));

	pts[npts++] = U64FromFullTransactionId(f->xmin);
	pts[npts++] = U64FromFullTransactionId(f->xmax);
	pts[npts++] = U64FromFullTransactionId(s->xmin);
	pts[npts++] = U64FromFullTransactionId(s->xmax);
	for (i = 0; i < (int) f->nxip; i++)
	{
		pts[npts++] = U64FromFullTransactionId(f->xip[i]);
		pts[npts++] = U64FromFullTransactionId(f->xip[i]) + 1;
	}
	for (i = 0; i < (int) s->nxip; i++)
	{
		pts[npts++] = U64FromFullTransactionId(s->xip[i]);
		pts[npts++] = U64FromFullTransactionId(s->xip[i]) + 1;
	}
	qsort(pts, npts, sizeof(uint64), cmp_uint64);
	/* below the first point and from the last on, nothing is in a delta */
	for (i = 0; i + 1 < npts; i++)
	{
		uint64		x = pts[i];
		int64		from,
					to;

		if (pts[i + 1] == x ||
			outbox_snap_visible(f, x) || !outbox_snap_visible(s, x))
			continue;
		from = Max(OUTBOX_XID_FIRST_ID(x) - 1, lo_id);
		to = Min(OUTBOX_XID_FIRST_ID(pts[i + 1]) - 1, hi_id);
		if (from >= to)
			continue;
		if (n > 0 && out[n - 1].to == from)
			out[n - 1].to = to;
		else if (n == MAX_RANGES)
		{
			out[0].from = lo_id;
			out[0].to = hi_id;
			pfree(pts);
			return 1;
		}
		else
		{
			out[n].from = from;
			out[n++].to = to;
		}
	}
	pfree(pts);
	return n;
}

/* Append range (from, to] to a list, if it is not empty. */
static void
add_range(OutboxRange *list, int *n, int64 from, int64 to)
{
	if (from >= to)
		return;
	list[*n].from = from;
	list[(*n)++].to = to;
}

/*
 * The ranges of the unordered subscriptions' segments that the tally
 * counts (tally.c), so that the stream is read only around them (mostly
 * what the tally has not reached yet).  Delivery rows there (counted from
 * the row) are taken off, and left out of the oldest.
 */
static void
count_tallied(StreamSub *subs, int nsubs)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	int64		t_start,
				t_upto;
	OutboxTallyProbe *probes;
	StreamSub **owners;
	int64	   *open;
	int			nopen;
	OutboxRange contained[MAX_RANGES];
	OutboxRange *mids;
	OutboxRange *scans;
	int			nprobes = 0,
				max = 16,
				i,
				j,
				k,
				m;

	/* no tally: everything is read */
	if (!outbox_tally_bounds(snap, &t_start, &t_upto, &open, &nopen))
		t_start = t_upto = 0;
	if (nopen > 1)
		qsort(open, nopen, sizeof(int64), outbox_cmp_int64);
	probes = palloc(sizeof(OutboxTallyProbe) * max);
	owners = palloc(sizeof(StreamSub *) * max);
	for (i = 0; i < nsubs; i++)
	{
		StreamSub  *ss = &subs[i];
		Datum	   *elems = NULL;
		int			ntopics = 1;
		int			nall = 0;
		OutboxRange *all;

		if (ss->sub->ordered || ss->nsegs == 0)
			continue;
		if (ss->sub->topics != NULL)
			deconstruct_array(ss->sub->topics, TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, NULL, &ntopics);
		for (j = 0; j < ss->nsegs; j++)
		{
			int			ncontained = contained_ranges(ss->segs[j], ss->seg_lo[j],
													  ss->seg_hi[j], contained);
			int			nmids = 0,
						nscans = 0,
						o_first = 0,
						o_end;

			/* the open transactions whose ids meet the segment's */
			while (o_first < nopen &&
				   OUTBOX_XID_FIRST_ID(open[o_first] + 1) - 1 <= ss->seg_lo[j])
				o_first++;
			for (o_end = o_first; o_end < nopen &&
				 OUTBOX_XID_FIRST_ID(open[o_end]) - 1 < ss->seg_hi[j]; o_end++)
				;
			mids = palloc(sizeof(OutboxRange) * (ncontained + (o_end - o_first) + 1));
			scans = palloc(sizeof(OutboxRange) * (2 * ncontained + (o_end - o_first) + 1));

			/* each part of a contained range is counted or read */
			for (m = 0; m < ncontained; m++)
			{
				int64		from = contained[m].from;
				int64		to = contained[m].to;
				int64		mid_from = Max(from, t_start);
				int64		mid_to = Min(to, t_upto);

				if (mid_from < mid_to)
				{
					int			o;

					add_range(scans, &nscans, from, mid_from);
					/* the ids of transactions the tally found running are read */
					for (o = o_first; o < o_end; o++)
					{
						int64		x_from = OUTBOX_XID_FIRST_ID(open[o]) - 1;
						int64		x_to = OUTBOX_XID_FIRST_ID(open[o] + 1) - 1;

						if (x_to <= mid_from || x_from >= mid_to)
							continue;
						x_from = Max(x_from, mid_from);
						x_to = Min(x_to, mid_to);
						add_range(mids, &nmids, mid_from, x_from);
						add_range(scans, &nscans, x_from, x_to);
						mid_from = x_to;
					}
					add_range(mids, &nmids, mid_from, mid_to);
					add_range(scans, &nscans, mid_to, to);
				}
				else
					add_range(scans, &nscans, from, to);
			}
			ss->nscans[j] = nscans;
			ss->scans[j] = scans;
			if (nmids == 0)
				continue;
			ss->nmids[j] = nmids;
			ss->mids[j] = mids;
			nall += nmids;
			/* the delivery rows of events the tally counts there */
			if (ss->rows != NULL)
			{
				HASH_SEQ_STATUS seq;
				RowId	   *r;

				hash_seq_init(&seq, ss->rows);
				while ((r = hash_seq_search(&seq)) != NULL)
					if (r->tallied && in_mids(ss, j, r->id))
						ss->c.ready--;
			}
		}
		if (nall == 0)
			continue;

		/*
		 * One count per topic over all the segments' ranges: they are
		 * disjoint (an event is in one delta, a delta's segments are
		 * disjoint ranges), and where they touch they make one.
		 */
		all = palloc(sizeof(OutboxRange) * nall);
		nall = 0;
		for (j = 0; j < ss->nsegs; j++)
		{
			memcpy(&all[nall], ss->mids[j], sizeof(OutboxRange) * ss->nmids[j]);
			nall += ss->nmids[j];
		}
		qsort(all, nall, sizeof(OutboxRange), outbox_cmp_range);
		for (m = 0, j = 1; j < nall; j++)
		{
			if (all[j].from == all[m].to)
				all[m].to = all[j].to;
			else
				all[++m] = all[j];
		}
		nall = m + 1;
		for (m = 0; m < nall; m++)
			for (k = 0; k < ntopics; k++)
			{
				if (nprobes == max)
				{
					max *= 2;
					probes = repalloc(probes, sizeof(OutboxTallyProbe) * max);
					owners = repalloc(owners, sizeof(StreamSub *) * max);
				}
				probes[nprobes].topic = elems ? TextDatumGetCString(elems[k]) : "";
				probes[nprobes].a = all[m].from;
				probes[nprobes].b = all[m].to;
				probes[nprobes].skip = ss->rows;
				owners[nprobes++] = ss;
			}
	}
	outbox_tally_count(probes, nprobes, t_upto, snap);
	UnregisterSnapshot(snap);
	for (i = 0; i < nprobes; i++)
	{
		Counts	   *c = &owners[i]->c;

		c->ready += probes[i].count;
		if (probes[i].oldest != 0 && (c->oldest == 0 || probes[i].oldest < c->oldest))
			c->oldest = probes[i].oldest;
	}
}

/*
 * Everything of the unordered subscriptions but their stream, with one
 * snapshot taken now, after every chain was read.
 */
static void
count_unordered(StreamSub *subs, int nsubs, TimestampTz now)
{
	HASHCTL		ctl;
	HTAB	   *by_id;
	Datum	   *sub_ids = palloc(sizeof(Datum) * Max(nsubs, 1));
	int			n = 0,
				i;
	Snapshot	snap;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(SubEntry);
	ctl.hcxt = CurrentMemoryContext;
	by_id = hash_create("outbox stats subscriptions", Max(nsubs, 16), &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	for (i = 0; i < nsubs; i++)
	{
		SubEntry   *e;

		if (subs[i].sub->ordered)
			continue;
		e = hash_search(by_id, &subs[i].sub->id, HASH_ENTER, NULL);
		e->ss = &subs[i];
		sub_ids[n++] = Int32GetDatum(subs[i].sub->id);
	}
	if (n == 0)
		return;
	snap = RegisterSnapshot(GetLatestSnapshot());
	count_rows(by_id, sub_ids, n, snap, now);
	count_leased(by_id, subs, nsubs, snap);
	stream_rows(by_id, subs, nsubs, snap);
	UnregisterSnapshot(snap);
}

/*
 * Ordered subscriptions: outbox.delivery row by row, since whether a
 * waiting delivery is ready depends on what else of its key is in flight.
 * Keys in flight are marked in c->keys for the stream count that follows.
 */
static void
count_rows_ordered(OutboxSub *sub, OutboxChain *chain, Counts *c, TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[1] = {Int32GetDatum(sub->id)};
	uint64		i;
	int			j,
				k;

	for (j = 0; j < chain->nslices; j++)
		for (k = 0; k < chain->slices[j].nkeys; k++)
		{
			bool		found;

			hash_search(c->keys, &chain->slices[j].key_hashes[k], HASH_ENTER, &found);
		}

	if (plan == NULL)
	{
		Oid			types[1] = {INT4OID};

		plan = outbox_prepare(
			"SELECT d.state, d.key, d.visible_at, e.enqueued_at"
			" FROM outbox.delivery d"
			" LEFT JOIN outbox.event e ON e.id OPERATOR(pg_catalog.=) d.event_id"
			" WHERE d.sub_id OPERATOR(pg_catalog.=) $1"
			" AND d.state OPERATOR(pg_catalog.<>) 'done'"
			" ORDER BY d.state OPERATOR(pg_catalog.=) 'waiting', d.key, d.seq, d.event_id",
			1, types);
	}
	if (SPI_execute_snapshot(plan, args, NULL, chain->snapshot, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "delivery count failed");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull,
					key_null,
					va_null,
					ea_null;
		char	   *state = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		Datum		key = SPI_getbinval(tup, desc, 2, &key_null);
		Datum		va = SPI_getbinval(tup, desc, 3, &va_null);
		Datum		ea = SPI_getbinval(tup, desc, 4, &ea_null);
		bool		due = va_null || DatumGetTimestampTz(va) <= now;

		if (strcmp(state, "dead") == 0)
		{
			c->dead++;
			continue;
		}
		if (strcmp(state, "waiting") == 0)
		{
			if (!key_takes(c, key_null ? NULL : TextDatumGetCString(key)) || !due)
				c->scheduled++;
			else
				note_ready(c, !va_null ? DatumGetTimestampTz(va) :
						   !ea_null ? DatumGetTimestampTz(ea) : now);
			continue;
		}
		if (!key_null)
			key_block(c, TextDatumGetCString(key));
		if (strcmp(state, "leased") == 0)
			c->leased++;
		else if (due)
			note_ready(c, va_null ? now : DatumGetTimestampTz(va));
		else
			c->scheduled++;
	}
}

/*
 * Start a subscription's row: read its chain and count all but the stream
 * of an unordered subscription, which shared_scan counts.
 */
static void
stats_begin(StreamSub *ss, OutboxSub *sub, TimestampTz now)
{
	memset(ss, 0, sizeof(*ss));
	ss->sub = sub;
	ss->chain = outbox_chain_read(sub->id);
	if (sub->ordered)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(int64);
		ctl.hcxt = CurrentMemoryContext;
		ss->c.keys = hash_create("outbox stats keys", 256, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		count_rows_ordered(sub, ss->chain, &ss->c, now);
		count_batches(sub, ss->chain, &ss->c);
		count_stream(sub, ss->chain, &ss->c, now);
	}
	else
	{
		collect_leased(ss);
		stream_sub_prepare(ss);
		/* the segments keep what they need of the chain */
		outbox_chain_release(ss->chain);
	}
}

/* OutboxSub pointers by name, in bytes */
static int
cmp_subs(const void *a, const void *b)
{
	return strcmp((*(OutboxSub *const *) a)->name, (*(OutboxSub *const *) b)->name);
}

/* bsearch's: a name (a char **) against an OutboxSub pointer */
static int
cmp_sub_name(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, (*(OutboxSub *const *) b)->name);
}

/* The subscription's row of the stats. */
static void
stats_end(ReturnSetInfo *rsinfo, StreamSub *ss)
{
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};

	if (ss->chain != NULL)
		outbox_chain_release(ss->chain);
	ss->chain = NULL;
	values[0] = CStringGetTextDatum(ss->sub->name);
	values[1] = Int64GetDatum(ss->c.ready);
	values[2] = Int64GetDatum(ss->c.scheduled);
	values[3] = Int64GetDatum(ss->c.leased);
	values[4] = Int64GetDatum(ss->c.dead);
	values[5] = TimestampTzGetDatum(ss->c.oldest);
	nulls[5] = (ss->c.oldest == 0);
	values[6] = BoolGetDatum(ss->sub->paused);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * outbox._stats(), behind the view outbox.stats: a row for every
 * subscription the caller may consume.  outbox.stats(subscription) (1.1):
 * the row of that one subscription, computed for it alone (a filter on the
 * view cannot reach into the function, so it computed every row); unknown
 * is 42704, not the caller's to consume 42501, as for claim.
 */
Datum
outbox_stats(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			caller = GetUserId();
	Oid			save_user;
	int			save_sec;
	SPITupleTable *tab;
	uint64		n,
				i;
	StreamSub  *subs;
	int			nsubs = 0;
	TimestampTz now = GetCurrentTimestamp();
	/* outbox.stats(subscription): that one only */
	char	   *one = PG_NARGS() > 0 ? outbox_sub_name_arg(fcinfo) : NULL;

	InitMaterializedSRF(fcinfo, 0);
	/* before any table, as every user of outbox (DROP EXTENSION) */
	(void) outbox_lock_extension(false);
	SPI_connect();
	outbox_become_owner(&save_user, &save_sec);
	if (one != NULL)
	{
		OutboxSub  *sub = outbox_lookup_sub(one);

		outbox_check_consume(sub, caller);
		subs = palloc(sizeof(StreamSub));
		stats_begin(&subs[nsubs++], sub, now);
	}
	else
	{
		OutboxSub **now_subs;
		int			nnow;

		if (plan == NULL)
			plan = outbox_prepare("SELECT name FROM outbox.subscription ORDER BY name", 0, NULL);
		if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "subscription list failed");
		tab = SPI_tuptable;
		n = SPI_processed;
		/* each as it is now; one that is gone was unsubscribed since */
		now_subs = outbox_find_subs(&nnow);
		qsort(now_subs, nnow, sizeof(OutboxSub *), cmp_subs);
		subs = palloc(sizeof(StreamSub) * Max(n, 1));
		/* many chains: read their partitions once for all (chain.c) */
		if (n >= PREFETCH_MIN_SUBS)
			outbox_chain_prefetch();
		PG_TRY();
		{
			for (i = 0; i < n; i++)
			{
				bool		isnull;
				char	   *name = TextDatumGetCString(SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull));
				OutboxSub  *sub = NULL;
				OutboxSub **found = bsearch(&name, now_subs, nnow, sizeof(OutboxSub *),
											cmp_sub_name);

				CHECK_FOR_INTERRUPTS();
				if (found != NULL)
					sub = *found;
				if (sub == NULL || !outbox_role_may_consume(caller, sub->id))
					continue;
				stats_begin(&subs[nsubs++], sub, now);
			}
		}
		PG_CATCH();
		{
			/* its snapshots and relations go with the transaction */
			outbox_chain_prefetch_forget();
			PG_RE_THROW();
		}
		PG_END_TRY();
		outbox_chain_prefetch_end();
	}
	count_unordered(subs, nsubs, now);
	count_tallied(subs, nsubs);
	shared_scan(subs, nsubs, now);
	for (i = 0; i < (uint64) nsubs; i++)
		stats_end(rsinfo, &subs[i]);
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
	return (Datum) 0;
}
