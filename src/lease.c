/*-------------------------------------------------------------------------
 *
 * lease.c
 *		Lease expiry: leases that ran out, of claims that committed, are
 *		treated as fail(..., 'lease expired') by the worker.
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

/*
 * SQL: the backoff of fail() (outbox_backoff) after "n" attempts, jitter
 * included, for subscription "s".  In double precision seconds, which
 * neither the doubling nor the cap can overflow (an interval times 2^30
 * does, from a base of a few days), capped like outbox_backoff.
 */
#define BACKOFF_SQL(n) \
	"make_interval(secs => LEAST(date_part('epoch', s.backoff_max)," \
	" date_part('epoch', s.backoff_base) * power(2::float8, LEAST(GREATEST(" n " - 1, 0), 62))," \
	" " CppAsString2(OUTBOX_MAX_INTERVAL_DAYS) " * 86400.0) * (0.5 + random() * 0.5))"

/* a subscription with expired leases */
typedef struct ExpiryCandidate
{
	int32		sub_id;
	char	   *name;
} ExpiryCandidate;

typedef struct ExpiryArgs
{
	TimestampTz now;			/* leases that ended before are due */
	List	   *subs;			/* of ExpiryCandidate, in cxt */
	MemoryContext cxt;
	TimestampTz next;			/* the next lease to end after now, or 0 */
	int32		sub_id;			/* expire_sub_unit: the subscription */
	const char *name;
	bool		more;			/* expire_sub_unit: its limit was reached */
	int32		after_id;		/* expiry_slices_unit: from the next id on */
	ArrayType  *buckets;		/* expiry_slices_unit: of these buckets */
	uint64		listed;			/* expiry_slices_unit: subscriptions looked at */
} ExpiryArgs;

static void
add_candidate(ExpiryArgs *a, int32 sub_id, const char *name)
{
	ListCell   *lc;
	MemoryContext old;
	ExpiryCandidate *c;

	foreach(lc, a->subs)
		if (((ExpiryCandidate *) lfirst(lc))->sub_id == sub_id)
			return;
	old = MemoryContextSwitchTo(a->cxt);
	c = palloc(sizeof(ExpiryCandidate));
	c->sub_id = sub_id;
	c->name = pstrdup(name);
	a->subs = lappend(a->subs, c);
	MemoryContextSwitchTo(old);
}

/*
 * The subscriptions with leases of deliveries that ended before a->now, and
 * when the next one ends after it; one index range over all of them.
 * Leases that are due but could not be taken (their rows locked by an ack
 * or a fold in progress) do not count as next: they are tried again by the
 * next timed round, not at once (issue 8, fault 8: a worker waking every
 * millisecond).
 */
static void
expiry_deliveries_unit(void *arg)
{
	static SPIPlanPtr dsel = NULL;
	static SPIPlanPtr next_plan = NULL;
	ExpiryArgs *a = arg;
	Datum		now = TimestampTzGetDatum(a->now);
	SPITupleTable *tab;
	uint64		i;
	bool		isnull;
	Datum		d;

	if (next_plan == NULL)
	{
		Oid			t1[1] = {TIMESTAMPTZOID};

		dsel = outbox_prepare(
			"SELECT DISTINCT x.sub_id, s.name FROM ("
			" SELECT d.sub_id FROM outbox.delivery d"
			" WHERE d.state = 'leased' AND d.lease_until < $1"
			" ORDER BY d.lease_until LIMIT 1000) x"
			" JOIN outbox.subscription s ON s.id = x.sub_id", 1, t1);
		next_plan = outbox_prepare(
			"SELECT min(lease_until) FROM outbox.delivery"
			" WHERE state = 'leased' AND lease_until >= $1", 1, t1);
	}

	if (SPI_execute_plan(dsel, &now, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "expired leases lookup failed");
	tab = SPI_tuptable;
	for (i = 0; i < SPI_processed; i++)
		add_candidate(a, DatumGetInt32(SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull)),
					  TextDatumGetCString(SPI_getbinval(tab->vals[i], tab->tupdesc, 2, &isnull)));
	if (SPI_execute_plan(next_plan, &now, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next lease lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		a->next = outbox_earliest(a->next, DatumGetTimestampTz(d));
}

/* subscriptions whose unfolded slices one unit looks at */
#define EXPIRY_CHUNK 100

/*
 * The earliest known end of a lease of an unfolded slice, by bucket of
 * subscription ids (OUTBOX_LEASE_BUCKETS): what the worker learnt when it
 * last looked at the bucket.  DT_NOEND: none known; 0 (a worker's first
 * round): look now.  Leases taken since come from the slot
 * (outbox_lease_take_due).
 */
static TimestampTz bucket_due[OUTBOX_LEASE_BUCKETS];

/*
 * The same for the leases of unfolded slices (batch rows no settle row
 * took), for the next EXPIRY_CHUNK subscriptions after a->after_id, by id,
 * of the buckets in a->buckets.  Each subscription costs a few index
 * probes (its newest cursor, its unfolded slices, their settle rows), so
 * the units are kept short: with 1,000 subscriptions one query over all of
 * them took 27 ms, and every notification that came meanwhile waited for
 * it.  Only buckets whose time came are read (issue 9): looking at all
 * 1,000 subscriptions every round was a third of the worker's time at
 * 1,000 events/s, for leases that consumers had long acked.
 *
 * The next lease is not checked for being settled: a slice acked since
 * makes the worker look at its bucket once when its lease ends, for
 * nothing (and then it is past).  Checking every unfolded slice, most of
 * them with leases still running, took 25 ms a round at 1,000
 * subscriptions (10 ms without).
 */
static void
expiry_slices_unit(void *arg)
{
	static SPIPlanPtr plan = NULL;
	ExpiryArgs *a = arg;
	Datum		args[3];
	SPITupleTable *tab;
	uint64		i;

	if (plan == NULL)
	{
		Oid			types[3] = {TIMESTAMPTZOID, INT4OID, INT4ARRAYOID};

		plan = outbox_prepare(
			"SELECT s.id, s.name,"
			" EXISTS (SELECT 1 FROM outbox.batch b WHERE b.sub_id = s.id"
			"  AND b.batch_no >= c.scan_from AND b.lease_until < $1 AND " UNSETTLED "),"
			" (SELECT min(b.lease_until) FROM outbox.batch b WHERE b.sub_id = s.id"
			"  AND b.batch_no >= c.scan_from AND b.lease_until >= $1)"
			" FROM outbox.subscription s CROSS JOIN LATERAL ("
			"  SELECT c.scan_from FROM outbox.cursor c WHERE c.sub_id = s.id"
			"  ORDER BY c.fold_no DESC LIMIT 1) c"
			" WHERE s.id > $2"
			" AND s.id OPERATOR(pg_catalog.%) " CppAsString2(OUTBOX_LEASE_BUCKETS) " = ANY ($3)"
			" ORDER BY s.id LIMIT " CppAsString2(EXPIRY_CHUNK), 3, types);
	}
	args[0] = TimestampTzGetDatum(a->now);
	args[1] = Int32GetDatum(a->after_id);
	args[2] = PointerGetDatum(a->buckets);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "expired batch leases lookup failed");
	tab = SPI_tuptable;
	a->listed = SPI_processed;
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int32		id = DatumGetInt32(SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull));
		int			b = outbox_lease_bucket(id);
		Datum		d;

		a->after_id = id;
		if (DatumGetBool(SPI_getbinval(tab->vals[i], tab->tupdesc, 3, &isnull)))
			add_candidate(a, id,
						  TextDatumGetCString(SPI_getbinval(tab->vals[i], tab->tupdesc, 2, &isnull)));
		d = SPI_getbinval(tab->vals[i], tab->tupdesc, 4, &isnull);
		if (!isnull)
		{
			a->next = outbox_earliest(a->next, DatumGetTimestampTz(d));
			bucket_due[b] = Min(bucket_due[b], DatumGetTimestampTz(d));
		}
	}
}

/*
 * Leases of one subscription that ended before a->now, of claims that
 * committed, are treated as fail(..., error => 'lease expired'): scheduled
 * at the backoff, or dead at max_attempts.  A claim whose transaction is
 * still open is invisible here, so its leases are not touched.
 */
static void
expire_sub_unit(void *arg)
{
	static SPIPlanPtr dplan = NULL;
	static SPIPlanPtr bsel = NULL;
	static SPIPlanPtr bins = NULL;
	ExpiryArgs *a = arg;
	SPITupleTable *tab;
	uint64		n,
				i;
	Datum		args[3];

	if (bins == NULL)
	{
		Oid			t2[2] = {INT4OID, TIMESTAMPTZOID};
		Oid			t3[3] = {INT4OID, INT8ARRAYOID, TEXTARRAYOID};

		dplan = outbox_prepare(
			"WITH due AS ("
			" SELECT d.sub_id, d.event_id FROM outbox.delivery d"
			" WHERE d.sub_id = $1 AND d.state = 'leased' AND d.lease_until < $2"
			" ORDER BY d.lease_until LIMIT 1000 FOR UPDATE SKIP LOCKED)"
			" UPDATE outbox.delivery d SET"
			"  state = CASE WHEN d.attempts >= s.max_attempts THEN 'dead' ELSE 'scheduled' END,"
			"  visible_at = CASE WHEN d.attempts >= s.max_attempts THEN NULL ELSE"
			"   now() + " BACKOFF_SQL("d.attempts") " END,"
			"  dead_at = CASE WHEN d.attempts >= s.max_attempts THEN now() END,"
			"  lease_until = NULL, last_error = 'lease expired'"
			" FROM due, outbox.subscription s"
			" WHERE d.sub_id = due.sub_id AND d.event_id = due.event_id AND s.id = d.sub_id",
			2, t2);
		bsel = outbox_prepare(
			"SELECT b.gen, b.batch_no"
			" FROM outbox.cursor_now c, LATERAL ("
			"  SELECT * FROM outbox.batch b WHERE b.sub_id = c.sub_id"
			"  AND b.batch_no >= c.scan_from OFFSET 0) b"
			" WHERE c.sub_id = $1 AND b.lease_until < $2 AND " UNSETTLED
			" ORDER BY b.lease_until LIMIT " CppAsString2(EXPIRE_BATCHES), 2, t2);
		bins = outbox_prepare(
			"INSERT INTO outbox.delivery"
			" (sub_id, event_id, state, attempts, visible_at, key, last_error, dead_at)"
			" SELECT $1, u.id, CASE WHEN s.max_attempts <= 1 THEN 'dead' ELSE 'scheduled' END, 1,"
			"  CASE WHEN s.max_attempts <= 1 THEN NULL ELSE"
			"   now() + " BACKOFF_SQL("1") " END,"
			"  u.key, 'lease expired', CASE WHEN s.max_attempts <= 1 THEN now() END"
			" FROM unnest($2, $3) AS u(id, key), outbox.subscription s"
			" WHERE s.id = $1 AND u.id IS NOT NULL"
			" ON CONFLICT (sub_id, event_id) DO NOTHING", 3, t3);
	}

	/*
	 * Not while unsubscribe waits or runs (lifecycle.c): rows written for a
	 * subscription it is deleting would outlive it.  A later round retries.
	 */
	if (!outbox_try_hold_sub(a->name) || !outbox_sub_exists(a->sub_id))
		return;

	args[0] = Int32GetDatum(a->sub_id);
	args[1] = TimestampTzGetDatum(a->now);
	if (SPI_execute_plan(dplan, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "lease expiry of deliveries failed");
	/* consumers learn of returned leases (and of keys a dead one freed) */
	if (SPI_processed > 0)
		outbox_notify_sub(a->name);
	if (SPI_processed >= 1000)
		a->more = true;

	if (SPI_execute_plan(bsel, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "lease expiry lookup failed");
	tab = SPI_tuptable;
	n = SPI_processed;
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		int64		gen = DatumGetInt64(SPI_getbinval(tab->vals[i], tab->tupdesc, 1, &isnull));
		int64		batch_no = DatumGetInt64(SPI_getbinval(tab->vals[i], tab->tupdesc, 2, &isnull));
		int64	   *taken;
		Datum	   *keys;
		bool	   *key_nulls;
		int			ntaken;

		CHECK_FOR_INTERRUPTS();
		/* an ack or fail of this batch in progress: a later round */
		ntaken = outbox_batch_take(a->sub_id, gen, batch_no, NULL, 0, true,
								   &taken, &keys, &key_nulls);
		if (ntaken <= 0)
			continue;
		args[0] = Int32GetDatum(a->sub_id);
		outbox_taken_arrays(taken, keys, key_nulls, ntaken, &args[1], &args[2]);
		if (SPI_execute_plan(bins, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "lease expiry insert failed");
		outbox_notify_sub(a->name);
		/* more may be due; not if all were locked (a later round) */
		if (n >= EXPIRE_BATCHES)
			a->more = true;
	}
}

/*
 * The buckets of subscriptions whose slice leases are to be looked at now,
 * as an int4[]; NULL if none.  Without a slot no claim says what it leased:
 * every bucket, every round.
 */
static ArrayType *
due_buckets(OutboxDbSlot *slot, TimestampTz now, TimestampTz *next)
{
	bool		due[OUTBOX_LEASE_BUCKETS];
	Datum		elems[OUTBOX_LEASE_BUCKETS];
	int			n = 0;

	*next = 0;
	if (slot != NULL)
		*next = outbox_lease_take_due(slot, now, due);
	for (int b = 0; b < OUTBOX_LEASE_BUCKETS; b++)
	{
		if (slot == NULL || due[b] || bucket_due[b] <= now)
		{
			/* what it has left is learnt again */
			bucket_due[b] = DT_NOEND;
			elems[n++] = Int32GetDatum(b);
		}
		else if (bucket_due[b] != DT_NOEND)
			*next = outbox_earliest(*next, bucket_due[b]);
	}
	if (n == 0)
		return NULL;
	return construct_array(elems, n, INT4OID, sizeof(int32), true, TYPALIGN_INT);
}

/* Buckets not looked at after all: their turn is the next timed round. */
static void
buckets_again(ArrayType *buckets, TimestampTz now)
{
	Datum	   *elems;
	int			n;

	if (buckets == NULL)
		return;
	deconstruct_array(buckets, INT4OID, sizeof(int32), true, TYPALIGN_INT,
					  &elems, NULL, &n);
	for (int i = 0; i < n; i++)
		bucket_due[DatumGetInt32(elems[i])] = Min(bucket_due[DatumGetInt32(elems[i])], now);
}

/*
 * Lease expiry: the subscriptions with expired leases are found together,
 * then each is served in a transaction of its own, so that one whose
 * leases cannot be returned (its row makes the backoff fail, say) is
 * logged and the others are served.  Returns when the next known lease
 * ends: now, if a subscription had more than one round's worth.
 */
TimestampTz
outbox_expire_leases(OutboxDbSlot *slot)
{
	ExpiryArgs	a;
	ListCell   *lc;
	TimestampTz next;

	memset(&a, 0, sizeof(a));
	a.now = GetCurrentTimestamp();
	a.cxt = CurrentMemoryContext;
	a.buckets = due_buckets(slot, a.now, &a.next);
	if (!outbox_unit("outbox: find expired leases", 0, expiry_deliveries_unit, &a))
	{
		buckets_again(a.buckets, a.now);
		return 0;
	}
	while (a.buckets != NULL)
	{
		if (!outbox_unit("outbox: find expired leases of slices", 0, expiry_slices_unit, &a))
		{
			buckets_again(a.buckets, a.now);
			return 0;
		}
		outbox_notify_between();
		if (a.listed < EXPIRY_CHUNK)
			break;
	}
	next = a.next;
	/* returned now, or locked and left for the next round */
	if (a.subs != NIL)
		outbox_round_busy();
	foreach(lc, a.subs)
	{
		ExpiryCandidate *c = lfirst(lc);
		char	   *what = psprintf("outbox: expire leases of subscription \"%s\"", c->name);

		CHECK_FOR_INTERRUPTS();
		a.sub_id = c->sub_id;
		a.name = c->name;
		a.more = false;
		if (outbox_sub_unit(what, OUTBOX_SUB_EXPIRE, c->sub_id, 0, expire_sub_unit, &a) &&
			a.more)
			next = a.now;

		/*
		 * Its slices are looked at again by the next timed round, not at
		 * once: those it could not return (locked by an ack in progress)
		 * are tried then.
		 */
		bucket_due[outbox_lease_bucket(c->sub_id)] =
			Min(bucket_due[outbox_lease_bucket(c->sub_id)], a.now);
		pfree(what);
	}
	return next;
}
