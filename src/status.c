/*-------------------------------------------------------------------------
 *
 * status.c
 *		outbox.event_status(event_id): what became of one event, per
 *		subscription.
 *
 * Answers from what is stored anyway: a delivery row, if the delivery has
 * one; otherwise the subscription's chain (not reached yet: ready or, with
 * deliver_at ahead, scheduled), the slice that leased it (leased, or done
 * when a settle row took it, at that row's time), or, once the slice was
 * folded and its partition emptied, done with no time.  Only reads, so it
 * works on a standby.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(outbox_event_status);

typedef struct StatusRow
{
	const char *state;
	int32		attempts;
	TimestampTz visible_at;		/* 0: NULL */
	TimestampTz lease_until;
	Datum		last_error;
	bool		error_null;
	TimestampTz done_at;
} StatusRow;

/* Its delivery row, if it has one. */
static bool
from_delivery(OutboxSub *sub, int64 id, StatusRow *row)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2] = {Int32GetDatum(sub->id), Int64GetDatum(id)};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *state;
	Datum		d;

	if (plan == NULL)
	{
		Oid			types[2] = {INT4OID, INT8OID};

		plan = outbox_prepare("SELECT state, attempts, visible_at, lease_until, last_error, done_at"
							  " FROM outbox.delivery"
							  " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							  " AND event_id OPERATOR(pg_catalog.=) $2", 2, types);
	}
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "delivery lookup failed");
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	state = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
	/* held behind an earlier event of its key: waiting for its time */
	row->state = strcmp(state, "waiting") == 0 ? "scheduled" : pstrdup(state);
	row->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	d = SPI_getbinval(tup, desc, 3, &isnull);
	row->visible_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	row->lease_until = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(tup, desc, 5, &row->error_null);
	/* stays valid until the next SPI call, after the row is stored */
	row->last_error = row->error_null ? (Datum) 0 : d;
	d = SPI_getbinval(tup, desc, 6, &isnull);
	row->done_at = isnull ? 0 : DatumGetTimestampTz(d);
	return true;
}

/*
 * The slice that leased it: leased still, or done at the time of the
 * settle row that took it (an ack: a fail or release would have made a
 * delivery row).  False if no slice that holds it is stored any more.
 */
static bool
from_slice(OutboxSub *sub, int64 id, StatusRow *row)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2] = {Int32GetDatum(sub->id), Int64GetDatum(id)};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		settled_null;
	bool		isnull;
	Datum		settled;

	if (plan == NULL)
	{
		Oid			types[2] = {INT4OID, INT8OID};

		plan = outbox_prepare("SELECT b.lease_until,"
							  " (SELECT pg_catalog.max(t.at) FROM outbox.settle t"
							  "   WHERE t.sub_id OPERATOR(pg_catalog.=) b.sub_id"
							  "   AND t.batch_no OPERATOR(pg_catalog.=) b.batch_no"
							  "   AND $2 OPERATOR(pg_catalog.=) ANY (t.ids))"
							  " FROM outbox.batch b"
							  " WHERE b.sub_id OPERATOR(pg_catalog.=) $1"
							  " AND b.pos_from OPERATOR(pg_catalog.<) $2"
							  " AND b.pos_to OPERATOR(pg_catalog.>=) $2"
							  " AND $2 OPERATOR(pg_catalog.=) ANY (b.ids)"
							  " ORDER BY b.batch_no DESC LIMIT 1", 2, types);
	}
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "slice lookup failed");
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	settled = SPI_getbinval(tup, desc, 2, &settled_null);
	row->attempts = 1;
	if (settled_null)
	{
		row->state = "leased";
		row->lease_until = DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull));
	}
	else
	{
		row->state = "done";
		row->done_at = DatumGetTimestampTz(settled);
	}
	return true;
}

/*
 * outbox.event_status(event_id) RETURNS TABLE (subscription, state,
 * attempts, visible_at, lease_until, last_error, done_at): a row per
 * subscription the caller may consume that receives the event.
 */
Datum
outbox_event_status(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr ev_plan = NULL;
	static SPIPlanPtr subs_plan = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			caller = GetUserId();
	Oid			save_user;
	int			save_sec;
	int64		id;
	Datum		arg;
	bool		isnull;
	char	   *topic;
	Datum		d;
	TimestampTz deliver_at = 0;
	TimestampTz enqueued_at;
	TimestampTz now = GetCurrentTimestamp();
	SPITupleTable *subs;
	uint64		nsubs,
				i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_id must not be null")));
	id = PG_GETARG_INT64(0);
	InitMaterializedSRF(fcinfo, 0);
	/* before any table, as every user of outbox (DROP EXTENSION) */
	(void) outbox_lock_extension(false);
	SPI_connect();
	outbox_become_owner(&save_user, &save_sec);

	if (ev_plan == NULL)
	{
		Oid			types[1] = {INT8OID};

		ev_plan = outbox_prepare("SELECT topic, deliver_at, enqueued_at FROM outbox.event"
								 " WHERE id OPERATOR(pg_catalog.=) $1", 1, types);
		subs_plan = outbox_prepare("SELECT name FROM outbox.subscription ORDER BY name", 0, NULL);
	}
	arg = Int64GetDatum(id);
	if (SPI_execute_plan(ev_plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "event lookup failed");
	if (SPI_processed == 0)
	{
		/* unknown, or removed by retention */
		outbox_restore_user(save_user, save_sec);
		SPI_finish();
		return (Datum) 0;
	}
	topic = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull)
		deliver_at = DatumGetTimestampTz(d);
	enqueued_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));

	if (SPI_execute_plan(subs_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "subscription list failed");
	subs = SPI_tuptable;
	nsubs = SPI_processed;
	for (i = 0; i < nsubs; i++)
	{
		char	   *name = TextDatumGetCString(SPI_getbinval(subs->vals[i], subs->tupdesc, 1, &isnull));
		OutboxSub  *sub = outbox_find_sub(name);
		StatusRow	row;
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		CHECK_FOR_INTERRUPTS();
		/* unsubscribed since the list was read */
		if (sub == NULL || !outbox_role_may_consume(caller, sub->id))
			continue;
		memset(&row, 0, sizeof(row));
		row.error_null = true;
		/*
		 * A delivery row counts whatever the topics are now: events of a
		 * topic given up were kept as delivery rows.
		 */
		if (!from_delivery(sub, id, &row))
		{
			OutboxChain *chain;
			bool		pending;

			if (!outbox_sub_receives(sub, topic) ||
				outbox_snap_visible(sub->origin, OUTBOX_ID_XID(id)))
				continue;
			chain = outbox_chain_read(sub->id);
			pending = outbox_chain_pending(chain, OUTBOX_ID_XID(id), id, id);
			outbox_chain_release(chain);
			/* claimable since it was enqueued, or from its deliver_at */
			row.visible_at = deliver_at != 0 ? deliver_at : enqueued_at;
			if (pending)
				row.state = deliver_at > now ? "scheduled" : "ready";
			else if (!from_slice(sub, id, &row))
			{
				/* folded, and its slice's partition emptied since */
				row.state = "done";
				row.attempts = 1;
			}
		}
		values[0] = CStringGetTextDatum(sub->name);
		values[1] = CStringGetTextDatum(row.state);
		values[2] = Int32GetDatum(row.attempts);
		values[3] = TimestampTzGetDatum(row.visible_at);
		nulls[3] = row.visible_at == 0;
		values[4] = TimestampTzGetDatum(row.lease_until);
		nulls[4] = row.lease_until == 0;
		values[5] = row.last_error;
		nulls[5] = row.error_null;
		values[6] = TimestampTzGetDatum(row.done_at);
		nulls[6] = row.done_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
	return (Datum) 0;
}
