/*-------------------------------------------------------------------------
 *
 * stats.c
 *		outbox._stats(), behind the outbox.stats view.
 *
 * Counts come from three places: outbox.delivery (exceptions), the ids
 * still listed in outbox.batch (leased from the stream), and the stream
 * itself past the subscription's chain (ready, or scheduled when delayed).
 * All three are read as of the chain's snapshot, so that a delivery moving
 * from one to another while stats runs (a hand-over, a fail, lease expiry)
 * is counted once; the statement's own snapshot, older, would miss it.
 * Counting the stream reads the ids of the backlog, so it costs time in
 * proportion to it; it is meant for monitoring, not for hot loops.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "shmem.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(outbox_stats);

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

/* Count the events a scan of the stream returns that are in the segment. */
static void
count_portal(Portal portal, OutboxSegment *seg, Counts *c, TimestampTz now)
{
	for (;;)
	{
		uint64		i;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull,
						da_null;
			int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			Datum		da = SPI_getbinval(tup, desc, 2, &da_null);
			bool		key_null;
			Datum		key;

			if (!outbox_segment_contains(seg, id))
				continue;
			key = SPI_getbinval(tup, desc, 4, &key_null);
			if (!key_takes(c, key_null ? NULL : TextDatumGetCString(key)))
				c->scheduled++;		/* held behind an earlier event of its key */
			else if (!da_null && DatumGetTimestampTz(da) > now)
				c->scheduled++;
			else
				note_ready(c, da_null ?
						   DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull)) :
						   DatumGetTimestampTz(da));
		}
		SPI_freetuptable(SPI_tuptable);
	}
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
		int64		lo_id = Max(seg->from,
								OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(seg->lo->xmin)) - 1);
		int64		hi_id = Min(seg->to,
								OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(seg->hi->xmax)) - 1);

		if (lo_id >= hi_id)
			continue;
		/* nothing of its topics committed since (claim.c, scan_segment) */
		if (outbox_topics_quiet_since(sub->topics, seg->lo->xmin))
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
		count_portal(portal, seg, c, now);
		SPI_cursor_close(portal);
	}
}

/*
 * Ids leased from the stream that no committed settlement took (an ack in
 * progress may still roll back).  Those of a claim whose transaction is
 * still open are not leased as far as any committed state goes (a
 * rollback gives them back at once): they count as ready.  The slices are
 * read before the chain's snapshot is taken: an id that a hand-over, a
 * fail or lease expiry moved to a delivery row in between is counted from
 * that row, not twice.
 */
static void
count_batches(OutboxSub *sub, OutboxChain *chain, Counts *c)
{
	static SPIPlanPtr plan = NULL;
	Datum	   *ids;
	int			n = 0,
				j,
				k;
	int64		leased = 0;

	for (j = 0; j < chain->nslices; j++)
	{
		if (chain->slices[j].visible)
			leased += chain->slices[j].nlive;
		else
			c->ready += chain->slices[j].nlive;
	}
	if (leased == 0)
		return;

	if (plan == NULL)
	{
		Oid			types[2] = {INT4OID, INT8ARRAYOID};

		plan = outbox_prepare("SELECT pg_catalog.count(*) FROM outbox.delivery"
							  " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							  " AND event_id OPERATOR(pg_catalog.=) ANY ($2)", 2, types);
	}
	ids = palloc(sizeof(Datum) * leased);
	for (j = 0; j < chain->nslices; j++)
		if (chain->slices[j].visible)
			for (k = 0; k < chain->slices[j].nlive; k++)
				ids[n++] = Int64GetDatum(chain->slices[j].live_ids[k]);
	{
		Datum		args[2];
		bool		isnull;

		args[0] = Int32GetDatum(sub->id);
		args[1] = PointerGetDatum(construct_array(ids, n, INT8OID, 8,
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		if (SPI_execute_snapshot(plan, args, NULL, chain->snapshot, InvalidSnapshot,
								 true, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "delivery count failed");
		leased -= DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	}
	c->leased += leased;
}

static void
count_rows(OutboxSub *sub, OutboxChain *chain, Counts *c, TimestampTz now)
{
	static SPIPlanPtr dplan = NULL;
	Datum		args[2] = {Int32GetDatum(sub->id), TimestampTzGetDatum(now)};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (dplan == NULL)
	{
		Oid			types[2] = {INT4OID, TIMESTAMPTZOID};

		dplan = outbox_prepare(
			"SELECT"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'ready'"
			"  OR (state OPERATOR(pg_catalog.=) 'scheduled' AND visible_at OPERATOR(pg_catalog.<=) $2)),"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'waiting'"
			"  OR (state OPERATOR(pg_catalog.=) 'scheduled' AND visible_at OPERATOR(pg_catalog.>) $2)),"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'leased'),"
			" pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'dead'),"
			" pg_catalog.min(visible_at) FILTER (WHERE state OPERATOR(pg_catalog.=) 'ready'"
			"  OR (state OPERATOR(pg_catalog.=) 'scheduled' AND visible_at OPERATOR(pg_catalog.<=) $2))"
			" FROM outbox.delivery WHERE sub_id OPERATOR(pg_catalog.=) $1", 2, types);
	}
	if (SPI_execute_snapshot(dplan, args, NULL, chain->snapshot, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "delivery count failed");
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	c->ready += DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	c->scheduled += DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	c->leased += DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	c->dead += DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
	d = SPI_getbinval(tup, desc, 5, &isnull);
	if (!isnull && (c->oldest == 0 || DatumGetTimestampTz(d) < c->oldest))
		c->oldest = DatumGetTimestampTz(d);

	count_batches(sub, chain, c);
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

/* One subscription's row of the stats. */
static void
stats_row(ReturnSetInfo *rsinfo, OutboxSub *sub, TimestampTz now)
{
	OutboxChain *chain;
	Counts		c;
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};

	memset(&c, 0, sizeof(c));
	chain = outbox_chain_read(sub->id);
	if (sub->ordered)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(int64);
		ctl.hcxt = CurrentMemoryContext;
		c.keys = hash_create("outbox stats keys", 256, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		count_rows_ordered(sub, chain, &c, now);
		count_batches(sub, chain, &c);
	}
	else
		count_rows(sub, chain, &c, now);
	count_stream(sub, chain, &c, now);
	outbox_chain_release(chain);
	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int64GetDatum(c.ready);
	values[2] = Int64GetDatum(c.scheduled);
	values[3] = Int64GetDatum(c.leased);
	values[4] = Int64GetDatum(c.dead);
	values[5] = TimestampTzGetDatum(c.oldest);
	nulls[5] = (c.oldest == 0);
	values[6] = BoolGetDatum(sub->paused);
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
		stats_row(rsinfo, sub, now);
		outbox_restore_user(save_user, save_sec);
		SPI_finish();
		return (Datum) 0;
	}
	if (plan == NULL)
		plan = outbox_prepare("SELECT name FROM outbox.subscription ORDER BY name", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "subscription list failed");
	tab = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		char	   *name = TextDatumGetCString(SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull));
		OutboxSub  *sub = outbox_lookup_sub(name);

		if (!outbox_role_may_consume(caller, sub->id))
			continue;
		stats_row(rsinfo, sub, now);
	}
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
	return (Datum) 0;
}
