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
 * A slice whose transaction stays open (a consumer working inside its
 * claim's transaction) is passed by folds once enough slices follow it,
 * and recorded in the cursor row, so that it does not make the chain every
 * claim reads grow (outbox_chain_fold).
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
#include "executor/executor.h"
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
	BATCH_GEN = 1,
	BATCH_SUB_ID,
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

/* columns of outbox.cursor */
enum
{
	CURSOR_GEN = 1,
	CURSOR_SUB_ID,
	CURSOR_FOLD_NO,
	CURSOR_DELTA,
	CURSOR_LO,
	CURSOR_HI,
	CURSOR_POS,
	CURSOR_ENDED,
	CURSOR_SCAN_FROM,
	CURSOR_SCAN_GEN,
	CURSOR_HELD,
	CURSOR_NATTS = CURSOR_HELD
};

/* fields of outbox.held_slice */
enum
{
	HELD_GEN = 1,
	HELD_BATCH_NO,
	HELD_DELTA,
	HELD_LO,
	HELD_HI,
	HELD_POS_FROM,
	HELD_POS_TO,
	HELD_ENDED
};

/* columns of outbox.chain_state */
enum
{
	CHAIN_STATE_ONE = 1,
	CHAIN_STATE_GEN
};

/* columns of outbox.settle read here (then comes "at", which is not) */
enum
{
	SETTLE_GEN = 1,
	SETTLE_SUB_ID,
	SETTLE_BATCH_NO,
	SETTLE_IDS,
	SETTLE_NATTS = SETTLE_IDS
};

/* their names, checked against the catalog (layout.c) */
static const char *const batch_columns[] = {
	"gen", "sub_id", "batch_no", "delta", "lo", "hi", "pos_from", "pos_to",
	"ended", "lease_until", "ids", "keys"
};
static const char *const cursor_columns[] = {
	"gen", "sub_id", "fold_no", "delta", "lo", "hi", "pos", "ended",
	"scan_from", "scan_gen", "held"
};
static const char *const held_fields[] = {
	"gen", "batch_no", "delta", "lo", "hi", "pos_from", "pos_to", "ended"
};
static const char *const chain_state_columns[] = {"one", "gen"};
static const char *const settle_columns[] = {"gen", "sub_id", "batch_no", "ids"};

/*
 * The current generation of cursor, batch and settle rows: the row of
 * outbox.chain_state, which only the worker advances (see retention.c),
 * read with a fresh snapshot whatever the caller's isolation level.  It is
 * a table row and not a sequence because it must never move except by a
 * committed advance: crash recovery and promotion move sequences ahead
 * (their WAL is written ahead), and a generation that jumps puts rows of
 * two generations into one partition and makes readers take a stale
 * cursor for the newest.
 */
int64
outbox_chain_gen(void)
{
	Relation	rel = table_open(outbox_relid("chain_state"), AccessShareLock);
	SysScanDesc scan;
	HeapTuple	tup;
	int64		gen = -1;

	outbox_check_columns(rel, chain_state_columns, lengthof(chain_state_columns), false);

	scan = systable_beginscan(rel, InvalidOid, false, GetLatestSnapshot(), 0, NULL);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, CHAIN_STATE_GEN, RelationGetDescr(rel), &isnull);

		if (!isnull)
			gen = DatumGetInt64(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (gen < 0)
		elog(ERROR, "outbox.chain_state is missing its row");
	return gen;
}

/*
 * Is generation gen still safe to write, now that the caller has locked
 * its partitions?  The worker empties the partition of generation g only
 * once the current generation is g + 3, under a lock that conflicts with
 * ours; so if the current generation is less than that now, it was less
 * before we locked, and the partition holds generation gen until we
 * commit.  Otherwise the caller reads the generation again and retries.
 */
bool
outbox_chain_gen_still(int64 gen)
{
	return outbox_chain_gen() - gen < OUTBOX_CHAIN_PARTS - 1;
}

/*
 * The current generation, with the partition of "table" that holds it
 * locked for writing until the end of the transaction.
 */
int64
outbox_chain_gen_for_insert(const char *table)
{
	for (;;)
	{
		int64		gen = outbox_chain_gen();

		LockRelationOid(outbox_chain_part(table, gen), RowExclusiveLock);
		if (outbox_chain_gen_still(gen))
			return gen;
		CHECK_FOR_INTERRUPTS();
	}
}

/* The partition of "table" (cursor, batch or settle) that holds generation gen. */
Oid
outbox_chain_part(const char *table, int64 gen)
{
	/* spelled out: stats look up a few per subscription, and printing them showed */
	static const char *const names[3][OUTBOX_CHAIN_PARTS] = {
		{"batch_0", "batch_1", "batch_2", "batch_3"},
		{"cursor_0", "cursor_1", "cursor_2", "cursor_3"},
		{"settle_0", "settle_1", "settle_2", "settle_3"},
	};
	int			t;

	StaticAssertStmt(OUTBOX_CHAIN_PARTS == 4, "names of the chain partitions");
	if (strcmp(table, "batch") == 0)
		t = 0;
	else if (strcmp(table, "cursor") == 0)
		t = 1;
	else if (strcmp(table, "settle") == 0)
		t = 2;
	else
		elog(ERROR, "no chain table \"%s\"", table);
	return outbox_relid(names[t][gen % OUTBOX_CHAIN_PARTS]);
}

/* The oldest generation a reader starting at "from" may have to look at. */
static int64
first_gen(int64 from, int64 now)
{
	return Max(from, now - (OUTBOX_CHAIN_PARTS - 1));
}

/* The columns of a partition of cursor, batch or settle, by its table. */
static void
check_part_columns(Relation rel, const char *table)
{
	if (strcmp(table, "batch") == 0)
		outbox_check_columns(rel, batch_columns, lengthof(batch_columns), false);
	else if (strcmp(table, "cursor") == 0)
		outbox_check_columns(rel, cursor_columns, lengthof(cursor_columns), false);
	else if (strcmp(table, "settle") == 0)
		outbox_check_columns(rel, settle_columns, lengthof(settle_columns), false);
	else
		elog(ERROR, "unknown outbox bookkeeping table \"%s\"", table);
}

/*
 * heap_deform_tuple() of the first n columns of a bookkeeping table into
 * arrays of n.  The column check takes tables with more columns than are
 * read here (settle has "at"; a later version may add others), and
 * heap_deform_tuple() fills an entry for every column of the table: into
 * arrays of n it would write past their end, on the stack.  Those rows are
 * deformed into arrays of the table's width instead.
 */
static void
deform_columns(HeapTuple tup, TupleDesc desc, Datum *values, bool *nulls,
			   int n)
{
	Datum	   *all_values;
	bool	   *all_nulls;

	if (desc->natts < n)
		elog(ERROR, "outbox bookkeeping row has %d columns, %d expected",
			 desc->natts, n);
	if (desc->natts == n)
	{
		heap_deform_tuple(tup, desc, values, nulls);
		return;
	}
	all_values = palloc(sizeof(Datum) * desc->natts);
	all_nulls = palloc(sizeof(bool) * desc->natts);
	heap_deform_tuple(tup, desc, all_values, all_nulls);
	memcpy(values, all_values, sizeof(Datum) * n);
	memcpy(nulls, all_nulls, sizeof(bool) * n);
	pfree(all_values);
	pfree(all_nulls);
}

/*
 * Open a partition and its index: the partition of the parent's index,
 * found by the parent index's name (<table>_sub_idx), never by position.
 * Partitions are opened one by one, never through the parent, so a
 * transaction locks only the generations it reads, and the worker can
 * empty older ones meanwhile.
 */
static Relation
open_part(const char *table, int64 gen, Relation *index)
{
	Relation	rel = table_open(outbox_chain_part(table, gen), AccessShareLock);
	char		parent_index[NAMEDATALEN];

	check_part_columns(rel, table);
	snprintf(parent_index, sizeof(parent_index), "%s_sub_idx", table);
	*index = index_open(outbox_part_index(rel, parent_index), AccessShareLock);
	return rel;
}

static void
close_part(Relation rel, Relation index)
{
	index_close(index, NoLock);
	table_close(rel, NoLock);
}

/*
 * Chains read in bulk (outbox.stats, issue 9).  Read one by one, every
 * subscription's chain costs an index lookup in each generation's cursor,
 * batch and settle partition, and a relation open for each: half of what
 * stats cost at 1,000 subscriptions.  Between outbox_chain_prefetch() and
 * outbox_chain_prefetch_end(), outbox_chain_read() takes its rows from
 * copies of every partition read once, in the order a single read takes
 * them: the cursor rows with a snapshot taken once every partition is
 * locked, the settle and batch rows with a dirty snapshot (each row with
 * what the scan found of its transactions), then a snapshot that every
 * chain shares, and the cursor rows again with it.
 */
enum
{
	PF_CURSOR_FIRST,			/* cursor rows, at first_snap */
	PF_CURSOR,					/* cursor rows, at snapshot */
	PF_SETTLE,
	PF_BATCH,
	PF_KINDS
};

/*
 * More rows than this in all partitions: read chains one by one (a busy
 * database keeps about four rotations of claims there; copies of all of
 * them would cost more memory than lookups cost time).
 */
#define PREFETCH_MAX_ROWS 50000

typedef struct PrefetchRow
{
	int32		sub_id;
	int64		no;				/* fold_no or batch_no: the index's order */
	HeapTuple	tup;
	TransactionId xmin;			/* the dirty snapshot's, as the scan left it */
	TransactionId xmax;
} PrefetchRow;

typedef struct PrefetchPart
{
	Relation	rel;
	Relation	index;
	int			n;
	PrefetchRow *rows;			/* sorted by sub_id, no */
} PrefetchPart;

static struct
{
	bool		active;
	int64		gen_now;
	int64		first;
	int			nrows;			/* copied so far */
	Snapshot	first_snap;
	Snapshot	snapshot;
	PrefetchPart parts[PF_KINDS][OUTBOX_CHAIN_PARTS];
}			prefetch;

static const char *const prefetch_table[PF_KINDS] = {"cursor", "cursor", "settle", "batch"};

static int
cmp_prefetch_row(const void *a, const void *b)
{
	const PrefetchRow *x = a;
	const PrefetchRow *y = b;

	if (x->sub_id != y->sub_id)
		return x->sub_id < y->sub_id ? -1 : 1;
	return (x->no > y->no) - (x->no < y->no);
}

/*
 * The columns of the <table>_sub_idx index of cursor, batch or settle:
 * sub_id, then fold_no or batch_no.
 */
static void
part_key_columns(const char *table, AttrNumber *sub_att, AttrNumber *no_att)
{
	if (strcmp(table, "cursor") == 0)
	{
		*sub_att = CURSOR_SUB_ID;
		*no_att = CURSOR_FOLD_NO;
	}
	else if (strcmp(table, "batch") == 0)
	{
		*sub_att = BATCH_SUB_ID;
		*no_att = BATCH_NO;
	}
	else
	{
		*sub_att = SETTLE_SUB_ID;
		*no_att = SETTLE_BATCH_NO;
	}
}

/* Copy a partition's rows; false if there are too many. */
static bool
prefetch_part(int kind, int64 g, Snapshot snap)
{
	PrefetchPart *pp = &prefetch.parts[kind][g % OUTBOX_CHAIN_PARTS];
	AttrNumber	sub_att;
	AttrNumber	no_att;
	SysScanDesc scan;
	HeapTuple	tup;
	int			max = 0;

	part_key_columns(prefetch_table[kind], &sub_att, &no_att);
	pp->rel = open_part(prefetch_table[kind], g, &pp->index);
	pp->n = 0;
	pp->rows = NULL;
	scan = systable_beginscan(pp->rel, RelationGetRelid(pp->index), true, snap, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		PrefetchRow *r;
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		if (++prefetch.nrows > PREFETCH_MAX_ROWS)
		{
			systable_endscan(scan);
			return false;
		}
		if (pp->n == max)
		{
			max = Max(64, max * 2);
			pp->rows = pp->rows ? repalloc(pp->rows, sizeof(PrefetchRow) * max) :
				palloc(sizeof(PrefetchRow) * max);
		}
		r = &pp->rows[pp->n++];
		r->sub_id = DatumGetInt32(heap_getattr(tup, sub_att, RelationGetDescr(pp->rel), &isnull));
		r->no = DatumGetInt64(heap_getattr(tup, no_att, RelationGetDescr(pp->rel), &isnull));
		r->tup = heap_copytuple(tup);
		r->xmin = snap->snapshot_type == SNAPSHOT_DIRTY ? snap->xmin : InvalidTransactionId;
		r->xmax = snap->snapshot_type == SNAPSHOT_DIRTY ? snap->xmax : InvalidTransactionId;
	}
	systable_endscan(scan);
	if (pp->n > 1)
		qsort(pp->rows, pp->n, sizeof(PrefetchRow), cmp_prefetch_row);
	return true;
}

/*
 * Read every chain's partitions now, for outbox_chain_read() to take its
 * rows from until outbox_chain_prefetch_end().  Falls back to reading
 * chains one by one (returns quietly) when a partition holds too many
 * rows to copy.  Wrap the reads in PG_TRY: an error must end it.
 */
void
outbox_chain_prefetch(void)
{
	SnapshotData dirty;
	int64		g;
	int			kind;
	bool		ok = true;

	Assert(!prefetch.active);
	memset(&prefetch, 0, sizeof(prefetch));
	outbox_lock_event_tables();
	/* as outbox_chain_read: the current generation's partitions locked */
	do
	{
		prefetch.gen_now = outbox_chain_gen();
		LockRelationOid(outbox_chain_part("batch", prefetch.gen_now), RowExclusiveLock);
		LockRelationOid(outbox_chain_part("cursor", prefetch.gen_now), RowExclusiveLock);
	} while (!outbox_chain_gen_still(prefetch.gen_now));
	prefetch.first = first_gen(0, prefetch.gen_now);
	/* every partition locked before the cursors' snapshot (outbox_cursor_read) */
	for (g = prefetch.first; g <= prefetch.gen_now; g++)
	{
		LockRelationOid(outbox_chain_part("cursor", g), AccessShareLock);
		LockRelationOid(outbox_chain_part("settle", g), AccessShareLock);
		LockRelationOid(outbox_chain_part("batch", g), AccessShareLock);
	}
	prefetch.first_snap = RegisterSnapshot(GetLatestSnapshot());
	InitDirtySnapshot(dirty);
	for (kind = 0; kind < PF_KINDS && ok; kind++)
	{
		/* settle rows before batch rows, as read_slices */
		if (kind == PF_CURSOR)
			continue;
		for (g = prefetch.first; g <= prefetch.gen_now && ok; g++)
			ok = prefetch_part(kind, g, kind == PF_CURSOR_FIRST ? prefetch.first_snap : &dirty);
	}
	if (ok)
	{
		prefetch.snapshot = RegisterSnapshot(GetLatestSnapshot());
		for (g = prefetch.first; g <= prefetch.gen_now && ok; g++)
			ok = prefetch_part(PF_CURSOR, g, prefetch.snapshot);
	}
	prefetch.active = true;
	if (!ok)
		outbox_chain_prefetch_end();
}

/* After outbox_chain_prefetch(), also on error. */
void
outbox_chain_prefetch_end(void)
{
	int			kind,
				p;

	if (!prefetch.active)
		return;
	prefetch.active = false;
	if (prefetch.first_snap != NULL)
		UnregisterSnapshot(prefetch.first_snap);
	if (prefetch.snapshot != NULL)
		UnregisterSnapshot(prefetch.snapshot);
	for (kind = 0; kind < PF_KINDS; kind++)
		for (p = 0; p < OUTBOX_CHAIN_PARTS; p++)
			if (prefetch.parts[kind][p].rel != NULL)
				close_part(prefetch.parts[kind][p].rel, prefetch.parts[kind][p].index);
	memset(&prefetch, 0, sizeof(prefetch));
}

/* On error: the snapshots and relations go with the (sub)transaction. */
void
outbox_chain_prefetch_forget(void)
{
	memset(&prefetch, 0, sizeof(prefetch));
}

/*
 * A scan of one subscription's rows in one partition, in index order (or
 * backward): of the index, or of the prefetched rows.
 */
typedef struct PartScan
{
	Relation	rel;
	Relation	index;
	SysScanDesc scan;			/* NULL: prefetched */
	bool		ordered;
	PrefetchRow *rows;
	int			i;
	int			end;
	bool		backward;
	Snapshot	dirty;			/* a dirty snapshot, set as the scan would */
} PartScan;

/*
 * Begin a scan of "table" in generation g for sub_id's rows with the
 * second key column (fold_no or batch_no) "strategy" (0: any) "no".
 * kind: which prefetched copy serves it, or -1 for none.
 */
static void
part_scan_begin(PartScan *ps, int kind, const char *table, int64 g, int32 sub_id,
				StrategyNumber strategy, int64 no, Snapshot snap, bool backward)
{
	memset(ps, 0, sizeof(*ps));
	ps->backward = backward;
	if (snap->snapshot_type == SNAPSHOT_DIRTY)
		ps->dirty = snap;
	if (kind >= 0 && prefetch.active && g >= prefetch.first && g <= prefetch.gen_now)
	{
		PrefetchPart *pp = &prefetch.parts[kind][g % OUTBOX_CHAIN_PARTS];
		int			lo = 0,
					hi = pp->n;

		/* the first row of sub_id */
		while (lo < hi)
		{
			int			mid = (lo + hi) / 2;

			if (pp->rows[mid].sub_id < sub_id)
				lo = mid + 1;
			else
				hi = mid;
		}
		ps->rows = pp->rows;
		ps->rel = pp->rel;
		ps->i = lo;
		for (ps->end = lo; ps->end < pp->n && pp->rows[ps->end].sub_id == sub_id; ps->end++)
			;
		if (strategy == BTEqualStrategyNumber || strategy == BTGreaterEqualStrategyNumber)
		{
			while (ps->i < ps->end && pp->rows[ps->i].no < no)
				ps->i++;
			if (strategy == BTEqualStrategyNumber)
			{
				int			e = ps->i;

				while (e < ps->end && pp->rows[e].no == no)
					e++;
				ps->end = e;
			}
		}
		if (backward)
		{
			int			t = ps->i;

			ps->i = ps->end - 1;
			ps->end = t - 1;
		}
		return;
	}
	{
		ScanKeyData key[2];
		int			nkeys = 1;
		AttrNumber	sub_att;
		AttrNumber	no_att;

		part_key_columns(table, &sub_att, &no_att);
		ps->rel = open_part(table, g, &ps->index);
		ScanKeyInit(&key[0], sub_att, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(sub_id));
		if (strategy != 0)
		{
			ScanKeyInit(&key[1], no_att, strategy,
						strategy == BTEqualStrategyNumber ? F_INT8EQ : F_INT8GE,
						Int64GetDatum(no));
			nkeys = 2;
		}
		ps->ordered = backward;
		if (backward)
			ps->scan = systable_beginscan_ordered(ps->rel, ps->index, snap, nkeys, key);
		else
			ps->scan = systable_beginscan(ps->rel, RelationGetRelid(ps->index), true,
										  snap, nkeys, key);
	}
}

static HeapTuple
part_scan_next(PartScan *ps)
{
	PrefetchRow *r;

	if (ps->scan != NULL)
		return ps->ordered ?
			systable_getnext_ordered(ps->scan, BackwardScanDirection) :
			systable_getnext(ps->scan);
	if (ps->backward ? ps->i <= ps->end : ps->i >= ps->end)
		return NULL;
	r = &ps->rows[ps->i];
	ps->i += ps->backward ? -1 : 1;
	if (ps->dirty != NULL)
	{
		ps->dirty->xmin = r->xmin;
		ps->dirty->xmax = r->xmax;
	}
	return r->tup;
}

static void
part_scan_end(PartScan *ps)
{
	if (ps->scan == NULL)
		return;					/* prefetched: closed at the end */
	if (ps->ordered)
		systable_endscan_ordered(ps->scan);
	else
		systable_endscan(ps->scan);
	close_part(ps->rel, ps->index);
}

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

/*
 * The claim lock if nobody holds it; for the worker, which can come back.
 * Spelled with LockAcquire() because ConditionalLockDatabaseObject() came
 * with minor releases (16.2 lacks it).  No catalog state hangs on this
 * lock, so there are no invalidation messages to take as it is granted.
 */
bool
outbox_try_lock_sub(int32 sub_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, MyDatabaseId, outbox_relid("subscription"),
					   (Oid) sub_id, 0);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
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

/* a settle row as read with a dirty snapshot */
typedef struct SettleRow
{
	int64		batch_no;
	bool		committed;		/* by a transaction other than ours */
	int			nids;
	int64	   *ids;
} SettleRow;

static int
cmp_settle(const void *a, const void *b)
{
	const SettleRow *x = a;
	const SettleRow *y = b;

	return (x->batch_no > y->batch_no) - (x->batch_no < y->batch_no);
}

/* qsort/bsearch comparator for int64 */
int
outbox_cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * Read the settle rows of a subscription, for batch_no >= from (or == from
 * when "exact"), in generations first .. last, with a dirty snapshot: rows
 * of transactions in progress show too (not as committed).  Sorted by
 * batch_no.
 */
static SettleRow *
read_settles(int32 sub_id, int64 from, bool exact, int64 first, int64 last,
			 int *nrows)
{
	SettleRow  *rows = NULL;
	int			n = 0,
				max = 0;
	int64		g;
	SnapshotData dirty;

	InitDirtySnapshot(dirty);
	for (g = first; g <= last; g++)
	{
		PartScan	ps;
		Relation	rel;
		HeapTuple	tup;

		part_scan_begin(&ps, PF_SETTLE, "settle", g, sub_id,
						exact ? BTEqualStrategyNumber : BTGreaterEqualStrategyNumber,
						from, &dirty, false);
		rel = ps.rel;
		while (HeapTupleIsValid(tup = part_scan_next(&ps)))
		{
			Datum		values[SETTLE_NATTS];
			bool		nulls[SETTLE_NATTS];
			ArrayType  *arr;
			SettleRow  *r;

			if (n == max)
			{
				max = Max(16, max * 2);
				rows = rows ? repalloc(rows, sizeof(SettleRow) * max) :
					palloc(sizeof(SettleRow) * max);
			}
			r = &rows[n++];
			deform_columns(tup, RelationGetDescr(rel), values, nulls, SETTLE_NATTS);
			r->batch_no = DatumGetInt64(values[SETTLE_BATCH_NO - 1]);
			r->committed = !TransactionIdIsValid(dirty.xmin) &&
				!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));
			arr = DatumGetArrayTypePCopy(values[SETTLE_IDS - 1]);
			r->nids = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
			r->ids = (int64 *) ARR_DATA_PTR(arr);
		}
		part_scan_end(&ps);
	}
	if (n > 1)
		qsort(rows, n, sizeof(SettleRow), cmp_settle);
	*nrows = n;
	return rows;
}

/*
 * Make a slice of a batch row read with a dirty snapshot (dirty as the scan
 * left it), taking out what the settle rows (sorted) took.
 */
static void
slice_from_tuple(OutboxSlice *sp, Relation rel, HeapTuple tup,
				 SnapshotData *dirty, SettleRow *settles, int nsettles)
{
	Datum		values[BATCH_NATTS];
	bool		nulls[BATCH_NATTS];
	OutboxSlice s;
	HeapTupleHeader th = tup->t_data;
	bool		inserting,
				deleting;
	ArrayType  *arr;
	int			nall;
	int64	   *all;
	Datum	   *kelems = NULL;
	bool	   *knulls = NULL;
	bool	   *gone;			/* settled, as far as we know */
	bool	   *gone_for_good;	/* settled by a committed transaction */
	SettleRow	probe;
	SettleRow  *hit;
	int			k;

	inserting = TransactionIdIsValid(dirty->xmin) ||
		TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(th));
	deleting = TransactionIdIsValid(dirty->xmax) ||
		(!(th->t_infomask & HEAP_XMAX_INVALID) &&
		 !HEAP_XMAX_IS_LOCKED_ONLY(th->t_infomask) &&
		 xid_active(HeapTupleHeaderGetUpdateXid(th)));

	deform_columns(tup, RelationGetDescr(rel), values, nulls, BATCH_NATTS);
	memset(&s, 0, sizeof(s));
	s.gen = DatumGetInt64(values[BATCH_GEN - 1]);
	s.batch_no = DatumGetInt64(values[BATCH_NO - 1]);
	s.delta = DatumGetInt64(values[BATCH_DELTA - 1]);
	s.lo = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(values[BATCH_LO - 1]));
	s.hi = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(values[BATCH_HI - 1]));
	s.pos_from = DatumGetInt64(values[BATCH_POS_FROM - 1]);
	s.pos_to = DatumGetInt64(values[BATCH_POS_TO - 1]);
	s.ended = DatumGetBool(values[BATCH_ENDED - 1]);
	s.lease_until = DatumGetTimestampTz(values[BATCH_LEASE_UNTIL - 1]);
	arr = DatumGetArrayTypePCopy(values[BATCH_IDS - 1]);
	nall = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
	all = (int64 *) ARR_DATA_PTR(arr);
	if (!nulls[BATCH_KEYS - 1])
	{
		int			nk;

		deconstruct_array(DatumGetArrayTypeP(values[BATCH_KEYS - 1]),
						  TEXTOID, -1, false, TYPALIGN_INT,
						  &kelems, &knulls, &nk);
		if (nk != nall)
			elog(ERROR, "batch %lld has %d ids but %d keys",
				 (long long) s.batch_no, nall, nk);
	}
	s.committed = !inserting && !deleting;
	s.visible = !TransactionIdIsValid(dirty->xmin);

	/* take out what settle rows of this batch took */
	gone = palloc0(sizeof(bool) * Max(nall, 1));
	gone_for_good = palloc0(sizeof(bool) * Max(nall, 1));
	probe.batch_no = s.batch_no;
	hit = nsettles > 0 ?
		bsearch(&probe, settles, nsettles, sizeof(SettleRow), cmp_settle) : NULL;
	if (hit != NULL)
	{
		while (hit > settles && hit[-1].batch_no == s.batch_no)
			hit--;
		for (; hit < settles + nsettles && hit->batch_no == s.batch_no; hit++)
		{
			if (!hit->committed)
				s.committed = false;
			for (k = 0; k < hit->nids; k++)
			{
				int64	   *p = bsearch(&hit->ids[k], all, nall,
										sizeof(int64), outbox_cmp_int64);

				if (p == NULL)
					continue;
				gone[p - all] = true;
				if (hit->committed)
					gone_for_good[p - all] = true;
			}
		}
	}
	s.ids = palloc(sizeof(int64) * Max(nall, 1));
	s.live_ids = palloc(sizeof(int64) * Max(nall, 1));
	if (kelems)
		s.key_hashes = palloc(sizeof(int64) * Max(nall, 1));
	for (k = 0; k < nall; k++)
	{
		if (!gone[k])
			s.ids[s.nids++] = all[k];
		if (!gone_for_good[k])
			s.live_ids[s.nlive++] = all[k];
		/* keys stay busy until their settlement commits */
		if (kelems && !gone_for_good[k] && !knulls[k])
			s.key_hashes[s.nkeys++] = outbox_key_hash(TextDatumGetCString(kelems[k]));
	}
	s.settled = s.committed && s.nids == 0;
	*sp = s;
}

/* Add a hole: the range of a passed slice whose batch row is gone. */
static void
add_hole(OutboxChain *chain, const OutboxHeld *h)
{
	int			i;

	for (i = 0; i < chain->nholes; i++)
	{
		OutboxHeld *o = &chain->holes[i];

		if (o->batch_no == h->batch_no && o->delta == h->delta &&
			o->pos_from == h->pos_from && o->pos_to == h->pos_to &&
			outbox_snap_equal(o->lo, h->lo) && outbox_snap_equal(o->hi, h->hi))
			return;				/* known already */
	}
	if (chain->nholes == chain->maxholes)
	{
		chain->maxholes = Max(8, chain->maxholes * 2);
		chain->holes = chain->holes == NULL ?
			palloc(sizeof(OutboxHeld) * chain->maxholes) :
			repalloc(chain->holes, sizeof(OutboxHeld) * chain->maxholes);
	}
	chain->holes[chain->nholes++] = *h;
}

/*
 * The slices the cursor row records as passed: each batch row still there
 * becomes a slice marked "held" (usually below scan_from, where the scan
 * does not look); the range of each that is gone (its claim rolled back) a
 * hole.  Their partitions are kept until no cursor row records them
 * (chain_part_needed in retention.c), so a row that is not found is gone.
 * Records known already (from the cursor row read before) are skipped.
 */
static void
read_held(OutboxChain *chain)
{
	int			i,
				j;

	for (i = 0; i < chain->nheld; i++)
	{
		OutboxHeld *h = &chain->held[i];
		bool		found = false;

		if (h->batch_no >= 0)
		{
			for (j = 0; j < chain->nslices; j++)
				if (chain->slices[j].batch_no == h->batch_no)
				{
					chain->slices[j].held = true;
					found = true;
				}
			for (j = 0; j < chain->nholes && !found; j++)
				found = chain->holes[j].batch_no == h->batch_no;
		}
		if (!found && h->batch_no >= 0)
		{
			SettleRow  *settles;
			int			nsettles;
			SnapshotData dirty;
			PartScan	ps;
			HeapTuple	tup;

			settles = read_settles(chain->sub_id, h->batch_no, true,
								   first_gen(h->gen, chain->gen_now),
								   chain->gen_now, &nsettles);
			InitDirtySnapshot(dirty);
			part_scan_begin(&ps, PF_BATCH, "batch", h->gen, chain->sub_id,
							BTEqualStrategyNumber, h->batch_no, &dirty, false);
			if (HeapTupleIsValid(tup = part_scan_next(&ps)))
			{
				OutboxSlice s;

				slice_from_tuple(&s, ps.rel, tup, &dirty, settles, nsettles);
				s.held = true;
				outbox_chain_add(chain, &s);
				found = true;
			}
			part_scan_end(&ps);
		}
		if (!found)
			add_hole(chain, h);
	}
}

/*
 * Read the slices of a subscription with a dirty snapshot: committed ones
 * and those of transactions still in progress (ours included), from the
 * cursor's scan_from on and those its row records as passed, with what of
 * them is settled.
 */
static void
read_slices(OutboxChain *chain)
{
	SnapshotData dirty;
	SettleRow  *settles;
	int			nsettles;
	int64		first = first_gen(chain->scan_gen, chain->gen_now);
	int64		g;

	/* settle rows first: one written after this read only looks pending */
	settles = read_settles(chain->sub_id, chain->scan_from, false, first,
						   chain->gen_now, &nsettles);

	InitDirtySnapshot(dirty);
	for (g = first; g <= chain->gen_now; g++)
	{
		PartScan	ps;
		HeapTuple	tup;

		/* folded rows are below scan_from: never walk them */
		part_scan_begin(&ps, PF_BATCH, "batch", g, chain->sub_id,
						BTGreaterEqualStrategyNumber, chain->scan_from, &dirty, false);
		while (HeapTupleIsValid(tup = part_scan_next(&ps)))
		{
			OutboxSlice s;

			slice_from_tuple(&s, ps.rel, tup, &dirty, settles, nsettles);
			outbox_chain_add(chain, &s);
		}
		part_scan_end(&ps);
	}
	read_held(chain);

	if (chain->nslices > 1)
		qsort(chain->slices, chain->nslices, sizeof(OutboxSlice), cmp_slice);
}

/* A cursor row's outbox.held_slice[] into chain->held. */
static void
read_held_array(OutboxChain *chain, Datum d)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *enulls;
	int			n,
				i;
	int16		typlen;
	bool		typbyval;
	char		typalign;

	outbox_check_type_fields(ARR_ELEMTYPE(arr), held_fields, lengthof(held_fields));
	get_typlenbyvalalign(ARR_ELEMTYPE(arr), &typlen, &typbyval, &typalign);
	deconstruct_array(arr, ARR_ELEMTYPE(arr), typlen, typbyval, typalign,
					  &elems, &enulls, &n);
	chain->held = palloc(sizeof(OutboxHeld) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		HeapTupleHeader th;
		OutboxHeld *h = &chain->held[chain->nheld];
		bool		isnull;

		if (enulls[i])
			continue;
		th = DatumGetHeapTupleHeader(elems[i]);
		h->gen = DatumGetInt64(GetAttributeByNum(th, HELD_GEN, &isnull));
		h->batch_no = DatumGetInt64(GetAttributeByNum(th, HELD_BATCH_NO, &isnull));
		h->delta = DatumGetInt64(GetAttributeByNum(th, HELD_DELTA, &isnull));
		h->lo = outbox_snap_copy((OutboxSnap *)
								 PG_DETOAST_DATUM(GetAttributeByNum(th, HELD_LO, &isnull)));
		h->hi = outbox_snap_copy((OutboxSnap *)
								 PG_DETOAST_DATUM(GetAttributeByNum(th, HELD_HI, &isnull)));
		h->pos_from = DatumGetInt64(GetAttributeByNum(th, HELD_POS_FROM, &isnull));
		h->pos_to = DatumGetInt64(GetAttributeByNum(th, HELD_POS_TO, &isnull));
		h->ended = DatumGetBool(GetAttributeByNum(th, HELD_ENDED, &isnull));
		chain->nheld++;
	}
}

/*
 * Read the newest cursor row in generation g visible to snapshot.
 */
static bool
read_cursor_part(OutboxChain *chain, int64 g, Snapshot snapshot)
{
	PartScan	ps;
	HeapTuple	tup;
	bool		found = false;
	int			kind = -1;

	/* the prefetched copy read with this snapshot, if any */
	if (prefetch.active && snapshot == prefetch.first_snap)
		kind = PF_CURSOR_FIRST;
	else if (prefetch.active && snapshot == prefetch.snapshot)
		kind = PF_CURSOR;
	part_scan_begin(&ps, kind, "cursor", g, chain->sub_id, 0, 0, snapshot, true);
	tup = part_scan_next(&ps);
	if (HeapTupleIsValid(tup))
	{
		Datum		values[CURSOR_NATTS];
		bool		nulls[CURSOR_NATTS];

		deform_columns(tup, RelationGetDescr(ps.rel), values, nulls, CURSOR_NATTS);
		chain->cursor_gen = DatumGetInt64(values[CURSOR_GEN - 1]);
		chain->fold_no = DatumGetInt64(values[CURSOR_FOLD_NO - 1]);
		chain->delta = DatumGetInt64(values[CURSOR_DELTA - 1]);
		chain->lo = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(values[CURSOR_LO - 1]));
		chain->hi = outbox_snap_copy((OutboxSnap *) PG_DETOAST_DATUM(values[CURSOR_HI - 1]));
		chain->pos = DatumGetInt64(values[CURSOR_POS - 1]);
		chain->ended = DatumGetBool(values[CURSOR_ENDED - 1]);
		chain->scan_from = DatumGetInt64(values[CURSOR_SCAN_FROM - 1]);
		chain->scan_gen = DatumGetInt64(values[CURSOR_SCAN_GEN - 1]);
		/* NULL, as in rows written before 1.1: nothing passed */
		chain->nheld = 0;
		chain->held = NULL;
		if (!nulls[CURSOR_HELD - 1])
			read_held_array(chain, values[CURSOR_HELD - 1]);
		found = true;
	}
	part_scan_end(&ps);
	return found;
}

/*
 * Read the newest cursor row of chain->sub_id into the chain, looking from
 * generation chain->gen_now back.  A fold writes to the generation current
 * at the time, so the newest generation that has a row has the newest row.
 *
 * With snapshot NULL, a fresh snapshot is taken each time another partition
 * has been locked, and the partitions locked so far are read again with it:
 * the worker empties a partition only after it copied the rows still needed
 * into a newer one, so if the partition turns out emptied, the copy shows.
 * Returns false if there is no row.
 */
bool
outbox_cursor_read(OutboxChain *chain, Snapshot snapshot)
{
	int64		last = first_gen(0, chain->gen_now);
	int64		k,
				g;

	/* prefetched: every partition was locked before its snapshot */
	if (snapshot == NULL && prefetch.active && chain->gen_now == prefetch.gen_now)
		snapshot = prefetch.first_snap;
	for (k = chain->gen_now; k >= last; k--)
	{
		if (snapshot != NULL)
		{
			if (read_cursor_part(chain, k, snapshot))
				return true;
			continue;
		}
		else
		{
			Relation	rel = table_open(outbox_chain_part("cursor", k), AccessShareLock);
			Snapshot	snap;
			bool		found = false;

			table_close(rel, NoLock);
			snap = RegisterSnapshot(GetLatestSnapshot());
			for (g = chain->gen_now; g >= k && !found; g--)
				found = read_cursor_part(chain, g, snap);
			UnregisterSnapshot(snap);
			if (found)
				return true;
		}
	}
	return false;
}

/*
 * Retention empties an event bucket with TRUNCATE, in the transaction that
 * copies what is still needed of it to outbox.event_kept.  TRUNCATE is not
 * MVCC-safe: a snapshot taken before that transaction committed sees the
 * emptied bucket as empty, and the copies as not there yet, so a claim
 * reading with it would pass those events by for good.  Readers therefore
 * lock the event tables before they take the snapshot they read events
 * with: retention, which only tries its lock, then waits for them, or has
 * committed before the snapshot is taken.
 */
void
outbox_lock_event_tables(void)
{
	static const char *const buckets[OUTBOX_BUCKETS] = {"event_0", "event_1", "event_2", "event_3"};
	int			b;

	StaticAssertStmt(OUTBOX_BUCKETS == 4, "names of the event buckets");
	LockRelationOid(outbox_relid("event"), AccessShareLock);
	for (b = 0; b < OUTBOX_BUCKETS; b++)
		LockRelationOid(outbox_relid(buckets[b]), AccessShareLock);
	LockRelationOid(outbox_relid("event_kept"), AccessShareLock);
}

/*
 * Read a subscription's chain.  The caller holds the subscription's claim
 * lock and is connected to SPI as the owner.  The cursor is read once to
 * know where its batch rows start, the batch rows are read, and then the
 * cursor again with a snapshot taken after: a fold that commits in between
 * then shows as rows the new cursor already covers, which the walk skips,
 * never as a hole, and what it recorded as passed is read as well.  The
 * snapshot, taken with the event tables locked, is registered; release it
 * with outbox_chain_release.
 */
OutboxChain *
outbox_chain_read(int32 sub_id)
{
	OutboxChain *chain = palloc0(sizeof(OutboxChain));
	int64		fold_no;

	chain->sub_id = sub_id;
	if (prefetch.active)
		chain->gen_now = prefetch.gen_now;	/* locked, as below */
	else
	{
		outbox_lock_event_tables();
		/* the claim's batch row and a fold's cursor row go into this generation */
		do
		{
			chain->gen_now = outbox_chain_gen();
			LockRelationOid(outbox_chain_part("batch", chain->gen_now), RowExclusiveLock);
			LockRelationOid(outbox_chain_part("cursor", chain->gen_now), RowExclusiveLock);
		} while (!outbox_chain_gen_still(chain->gen_now));
	}
	if (!outbox_cursor_read(chain, NULL))
		elog(ERROR, "cursor of subscription %d is missing", sub_id);
	read_slices(chain);

	chain->snapshot = RegisterSnapshot(prefetch.active ? prefetch.snapshot :
									   GetLatestSnapshot());
	chain->now = outbox_snap_from_snapshot(chain->snapshot);
	fold_no = chain->fold_no;
	if (!outbox_cursor_read(chain, chain->snapshot))
		elog(ERROR, "cursor of subscription %d is missing", sub_id);
	if (chain->fold_no != fold_no && chain->nheld > 0)
	{
		/*
		 * A fold committed meanwhile.  What it recorded as passed is in the
		 * rows read, or was recorded before, except for a slice whose claim
		 * rolled back since: that range must still show as a hole.
		 */
		read_held(chain);
		if (chain->nslices > 1)
			qsort(chain->slices, chain->nslices, sizeof(OutboxSlice), cmp_slice);
	}
	return chain;
}

/*
 * The batch rows of a subscription, not folded yet (from the cursor's
 * scan_from on, and those it records as passed), that hold any of the
 * given ids (sorted): their generations and numbers, which the caller then
 * takes ids from with outbox_batch_take.  Compares sorted id lists in C
 * rather than with an array overlap in SQL, which compares every pair.
 * Returns how many.
 */
int
outbox_batches_holding(int32 sub_id, int64 *ids, int n, int64 **gens,
					   int64 **nos)
{
	OutboxChain cur;
	Snapshot	snap;
	int64		g;
	int			found = 0,
				max = 0,
				i;

	memset(&cur, 0, sizeof(cur));
	cur.sub_id = sub_id;
	cur.gen_now = outbox_chain_gen();
	*gens = *nos = NULL;
	if (!outbox_cursor_read(&cur, NULL))
		return 0;

	snap = RegisterSnapshot(GetLatestSnapshot());
	/* the rows from scan_from on (i = -1), then those the cursor passed */
	for (i = -1; i < cur.nheld; i++)
	{
		int64		from = i < 0 ? cur.scan_from : cur.held[i].batch_no;
		int64		first = i < 0 ? first_gen(cur.scan_gen, cur.gen_now) : cur.held[i].gen;
		int64		last = i < 0 ? cur.gen_now : cur.held[i].gen;

		if (i >= 0 && (from < 0 || from >= cur.scan_from))
			continue;			/* gone, or read with the others */
		for (g = first; g <= last; g++)
		{
			Relation	rel,
						index;
			SysScanDesc scan;
			ScanKeyData key[2];
			HeapTuple	tup;

			rel = open_part("batch", g, &index);
			ScanKeyInit(&key[0], BATCH_SUB_ID, BTEqualStrategyNumber, F_INT4EQ,
						Int32GetDatum(sub_id));
			/* rows below the cursor's scan_from are folded: skip them unread */
			ScanKeyInit(&key[1], BATCH_NO,
						i < 0 ? BTGreaterEqualStrategyNumber : BTEqualStrategyNumber,
						i < 0 ? F_INT8GE : F_INT8EQ, Int64GetDatum(from));
			scan = systable_beginscan(rel, RelationGetRelid(index), true, snap, 2, key);
			while (HeapTupleIsValid(tup = systable_getnext(scan)))
			{
				bool		isnull;
				ArrayType  *arr = DatumGetArrayTypeP(heap_getattr(tup, BATCH_IDS,
																  RelationGetDescr(rel),
																  &isnull));
				int			nb = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
				int64	   *b = (int64 *) ARR_DATA_PTR(arr);
				int			x = 0,
							j = 0;

				/* both sorted: merge */
				while (x < nb && j < n && b[x] != ids[j])
				{
					if (b[x] < ids[j])
						x++;
					else
						j++;
				}
				if (x == nb || j == n)
					continue;
				if (found == max)
				{
					max = Max(8, max * 2);
					*gens = *gens ? repalloc(*gens, sizeof(int64) * max) :
						palloc(sizeof(int64) * max);
					*nos = *nos ? repalloc(*nos, sizeof(int64) * max) :
						palloc(sizeof(int64) * max);
				}
				(*gens)[found] = DatumGetInt64(heap_getattr(tup, BATCH_GEN,
															RelationGetDescr(rel), &isnull));
				(*nos)[found++] = DatumGetInt64(heap_getattr(tup, BATCH_NO,
															 RelationGetDescr(rel), &isnull));
			}
			systable_endscan(scan);
			close_part(rel, index);
		}
	}
	UnregisterSnapshot(snap);
	return found;
}

/*
 * What outbox_batch_take took, as an int8[] of the ids and a text[] of
 * their keys, for statements that unnest the two side by side.
 */
void
outbox_taken_arrays(int64 *taken, Datum *keys, bool *key_nulls, int n,
					Datum *ids_array, Datum *keys_array)
{
	Datum	   *dids = palloc(sizeof(Datum) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			k;

	for (k = 0; k < n; k++)
		dids[k] = Int64GetDatum(taken[k]);
	*ids_array = PointerGetDatum(construct_array(dids, n, INT8OID, 8,
												 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	*keys_array = PointerGetDatum(construct_md_array(keys, key_nulls, 1, dims, lbs,
													 TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Take ids out of a batch: lock its row (or give up and return -1 if
 * skip_locked and another transaction has it), see what settle rows took
 * already, and write one settle row for the ids still in it, all of them
 * or those of want[] (sorted).  Returns how many it took, with their keys
 * (ordered subscriptions) in *keys.  Concurrent takers of one batch wait
 * for each other on the row lock, so none takes an id twice.
 */
int
outbox_batch_take(int32 sub_id, int64 gen, int64 batch_no, int64 *want,
				  int nwant, bool skip_locked, int64 **taken, Datum **keys,
				  bool **key_nulls)
{
	static SPIPlanPtr lock_plans[2][OUTBOX_CHAIN_PARTS];
	static SPIPlanPtr ins_plan = NULL;
	int			part = (int) (gen % OUTBOX_CHAIN_PARTS);
	Datum		args[4];
	bool		isnull,
				keys_null;
	ArrayType  *arr;
	int64	   *all;
	int			nall,
				k,
				ntaken = 0;
	Datum	   *kelems = NULL;
	bool	   *knulls = NULL;
	SettleRow  *settles;
	int			nsettles,
				r;
	bool	   *gone;
	Datum	   *dids;
	int64		now = outbox_chain_gen_for_insert("settle");

	if (lock_plans[skip_locked][part] == NULL)
	{
		Oid			types[2] = {INT4OID, INT8OID};

		lock_plans[skip_locked][part] = outbox_prepare(
			psprintf("SELECT ids, keys FROM outbox.batch_%d"
					 " WHERE sub_id OPERATOR(pg_catalog.=) $1"
					 " AND batch_no OPERATOR(pg_catalog.=) $2 FOR UPDATE%s",
					 part, skip_locked ? " SKIP LOCKED" : ""), 2, types);
	}
	if (ins_plan == NULL)
	{
		Oid			types[4] = {INT8OID, INT4OID, INT8OID, INT8ARRAYOID};

		ins_plan = outbox_prepare("INSERT INTO outbox.settle (gen, sub_id, batch_no, ids)"
								  " VALUES ($1, $2, $3, $4)", 4, types);
	}
	args[0] = Int32GetDatum(sub_id);
	args[1] = Int64GetDatum(batch_no);
	/* the row as it is now, also in a REPEATABLE READ transaction */
	if (SPI_execute_snapshot(lock_plans[skip_locked][part], args, NULL,
							 GetLatestSnapshot(), InvalidSnapshot, false, false,
							 1) != SPI_OK_SELECT)
		elog(ERROR, "batch lock failed");
	if (SPI_processed != 1)
		return -1;
	arr = DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
	nall = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
	all = (int64 *) ARR_DATA_PTR(arr);
	{
		Datum		kd = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									   2, &keys_null);
		int			nk;

		if (!keys_null)
			deconstruct_array(DatumGetArrayTypePCopy(kd), TEXTOID, -1, false,
							  TYPALIGN_INT, &kelems, &knulls, &nk);
	}
	SPI_freetuptable(SPI_tuptable);

	/* with the row locked, every settle row of the batch has committed (or is ours) */
	settles = read_settles(sub_id, batch_no, true, first_gen(gen, now), now,
						   &nsettles);
	gone = palloc0(sizeof(bool) * Max(nall, 1));
	for (r = 0; r < nsettles; r++)
		for (k = 0; k < settles[r].nids; k++)
		{
			int64	   *p = bsearch(&settles[r].ids[k], all, nall, sizeof(int64),
									outbox_cmp_int64);

			if (p != NULL)
				gone[p - all] = true;
		}

	*taken = palloc(sizeof(int64) * Max(nall, 1));
	if (keys)
	{
		*keys = palloc(sizeof(Datum) * Max(nall, 1));
		*key_nulls = palloc(sizeof(bool) * Max(nall, 1));
	}
	dids = palloc(sizeof(Datum) * Max(nall, 1));
	for (k = 0; k < nall; k++)
	{
		if (gone[k])
			continue;
		if (want != NULL && bsearch(&all[k], want, nwant, sizeof(int64), outbox_cmp_int64) == NULL)
			continue;
		if (keys)
		{
			(*keys)[ntaken] = kelems ? kelems[k] : (Datum) 0;
			(*key_nulls)[ntaken] = kelems ? knulls[k] : true;
		}
		dids[ntaken] = Int64GetDatum(all[k]);
		(*taken)[ntaken++] = all[k];
	}
	if (ntaken == 0)
		return 0;

	args[0] = Int64GetDatum(now);
	args[1] = Int32GetDatum(sub_id);
	args[2] = Int64GetDatum(batch_no);
	args[3] = PointerGetDatum(construct_array(dids, ntaken, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(ins_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "settle insert failed");
	return ntaken;
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

/* qsort order of ranges: by their start */
int
outbox_cmp_range(const void *a, const void *b)
{
	const OutboxRange *x = a;
	const OutboxRange *y = b;

	return (x->from > y->from) - (x->from < y->from);
}

/*
 * What of the holes (passed slices whose claim rolled back) is not covered
 * again by a slice of the same delta: gap segments, which claims hand out
 * first.  Holes that overlap (a slice that refilled a hole and rolled back
 * as well) are merged, so no range is handed out twice.
 */
static List *
hole_segments(OutboxChain *chain)
{
	List	   *segs = NIL;
	bool	   *done;
	OutboxRange *holes;
	OutboxRange *cover;
	int			i,
				j;

	if (chain->nholes == 0)
		return NIL;
	done = palloc0(sizeof(bool) * chain->nholes);
	holes = palloc(sizeof(OutboxRange) * chain->nholes);
	cover = palloc(sizeof(OutboxRange) * Max(chain->nslices, 1));
	for (i = 0; i < chain->nholes; i++)
	{
		OutboxHeld *h = &chain->holes[i];
		int			nh = 0,
					nc = 0,
					k;

		if (done[i])
			continue;
		for (j = i; j < chain->nholes; j++)
		{
			OutboxHeld *o = &chain->holes[j];

			if (done[j] || o->delta != h->delta ||
				!outbox_snap_equal(o->lo, h->lo) || !outbox_snap_equal(o->hi, h->hi))
				continue;
			done[j] = true;
			holes[nh].from = o->pos_from;
			holes[nh++].to = o->pos_to;
		}
		for (j = 0; j < chain->nslices; j++)
		{
			OutboxSlice *s = &chain->slices[j];

			if (s->delta != h->delta || !outbox_snap_equal(s->lo, h->lo) ||
				!outbox_snap_equal(s->hi, h->hi))
				continue;
			cover[nc].from = s->pos_from;
			cover[nc++].to = s->pos_to;
		}
		qsort(holes, nh, sizeof(OutboxRange), outbox_cmp_range);
		qsort(cover, nc, sizeof(OutboxRange), outbox_cmp_range);
		for (j = 0; j < nh; j++)
		{
			int64		from = holes[j].from;
			int64		to = holes[j].to;
			int64		cur;

			/* merge the holes that overlap this one */
			while (j + 1 < nh && holes[j + 1].from <= to)
			{
				j++;
				to = Max(to, holes[j].to);
			}
			cur = from;
			for (k = 0; k < nc && cur < to; k++)
			{
				if (cover[k].to <= cur)
					continue;
				if (cover[k].from >= to)
					break;
				if (cover[k].from > cur)
					segs = lappend(segs, make_segment(h->delta, h->lo, h->hi, cur,
													  cover[k].from, true, false));
				cur = Max(cur, cover[k].to);
			}
			if (cur < to)
				segs = lappend(segs, make_segment(h->delta, h->lo, h->hi, cur, to,
												  true, false));
		}
	}
	return segs;
}

/*
 * The parts of the stream not handed out yet: the holes of passed slices
 * whose claim rolled back, then, in stream order, holes left
 * by claims that rolled back, then the rest of the last delta if it is
 * not finished, and a new delta up to the chain's snapshot, which is
 * always the last segment.  A caller that leaves a segment unfinished
 * must not go on to the ones after it (except past holes): a delta is
 * finished before the next one starts.
 */
List *
outbox_chain_segments(OutboxChain *chain)
{
	List	   *segs = hole_segments(chain);
	Walk		w = {chain->delta, chain->lo, chain->hi, chain->pos, chain->ended};
	int			i;

	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];

		if (s->held || walk_covers(&w, s))
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

	/*
	 * The rest of the chain's last delta, if it is not finished, and then
	 * a new delta up to the chain's snapshot: what committed after the
	 * last delta's snapshot is not handed out yet either (stats count it,
	 * a change of topics keeps it, and a claim that finishes the last
	 * delta goes on into it).
	 */
	if (!w.ended)
		segs = lappend(segs, make_segment(w.delta, w.lo, w.hi, w.pos,
										  OUTBOX_POS_END, false, false));
	segs = lappend(segs, make_segment(w.delta + 1, w.hi, chain->now, 0,
									  OUTBOX_POS_END, false, true));
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

/*
 * Might some of the ids first..last, all of transaction xid, still be ahead
 * of the chain (not handed out yet)?  Ordered subscriptions ask it of whole
 * transactions, ack of single events.
 */
bool
outbox_chain_pending(OutboxChain *chain, uint64 xid, int64 first, int64 last)
{
	int64		delta = -1;
	OutboxRange *ranges;
	int			nranges = 0;
	int64		cur;
	int			i;
	ListCell   *lc;

	/* in a hole behind the cursor */
	foreach(lc, hole_segments(chain))
	{
		OutboxSegment *seg = lfirst(lc);

		if (outbox_snap_visible(seg->hi, xid) && !outbox_snap_visible(seg->lo, xid) &&
			seg->from < last && seg->to >= first)
			return true;
	}
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

	ranges = palloc(sizeof(OutboxRange) * (chain->nslices + 1));
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
	qsort(ranges, nranges, sizeof(OutboxRange), outbox_cmp_range);
	cur = first - 1;
	for (i = 0; i < nranges && cur < last; i++)
		if (ranges[i].from <= cur)
			cur = Max(cur, ranges[i].to);
	pfree(ranges);
	return cur < last;
}

/*
 * The highest fold number of the subscription's cursor rows, those of
 * transactions in progress included.  A row with a higher number than the
 * chain's was written by a later fold, so in the chain's cursor generation
 * or a later one: older partitions are not opened (nor locked).
 */
static int64
newest_fold_no(OutboxChain *chain)
{
	int64		newest = chain->fold_no;
	int64		g;
	SnapshotData dirty;

	InitDirtySnapshot(dirty);
	for (g = chain->gen_now; g >= first_gen(chain->cursor_gen, chain->gen_now); g--)
	{
		Relation	rel,
					index;
		SysScanDesc scan;
		ScanKeyData key;
		HeapTuple	tup;

		rel = open_part("cursor", g, &index);
		ScanKeyInit(&key, CURSOR_SUB_ID, BTEqualStrategyNumber, F_INT4EQ,
					Int32GetDatum(chain->sub_id));
		scan = systable_beginscan_ordered(rel, index, &dirty, 1, &key);
		tup = systable_getnext_ordered(scan, BackwardScanDirection);
		if (HeapTupleIsValid(tup))
		{
			bool		isnull;

			newest = Max(newest, DatumGetInt64(heap_getattr(tup, CURSOR_FOLD_NO,
															RelationGetDescr(rel),
															&isnull)));
		}
		systable_endscan_ordered(scan);
		close_part(rel, index);
	}
	return newest;
}

/* A passed slice as the cursor row records it. */
static OutboxHeld
held_of(const OutboxSlice *s)
{
	OutboxHeld	h;

	h.gen = s->gen;
	h.batch_no = s->batch_no;
	h.delta = s->delta;
	h.lo = s->lo;
	h.hi = s->hi;
	h.pos_from = s->pos_from;
	h.pos_to = s->pos_to;
	h.ended = s->ended;
	return h;
}

static bool
same_delta(const OutboxHeld *h, const OutboxSlice *s)
{
	return s->delta == h->delta && outbox_snap_equal(s->lo, h->lo) &&
		outbox_snap_equal(s->hi, h->hi);
}

/*
 * Is the whole range of hole h covered again by slices that cannot vanish
 * any more (committed, or ours)?  Then nothing of it is left to hand out.
 */
static bool
hole_covered(OutboxChain *chain, const OutboxHeld *h)
{
	OutboxRange *cover = palloc(sizeof(OutboxRange) * Max(chain->nslices, 1));
	int			nc = 0,
				k;
	int64		cur = h->pos_from;

	for (k = 0; k < chain->nslices; k++)
	{
		OutboxSlice *s = &chain->slices[k];

		if (!s->visible || s->is_new || !same_delta(h, s))
			continue;
		cover[nc].from = s->pos_from;
		cover[nc++].to = s->pos_to;
	}
	qsort(cover, nc, sizeof(OutboxRange), outbox_cmp_range);
	for (k = 0; k < nc && cur < h->pos_to; k++)
		if (cover[k].from <= cur)
			cur = Max(cur, cover[k].to);
	pfree(cover);
	return cur >= h->pos_to;
}

/*
 * Does slice s cover part of a hole that stays?  Then it must stay where
 * readers see it (not folded): the hole's range minus such slices is what
 * is left to hand out.
 */
static bool
in_kept_hole(OutboxChain *chain, const bool *kept, const OutboxSlice *s)
{
	int			i;

	for (i = 0; i < chain->nholes; i++)
		if (kept[i] && same_delta(&chain->holes[i], s) &&
			s->pos_from < chain->holes[i].pos_to && s->pos_to > chain->holes[i].pos_from)
			return true;
	return false;
}

/*
 * Hand the leases of a committed slice over to outbox.delivery as 'leased'
 * rows, where ack, fail and lease expiry find them, so that the slice can
 * be folded.  False if an ack is settling it right now and !wait (fold
 * another time).
 */
static bool
hand_over(OutboxChain *chain, OutboxSlice *s, bool wait)
{
	static SPIPlanPtr hand_plan = NULL;
	int64	   *taken;
	Datum	   *keys;
	bool	   *key_nulls;
	int			ntaken;

	if (hand_plan == NULL)
	{
		Oid			t4[4] = {INT4OID, TIMESTAMPTZOID, INT8ARRAYOID, TEXTARRAYOID};

		hand_plan = outbox_prepare(
			"INSERT INTO outbox.delivery (sub_id, event_id, state, attempts, lease_until, key)"
			" SELECT $1, u.id, 'leased', 1, $2, u.key"
			" FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(id, key)"
			" WHERE u.id IS NOT NULL ON CONFLICT DO NOTHING", 4, t4);
	}
	ntaken = outbox_batch_take(chain->sub_id, s->gen, s->batch_no, NULL, 0,
							   !wait, &taken, &keys, &key_nulls);
	if (ntaken < 0)
		return false;
	if (ntaken > 0)
	{
		Datum		hargs[4];

		hargs[0] = Int32GetDatum(chain->sub_id);
		hargs[1] = TimestampTzGetDatum(s->lease_until);
		outbox_taken_arrays(taken, keys, key_nulls, ntaken, &hargs[2], &hargs[3]);
		if (SPI_execute_snapshot(hand_plan, hargs, NULL, GetLatestSnapshot(),
								 InvalidSnapshot, false, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "lease hand-over failed");
	}
	return true;
}

/*
 * For subscribe changing an existing subscription, under its lifetime lock
 * held exclusively (no claim, settlement or worker round of it is in
 * progress, so every slice read is committed or ours): the leases the
 * slices still hold become 'leased' delivery rows.  unkeyed_only: only
 * those of slices written without keys (when "ordered" is switched on).
 *
 * After a change of topics this is what keeps a leased event of a dropped
 * topic: retention keeps events ahead of a cursor only for the topics the
 * subscription has now, and a delivery row whatever its topic.
 */
void
outbox_chain_hand_over_all(OutboxChain *chain, bool unkeyed_only)
{
	int			i;

	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];

		if (s->is_new || !s->visible || s->nids == 0 ||
			(unkeyed_only && s->key_hashes != NULL))
			continue;
		(void) hand_over(chain, s, true);
	}
}

/* An array of n datums of a type, as an argument of a query. */
Datum
outbox_make_array(Datum *elems, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(elems, n, type, typlen, typbyval, typalign));
}

/* what one fold builds: the new cursor row, phase by phase */
typedef struct Fold
{
	OutboxChain *chain;
	Walk		w;				/* the new cursor position */
	OutboxHeld *out;			/* what the new row records as passed */
	int			nout;
	bool	   *kept;			/* chain->holes[i] stays recorded */
	int			n;				/* slices folded */
	bool		handed;			/* a slice's leases were handed over */
	bool		changed;		/* the records change */
} Fold;

/*
 * The number the new cursor row gets, or -1 if this fold must not write
 * one: another fold committed since the chain was read (ours would be
 * stale), or one is in progress and the chain is still short behind it.
 * Folds run under the claim lock, one at a time, so fold numbers and
 * generations grow in the order the rows are written, whatever order they
 * commit in; the newest row is the one with the highest fold_no.
 */
static int64
fold_number(OutboxChain *chain)
{
	OutboxChain latest;
	int64		fold_no;

	memset(&latest, 0, sizeof(latest));
	latest.sub_id = chain->sub_id;
	latest.gen_now = chain->gen_now;
	if (!outbox_cursor_read(&latest, NULL) || latest.fold_no != chain->fold_no)
		return -1;

	/*
	 * A fold of a transaction still in progress: usually a short one, so
	 * leave the folding to it, unless the chain grew long behind it (the
	 * transaction is held open).  Our row must then win over its row if
	 * both commit.
	 */
	fold_no = newest_fold_no(chain);
	if (fold_no > chain->fold_no && chain->nslices < OUTBOX_FOLD_PAST_LEASES)
		return -1;
	return fold_no + 1;
}

/* Holes stay recorded until slices that cannot vanish cover them again. */
static void
fold_holes(Fold *f)
{
	OutboxChain *chain = f->chain;
	int			i;

	for (i = 0; i < chain->nholes; i++)
	{
		OutboxHeld *h = &chain->holes[i];

		if (h->batch_no >= 0)
			f->changed = true;	/* recorded from now on as gone */
		if (hole_covered(chain, h))
		{
			f->changed = true;
			continue;
		}
		f->kept[i] = true;
		f->out[f->nout] = *h;
		f->out[f->nout++].batch_no = -1;
	}
}

/* Passed slices: the record goes once the slice is settled or handed over. */
static void
fold_passed(Fold *f)
{
	OutboxChain *chain = f->chain;
	int			i;

	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];

		if (!s->held)
			continue;
		if (!s->committed || in_kept_hole(chain, f->kept, s) ||
			(!s->settled && !hand_over(chain, s, false)))
		{
			f->out[f->nout++] = held_of(s);
			continue;
		}
		if (!s->settled)
			f->handed = true;
		s->folded = true;
		f->changed = true;
	}
}

/*
 * Walk the slices in stream order from the cursor: fold the settled ones
 * that continue it, hand over the leases of a committed one that 64
 * follow, pass an uncommitted one that 64 follow, and stop at the first
 * that can be neither.  Slices behind the cursor (refills of a hole, or
 * folded meanwhile) fold or are passed where they are.
 */
static void
fold_walk(Fold *f)
{
	OutboxChain *chain = f->chain;
	Walk	   *w = &f->w;
	int			i;

	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];
		int			following = chain->nslices - i - 1;
		bool		contiguous;

		if (s->held)
			continue;
		if (s->is_new)
			break;
		if (walk_covers(w, s))
		{
			if (!s->committed)
			{
				s->passed = true;
				f->out[f->nout++] = held_of(s);
			}
			else if (in_kept_hole(chain, f->kept, s))
				continue;
			else if (s->settled ||
					 (following >= OUTBOX_FOLD_PAST_LEASES && hand_over(chain, s, false)))
			{
				f->handed |= !s->settled;
				f->n++;
				s->folded = true;
			}
			continue;
		}
		if (w->ended)
			contiguous = s->delta == w->delta + 1 && s->pos_from == 0 &&
				outbox_snap_equal(s->lo, w->hi);
		else
			contiguous = s->delta == w->delta && s->pos_from <= w->pos;
		if (!contiguous)
			break;
		if (!s->committed)
		{
			/*
			 * Its claim, or an ack or hand-over of it, is in progress: pass
			 * it once enough follow.
			 */
			if (following < OUTBOX_FOLD_PAST_LEASES)
				break;
			s->passed = true;
			f->out[f->nout++] = held_of(s);
		}
		else if (!s->settled)
		{
			if (following < OUTBOX_FOLD_PAST_LEASES)
				break;
			/* an ack may be settling it right now: fold another time */
			if (!hand_over(chain, s, false))
				break;
			f->handed = true;
			f->n++;
			s->folded = true;
		}
		else
		{
			f->n++;
			s->folded = true;
		}
		w->delta = s->delta;
		w->lo = s->lo;
		w->hi = s->hi;
		w->pos = s->pos_to;
		w->ended = s->ended;
	}
}

/* Where later reads start: the oldest slice that stays, and its generation. */
static void
fold_scan_start(Fold *f, int64 *scan_from, int64 *scan_gen)
{
	OutboxChain *chain = f->chain;
	int64		max_gone = chain->scan_from - 1;
	int			i;

	*scan_from = -1;
	*scan_gen = chain->gen_now;
	for (i = 0; i < chain->nslices; i++)
	{
		OutboxSlice *s = &chain->slices[i];

		if (s->is_new)
			continue;
		if (s->folded || s->passed || s->held)
			max_gone = Max(max_gone, s->batch_no);
		else
		{
			if (*scan_from < 0 || s->batch_no < *scan_from)
				*scan_from = s->batch_no;
			*scan_gen = Min(*scan_gen, s->gen);
		}
	}
	if (*scan_from < 0)
		*scan_from = max_gone + 1;
}

/* Insert the new cursor row. */
static void
fold_insert(Fold *f, int64 fold_no, int64 scan_from, int64 scan_gen)
{
	static SPIPlanPtr ins_plan = NULL;
	OutboxChain *chain = f->chain;
	Datum		args[18];
	Datum	   *cols[8];
	int			c,
				i;

	if (ins_plan == NULL)
	{
		Oid			t[18] = {INT8OID, INT4OID, INT8OID, INT8OID, PG_SNAPSHOTOID,
			PG_SNAPSHOTOID, INT8OID, BOOLOID, INT8OID, INT8OID,
			INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID, PG_SNAPSHOTARRAYOID,
		PG_SNAPSHOTARRAYOID, INT8ARRAYOID, INT8ARRAYOID, BOOLARRAYOID};

		ins_plan = outbox_prepare(
			"INSERT INTO outbox.cursor"
			" (gen, sub_id, fold_no, delta, lo, hi, pos, ended, scan_from, scan_gen, held)"
			" SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
			" (SELECT pg_catalog.array_agg(ROW(u.g, u.b, u.d, u.l, u.h, u.f, u.t, u.e)"
			"   ::outbox.held_slice ORDER BY u.o)"
			"  FROM ROWS FROM (pg_catalog.unnest($11), pg_catalog.unnest($12),"
			"   pg_catalog.unnest($13), pg_catalog.unnest($14), pg_catalog.unnest($15),"
			"   pg_catalog.unnest($16), pg_catalog.unnest($17), pg_catalog.unnest($18))"
			"   WITH ORDINALITY AS u(g, b, d, l, h, f, t, e, o))", 18, t);
	}

	args[0] = Int64GetDatum(chain->gen_now);
	args[1] = Int32GetDatum(chain->sub_id);
	args[2] = Int64GetDatum(fold_no);
	args[3] = Int64GetDatum(f->w.delta);
	args[4] = PointerGetDatum(f->w.lo);
	args[5] = PointerGetDatum(f->w.hi);
	args[6] = Int64GetDatum(f->w.pos);
	args[7] = BoolGetDatum(f->w.ended);
	args[8] = Int64GetDatum(scan_from);
	args[9] = Int64GetDatum(scan_gen);
	for (c = 0; c < 8; c++)
		cols[c] = palloc(sizeof(Datum) * Max(f->nout, 1));
	for (i = 0; i < f->nout; i++)
	{
		cols[0][i] = Int64GetDatum(f->out[i].gen);
		cols[1][i] = Int64GetDatum(f->out[i].batch_no);
		cols[2][i] = Int64GetDatum(f->out[i].delta);
		cols[3][i] = PointerGetDatum(f->out[i].lo);
		cols[4][i] = PointerGetDatum(f->out[i].hi);
		cols[5][i] = Int64GetDatum(f->out[i].pos_from);
		cols[6][i] = Int64GetDatum(f->out[i].pos_to);
		cols[7][i] = BoolGetDatum(f->out[i].ended);
	}
	args[10] = outbox_make_array(cols[0], f->nout, INT8OID);
	args[11] = outbox_make_array(cols[1], f->nout, INT8OID);
	args[12] = outbox_make_array(cols[2], f->nout, INT8OID);
	args[13] = outbox_make_array(cols[3], f->nout, PG_SNAPSHOTOID);
	args[14] = outbox_make_array(cols[4], f->nout, PG_SNAPSHOTOID);
	args[15] = outbox_make_array(cols[5], f->nout, INT8OID);
	args[16] = outbox_make_array(cols[6], f->nout, INT8OID);
	args[17] = outbox_make_array(cols[7], f->nout, BOOLOID);
	if (SPI_execute_plan(ins_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "cursor insert failed");
}

/*
 * Fold the settled slices that lead the chain into a new outbox.cursor row,
 * if there are at least min_slices of them and no other transaction is
 * folding.  Runs in the claimer's transaction, under the claim lock.
 * Folded batch rows stay where they are (below the new scan_from, where no
 * reader looks) until their partition is emptied.
 *
 * A committed slice whose leases are still out (a slow consumer) would
 * stop folding, and every claim would read the growing chain behind it.
 * Once enough slices follow it, its leases are handed over to
 * outbox.delivery as 'leased' rows (where ack, fail and lease expiry find
 * them as well) and it is folded like the others.
 *
 * A slice whose claiming transaction is still in progress (a consumer
 * working inside its claim's transaction) would stop folding the same way.
 * Once enough slices follow it, the fold passes it: the new cursor row
 * records it ("held"), readers read it through the record, and a later
 * fold drops the record once the slice is settled (or its leases handed
 * over, after that transaction committed).  If that transaction rolls
 * back, the recorded range is a hole: handed out again first (attempt not
 * counted), and dropped once slices that cannot vanish cover it again.
 *
 * min_slices 0 (the worker) also writes a cursor row when nothing folds but
 * the newest one is in an older generation, so that old partitions can be
 * emptied.
 *
 * Phases: the number of the new row (fold_number), the holes it keeps
 * (fold_holes), the passed slices it keeps recording (fold_passed), the
 * walk that folds, hands over and passes (fold_walk), where later reads
 * start (fold_scan_start), and the row (fold_insert).
 */
void
outbox_chain_fold(OutboxChain *chain, int min_slices)
{
	Fold		f;
	int64		fold_no;
	int64		scan_from;
	int64		scan_gen;
	bool		refresh = (min_slices == 0 && chain->cursor_gen < chain->gen_now);
	int			i;

	if (chain->nslices < min_slices || (chain->nslices == 0 && !refresh))
		return;
	fold_no = fold_number(chain);
	if (fold_no < 0)
		return;

	memset(&f, 0, sizeof(f));
	f.chain = chain;
	f.w.delta = chain->delta;
	f.w.lo = chain->lo;
	f.w.hi = chain->hi;
	f.w.pos = chain->pos;
	f.w.ended = chain->ended;
	f.out = palloc(sizeof(OutboxHeld) * (chain->nholes + chain->nslices + 1));
	f.kept = palloc0(sizeof(bool) * Max(chain->nholes, 1));

	fold_holes(&f);
	fold_passed(&f);
	fold_walk(&f);

	/* a slice whose leases were handed over must go now */
	if (!f.handed && !f.changed && (f.n < min_slices || f.n == 0) && !refresh)
	{
		for (i = 0; i < chain->nslices; i++)
			chain->slices[i].folded = chain->slices[i].passed = false;
		return;
	}

	fold_scan_start(&f, &scan_from, &scan_gen);
	fold_insert(&f, fold_no, scan_from, scan_gen);
}

/*
 * SQL: the current generation, with its cursor partition locked for
 * writing (subscribe writes a new subscription's first cursor row).
 */
PG_FUNCTION_INFO_V1(outbox_chain_gen_sql);
Datum
outbox_chain_gen_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(outbox_chain_gen_for_insert("cursor"));
}
