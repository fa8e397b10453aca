/*-------------------------------------------------------------------------
 *
 * chain.c
 *		Where a subscription stands in the event stream.
 *
 * The stream is cut into deltas: delta k holds the events of transactions
 * visible in snapshot S(k) and not in S(k-1).  A claim takes the next part
 * of a delta and records it as one outbox.batch row (a "slice": the delta's
 * two snapshots and the id range (pos_from, pos_to] it covered).  Slices are
 * folded into outbox.cursor once every id in them is settled.
 *
 * Claimers of one subscription take a short lock while they read the chain
 * and write their slice, and read slices with a dirty snapshot, so they see
 * each other's uncommitted slices: no two take the same range, and none
 * waits for another's transaction.  A claim that rolls back leaves a hole
 * in the chain; the next claim finds it and hands its events out again.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"


/* columns of outbox.batch */
enum
{
	BATCH_SUB_ID = 1,
	BATCH_NO,
	BATCH_DELTA,
	BATCH_LO,
	BATCH_HI,
	BATCH_POS_FROM,
	BATCH_POS_TO,
	BATCH_ENDED,
	BATCH_LEASE_UNTIL,
	BATCH_IDS,
	BATCH_KEYS,
	BATCH_NATTS = BATCH_KEYS
};

/*
 * The per-subscription claim lock: held while a claim reads the chain and
 * writes its slice, released before the claim returns.
 */
void
outbox_lock_sub(int32 sub_id)
{
	LockDatabaseObject(outbox_relid("subscription"), (Oid) sub_id, 0,
					   ExclusiveLock);
}

/* The claim lock if nobody holds it; for the worker, which can come back. */
bool
outbox_try_lock_sub(int32 sub_id)
{
	return ConditionalLockDatabaseObject(outbox_relid("subscription"),
										 (Oid) sub_id, 0, ExclusiveLock);
}

void
outbox_unlock_sub(int32 sub_id)
{
	UnlockDatabaseObject(outbox_relid("subscription"), (Oid) sub_id, 0,
						 ExclusiveLock);
}

static int
cmp_slice(const void *a, const void *b)
{
	const OutboxSlice *x = a;
	const OutboxSlice *y = b;

	if (x->delta != y->delta)
		return x->delta < y->delta ? -1 : 1;
	if (x->pos_from != y->pos_from)
		return x->pos_from < y->pos_from ? -1 : 1;
	return (x->batch_no > y->batch_no) - (x->batch_no < y->batch_no);
}

static bool
xid_active(TransactionId xid)
{
	return TransactionIdIsCurrentTransactionId(xid) ||
		TransactionIdIsInProgress(xid);
}

void
outbox_chain_add(OutboxChain *chain, OutboxSlice *slice)
{
	if (chain->nslices == chain->maxslices)
	{
		chain->maxslices = Max(16, chain->maxslices * 2);
		chain->slices = chain->slices == NULL ?
			palloc(sizeof(OutboxSlice) * chain->maxslices) :
			repalloc(chain->slices, sizeof(OutboxSlice) * chain->maxslices);
	}
	chain->slices[chain->nslices++] = *slice;
}

/*
 * Read the slices of a subscription with a dirty snapshot: committed ones
 * and those of transactions still in progress (ours included).  A slice
 * being updated shows twice; its versions are merged.
 */
static void
read_slices(OutboxChain *chain)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key[2];
	SnapshotData dirty;
	HeapTuple	tup;
	Oid			indexoid;
	int			i,
				k;

	InitDirtySnapshot(dirty);
	rel = table_open(outbox_relid("batch"), AccessShareLock);
	indexoid = outbox_relid("batch_pkey");
	ScanKeyInit(&key[0], BATCH_SUB_ID, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(chain->sub_id));
	/* folded rows are below scan_from: never walk them (or their dead tuples) */
	ScanKeyInit(&key[1], BATCH_NO, BTGreaterEqualStrategyNumber, F_INT8GE,
				Int64GetDatum(chain->scan_from));
	scan = systable_beginscan(rel, indexoid, true, &dirty, 2, key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Datum		values[BATCH_NATTS];
		bool		nulls[BATCH_NATTS];
		OutboxSlice s;
		HeapTupleHeader th = tup->t_data;
		bool		inserting,
					deleting;
		ArrayType  *arr;

		inserting = TransactionIdIsValid(dirty.xmin) ||
			TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(th));
		deleting = TransactionIdIsValid(dirty.xmax) ||
			(!(th->t_infomask & HEAP_XMAX_INVALID) &&
			 !HEAP_XMAX_IS_LOCKED_ONLY(th->t_infomask) &&
			 xid_active(HeapTupleHeaderGetUpdateXid(th)));

		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
		memset(&s, 0, sizeof(s));
		s.batch_no = DatumGetInt64(values[BATCH_NO - 1]);
		s.delta = DatumGetInt64(values[BATCH_DELTA - 1]);
		s.lo = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(values[BATCH_LO - 1]));
		s.hi = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(values[BATCH_HI - 1]));
		s.pos_from = DatumGetInt64(values[BATCH_POS_FROM - 1]);
		s.pos_to = DatumGetInt64(values[BATCH_POS_TO - 1]);
		s.ended = DatumGetBool(values[BATCH_ENDED - 1]);
		arr = DatumGetArrayTypePCopy(values[BATCH_IDS - 1]);
		s.nids = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
		s.ids = (int64 *) ARR_DATA_PTR(arr);
		if (!nulls[BATCH_KEYS - 1])
		{
			Datum	   *elems;
			bool	   *enulls;
			int			n;

			deconstruct_array(DatumGetArrayTypeP(values[BATCH_KEYS - 1]),
							  TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &enulls, &n);
			s.key_hashes = palloc(sizeof(int64) * Max(n, 1));
			for (k = 0; k < n; k++)
				if (!enulls[k])
					s.key_hashes[s.nkeys++] = outbox_key_hash(TextDatumGetCString(elems[k]));
		}
		s.committed = !inserting && !deleting;
		s.settled = s.committed && s.nids == 0;

		/* a second version of a slice already seen: merge */
		for (i = 0; i < chain->nslices; i++)
		{
			OutboxSlice *o = &chain->slices[i];

			if (o->batch_no != s.batch_no)
				continue;
			o->settled = false;
			o->committed = false;
			if (s.nkeys > 0)
			{
				int64	   *h = palloc(sizeof(int64) * (o->nkeys + s.nkeys));

				if (o->nkeys > 0)
					memcpy(h, o->key_hashes, sizeof(int64) * o->nkeys);
				memcpy(h + o->nkeys, s.key_hashes, sizeof(int64) * s.nkeys);
				o->key_hashes = h;
				o->nkeys += s.nkeys;
			}
			break;
		}
		if (i == chain->nslices)
			outbox_chain_add(chain, &s);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (chain->nslices > 1)
		qsort(chain->slices, chain->nslices, sizeof(OutboxSlice), cmp_slice);
}

/*
 * Read the latest cursor row of the subscription into the chain.  Cursor
 * rows are only ever inserted (one per fold) and read newest first, so a
 * long-running transaction that keeps old versions alive does not make
 * this slower.
 */
static void
read_cursor(OutboxChain *chain, Snapshot snapshot)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = Int32GetDatum(chain->sub_id);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	if (plan == NULL)
	{
		Oid			types[1] = {INT4OID};

		plan = outbox_prepare("SELECT fold_no, delta, lo, hi, pos, ended, scan_from"
							  " FROM outbox.cursor WHERE sub_id OPERATOR(pg_catalog.=) $1"
							  " ORDER BY fold_no DESC LIMIT 1", 1, types);
	}
	if (SPI_execute_snapshot(plan, &arg, NULL, snapshot, InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "cursor lookup failed");
	if (SPI_processed != 1)
		elog(ERROR, "cursor of subscription %d is missing", chain->sub_id);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	chain->fold_no = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	chain->delta = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	chain->lo = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(SPI_getbinval(tup, desc, 3, &isnull)));
	chain->hi = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(SPI_getbinval(tup, desc, 4, &isnull)));
	chain->pos = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	chain->ended = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	chain->scan_from = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Read a subscription's chain.  The caller holds the subscription's claim
 * lock and is connected to SPI as the owner.  The cursor is read once to
 * know where its batch rows start, the batch rows are read, and then the
 * cursor again with a snapshot taken after: a fold that commits in between
 * then shows as rows the new cursor already covers, which the walk skips,
 * never as a hole.  The snapshot is registered; release it with
 * outbox_chain_release.
 */
OutboxChain *
outbox_chain_read(int32 sub_id)
{
	OutboxChain *chain = palloc0(sizeof(OutboxChain));
	Snapshot	first;

	chain->sub_id = sub_id;
	first = RegisterSnapshot(GetLatestSnapshot());
	read_cursor(chain, first);
	UnregisterSnapshot(first);
	read_slices(chain);

	chain->snapshot = RegisterSnapshot(GetLatestSnapshot());
	chain->now = outbox_snap_from_snapshot(chain->snapshot);
	read_cursor(chain, chain->snapshot);
	return chain;
}

void
outbox_chain_release(OutboxChain *chain)
{
	if (chain->snapshot != NULL)
		UnregisterSnapshot(chain->snapshot);
	chain->snapshot = NULL;
}

/* a walking position: the end of what is handed out so far */
typedef struct Walk
{
	int64		delta;
	OutboxSnap *lo;
	OutboxSnap *hi;
	int64		pos;
	bool		ended;
} Walk;

static bool
walk_covers(const Walk *w, const OutboxSlice *s)
{
	if (w->ended)
		return s->delta <= w->delta;
	return s->delta < w->delta ||
		(s->delta == w->delta && s->pos_to <= w->pos);
}

static OutboxSegment *
make_segment(int64 delta, OutboxSnap *lo, OutboxSnap *hi, int64 from,
			 int64 to, bool is_gap, bool new_delta)
{
	OutboxSegment *seg = palloc0(sizeof(OutboxSegment));

	seg->delta = delta;
	seg->lo = lo;
	seg->hi = hi;
	seg->from = from;
	seg->to = to;
	seg->to_end = (to == OUTBOX_POS_END);
	seg->is_gap = is_gap;
	seg->new_delta = new_delta;
	return seg;
}

/*
 * The parts of the stream not handed out yet, in stream order: holes left
 * by claims that rolled back, then the rest of the last delta, or a new
 * delta up to the chain's snapshot.  The last segment is always the one at
 * the end.
 */
List *
outbox_chain_segments(OutboxChain *chain)
{
	List	   *segs = NIL;
	Walk		w = {chain->delta, chain->lo, chain->hi, chain->pos, chain->ended};
	int			i;

	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];

		if (walk_covers(&w, s))
			continue;
		if (!w.ended && s->delta > w.delta)
		{
			/* the rest of w's delta was taken by a claim that rolled back */
			segs = lappend(segs, make_segment(w.delta, w.lo, w.hi, w.pos,
											  OUTBOX_POS_END, true, false));
			w.ended = true;
		}
		if (w.ended)
		{
			if (s->delta > w.delta + 1 || !outbox_snap_equal(s->lo, w.hi))
			{
				/* whole deltas lost: one segment from w's end to s's start */
				segs = lappend(segs, make_segment(w.delta + 1, w.hi, s->lo, 0,
												  OUTBOX_POS_END, true, false));
			}
			if (s->pos_from > 0)
				segs = lappend(segs, make_segment(s->delta, s->lo, s->hi, 0,
												  s->pos_from, true, false));
		}
		else if (s->pos_from > w.pos)
			segs = lappend(segs, make_segment(w.delta, w.lo, w.hi, w.pos,
											  s->pos_from, true, false));
		if (w.ended || s->delta != w.delta)
			w.pos = s->pos_to;
		else
			w.pos = Max(w.pos, s->pos_to);
		w.delta = s->delta;
		w.lo = s->lo;
		w.hi = s->hi;
		w.ended = s->ended;
	}

	if (w.ended)
		segs = lappend(segs, make_segment(w.delta + 1, w.hi, chain->now, 0,
										  OUTBOX_POS_END, false, true));
	else
		segs = lappend(segs, make_segment(w.delta, w.lo, w.hi, w.pos,
										  OUTBOX_POS_END, false, false));
	return segs;
}

/* Is the event with this id part of the segment's delta and range? */
bool
outbox_segment_contains(const OutboxSegment *seg, int64 id)
{
	uint64		xid = OUTBOX_ID_XID(id);

	return id > seg->from && id <= seg->to &&
		outbox_snap_visible(seg->hi, xid) && !outbox_snap_visible(seg->lo, xid);
}

typedef struct Range
{
	int64		from;
	int64		to;
} Range;

static int
cmp_range(const void *a, const void *b)
{
	const Range *x = a;
	const Range *y = b;

	return (x->from > y->from) - (x->from < y->from);
}

/*
 * Might some of the ids first..last, all of transaction xid, still be ahead
 * of the chain (not handed out yet)?  Ordered subscriptions ask it of whole
 * transactions, ack of single events.
 */
bool
outbox_chain_pending(OutboxChain *chain, uint64 xid, int64 first, int64 last)
{
	int64		delta = -1;
	Range	   *ranges;
	int			nranges = 0;
	int64		cur;
	int			i;

	if (outbox_snap_visible(chain->lo, xid))
		return false;
	if (outbox_snap_visible(chain->hi, xid))
	{
		if (chain->ended)
			return false;
		delta = chain->delta;
	}
	for (i = 0; delta < 0 && i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];

		if (outbox_snap_visible(s->hi, xid) && !outbox_snap_visible(s->lo, xid))
			delta = s->delta;
	}
	if (delta < 0)
		return true;

	ranges = palloc(sizeof(Range) * (chain->nslices + 1));
	if (chain->delta == delta)
	{
		ranges[nranges].from = 0;
		ranges[nranges++].to = chain->ended ? OUTBOX_POS_END : chain->pos;
	}
	for (i = 0; i < chain->nslices; i++)
		if (chain->slices[i].delta == delta)
		{
			ranges[nranges].from = chain->slices[i].pos_from;
			ranges[nranges++].to = chain->slices[i].pos_to;
		}
	qsort(ranges, nranges, sizeof(Range), cmp_range);
	cur = first - 1;
	for (i = 0; i < nranges && cur < last; i++)
		if (ranges[i].from <= cur)
			cur = Max(cur, ranges[i].to);
	pfree(ranges);
	return cur < last;
}

/*
 * Fold the settled slices that lead the chain into a new outbox.cursor row,
 * if there are at least min_slices of them and no other transaction is
 * folding (a lock held to commit says so).  Runs in the claimer's
 * transaction, under the claim lock; the slices it deletes have no ids
 * left, so nothing else updates them.
 *
 * A committed slice whose leases are still out (a slow consumer) would
 * stop folding, and every claim would read the growing chain behind it.
 * Once enough slices follow it, its leases are handed over to
 * outbox.delivery as 'leased' rows (where ack, fail and lease expiry find
 * them as well) and it is folded like the others.
 */
void
outbox_chain_fold(OutboxChain *chain, int min_slices)
{
	static SPIPlanPtr ins_plan = NULL;
	static SPIPlanPtr del_plan = NULL;
	static SPIPlanPtr lock_plan = NULL;
	static SPIPlanPtr hand_plan = NULL;
	Walk		w = {chain->delta, chain->lo, chain->hi, chain->pos, chain->ended};
	Datum	   *nos;
	int			n = 0;
	int			i;
	int64		scan_from = -1;
	int64		max_folded = chain->scan_from;
	Datum		args[8];
	LOCKTAG		tag;
	bool		handed = false;

	if (chain->nslices < min_slices || chain->nslices == 0)
		return;

	if (hand_plan == NULL)
	{
		Oid			t8[8] = {INT4OID, INT8OID, INT8OID, PG_SNAPSHOTOID, PG_SNAPSHOTOID,
		INT8OID, BOOLOID, INT8OID};
		Oid			t2[2] = {INT4OID, INT8ARRAYOID};
		Oid			t2b[2] = {INT4OID, INT8OID};

		ins_plan = outbox_prepare("INSERT INTO outbox.cursor"
								  " (sub_id, fold_no, delta, lo, hi, pos, ended, scan_from)"
								  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", 8, t8);
		del_plan = outbox_prepare("DELETE FROM outbox.batch"
								  " WHERE sub_id OPERATOR(pg_catalog.=) $1"
								  " AND batch_no OPERATOR(pg_catalog.=) ANY ($2)", 2, t2);
		lock_plan = outbox_prepare("SELECT 1 FROM outbox.batch"
								   " WHERE sub_id OPERATOR(pg_catalog.=) $1"
								   " AND batch_no OPERATOR(pg_catalog.=) $2"
								   " FOR UPDATE SKIP LOCKED", 2, t2b);
		hand_plan = outbox_prepare(
			"INSERT INTO outbox.delivery (sub_id, event_id, state, attempts, lease_until, key)"
			" SELECT b.sub_id, u.id, 'leased', 1, b.lease_until, u.key"
			" FROM outbox.batch b,"
			"  ROWS FROM (pg_catalog.unnest(b.ids),"
			"   pg_catalog.unnest(COALESCE(b.keys, '{}'::pg_catalog.text[]))) AS u(id, key)"
			" WHERE b.sub_id OPERATOR(pg_catalog.=) $1 AND b.batch_no OPERATOR(pg_catalog.=) $2"
			" AND u.id IS NOT NULL ON CONFLICT DO NOTHING", 2, t2b);
	}

	/* one fold at a time per subscription, until it commits */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) chain->sub_id, 0, 0x4f45);
	if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return;

	/* a fold that committed since we read the cursor: ours would be stale */
	{
		OutboxChain latest;
		Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());

		memset(&latest, 0, sizeof(latest));
		latest.sub_id = chain->sub_id;
		read_cursor(&latest, snap);
		UnregisterSnapshot(snap);
		if (latest.fold_no != chain->fold_no)
			return;
	}

	nos = palloc(sizeof(Datum) * chain->nslices);
	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];
		bool		contiguous;

		if (s->is_new)
			break;
		if (walk_covers(&w, s))
		{
			if (s->settled)
			{
				nos[n++] = Int64GetDatum(s->batch_no);
				s->folded = true;
			}
			continue;
		}
		if (w.ended)
			contiguous = s->delta == w.delta + 1 && s->pos_from == 0 &&
				outbox_snap_equal(s->lo, w.hi);
		else
			contiguous = s->delta == w.delta && s->pos_from <= w.pos;
		if (!contiguous || !s->committed)
			break;
		if (!s->settled)
		{
			Datum		largs[2] = {Int32GetDatum(chain->sub_id), Int64GetDatum(s->batch_no)};

			if (chain->nslices - i - 1 < OUTBOX_FOLD_PAST_LEASES)
				break;
			/* an ack may be settling it right now: fold another time */
			if (SPI_execute_plan(lock_plan, largs, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "batch lock failed");
			if (SPI_processed != 1)
				break;
			if (SPI_execute_plan(hand_plan, largs, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "lease hand-over failed");
			handed = true;
		}
		nos[n++] = Int64GetDatum(s->batch_no);
		s->folded = true;
		w.delta = s->delta;
		w.lo = s->lo;
		w.hi = s->hi;
		w.pos = s->pos_to;
		w.ended = s->ended;
	}
	/* a slice whose leases were handed over must go now */
	if (!handed && (n < min_slices || n == 0))
	{
		for (i = 0; i < chain->nslices; i++)
			chain->slices[i].folded = false;
		return;
	}

	/* later reads start at the oldest row that stays */
	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];

		if (s->is_new)
			continue;
		if (s->folded)
			max_folded = Max(max_folded, s->batch_no);
		else if (scan_from < 0 || s->batch_no < scan_from)
			scan_from = s->batch_no;
	}
	if (scan_from < 0)
		scan_from = max_folded + 1;

	args[0] = Int32GetDatum(chain->sub_id);
	args[1] = Int64GetDatum(chain->fold_no + 1);
	args[2] = Int64GetDatum(w.delta);
	args[3] = PointerGetDatum(w.lo);
	args[4] = PointerGetDatum(w.hi);
	args[5] = Int64GetDatum(w.pos);
	args[6] = BoolGetDatum(w.ended);
	args[7] = Int64GetDatum(scan_from);
	if (SPI_execute_plan(ins_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "cursor insert failed");
	args[1] = PointerGetDatum(construct_array(nos, n, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	if (SPI_execute_plan(del_plan, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "batch delete failed");
}
