/*-------------------------------------------------------------------------
 *
 * lifecycle.c
 *		A subscription's lifetime lock, and what subscribe and unsubscribe
 *		do to deliveries under it.
 *
 * Every transaction that writes rows of a subscription (claims, acks,
 * fails, the worker's lease expiry and chain moves) holds the
 * subscription's lifetime lock in share mode until it ends.  unsubscribe,
 * and subscribe of an existing subscription, take it exclusively: they
 * wait for those transactions to end, and transactions that come later
 * wait for them.  So unsubscribe never misses a row that an open
 * transaction is about to commit (no orphan rows), and a change of topics
 * or of "ordered" sees every delivery as it is.  Consumers take the lock
 * before they look the subscription up, and look it up with a fresh
 * snapshot: what they read cannot change until they commit, whatever the
 * isolation level.  The worker only tries the lock, and skips the
 * subscription for this round when it is taken.
 *
 * The lock is keyed by the subscription's name, so that it can be taken
 * before the name is resolved to an id.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "shmem.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(outbox_hold_subscription_sql);
PG_FUNCTION_INFO_V1(outbox_drop_subscription);
PG_FUNCTION_INFO_V1(outbox_resubscribed);
PG_FUNCTION_INFO_V1(outbox_latest_snapshot);

/* objsubid of the lifetime lock; the claim lock (chain.c) uses 0 */
#define LIFETIME_LOCK_SUBID 1

static void
lifetime_tag(LOCKTAG *tag, const char *name)
{
	uint32		h = hash_bytes((const unsigned char *) name, strlen(name));

	SET_LOCKTAG_OBJECT(*tag, MyDatabaseId, outbox_relid("subscription"), h,
					   LIFETIME_LOCK_SUBID);
}

/*
 * Hold the lifetime lock of a subscription in share mode until the end of
 * the transaction: consumers, before they look the subscription up.
 */
void
outbox_hold_sub(const char *name)
{
	LOCKTAG		tag;

	lifetime_tag(&tag, name);
	(void) LockAcquire(&tag, AccessShareLock, false, false);
}

/* The same for the worker, which does not wait: false if not granted. */
bool
outbox_try_hold_sub(const char *name)
{
	LOCKTAG		tag;

	lifetime_tag(&tag, name);
	return LockAcquire(&tag, AccessShareLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/* Does subscription sub_id exist now?  For the worker, after the lock. */
bool
outbox_sub_exists(int32 sub_id)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = Int32GetDatum(sub_id);

	if (plan == NULL)
	{
		Oid			types[1] = {INT4OID};

		plan = outbox_prepare("SELECT 1 FROM outbox.subscription"
							  " WHERE id OPERATOR(pg_catalog.=) $1", 1, types);
	}
	if (SPI_execute_snapshot(plan, &arg, NULL, GetLatestSnapshot(),
							 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "subscription lookup failed");
	return SPI_processed == 1;
}

/*
 * The lifetime lock of the subscription named by the first argument,
 * exclusively, until the end of the transaction; returns the name.  Only
 * a writer takes it so (what: the function, for the error): refused first
 * in a read-only transaction, as any write is, and so also on a standby,
 * which would otherwise refuse the lock itself with a less telling error.
 */
static char *
hold_sub_exclusive(FunctionCallInfo fcinfo, const char *what)
{
	LOCKTAG		tag;
	char	   *name;

	PreventCommandIfReadOnly(what);
	name = outbox_sub_name_arg(fcinfo);
	/* before any table: DROP EXTENSION waits, holding nothing (subscription.c) */
	(void) outbox_lock_extension(false);
	lifetime_tag(&tag, name);
	(void) LockAcquire(&tag, AccessExclusiveLock, false, false);
	return name;
}

/*
 * outbox._hold_subscription(subscription): the lifetime lock, exclusively,
 * until the end of the transaction.  subscribe takes it before it reads or
 * changes the subscription.
 */
Datum
outbox_hold_subscription_sql(PG_FUNCTION_ARGS)
{
	(void) hold_sub_exclusive(fcinfo, "outbox.subscribe()");
	PG_RETURN_VOID();
}

/*
 * outbox._latest_snapshot(): a snapshot taken now, also in a REPEATABLE
 * READ or SERIALIZABLE transaction whose own snapshot is older.  A new
 * subscription's origin: what committed before the call is not for it.
 */
Datum
outbox_latest_snapshot(PG_FUNCTION_ARGS)
{
	PG_RETURN_POINTER(outbox_snap_from_snapshot(GetLatestSnapshot()));
}

/* Run a statement on a subscription's rows with a snapshot taken now. */
static uint64
run_latest(const char *sql, int32 sub_id)
{
	Oid			types[1] = {INT4OID};
	Datum		arg = Int32GetDatum(sub_id);
	SPIPlanPtr	plan = SPI_prepare(sql, 1, types);
	int			rc;

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\"", sql);
	rc = SPI_execute_snapshot(plan, &arg, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, false, false, 0);
	if (rc < 0)
		elog(ERROR, "\"%s\" failed: %s", sql, SPI_result_code_string(rc));
	return SPI_processed;
}

/*
 * outbox._drop_subscription(subscription): unsubscribe.  Waits, under the
 * lifetime lock, for every open transaction that may write rows of the
 * subscription, then deletes them all as they are now (not as an older
 * transaction snapshot shows them: rows committed while it waited go too).
 */
Datum
outbox_drop_subscription(PG_FUNCTION_ARGS)
{
	static const char *const deletes[] = {
		"DELETE FROM outbox.batch WHERE sub_id OPERATOR(pg_catalog.=) $1",
		"DELETE FROM outbox.settle WHERE sub_id OPERATOR(pg_catalog.=) $1",
		"DELETE FROM outbox.delivery WHERE sub_id OPERATOR(pg_catalog.=) $1",
		"DELETE FROM outbox.cursor WHERE sub_id OPERATOR(pg_catalog.=) $1",
		"DELETE FROM outbox.consumer WHERE sub_id OPERATOR(pg_catalog.=) $1",
		"DELETE FROM outbox.subscription WHERE id OPERATOR(pg_catalog.=) $1"
	};
	char	   *name = hold_sub_exclusive(fcinfo, "outbox.unsubscribe()");
	OutboxSub  *sub;
	Oid			save_user;
	int			save_sec;
	int			i;

	SPI_connect();
	outbox_become_owner(&save_user, &save_sec);
	sub = outbox_lookup_sub(name);
	for (i = 0; i < lengthof(deletes); i++)
		(void) run_latest(deletes[i], sub->id);
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * outbox._resubscribed(subscription, old_topics, old_ordered): after
 * subscribe changed an existing subscription, under its lifetime lock.
 * Events of topics it no longer has, not yet handed out, become deliveries
 * of their own (it keeps its deliveries); a switch of "ordered" applies to
 * the deliveries not yet claimed.
 */
Datum
outbox_resubscribed(PG_FUNCTION_ARGS)
{
	Oid			save_user;
	int			save_sec;
	OutboxSub  *sub;
	ArrayType  *old_topics = PG_ARGISNULL(1) ? NULL : PG_GETARG_ARRAYTYPE_P(1);
	bool		old_ordered = PG_GETARG_BOOL(2);
	bool		wake = false;

	SPI_connect();
	outbox_become_owner(&save_user, &save_sec);
	sub = outbox_lookup_sub(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	if (outbox_claim_keep_topics(sub, old_topics))
		wake = true;
	if (old_ordered && !sub->ordered)
	{
		/* nothing waits behind its key any more */
		if (run_latest("UPDATE outbox.delivery SET"
					   " state = CASE WHEN visible_at OPERATOR(pg_catalog.>) pg_catalog.now()"
					   "  THEN 'scheduled' ELSE 'ready' END,"
					   " visible_at = GREATEST(visible_at, pg_catalog.now()), seq = NULL"
					   " WHERE sub_id OPERATOR(pg_catalog.=) $1"
					   " AND state OPERATOR(pg_catalog.=) 'waiting'", sub->id) > 0)
			wake = true;
	}
	else if (!old_ordered && sub->ordered)
		outbox_claim_order_leases(sub);
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
	if (wake)
		outbox_wake_all_after_commit();
	PG_RETURN_VOID();
}
