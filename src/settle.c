/*-------------------------------------------------------------------------
 *
 * settle.c
 *		outbox.ack() and outbox.fail(): settle leased deliveries.
 *
 * A delivery leased from the stream is an id in an outbox.batch row: ack
 * takes it out with an outbox.settle row (one insert per batch, not per
 * event; nothing is updated), fail does the same and adds an
 * outbox.delivery row, 'scheduled' or 'dead'.  A delivery that already has
 * an outbox.delivery row is updated in place.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "shmem.h"

#include "catalog/pg_type.h"

#include "common/pg_prng.h"
#include "lib/qunique.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(outbox_ack);
PG_FUNCTION_INFO_V1(outbox_ack_many);
PG_FUNCTION_INFO_V1(outbox_fail);
PG_FUNCTION_INFO_V1(outbox_release);
PG_FUNCTION_INFO_V1(outbox_extend_lease);

/*
 * Run a statement with a snapshot taken now, whatever the isolation level:
 * an ack or fail settles the delivery as it is now (a lease the worker
 * returned after this transaction's snapshot was taken included), under
 * the subscription's lifetime lock and the row locks of what it changes.
 */
static int
exec_latest(SPIPlanPtr plan, Datum *args, const char *nulls, bool read_only,
			long count)
{
	return SPI_execute_snapshot(plan, args, nulls, GetLatestSnapshot(),
								InvalidSnapshot, read_only, false, count);
}

/* After commit, wake the subscriptions of a subscription's topics. */
static void
wake_sub_after_commit(OutboxSub *sub)
{
	Datum	   *topics;
	int			n,
				i;
	OutboxBits	bits;

	if (sub->topics == NULL)
	{
		outbox_wake_all_after_commit();
		return;
	}
	outbox_bits_clear(&bits);
	deconstruct_array(sub->topics, TEXTOID, -1, false, TYPALIGN_INT,
					  &topics, NULL, &n);
	for (i = 0; i < n; i++)
		outbox_wake_add_topic(&bits, TextDatumGetCString(topics[i]));
	outbox_wake_after_commit(&bits);
}

/*
 * Take the given ids (sorted) out of the batch rows of a subscription that
 * hold them, with a settle row per batch (outbox_batch_take: concurrent
 * settlements of one batch wait for each other).  Marks found[] for each id
 * that was taken and returns how many.  For fail, also returns the key of
 * each taken id in keys[] (when the subscription is ordered).
 */
static int
settle_from_batches(int32 sub_id, int64 *ids, int n, bool *found,
					Datum *keys, bool *key_nulls)
{
	int			removed = 0;
	int64	   *gens;
	int64	   *nos;
	int			nfound,
				b;

	nfound = outbox_batches_holding(sub_id, ids, n, &gens, &nos);
	for (b = 0; b < nfound; b++)
	{
		int64	   *taken;
		Datum	   *tkeys = NULL;
		bool	   *tknulls = NULL;
		int			ntaken,
					k;

		ntaken = outbox_batch_take(sub_id, gens[b], nos[b], ids, n, false, &taken,
								   keys ? &tkeys : NULL, keys ? &tknulls : NULL);
		for (k = 0; k < ntaken; k++)
		{
			int64	   *hit = bsearch(&taken[k], ids, n, sizeof(int64), outbox_cmp_int64);
			int			pos;

			if (hit == NULL || found[hit - ids])
				continue;
			pos = hit - ids;
			found[pos] = true;
			removed++;
			if (keys)
			{
				keys[pos] = tkeys[k];
				key_nulls[pos] = tknulls[k];
			}
		}
	}
	return removed;
}

/*
 * Mark delivery rows done.  Marks found[] and returns how many changed.
 */
static int
ack_deliveries(int32 sub_id, int64 *ids, int n, bool *found)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2];
	Datum	   *dids;
	int			i,
				m = 0,
				done = 0;
	uint64		r;

	if (plan == NULL)
	{
		Oid			types[2] = {INT4OID, INT8ARRAYOID};

		plan = outbox_prepare("UPDATE outbox.delivery SET state = 'done', lease_until = NULL,"
							  " visible_at = NULL, done_at = pg_catalog.now()"
							  " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							  " AND event_id OPERATOR(pg_catalog.=) ANY ($2)"
							  " AND state OPERATOR(pg_catalog.<>) 'done'"
							  " RETURNING event_id", 2, types);
	}
	dids = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
		if (!found[i])
			dids[m++] = Int64GetDatum(ids[i]);
	if (m == 0)
		return 0;
	args[0] = Int32GetDatum(sub_id);
	args[1] = PointerGetDatum(construct_array(dids, m, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	if (exec_latest(plan, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "delivery ack failed");
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													 SPI_tuptable->tupdesc, 1, &isnull));
		int64	   *hit = bsearch(&id, ids, n, sizeof(int64), outbox_cmp_int64);

		if (hit != NULL && !found[hit - ids])
		{
			found[hit - ids] = true;
			done++;
		}
	}
	return done;
}

/*
 * Ids that are in neither a batch nor a delivery row: events of this
 * subscription that no claim has reached yet become done now.  Ids of
 * unknown events, of other topics, or already settled are left alone.
 * Takes the claim lock, so the check and the claims that follow agree.
 */
static int
ack_ahead(OutboxSub *sub, int64 *ids, int n, bool *found)
{
	static SPIPlanPtr sel = NULL;
	static SPIPlanPtr ins = NULL;
	Datum		args[2];
	Datum	   *dids;
	int			i,
				m = 0,
				done = 0;
	uint64		r;
	OutboxChain *chain;
	SPITupleTable *tab;
	uint64		nrows;
	Datum	   *topics = NULL;
	int			ntopics = 0;

	dids = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
		if (!found[i] && !outbox_snap_visible(sub->origin, OUTBOX_ID_XID(ids[i])))
			dids[m++] = Int64GetDatum(ids[i]);
	if (m == 0)
		return 0;

	if (ins == NULL)
	{
		Oid			t1[1] = {INT8ARRAYOID};
		Oid			t2[2] = {INT4OID, INT8OID};

		sel = outbox_prepare("SELECT id, topic FROM outbox.event"
							 " WHERE id OPERATOR(pg_catalog.=) ANY ($1)", 1, t1);
		ins = outbox_prepare("INSERT INTO outbox.delivery (sub_id, event_id, state, done_at)"
							 " VALUES ($1, $2, 'done', pg_catalog.now()) ON CONFLICT DO NOTHING", 2, t2);
	}
	if (sub->topics)
		deconstruct_array(sub->topics, TEXTOID, -1, false, TYPALIGN_INT,
						  &topics, NULL, &ntopics);

	outbox_lock_sub(sub->id);
	chain = outbox_chain_read(sub->id);
	args[0] = PointerGetDatum(construct_array(dids, m, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	if (SPI_execute_snapshot(sel, args, NULL, chain->snapshot, InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "event lookup failed");
	tab = SPI_tuptable;
	nrows = SPI_processed;
	for (r = 0; r < nrows; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tab->vals[r], tab->tupdesc, 1, &isnull));
		char	   *topic = TextDatumGetCString(SPI_getbinval(tab->vals[r], tab->tupdesc, 2, &isnull));
		bool		match = (sub->topics == NULL);
		int64	   *hit;

		for (i = 0; !match && i < ntopics; i++)
			match = strcmp(TextDatumGetCString(topics[i]), topic) == 0;
		if (!match || !outbox_chain_pending(chain, OUTBOX_ID_XID(id), id, id))
			continue;
		args[0] = Int32GetDatum(sub->id);
		args[1] = Int64GetDatum(id);
		if (exec_latest(ins, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "delivery insert failed");
		hit = bsearch(&id, ids, n, sizeof(int64), outbox_cmp_int64);
		if (SPI_processed == 1 && hit != NULL && !found[hit - ids])
		{
			found[hit - ids] = true;
			done++;
		}
	}
	outbox_chain_release(chain);
	outbox_unlock_sub(sub->id);
	return done;
}

/*
 * Ack sorted, distinct ids for a subscription; returns how many became done.
 */
static int
ack_ids(OutboxSub *sub, int64 *ids, int n)
{
	bool	   *found = palloc0(sizeof(bool) * n);
	int			done;

	done = settle_from_batches(sub->id, ids, n, found, NULL, NULL);
	if (done < n)
		done += ack_deliveries(sub->id, ids, n, found);
	if (done < n)
		done += ack_ahead(sub, ids, n, found);
	/* an ordered key may be free now: tell the consumers after commit */
	if (done > 0 && sub->ordered)
		wake_sub_after_commit(sub);
	return done;
}

/*
 * outbox.ack(subscription, event_id) RETURNS boolean
 */
Datum
outbox_ack(PG_FUNCTION_ARGS)
{
	Oid			save_user;
	int			save_sec;
	OutboxSub  *sub;
	int64		id;
	int			done;

	PreventCommandIfReadOnly("outbox.ack()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_id must not be null")));
	sub = outbox_consumer_begin(fcinfo, &save_user, &save_sec);
	id = PG_GETARG_INT64(1);
	done = ack_ids(sub, &id, 1);
	outbox_consumer_end(save_user, save_sec);
	PG_RETURN_BOOL(done > 0);
}

/*
 * outbox.ack(subscription, event_ids) RETURNS int
 */
Datum
outbox_ack_many(PG_FUNCTION_ARGS)
{
	Oid			save_user;
	int			save_sec;
	OutboxSub  *sub;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *enulls;
	int			n,
				i,
				m = 0;
	int64	   *ids;
	int			done;

	PreventCommandIfReadOnly("outbox.ack()");
	sub = outbox_consumer_begin(fcinfo, &save_user, &save_sec);
	if (PG_ARGISNULL(1))
	{
		/* array_agg over an empty claim: nothing to ack */
		outbox_consumer_end(save_user, save_sec);
		PG_RETURN_INT32(0);
	}
	arr = PG_GETARG_ARRAYTYPE_P(1);
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &enulls, &n);
	for (i = 0; i < n; i++)
		if (enulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event_ids must not contain null")));
	if (n == 0)
	{
		outbox_consumer_end(save_user, save_sec);
		PG_RETURN_INT32(0);
	}
	ids = palloc(sizeof(int64) * n);
	for (i = 0; i < n; i++)
		ids[i] = DatumGetInt64(elems[i]);
	qsort(ids, n, sizeof(int64), outbox_cmp_int64);
	for (i = 0; i < n; i++)
		if (m == 0 || ids[i] != ids[m - 1])
			ids[m++] = ids[i];
	done = ack_ids(sub, ids, m);
	outbox_consumer_end(save_user, save_sec);
	PG_RETURN_INT32(done);
}

/*
 * When a failed delivery is tried again: now() + retry_in if given, else
 * now() + least(backoff_max, backoff_base * 2^(attempts-1)) * j, with j
 * uniform in [0.5, 1.0] so that failures of one cause spread out.
 *
 * The doubling is done in int64 microseconds and stops at the cap, so no
 * attempts count overflows it; the cap is also held to the largest interval
 * subscribe accepts, for settings stored before that limit existed.
 * retry_in was checked by the caller (outbox_check_interval).
 */
TimestampTz
outbox_backoff(OutboxSub *sub, int32 attempts, const Interval *retry_in)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int64		base;
	int64		max;
	int64		d;
	int			shift;
	double		j;

	if (retry_in != NULL)
		return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													   TimestampTzGetDatum(now),
													   PointerGetDatum(retry_in)));

	base = Max(outbox_interval_usecs(&sub->backoff_base), 0);
	max = Max(Min(outbox_interval_usecs(&sub->backoff_max),
				  OUTBOX_MAX_INTERVAL_USECS), 0);
	shift = Max(attempts - 1, 0);
	if (base == 0)
		d = 0;
	else if (shift >= 62 || base > (max >> shift))
		d = max;				/* base * 2^shift > max */
	else
		d = base << shift;		/* <= max, no overflow */
	j = 0.5 + 0.5 * pg_prng_double(&pg_global_prng_state);
	return now + (int64) ((double) d * j);
}

/* What give_back does with a leased delivery. */
typedef enum GiveBack
{
	GIVE_FAIL,					/* fail(): scheduled at the backoff, or dead */
	GIVE_FAIL_DEAD,				/* fail(..., dead => true): dead at once */
	GIVE_RELEASE				/* release(): ready or scheduled, attempt given back */
} GiveBack;

/*
 * Take a leased delivery back from its consumer: from the stream (a
 * slice's id, first attempt) or from its delivery row.  attempt, when not
 * NULL, must be the delivery's current attempt (the fence: a consumer
 * whose lease ran out and was claimed again cannot settle the next
 * consumer's claim).  Returns the new state, or NULL if the delivery is
 * not leased (at that attempt).
 */
static Datum
give_back(FunctionCallInfo fcinfo, GiveBack how, int64 id, Datum error, bool error_null,
		  Interval *retry_in, bool attempt_null, int32 attempt)
{
	static SPIPlanPtr ins = NULL;
	static SPIPlanPtr sel = NULL;
	static SPIPlanPtr upd = NULL;
	Oid			save_user;
	int			save_sec;
	OutboxSub  *sub;
	bool		found = false;
	Datum		key = (Datum) 0;
	bool		key_null = true;
	int32		attempts;
	bool		dead;
	TimestampTz visible_at;
	Datum		args[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	const char *state;

	sub = outbox_consumer_begin(fcinfo, &save_user, &save_sec);

	if (upd == NULL)
	{
		Oid			t7[7] = {INT4OID, INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID,
		TEXTOID, TEXTOID};
		Oid			t2[2] = {INT4OID, INT8OID};
		Oid			t6[6] = {INT4OID, INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, INT4OID};

		ins = outbox_prepare("INSERT INTO outbox.delivery (sub_id, event_id, state, attempts,"
							 " visible_at, last_error, key, dead_at)"
							 " VALUES ($1, $2, $3, $4, $5, $6, $7,"
							 "  CASE WHEN $3 OPERATOR(pg_catalog.=) 'dead' THEN pg_catalog.now() END)",
							 7, t7);
		sel = outbox_prepare("SELECT attempts, last_error FROM outbox.delivery"
							 " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							 " AND event_id OPERATOR(pg_catalog.=) $2"
							 " AND state OPERATOR(pg_catalog.=) 'leased' FOR UPDATE", 2, t2);
		upd = outbox_prepare("UPDATE outbox.delivery SET state = $3, visible_at = $4,"
							 " last_error = $5, lease_until = NULL, attempts = $6,"
							 " dead_at = CASE WHEN $3 OPERATOR(pg_catalog.=) 'dead' THEN pg_catalog.now() END"
							 " WHERE sub_id OPERATOR(pg_catalog.=) $1"
							 " AND event_id OPERATOR(pg_catalog.=) $2", 6, t6);
	}

	/* leased from the stream: first attempt */
	attempts = 1;
	if (attempt_null || attempt == 1)
	{
		bool		hit = false;

		found = settle_from_batches(sub->id, &id, 1, &hit, &key, &key_null) > 0;
	}
	if (!found)
	{
		bool		isnull;

		args[0] = Int32GetDatum(sub->id);
		args[1] = Int64GetDatum(id);
		if (exec_latest(sel, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "delivery lookup failed");
		if (SPI_processed == 0)
		{
			outbox_consumer_end(save_user, save_sec);
			return (Datum) 0;
		}
		attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		if (!attempt_null && attempt != attempts)
		{
			outbox_consumer_end(save_user, save_sec);
			return (Datum) 0;
		}
		/* a release keeps the error of the attempt before */
		if (how == GIVE_RELEASE)
		{
			error = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &error_null);
			if (!error_null)
				error = PointerGetDatum(PG_DETOAST_DATUM_COPY(error));
		}
	}

	if (how == GIVE_RELEASE)
	{
		/* the next claim counts this attempt again */
		dead = false;
		attempts--;
		visible_at = retry_in != NULL ? outbox_backoff(sub, attempts, retry_in) :
			GetCurrentTransactionStartTimestamp();
		state = retry_in != NULL ? "scheduled" : "ready";
	}
	else
	{
		dead = how == GIVE_FAIL_DEAD || attempts >= sub->max_attempts;
		visible_at = dead ? 0 : outbox_backoff(sub, attempts, retry_in);
		state = dead ? "dead" : "scheduled";
	}

	args[0] = Int32GetDatum(sub->id);
	args[1] = Int64GetDatum(id);
	args[2] = CStringGetTextDatum(state);
	args[3] = Int32GetDatum(attempts);
	args[4] = TimestampTzGetDatum(visible_at);
	nulls[4] = dead ? 'n' : ' ';
	args[5] = error;
	nulls[5] = error_null ? 'n' : ' ';
	args[6] = key;
	nulls[6] = key_null ? 'n' : ' ';
	if (found)
	{
		if (exec_latest(ins, args, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "delivery insert failed");
	}
	else
	{
		Datum		uargs[6] = {args[0], args[1], args[2], args[4], args[5], args[3]};
		char		unulls[6] = {' ', ' ', ' ', nulls[4], nulls[5], ' '};

		if (exec_latest(upd, uargs, unulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "delivery update failed");
	}

	/*
	 * After commit, wake the worker: a retry may be due by then, a released
	 * delivery is ready, and a dead letter frees its key in an ordered
	 * subscription.
	 */
	wake_sub_after_commit(sub);
	outbox_consumer_end(save_user, save_sec);
	return PointerGetDatum(cstring_to_text(state));
}

static int64
event_id_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_id must not be null")));
	return PG_GETARG_INT64(argno);
}

static Interval *
retry_in_arg(FunctionCallInfo fcinfo, int argno)
{
	Interval   *retry_in;

	if (PG_ARGISNULL(argno))
		return NULL;
	retry_in = PG_GETARG_INTERVAL_P(argno);
	outbox_check_interval(retry_in, "retry_in");
	return retry_in;
}

/*
 * outbox.fail(subscription, event_id, error, retry_in, attempt, dead)
 * RETURNS text.  (Version 1.0's fail has no "dead".)
 */
Datum
outbox_fail(PG_FUNCTION_ARGS)
{
	bool		dead = PG_NARGS() > 5 && !PG_ARGISNULL(5) && PG_GETARG_BOOL(5);
	Interval   *retry_in;
	int64		id;
	Datum		res;

	PreventCommandIfReadOnly("outbox.fail()");
	id = event_id_arg(fcinfo, 1);
	retry_in = retry_in_arg(fcinfo, 3);
	res = give_back(fcinfo, dead ? GIVE_FAIL_DEAD : GIVE_FAIL, id,
					PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2), PG_ARGISNULL(2),
					dead ? NULL : retry_in,
					PG_ARGISNULL(4), PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4));
	if (res == (Datum) 0)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(res);
}

/*
 * outbox.release(subscription, event_id, attempt, retry_in) RETURNS text
 */
Datum
outbox_release(PG_FUNCTION_ARGS)
{
	Interval   *retry_in;
	int64		id;
	Datum		res;

	PreventCommandIfReadOnly("outbox.release()");
	id = event_id_arg(fcinfo, 1);
	retry_in = retry_in_arg(fcinfo, 3);
	res = give_back(fcinfo, GIVE_RELEASE, id, (Datum) 0, true, retry_in,
					PG_ARGISNULL(2), PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2));
	if (res == (Datum) 0)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(res);
}

/*
 * outbox.extend_lease(subscription, event_ids, attempts, lease) RETURNS
 * bigint[]: the ids of the deliveries leased at exactly the given attempt
 * (the fence of fail), whose leases now run out "lease" from now.
 *
 * A delivery leased from the stream shares its slice's lease with the rest
 * of the claim, and slices are never updated: it is handed over to a
 * leased delivery row of its own (as a fold hands over slow leases), whose
 * lease can then be moved.  Later extensions update that row.
 */
Datum
outbox_extend_lease(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr ins = NULL;
	static SPIPlanPtr upd = NULL;
	Oid			save_user;
	int			save_sec;
	OutboxSub  *sub;
	ArrayType  *ids_arr;
	ArrayType  *att_arr;
	Datum	   *id_elems;
	Datum	   *att_elems;
	bool	   *id_nulls;
	bool	   *att_nulls;
	int			n,
				natt,
				i,
				nfirst = 0,
				nout = 0;
	int64	   *first;
	bool	   *found;
	Datum	   *keys;
	bool	   *key_nulls;
	Datum	   *out;
	Interval   *lease = NULL;
	TimestampTz until;
	Datum		args[4];

	PreventCommandIfReadOnly("outbox.extend_lease()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_ids must not be null")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("attempts must not be null")));
	ids_arr = PG_GETARG_ARRAYTYPE_P(1);
	att_arr = PG_GETARG_ARRAYTYPE_P(2);
	if (ARR_NDIM(ids_arr) > 1 || ARR_NDIM(att_arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event_ids and attempts must be one-dimensional arrays")));
	deconstruct_array(ids_arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &id_elems, &id_nulls, &n);
	deconstruct_array(att_arr, INT4OID, 4, true, TYPALIGN_INT,
					  &att_elems, &att_nulls, &natt);
	if (n != natt)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event_ids and attempts must have as many elements"),
				 errdetail("event_ids has %d, attempts %d.", n, natt)));
	for (i = 0; i < n; i++)
		if (id_nulls[i] || att_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event_ids and attempts must not contain nulls")));
	if (!PG_ARGISNULL(3))
	{
		lease = PG_GETARG_INTERVAL_P(3);
		outbox_check_interval(lease, "lease");
	}

	sub = outbox_consumer_begin(fcinfo, &save_user, &save_sec);
	until = DatumGetTimestampTz(
		DirectFunctionCall2(timestamptz_pl_interval, TimestampTzGetDatum(GetCurrentTimestamp()),
							PointerGetDatum(lease ? lease : &sub->lease)));

	if (upd == NULL)
	{
		Oid			tins[4] = {INT4OID, INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZOID};
		Oid			tupd[4] = {INT4OID, INT8ARRAYOID, INT4ARRAYOID, TIMESTAMPTZOID};

		ins = outbox_prepare("INSERT INTO outbox.delivery (sub_id, event_id, state, attempts,"
							 " lease_until, key)"
							 " SELECT $1, u.id, 'leased', 1, $4, u.key"
							 " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(id, key)"
							 " RETURNING event_id", 4, tins);
		upd = outbox_prepare("UPDATE outbox.delivery d SET lease_until = $4"
							 " FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(id, attempt)"
							 " WHERE d.sub_id OPERATOR(pg_catalog.=) $1"
							 " AND d.event_id OPERATOR(pg_catalog.=) u.id"
							 " AND d.attempts OPERATOR(pg_catalog.=) u.attempt"
							 " AND d.state OPERATOR(pg_catalog.=) 'leased'"
							 " RETURNING d.event_id", 4, tupd);
	}

	/* leased from the stream: the first attempt, sorted for the lookup */
	first = palloc(sizeof(int64) * Max(n, 1));
	for (i = 0; i < n; i++)
		if (DatumGetInt32(att_elems[i]) == 1)
			first[nfirst++] = DatumGetInt64(id_elems[i]);
	qsort(first, nfirst, sizeof(int64), outbox_cmp_int64);
	nfirst = qunique(first, nfirst, sizeof(int64), outbox_cmp_int64);
	found = palloc0(sizeof(bool) * Max(nfirst, 1));
	keys = palloc0(sizeof(Datum) * Max(nfirst, 1));
	key_nulls = palloc(sizeof(bool) * Max(nfirst, 1));
	for (i = 0; i < nfirst; i++)
		key_nulls[i] = true;
	out = palloc(sizeof(Datum) * Max(n, 1));
	if (nfirst > 0 && settle_from_batches(sub->id, first, nfirst, found, keys, key_nulls) > 0)
	{
		int64	   *taken = palloc(sizeof(int64) * nfirst);
		Datum	   *tkeys = palloc(sizeof(Datum) * nfirst);
		bool	   *tknulls = palloc(sizeof(bool) * nfirst);
		int			nt = 0;

		for (i = 0; i < nfirst; i++)
			if (found[i])
			{
				taken[nt] = first[i];
				tkeys[nt] = keys[i];
				tknulls[nt++] = key_nulls[i];
			}
		outbox_taken_arrays(taken, tkeys, tknulls, nt, &args[1], &args[2]);
		args[0] = Int32GetDatum(sub->id);
		args[3] = TimestampTzGetDatum(until);
		if (exec_latest(ins, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "lease hand-over failed");
		for (i = 0; i < (int) SPI_processed; i++)
		{
			bool		isnull;

			out[nout++] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		}
	}

	/* delivery rows leased at that attempt; not those just handed over */
	{
		Datum	   *rest_ids = palloc(sizeof(Datum) * Max(n, 1));
		Datum	   *rest_att = palloc(sizeof(Datum) * Max(n, 1));
		int			nrest = 0;

		for (i = 0; i < n; i++)
		{
			int64		id = DatumGetInt64(id_elems[i]);
			int64	   *hit = nfirst > 0 && DatumGetInt32(att_elems[i]) == 1 ?
				bsearch(&id, first, nfirst, sizeof(int64), outbox_cmp_int64) : NULL;

			if (hit != NULL && found[hit - first])
				continue;
			rest_ids[nrest] = id_elems[i];
			rest_att[nrest++] = att_elems[i];
		}
		if (nrest > 0)
		{
			args[0] = Int32GetDatum(sub->id);
			args[1] = PointerGetDatum(construct_array(rest_ids, nrest, INT8OID, 8,
													  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			args[2] = PointerGetDatum(construct_array(rest_att, nrest, INT4OID, 4,
													  true, TYPALIGN_INT));
			args[3] = TimestampTzGetDatum(until);
			if (exec_latest(upd, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
				elog(ERROR, "lease extension failed");
			for (i = 0; i < (int) SPI_processed; i++)
			{
				bool		isnull;
				Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
				int			k;

				/* once, even if the id was given twice */
				for (k = 0; k < nout; k++)
					if (DatumGetInt64(out[k]) == DatumGetInt64(d))
						break;
				if (k == nout)
					out[nout++] = d;
			}
		}
	}

	outbox_consumer_end(save_user, save_sec);
	PG_RETURN_ARRAYTYPE_P(construct_array(out, nout, INT8OID, 8, FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}
