/*-------------------------------------------------------------------------
 *
 * claim.c
 *		outbox.claim(): lease up to a batch of ready deliveries.
 *
 * A claim takes, oldest first: deliveries that are due in outbox.delivery
 * (retries, delayed events, replays, ordered keys released), with FOR
 * UPDATE SKIP LOCKED; then new events from the stream, by walking the
 * subscription's chain (chain.c).  New events cost one outbox.batch row per
 * claim, however many it leases.  Everything is written in the consumer's
 * transaction: if it rolls back, the claim never happened.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "shmem.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(outbox_claim);

/* a new delta with nothing for us is still recorded past this many xids */
#define IDLE_DELTA_XIDS 1024

/* columns of outbox.delivery that scans read by number */
enum
{
	DELIVERY_SUB_ID = 1,
	DELIVERY_EVENT_ID,
	DELIVERY_STATE,
	DELIVERY_ATTEMPTS,
	DELIVERY_VISIBLE_AT,
	DELIVERY_LEASE_UNTIL,
	DELIVERY_KEY
};

/* their names, checked against the catalog (layout.c) */
static const char *const delivery_columns[] = {
	"sub_id", "event_id", "state", "attempts", "visible_at", "lease_until", "key"
};

static Relation
open_delivery(void)
{
	Relation	rel = table_open(outbox_relid("delivery"), AccessShareLock);

	outbox_check_columns(rel, delivery_columns, lengthof(delivery_columns), false);
	return rel;
}


/* columns of the scan query */
enum
{
	EV_ID = 1,
	EV_TOPIC,
	EV_KEY,
	EV_PAYLOAD,
	EV_HEADERS,
	EV_DELIVER_AT,
	EV_ENQUEUED_AT
};

typedef struct Candidate
{
	int64		id;
	Datum		topic;
	Datum		key;
	bool		key_null;
	Datum		payload;
	Datum		headers;
	bool		headers_null;
	Datum		enqueued_at;
} Candidate;

typedef struct ClaimState
{
	OutboxSub  *sub;
	OutboxChain *chain;
	int			want;
	int			got;
	TimestampTz now;
	TimestampTz lease_until;
	Tuplestorestate *tupstore;
	TupleDesc	tupdesc;
	HTAB	   *busy;			/* ordered: keys with anything not settled */
	HTAB	   *inflight;		/* ordered: keys leased, due or scheduled */
	bool		made_waiting;
	bool		advancing;		/* the worker moving an idle chain */
} ClaimState;

static void
emit(ClaimState *st, Candidate *c, int32 attempt)
{
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};

	values[0] = Int64GetDatum(c->id);
	values[1] = c->topic;
	values[2] = c->key;
	nulls[2] = c->key_null;
	values[3] = c->payload;
	values[4] = c->headers;
	nulls[4] = c->headers_null;
	values[5] = Int32GetDatum(attempt);
	values[6] = c->enqueued_at;
	tuplestore_putvalues(st->tupstore, st->tupdesc, values, nulls);
	st->got++;
}

/*
 * Run a statement with a snapshot taken now.  A consumer's transaction may
 * be REPEATABLE READ or SERIALIZABLE: what it claims and settles must be
 * the deliveries as they are now, not as its older snapshot shows them
 * (the subscription's lifetime lock and the claim lock keep them from
 * changing under it).
 */
static int
exec_latest(SPIPlanPtr plan, Datum *args, const char *nulls, bool read_only)
{
	return SPI_execute_snapshot(plan, args, nulls, GetLatestSnapshot(),
								InvalidSnapshot, read_only, false, 0);
}

/*
 * Might the subscription have a due delivery?  One probe of the partial
 * index the claim query uses, to spare the usual claim (nothing retried,
 * nothing delayed) that query's executor start.  Rows locked by other
 * claimers count: the query skips them.
 */
static bool
any_due(ClaimState *st)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key[2];
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	bool		found;

	rel = open_delivery();
	ScanKeyInit(&key[0], DELIVERY_SUB_ID, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(st->sub->id));
	ScanKeyInit(&key[1], DELIVERY_VISIBLE_AT, BTLessEqualStrategyNumber,
				F_TIMESTAMPTZ_LE, TimestampTzGetDatum(st->now));
	scan = systable_beginscan(rel, outbox_relid("delivery_due_idx"), true, snap, 2, key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, NoLock);
	UnregisterSnapshot(snap);
	return found;
}

/*
 * Lease due deliveries from outbox.delivery.
 */
static void
claim_deliveries(ClaimState *st)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[4];
	uint64		i;

	if (st->got >= st->want || !any_due(st))
		return;
	if (plan == NULL)
	{
		Oid			types[4] = {INT4OID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID};

		plan = outbox_prepare(
			"WITH c AS ("
			" UPDATE outbox.delivery d SET state = 'leased',"
			"  attempts = d.attempts OPERATOR(pg_catalog.+) 1, lease_until = $3"
			" FROM (SELECT x.event_id FROM outbox.delivery x"
			"  WHERE x.sub_id OPERATOR(pg_catalog.=) $1"
			"  AND x.state OPERATOR(pg_catalog.=) ANY ('{ready,scheduled}'::pg_catalog.text[])"
			"  AND x.visible_at OPERATOR(pg_catalog.<=) $4"
			"  ORDER BY x.visible_at, x.event_id LIMIT $2"
			"  FOR UPDATE SKIP LOCKED) AS p"
			" WHERE d.sub_id OPERATOR(pg_catalog.=) $1"
			"  AND d.event_id OPERATOR(pg_catalog.=) p.event_id"
			" RETURNING d.event_id, d.attempts)"
			" SELECT e.id, e.topic, e.key, e.payload, e.headers, c.attempts, e.enqueued_at"
			" FROM c JOIN outbox.event e ON e.id OPERATOR(pg_catalog.=) c.event_id"
			" ORDER BY e.id", 4, types);
	}
	args[0] = Int32GetDatum(st->sub->id);
	args[1] = Int32GetDatum(st->want - st->got);
	args[2] = TimestampTzGetDatum(st->lease_until);
	args[3] = TimestampTzGetDatum(st->now);
	if (exec_latest(plan, args, NULL, false) != SPI_OK_SELECT)
		elog(ERROR, "claim of deliveries failed");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Candidate	c;
		bool		isnull;
		int32		attempt;

		c.id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		c.topic = SPI_getbinval(tup, desc, 2, &isnull);
		c.key = SPI_getbinval(tup, desc, 3, &c.key_null);
		c.payload = SPI_getbinval(tup, desc, 4, &isnull);
		c.headers = SPI_getbinval(tup, desc, 5, &c.headers_null);
		attempt = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		c.enqueued_at = SPI_getbinval(tup, desc, 7, &isnull);
		emit(st, &c, attempt);
	}
}

static int
cmp_candidate(const void *a, const void *b)
{
	int64		x = ((const Candidate *) a)->id;
	int64		y = ((const Candidate *) b)->id;

	return (x > y) - (x < y);
}

static bool
key_in(HTAB *set, int64 h)
{
	bool		found;

	hash_search(set, &h, HASH_FIND, &found);
	return found;
}

/*
 * Note a key as busy: its later events wait.  In flight (leased, due or
 * scheduled) also keeps its waiting deliveries waiting.
 */
static void
set_busy(ClaimState *st, int64 h, bool inflight)
{
	bool		found;

	hash_search(st->busy, &h, HASH_ENTER, &found);
	if (inflight)
		hash_search(st->inflight, &h, HASH_ENTER, &found);
}

/*
 * Ordered subscriptions: the keys that have deliveries not settled, seen
 * with a dirty snapshot so that other claimers' uncommitted claims count
 * too; in flight, those leased, due or scheduled, and those with a waiting
 * row another transaction is writing.
 */
static void
load_busy_keys(ClaimState *st)
{
	HASHCTL		ctl;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData skey;
	SnapshotData dirty;
	HeapTuple	tup;
	int			i,
				k;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(int64);
	ctl.hcxt = CurrentMemoryContext;
	st->busy = hash_create("outbox busy keys", 256, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	st->inflight = hash_create("outbox keys in flight", 256, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	for (i = 0; i < st->chain->nslices; i++)
	{
		OutboxSlice *s = &st->chain->slices[i];

		for (k = 0; k < s->nkeys; k++)
			set_busy(st, s->key_hashes[k], true);
	}

	InitDirtySnapshot(dirty);
	rel = open_delivery();
	ScanKeyInit(&skey, DELIVERY_SUB_ID, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(st->sub->id));
	scan = systable_beginscan(rel, outbox_relid("delivery_key_idx"), true,
							  &dirty, 1, &skey);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		key = heap_getattr(tup, DELIVERY_KEY, RelationGetDescr(rel), &isnull);
		char	   *state;

		if (isnull)
			continue;
		state = TextDatumGetCString(heap_getattr(tup, DELIVERY_STATE, RelationGetDescr(rel), &isnull));

		/*
		 * A waiting row that another transaction is writing (a claim that
		 * made it wait, or released it) is not visible to the snapshot
		 * promote_waiting reads with, yet it may come first in its key's
		 * order: the key is in flight until that transaction ends.
		 */
		set_busy(st, outbox_key_hash(TextDatumGetCString(key)),
				 strcmp(state, "waiting") != 0 ||
				 TransactionIdIsValid(dirty.xmin) || TransactionIdIsValid(dirty.xmax));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
}

/*
 * The oldest xmin of the snapshots the chain may still read the stream
 * from: its folded cursor's, and those of the slices the cursor passed,
 * whose events come back as holes behind the cursor if their claim rolls
 * back.  Transactions below it are done for the subscription (retention
 * keeps their commit-order records as long: cursor_floor).
 */
static FullTransactionId
chain_floor_xmin(OutboxChain *chain)
{
	FullTransactionId floor = chain->lo->xmin;

	for (int i = 0; i < chain->nheld; i++)
		if (FullTransactionIdPrecedes(chain->held[i].lo->xmin, floor))
			floor = chain->held[i].lo->xmin;
	for (int i = 0; i < chain->nholes; i++)
		if (FullTransactionIdPrecedes(chain->holes[i].lo->xmin, floor))
			floor = chain->holes[i].lo->xmin;
	return floor;
}

/*
 * The commit sequence, for key hash h, of the transaction of event id (0
 * when it was not recorded), and whether an earlier event of the key may
 * still be ahead in the stream: one of a transaction of the key that
 * committed earlier, or one of the same transaction (any earlier event of
 * it counts).  Earlier commits can be ahead when two producers of a key
 * commit in the opposite order of their xids, and also when a smaller
 * xid's events were taken by a claim that rolled back: they are a hole in
 * the chain again while later events of the key were held back meanwhile.
 * So every transaction of the key the chain may still read is looked at,
 * whatever its xid; those below its floor (chain_floor_xmin) are done.
 * (The folded cursor's xmin is not that floor: the events of a passed
 * slice whose claim rolled back come back behind it, and their
 * transactions' records were then not found; the first of them in id
 * order went out, though another of its key had committed first.)
 */
static bool
earlier_commit_pending(ClaimState *st, int64 h, int64 id, int64 *seq)
{
	uint64		xid = OUTBOX_ID_XID(id);
	static SPIPlanPtr plan = NULL;
	Datum		args[2];
	uint64		i;
	int64		mine = 0;
	bool		pending = false;
	SPITupleTable *tab;
	uint64		n;

	if (plan == NULL)
	{
		Oid			types[2] = {INT8OID, XID8OID};

		plan = outbox_prepare("SELECT xid, seq FROM outbox.key_commit"
							  " WHERE key_hash OPERATOR(pg_catalog.=) $1"
							  " AND xid OPERATOR(pg_catalog.>=) $2", 2, types);
	}
	args[0] = Int64GetDatum(h);
	args[1] = FullTransactionIdGetDatum(chain_floor_xmin(st->chain));
	if (SPI_execute_snapshot(plan, args, NULL, st->chain->snapshot,
							 InvalidSnapshot, true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "key commit lookup failed");
	tab = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		if (U64FromFullTransactionId(DatumGetFullTransactionId(
											  SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull))) == xid)
			mine = DatumGetInt64(SPI_getbinval(tab->vals[i], tab->tupdesc, 2, &isnull));
	}
	for (i = 0; mine > 0 && !pending && i < n; i++)
	{
		bool		isnull;
		uint64		other = U64FromFullTransactionId(DatumGetFullTransactionId(
																SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull)));
		int64		oseq = DatumGetInt64(SPI_getbinval(tab->vals[i], tab->tupdesc, 2, &isnull));

		if (other != xid && oseq < mine &&
			outbox_chain_pending(st->chain, other,
								 OUTBOX_XID_FIRST_ID(other),
								 OUTBOX_XID_FIRST_ID(other + 1) - 1))
			pending = true;
	}
	SPI_freetuptable(tab);

	/*
	 * Earlier events of the same transaction still ahead in the stream: a
	 * delivery that left the stream before them (kept by a change of
	 * topics) waits until the stream has brought them.
	 */
	if (!pending && id > OUTBOX_XID_FIRST_ID(xid) &&
		outbox_chain_pending(st->chain, xid, OUTBOX_XID_FIRST_ID(xid), id - 1))
		pending = true;
	*seq = mine;
	return pending;
}

/*
 * Move a stream event into outbox.delivery: 'scheduled' (delayed) or
 * 'waiting' (held behind its key; visible_at then keeps its deliver_at).
 * An existing row (an ack that came before the claim) wins.
 */
static void
materialize(ClaimState *st, int64 id, const char *state, TimestampTz visible_at,
			Datum key, bool key_null, int64 seq)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	if (plan == NULL)
	{
		Oid			types[6] = {INT4OID, INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, INT8OID};

		plan = outbox_prepare("INSERT INTO outbox.delivery"
							  " (sub_id, event_id, state, attempts, visible_at, key, seq)"
							  " VALUES ($1, $2, $3, 0, $4, $5, $6) ON CONFLICT DO NOTHING",
							  6, types);
	}
	args[0] = Int32GetDatum(st->sub->id);
	args[1] = Int64GetDatum(id);
	args[2] = CStringGetTextDatum(state);
	args[3] = TimestampTzGetDatum(visible_at);
	nulls[3] = visible_at == 0 ? 'n' : ' ';
	args[4] = key;
	nulls[4] = key_null ? 'n' : ' ';
	args[5] = Int64GetDatum(seq);
	if (exec_latest(plan, args, nulls, false) != SPI_OK_INSERT)
		elog(ERROR, "delivery insert failed");
}

/*
 * Ordered subscriptions: release the first waiting delivery of each key
 * that has nothing in flight and no earlier-committed event still ahead.
 */
static void
promote_waiting(ClaimState *st)
{
	static SPIPlanPtr sel = NULL;
	static SPIPlanPtr upd = NULL;
	Datum		args[3];
	SPITupleTable *tab;
	uint64		n,
				i;
	char	   *prev_key = NULL;

	if (upd == NULL)
	{
		Oid			t1[1] = {INT4OID};
		Oid			t3[3] = {INT4OID, INT8OID, TIMESTAMPTZOID};

		sel = outbox_prepare("SELECT event_id, key, seq FROM outbox.delivery"
							 " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							 " AND state OPERATOR(pg_catalog.=) 'waiting'"
							 " ORDER BY key, seq, event_id", 1, t1);
		upd = outbox_prepare("UPDATE outbox.delivery SET"
							 " state = CASE WHEN visible_at OPERATOR(pg_catalog.>) $3"
							 "  THEN 'scheduled' ELSE 'ready' END,"
							 " visible_at = GREATEST(visible_at, $3)"
							 " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							 " AND event_id OPERATOR(pg_catalog.=) $2"
							 " AND state OPERATOR(pg_catalog.=) 'waiting'", 3, t3);
	}
	args[0] = Int32GetDatum(st->sub->id);
	if (exec_latest(sel, args, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "waiting deliveries lookup failed");
	tab = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull));
		char	   *key = TextDatumGetCString(SPI_getbinval(tab->vals[i], tab->tupdesc, 2, &isnull));
		int64		h = outbox_key_hash(key);
		int64		seq;

		if (prev_key != NULL && strcmp(prev_key, key) == 0)
			continue;			/* only the first of each key */
		prev_key = key;
		if (key_in(st->inflight, h))
			continue;
		if (earlier_commit_pending(st, h, id, &seq))
			continue;
		args[1] = Int64GetDatum(id);
		args[2] = TimestampTzGetDatum(st->now);
		if (exec_latest(upd, args, NULL, false) != SPI_OK_UPDATE)
			elog(ERROR, "waiting delivery release failed");
		set_busy(st, h, true);
	}
	SPI_freetuptable(tab);
}

/*
 * Drop candidates (sorted by id) that already have a delivery row: events
 * acked before any claim reached them, or kept by a change of topics.
 * Read with a dirty snapshot: an ack-ahead whose transaction is still open
 * may commit (then the event is done) or roll back (then it is not), so
 * neither leasing nor skipping it is right yet.  *stop_at is then the
 * first such id: the claim ends its slice before it, and a later claim
 * looks again.  Returns how many candidates are kept, all below *stop_at.
 */
static int
drop_settled_ahead(ClaimState *st, Candidate *cands, int n, int64 *stop_at)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key[3];
	SnapshotData dirty;
	HeapTuple	tup;
	bool	   *has_row;
	bool	   *only_open;
	int			j,
				k;

	*stop_at = 0;
	if (n == 0)
		return 0;
	has_row = palloc0(sizeof(bool) * n);
	only_open = palloc0(sizeof(bool) * n);
	InitDirtySnapshot(dirty);
	rel = open_delivery();
	ScanKeyInit(&key[0], DELIVERY_SUB_ID, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(st->sub->id));
	ScanKeyInit(&key[1], DELIVERY_EVENT_ID, BTGreaterEqualStrategyNumber,
				F_INT8GE, Int64GetDatum(cands[0].id));
	ScanKeyInit(&key[2], DELIVERY_EVENT_ID, BTLessEqualStrategyNumber,
				F_INT8LE, Int64GetDatum(cands[n - 1].id));
	scan = systable_beginscan(rel, outbox_relid("delivery_pkey"), true, &dirty, 3, key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		int64		id = DatumGetInt64(heap_getattr(tup, DELIVERY_EVENT_ID, RelationGetDescr(rel), &isnull));
		bool		open = TransactionIdIsValid(dirty.xmin) &&
			!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));
		Candidate	probe;
		Candidate  *hit;

		probe.id = id;
		hit = bsearch(&probe, cands, n, sizeof(Candidate), cmp_candidate);
		if (hit == NULL)
			continue;
		j = hit - cands;
		/* an older committed version (a row being updated) settles it */
		if (!has_row[j])
			only_open[j] = open;
		else if (!open)
			only_open[j] = false;
		has_row[j] = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	for (j = 0, k = 0; j < n; j++)
	{
		if (has_row[j] && only_open[j])
		{
			*stop_at = cands[j].id;
			break;
		}
		if (!has_row[j])
			cands[k++] = cands[j];
	}
	return k;
}

/*
 * Write the slice a segment scan produced.
 */
static void
write_slice(ClaimState *st, OutboxSlice *s, Candidate *cands, int n)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *keys = NULL;
	bool	   *key_nulls = NULL;
	int			i;

	if (plan == NULL)
	{
		Oid			types[11] = {INT4OID, INT8OID, PG_SNAPSHOTOID, PG_SNAPSHOTOID,
			INT8OID, INT8OID, BOOLOID, TIMESTAMPTZOID, INT8ARRAYOID,
		TEXTARRAYOID, INT8OID};

		plan = outbox_prepare(
			"INSERT INTO outbox.batch (gen, sub_id, batch_no, delta, lo, hi, pos_from,"
			" pos_to, ended, lease_until, ids, keys) VALUES ($11, $1,"
			" pg_catalog.nextval('outbox.batch_no_seq'::pg_catalog.regclass),"
			" $2, $3, $4, $5, $6, $7, $8, $9, $10)", 11, types);
	}
	if (st->sub->ordered)
	{
		keys = palloc(sizeof(Datum) * Max(n, 1));
		key_nulls = palloc(sizeof(bool) * Max(n, 1));
	}
	for (i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(cands[i].id);
		if (keys)
		{
			keys[i] = cands[i].key;
			key_nulls[i] = cands[i].key_null;
		}
	}
	args[0] = Int32GetDatum(st->sub->id);
	args[1] = Int64GetDatum(s->delta);
	args[2] = PointerGetDatum(s->lo);
	args[3] = PointerGetDatum(s->hi);
	args[4] = Int64GetDatum(s->pos_from);
	args[5] = Int64GetDatum(s->pos_to);
	args[6] = BoolGetDatum(s->ended);
	args[7] = TimestampTzGetDatum(st->lease_until);
	args[8] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	if (keys)
	{
		int			dims[1] = {n};
		int			lbs[1] = {1};

		args[9] = PointerGetDatum(construct_md_array(keys, key_nulls, 1, dims, lbs,
													 TEXTOID, -1, false, TYPALIGN_INT));
	}
	else
		nulls[9] = 'n';
	/* the generation read under the claim lock, whatever the worker did since */
	args[10] = Int64GetDatum(st->chain->gen_now);
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "batch insert failed");
	/* the worker looks for this lease's end then (lease.c) */
	if (n > 0)
		outbox_lease_after_commit(st->sub->id, st->lease_until);
}

/*
 * Only the commit sequence of event id's transaction for key hash h (0
 * when it was not recorded), for an event that waits anyway: one index
 * probe, where earlier_commit_pending reads every transaction of the key
 * past the cursor (a claim that makes a long backlog of few keys wait
 * would otherwise read them all for every event).
 */
static int64
key_commit_seq(ClaimState *st, int64 h, int64 id)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2];
	int64		seq = 0;

	if (plan == NULL)
	{
		Oid			types[2] = {INT8OID, XID8OID};

		plan = outbox_prepare("SELECT seq FROM outbox.key_commit"
							  " WHERE key_hash OPERATOR(pg_catalog.=) $1"
							  " AND xid OPERATOR(pg_catalog.=) $2", 2, types);
	}
	args[0] = Int64GetDatum(h);
	args[1] = FullTransactionIdGetDatum(FullTransactionIdFromU64(OUTBOX_ID_XID(id)));
	if (SPI_execute_snapshot(plan, args, NULL, st->chain->snapshot,
							 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "key commit lookup failed");
	if (SPI_processed == 1)
	{
		bool		isnull;

		seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	return seq;
}

/*
 * Handle one event of a segment: lease it (add it to cands), or move it
 * into outbox.delivery.  Returns true if it was leased.
 */
static bool
take_event(ClaimState *st, Candidate *c, Datum deliver_at, bool deliver_at_null)
{
	bool		delayed = !deliver_at_null && DatumGetTimestampTz(deliver_at) > st->now;
	TimestampTz due = delayed ? DatumGetTimestampTz(deliver_at) : 0;

	if (st->sub->ordered && !c->key_null)
	{
		int64		h = outbox_key_hash(TextDatumGetCString(c->key));
		int64		seq = 0;
		bool		blocked = key_in(st->busy, h);

		if (!blocked)
			blocked = earlier_commit_pending(st, h, c->id, &seq);
		else
			seq = key_commit_seq(st, h, c->id);
		if (blocked)
		{
			/* behind its key; a delay, if any, still applies once released */
			materialize(st, c->id, "waiting", due, c->key, c->key_null, seq);
			set_busy(st, h, false);
			st->made_waiting = true;
			return false;
		}
		set_busy(st, h, true);
	}
	if (delayed)
	{
		materialize(st, c->id, "scheduled", due, c->key, c->key_null, 0);
		return false;
	}
	return true;
}

/*
 * The id ranges (starts[r], ends[r]] that hold a segment's events, in id
 * order: the ranges of the transactions that were running at "lo" and
 * have committed by "hi", then the range of transactions started between
 * the two.  Looking only there keeps a long-running transaction from
 * making every claim rescan what earlier deltas handed out.
 */
static int
segment_ranges(OutboxSegment *seg, int64 **starts, int64 **ends)
{
	OutboxSnap *lo = seg->lo;
	OutboxSnap *hi = seg->hi;
	int			nranges = 0;
	uint32		i;

	*starts = palloc(sizeof(int64) * (lo->nxip + 1));
	*ends = palloc(sizeof(int64) * (lo->nxip + 1));
	for (i = 0; i < lo->nxip; i++)
	{
		uint64		x = U64FromFullTransactionId(lo->xip[i]);

		if (outbox_snap_visible(hi, x))
		{
			(*starts)[nranges] = OUTBOX_XID_FIRST_ID(x) - 1;
			(*ends)[nranges++] = OUTBOX_XID_FIRST_ID(x + 1) - 1;
		}
	}
	if (U64FromFullTransactionId(hi->xmax) > U64FromFullTransactionId(lo->xmax))
	{
		(*starts)[nranges] = OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(lo->xmax)) - 1;
		(*ends)[nranges++] = OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(hi->xmax)) - 1;
	}
	return nranges;
}

/* what collect_candidates found in a segment */
typedef struct SegmentScan
{
	Candidate  *cands;			/* events to lease */
	int			ncands;
	int64		pos;			/* the last id looked at */
	bool		more;			/* stopped with room used up: not all seen */
	bool		consumed;		/* some event for us was reached */
} SegmentScan;

/*
 * Read the segment's events in id order, range by range, and hand each to
 * take_event until room events are to be leased; the slice being built
 * (chain->slices[idx]) covers each event as it is reached, so that ordered
 * checks within this claim see what precedes it as handed out.
 */
static void
collect_candidates(ClaimState *st, OutboxSegment *seg, int idx, int room, SegmentScan *sc)
{
	static SPIPlanPtr plan = NULL;
	int64	   *starts;
	int64	   *ends;
	int			nranges;
	int			r;

	if (plan == NULL)
	{
		Oid			types[4] = {INT8OID, INT8OID, TEXTARRAYOID, INT8OID};

		plan = outbox_prepare_generic(
			"SELECT id, topic, key, payload, headers, deliver_at, enqueued_at"
			" FROM outbox.event"
			" WHERE id OPERATOR(pg_catalog.>) $1 AND id OPERATOR(pg_catalog.<=) $2"
			" AND ($3 IS NULL OR topic OPERATOR(pg_catalog.=) ANY ($3))"
			" ORDER BY id LIMIT $4", 4, types);
	}

	nranges = segment_ranges(seg, &starts, &ends);
	sc->cands = palloc(sizeof(Candidate) * (room + 1));
	sc->ncands = 0;
	sc->pos = seg->from;
	sc->more = false;
	sc->consumed = false;
	/* room 0 (outbox_claim_advance): cover what precedes the first event */
	for (r = 0; r < nranges && !sc->more; r++)
	{
		int64		cur = Max(starts[r], seg->from);
		int64		end = Min(ends[r], seg->to);

		while (cur < end && !sc->more)
		{
			Datum		args[4];
			char		nulls[4] = {' ', ' ', ' ', ' '};
			/*
			 * An advance (room 0) stops at the first event of its own: a
			 * larger limit would read the rest of the range, every other
			 * topic's events, for rows it will not use.
			 */
			int64		limit = room == 0 ? 1 : room - sc->ncands + 16;
			uint64		n,
						j;
			SPITupleTable *tab;

			CHECK_FOR_INTERRUPTS();
			args[0] = Int64GetDatum(cur);
			args[1] = Int64GetDatum(end);
			args[2] = st->sub->topics ? PointerGetDatum(st->sub->topics) : (Datum) 0;
			nulls[2] = st->sub->topics ? ' ' : 'n';
			args[3] = Int64GetDatum(limit);
			if (SPI_execute_snapshot(plan, args, nulls, st->chain->snapshot,
									 InvalidSnapshot, true, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "event scan failed");
			tab = SPI_tuptable;
			n = SPI_processed;
			for (j = 0; j < n; j++)
			{
				HeapTuple	tup = tab->vals[j];
				TupleDesc	desc = tab->tupdesc;
				Candidate  *c = &sc->cands[sc->ncands];
				bool		isnull;
				bool		da_null;
				Datum		deliver_at;

				c->id = DatumGetInt64(SPI_getbinval(tup, desc, EV_ID, &isnull));
				if (!outbox_segment_contains(seg, c->id))
				{
					cur = sc->pos = c->id;
					continue;
				}
				if (sc->ncands >= room)
				{
					/*
					 * The scan skipped events of other topics up to this
					 * one: cover them, or the next scan (the worker's
					 * advance, room 0, every round) reads them all again.
					 */
					sc->pos = c->id - 1;
					sc->more = true;
					break;
				}
				c->topic = SPI_getbinval(tup, desc, EV_TOPIC, &isnull);
				c->key = SPI_getbinval(tup, desc, EV_KEY, &c->key_null);
				c->payload = SPI_getbinval(tup, desc, EV_PAYLOAD, &isnull);
				c->headers = SPI_getbinval(tup, desc, EV_HEADERS, &c->headers_null);
				c->enqueued_at = SPI_getbinval(tup, desc, EV_ENQUEUED_AT, &isnull);
				deliver_at = SPI_getbinval(tup, desc, EV_DELIVER_AT, &da_null);
				sc->consumed = true;
				st->chain->slices[idx].pos_to = c->id;
				if (take_event(st, c, deliver_at, da_null))
					sc->ncands++;
				cur = sc->pos = c->id;
			}
			if (n < (uint64) limit)
				break;
		}
	}
}

/*
 * Scan one segment of the stream, leasing up to what the claim still
 * wants, and record what it covered.  Returns whether it covered all of
 * it: a delta left unfinished must not be followed by the next.
 *
 * Phases: a slice for the segment joins the chain (so that the ordered
 * checks see it), collect_candidates reads the events, what an ack ahead
 * settled is dropped (drop_settled_ahead), the rest is leased (emit), and
 * the slice is written, unless it is a new delta that held nothing for us.
 */
static bool
scan_segment(ClaimState *st, OutboxSegment *seg)
{
	OutboxSlice slice;
	int			idx;
	SegmentScan sc;
	int64		stop_at;
	int			i;

	memset(&slice, 0, sizeof(slice));
	slice.batch_no = -1;
	slice.delta = seg->delta;
	slice.lo = seg->lo;
	slice.hi = seg->hi;
	slice.pos_from = seg->from;
	slice.pos_to = seg->from;
	slice.is_new = true;
	outbox_chain_add(st->chain, &slice);
	idx = st->chain->nslices - 1;

	/*
	 * No transaction of this delta enqueued our topics (issue 9): cover the
	 * segment without reading other topics' events.  Whatever the number
	 * of subscriptions, an advance or a claim of a quiet topic then costs
	 * its own chain, not the traffic of every other topic.
	 */
	if (outbox_topics_quiet_since(st->sub->topics, seg->lo->xmin))
	{
		memset(&sc, 0, sizeof(sc));
		sc.cands = palloc(sizeof(Candidate));
		sc.pos = seg->to;
	}
	else
		collect_candidates(st, seg, idx, st->want - st->got, &sc);

	slice = st->chain->slices[idx];
	if (sc.more)
		slice.pos_to = sc.pos;
	else
	{
		slice.pos_to = seg->to;
		slice.ended = seg->to_end;
	}

	sc.ncands = drop_settled_ahead(st, sc.cands, sc.ncands, &stop_at);
	if (stop_at > 0)
	{
		/* an ack-ahead in progress: leave it and what follows for later */
		slice.pos_to = stop_at - 1;
		slice.ended = false;
	}
	st->chain->slices[idx] = slice;
	for (i = 0; i < sc.ncands; i++)
		emit(st, &sc.cands[i], 1);

	/*
	 * Record the slice, except for a new delta that held nothing for us:
	 * not writing then keeps idle polling free of writes, and the next
	 * claim's delta simply starts at the same place.  Past a bound we
	 * record it anyway, so that traffic on other topics is not rescanned
	 * without end.
	 */
	if (slice.pos_to == seg->from && !slice.ended)
		st->chain->nslices--;	/* covered nothing */
	else if (sc.consumed || seg->is_gap || !seg->new_delta || st->advancing ||
			 U64FromFullTransactionId(seg->hi->xmax) -
			 U64FromFullTransactionId(seg->lo->xmax) >= IDLE_DELTA_XIDS)
		write_slice(st, &slice, sc.cands, sc.ncands);
	else
		st->chain->nslices--;
	return slice.pos_to == seg->to && slice.ended == seg->to_end;
}

/* The arguments of one claim, for claim_once and the attempts of a wait. */
typedef struct ClaimArgs
{
	int32		batch;
	Interval   *lease;			/* NULL: the subscription's */
} ClaimArgs;

/*
 * One claim: lease up to args->batch deliveries into the function's result.
 * Returns how many it leased.  The wait (wait.c) runs it once per attempt.
 */
static int64
claim_once(FunctionCallInfo fcinfo, void *arg)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ClaimArgs  *args = arg;
	Oid			save_user;
	int			save_sec;
	ClaimState	st;
	List	   *segs;
	ListCell   *lc;

	memset(&st, 0, sizeof(st));
	st.want = args->batch;
	st.tupstore = rsinfo->setResult;
	st.tupdesc = rsinfo->setDesc;

	st.sub = outbox_consumer_begin(fcinfo, &save_user, &save_sec);
	if (st.sub->paused)
	{
		outbox_consumer_end(save_user, save_sec);
		return 0;
	}

	st.now = GetCurrentTimestamp();
	st.lease_until = DatumGetTimestampTz(
		DirectFunctionCall2(timestamptz_pl_interval, TimestampTzGetDatum(st.now),
							PointerGetDatum(args->lease ? args->lease : &st.sub->lease)));

	outbox_lock_sub(st.sub->id);
	st.chain = outbox_chain_read(st.sub->id);
	outbox_chain_fold(st.chain, OUTBOX_FOLD_MIN_SLICES);
	segs = outbox_chain_segments(st.chain);

	if (st.sub->ordered)
	{
		load_busy_keys(&st);

		/*
		 * Holes first: their events (of a claim that rolled back) precede,
		 * in the stream, every waiting delivery of their keys, which a
		 * later claim made wait behind them.  Reached now, they wait in
		 * their turn (their commit sequence is lower), instead of the
		 * later events being released ahead of them.
		 */
		foreach(lc, segs)
		{
			OutboxSegment *seg = lfirst(lc);

			if (st.got >= st.want)
				break;
			if (seg->is_gap)
				(void) scan_segment(&st, seg);
		}
		promote_waiting(&st);
	}
	claim_deliveries(&st);

	foreach(lc, segs)
	{
		OutboxSegment *seg = lfirst(lc);

		if (st.got >= st.want)
			break;
		if (st.sub->ordered && seg->is_gap)
			continue;			/* scanned above */
		if (seg->new_delta && outbox_snap_equal(seg->lo, seg->hi))
			continue;
		if (!scan_segment(&st, seg) && !seg->is_gap)
			break;				/* the next delta starts after this one */
	}

	/* events held behind an earlier commit of their key may be free now */
	if (st.sub->ordered && st.made_waiting && st.got < st.want)
	{
		promote_waiting(&st);
		claim_deliveries(&st);
	}

	outbox_unlock_sub(st.sub->id);
	outbox_chain_release(st.chain);
	outbox_consumer_end(save_user, save_sec);
	return st.got;
}

/*
 * outbox.claim(subscription, batch, lease, wait)
 */
Datum
outbox_claim(PG_FUNCTION_ARGS)
{
	ClaimArgs	args;
	Interval   *wait = NULL;

	/* a write, like INSERT: refused whether or not there is anything to claim */
	PreventCommandIfReadOnly("outbox.claim()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("batch must not be null")));
	args.batch = PG_GETARG_INT32(1);
	if (args.batch < 1 || args.batch > OUTBOX_MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch must be between 1 and %d", OUTBOX_MAX_BATCH),
				 errdetail("The value given was %d.", args.batch)));
	args.lease = NULL;
	if (!PG_ARGISNULL(2))
	{
		args.lease = PG_GETARG_INTERVAL_P(2);
		outbox_check_interval(args.lease, "lease");
	}
	/* 1.0's claim has no wait argument */
	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
	{
		wait = PG_GETARG_INTERVAL_P(3);
		outbox_check_interval(wait, "wait");
		if (outbox_interval_usecs(wait) == 0)
			wait = NULL;
	}

	InitMaterializedSRF(fcinfo, 0);
	if (wait == NULL)
		(void) claim_once(fcinfo, &args);
	else
		(void) outbox_claim_waiting(fcinfo, wait, claim_once, &args);
	return (Datum) 0;
}

/*
 * For the worker: move an idle subscription's chain past everything that is
 * not for it, and fold what is settled, so that retention is not held back
 * by a subscription that nobody claims from.  Leases nothing.  Skips the
 * subscription if a claim holds its lock.  Caller is connected to SPI as
 * the owner, in a transaction.
 */
void
outbox_claim_advance(OutboxSub *sub)
{
	ClaimState	st;
	List	   *segs;
	ListCell   *lc;

	/* not while unsubscribe or a change of settings waits or runs */
	if (!outbox_try_hold_sub(sub->name))
		return;
	sub = outbox_lookup_sub(sub->name);
	if (!outbox_try_lock_sub(sub->id))
		return;
	memset(&st, 0, sizeof(st));
	st.sub = sub;
	st.want = 0;
	st.advancing = true;
	st.now = GetCurrentTimestamp();
	st.lease_until = st.now;
	st.chain = outbox_chain_read(sub->id);
	if (sub->ordered)
		load_busy_keys(&st);
	segs = outbox_chain_segments(st.chain);
	foreach(lc, segs)
	{
		OutboxSegment *seg = lfirst(lc);

		if (seg->new_delta && outbox_snap_equal(seg->lo, seg->hi))
			continue;
		if (!scan_segment(&st, seg) && !seg->is_gap)
			break;				/* the next delta starts after this one */
	}
	outbox_chain_fold(st.chain, 0);
	outbox_unlock_sub(sub->id);
	outbox_chain_release(st.chain);
}

/*
 * For subscribe, under the subscription's lifetime lock, after its topics
 * changed: events of topics it no longer has, committed and not handed out
 * yet, become deliveries of their own ('ready', 'scheduled' when delayed,
 * 'waiting' behind their key when ordered), so that the subscription keeps
 * them, and the leases its slices hold become delivery rows too (retention
 * keeps events of a slice only for the topics the subscription has now).
 * Claims skip stream events that have a delivery row, so none is handed
 * out twice if a topic comes back.  Returns whether it kept any.
 */
bool
outbox_claim_keep_topics(OutboxSub *sub, ArrayType *old_topics)
{
	static SPIPlanPtr plan = NULL;
	ClaimState	st;
	List	   *segs;
	ListCell   *lc;
	Datum	   *topics;
	int			ntopics,
				t;
	bool		kept = false;
	bool		dropped;

	if (sub->topics == NULL)
		return false;			/* every topic now: none was dropped */
	if (plan == NULL)
	{
		Oid			types[3] = {INT8OID, INT8OID, TEXTARRAYOID};

		plan = outbox_prepare_generic(
			"SELECT id, topic, key, deliver_at, enqueued_at FROM outbox.event"
			" WHERE id OPERATOR(pg_catalog.>) $1 AND id OPERATOR(pg_catalog.<=) $2"
			" AND ($3 IS NULL OR topic OPERATOR(pg_catalog.=) ANY ($3))"
			" ORDER BY id LIMIT 1000", 3, types);
	}
	deconstruct_array(sub->topics, TEXTOID, -1, false, TYPALIGN_INT,
					  &topics, NULL, &ntopics);
	dropped = (old_topics == NULL);
	if (!dropped)
	{
		Datum	   *old;
		int			nold,
					o;

		deconstruct_array(old_topics, TEXTOID, -1, false, TYPALIGN_INT,
						  &old, NULL, &nold);
		for (o = 0; o < nold && !dropped; o++)
		{
			bool		still = false;

			for (t = 0; t < ntopics && !still; t++)
				still = strcmp(TextDatumGetCString(old[o]),
							   TextDatumGetCString(topics[t])) == 0;
			dropped = !still;
		}
	}
	if (!dropped)
		return false;

	memset(&st, 0, sizeof(st));
	st.sub = sub;
	st.now = GetCurrentTimestamp();
	outbox_lock_sub(sub->id);
	st.chain = outbox_chain_read(sub->id);
	if (sub->ordered)
		load_busy_keys(&st);
	segs = outbox_chain_segments(st.chain);
	foreach(lc, segs)
	{
		OutboxSegment *seg = lfirst(lc);
		int64	   *starts;
		int64	   *ends;
		int			nranges,
					r;

		if (seg->new_delta && outbox_snap_equal(seg->lo, seg->hi))
			continue;
		nranges = segment_ranges(seg, &starts, &ends);
		for (r = 0; r < nranges; r++)
		{
			int64		cur = Max(starts[r], seg->from);
			int64		end = Min(ends[r], seg->to);

			while (cur < end)
			{
				Datum		args[3];
				char		nulls[3] = {' ', ' ', ' '};
				SPITupleTable *tab;
				uint64		n,
							j;

				CHECK_FOR_INTERRUPTS();
				args[0] = Int64GetDatum(cur);
				args[1] = Int64GetDatum(end);
				args[2] = old_topics ? PointerGetDatum(old_topics) : (Datum) 0;
				nulls[2] = old_topics ? ' ' : 'n';
				if (SPI_execute_snapshot(plan, args, nulls, st.chain->snapshot,
										 InvalidSnapshot, true, false, 0) != SPI_OK_SELECT)
					elog(ERROR, "event scan failed");
				tab = SPI_tuptable;
				n = SPI_processed;
				for (j = 0; j < n; j++)
				{
					HeapTuple	tup = tab->vals[j];
					TupleDesc	desc = tab->tupdesc;
					bool		isnull,
								key_null,
								da_null;
					int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
					char	   *topic = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
					Datum		key = SPI_getbinval(tup, desc, 3, &key_null);
					Datum		da = SPI_getbinval(tup, desc, 4, &da_null);
					Datum		ea = SPI_getbinval(tup, desc, 5, &isnull);
					bool		delayed = !da_null && DatumGetTimestampTz(da) > st.now;
					bool		still = false;

					cur = id;
					if (!outbox_segment_contains(seg, id))
						continue;
					for (t = 0; t < ntopics && !still; t++)
						still = strcmp(TextDatumGetCString(topics[t]), topic) == 0;
					if (still)
						continue;	/* the stream still brings it */
					if (sub->ordered && !key_null)
					{
						int64		h = outbox_key_hash(TextDatumGetCString(key));
						int64		seq = 0;
						bool		blocked = key_in(st.busy, h);

						if (!blocked)
							blocked = earlier_commit_pending(&st, h, id, &seq);
						else
							seq = key_commit_seq(&st, h, id);
						if (blocked)
						{
							materialize(&st, id, "waiting",
										delayed ? DatumGetTimestampTz(da) : 0,
										key, key_null, seq);
							set_busy(&st, h, false);
							kept = true;
							continue;
						}
						set_busy(&st, h, true);
					}
					materialize(&st, id, delayed ? "scheduled" : "ready",
								delayed ? DatumGetTimestampTz(da) : DatumGetTimestampTz(ea),
								key, key_null, 0);
					kept = true;
				}
				if (n < 1000)
					break;
			}
		}
	}
	/* nor may what is leased depend on the topics */
	outbox_chain_hand_over_all(st.chain, false);
	outbox_unlock_sub(sub->id);
	outbox_chain_release(st.chain);
	return kept;
}

/*
 * For subscribe, under the subscription's lifetime lock, when "ordered"
 * was switched on: deliveries leased while it was off must hold back the
 * later events of their keys, but the batch rows of those claims carry no
 * keys.  Their unsettled ids are handed over to 'leased' delivery rows
 * with their keys (as a fold hands over slow leases), and delivery rows
 * get the keys of their events.
 */
void
outbox_claim_order_leases(OutboxSub *sub)
{
	static SPIPlanPtr keys = NULL;
	OutboxChain *chain;
	Datum		args[1];

	if (keys == NULL)
	{
		Oid			t1[1] = {INT4OID};

		keys = outbox_prepare(
			"UPDATE outbox.delivery d SET key = e.key FROM outbox.event e"
			" WHERE d.sub_id OPERATOR(pg_catalog.=) $1 AND d.key IS NULL"
			" AND e.id OPERATOR(pg_catalog.=) d.event_id AND e.key IS NOT NULL"
			" AND d.state OPERATOR(pg_catalog.<>) ALL ('{done,dead}'::pg_catalog.text[])",
			1, t1);
	}
	outbox_lock_sub(sub->id);
	chain = outbox_chain_read(sub->id);
	outbox_chain_hand_over_all(chain, true);
	args[0] = Int32GetDatum(sub->id);
	if (exec_latest(keys, args, NULL, false) != SPI_OK_UPDATE)
		elog(ERROR, "delivery key update failed");
	outbox_unlock_sub(sub->id);
	outbox_chain_release(chain);
}
