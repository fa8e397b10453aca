/*-------------------------------------------------------------------------
 *
 * stats.c
 *		outbox._stats(), behind the outbox.stats view.
 *
 * Counts come from three places: outbox.delivery (exceptions), the ids
 * still listed in outbox.batch (leased from the stream), and the stream
 * itself past the subscription's chain (ready, or scheduled when delayed).
 * Counting the stream reads the ids of the backlog, so it costs time in
 * proportion to it; it is meant for monitoring, not for hot loops.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
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
} Counts;

static void
note_ready(Counts *c, TimestampTz since)
{
	c->ready++;
	if (c->oldest == 0 || since < c->oldest)
		c->oldest = since;
}

/*
 * Count the events of the stream that no claim has reached.
 */
static void
count_stream(OutboxSub *sub, Counts *c, TimestampTz now)
{
	static SPIPlanPtr plan = NULL;
	OutboxChain *chain;
	List	   *segs;
	ListCell   *lc;

	if (plan == NULL)
	{
		Oid			types[3] = {INT8OID, INT8OID, TEXTARRAYOID};

		plan = outbox_prepare("SELECT id, deliver_at, enqueued_at FROM outbox.event"
							  " WHERE id OPERATOR(pg_catalog.>) $1 AND id OPERATOR(pg_catalog.<=) $2"
							  " AND ($3 IS NULL OR topic OPERATOR(pg_catalog.=) ANY ($3))"
							  " ORDER BY id", 3, types);
	}
	chain = outbox_chain_read(sub->id);
	segs = outbox_chain_segments(chain);
	foreach(lc, segs)
	{
		OutboxSegment *seg = lfirst(lc);
		Datum		args[3];
		char		nulls[3] = {' ', ' ', ' '};
		Portal		portal;
		int64		lo_id = Max(seg->from,
								OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(seg->lo->xmin)) - 1);
		int64		hi_id = Min(seg->to,
								OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(seg->hi->xmax)) - 1);

		if (lo_id >= hi_id)
			continue;
		args[0] = Int64GetDatum(lo_id);
		args[1] = Int64GetDatum(hi_id);
		args[2] = sub->topics ? PointerGetDatum(sub->topics) : (Datum) 0;
		nulls[2] = sub->topics ? ' ' : 'n';
		portal = SPI_cursor_open(NULL, plan, args, nulls, true);
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

				if (!outbox_segment_contains(seg, id))
					continue;
				if (!da_null && DatumGetTimestampTz(da) > now)
					c->scheduled++;
				else
					note_ready(c, da_null ?
							   DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull)) :
							   DatumGetTimestampTz(da));
			}
			SPI_freetuptable(SPI_tuptable);
		}
		SPI_cursor_close(portal);
	}
	outbox_chain_release(chain);
}

/*
 * Counts of outbox.delivery and of ids leased from the stream.
 */
static void
count_rows(OutboxSub *sub, Counts *c, TimestampTz now)
{
	static SPIPlanPtr dplan = NULL;
	static SPIPlanPtr bplan = NULL;
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
		bplan = outbox_prepare(
			"SELECT pg_catalog.sum(pg_catalog.cardinality(ids))::pg_catalog.int8"
			" FROM outbox.batch WHERE sub_id OPERATOR(pg_catalog.=) $1", 1, types);
	}
	if (SPI_execute_plan(dplan, args, NULL, true, 0) != SPI_OK_SELECT)
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

	if (SPI_execute_plan(bplan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "batch count failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		c->leased += DatumGetInt64(d);
}

/*
 * outbox._stats(): one row per subscription the caller may consume.
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

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	outbox_become_owner(&save_user, &save_sec);
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
		Counts		c;
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		if (!outbox_role_may_consume(caller, sub->id))
			continue;
		memset(&c, 0, sizeof(c));
		count_rows(sub, &c, now);
		count_stream(sub, &c, now);
		values[0] = CStringGetTextDatum(name);
		values[1] = Int64GetDatum(c.ready);
		values[2] = Int64GetDatum(c.scheduled);
		values[3] = Int64GetDatum(c.leased);
		values[4] = Int64GetDatum(c.dead);
		values[5] = TimestampTzGetDatum(c.oldest);
		nulls[5] = (c.oldest == 0);
		values[6] = BoolGetDatum(sub->paused);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
	return (Datum) 0;
}
