/*-------------------------------------------------------------------------
 *
 * restore.c
 *		outbox.state as every backend caches it, and what a restore of a
 *		dump needs: the xid shift and restore mode.
 *
 * Event ids and the snapshots that order the stream are made from full
 * transaction ids.  A dump restored into another cluster brings ids and
 * snapshots of the old cluster's counter, which may be far ahead of the new
 * one.  So every xid outbox takes from the server goes through a shift
 * (outbox.state.xid_shift, 0 until a restore): an xid as outbox stores it is
 * the server's plus the shift.  Finishing a restore raises the shift so
 * that everything the new cluster does sorts after everything restored, and
 * the old snapshots and ids keep their meaning: a restored subscription
 * carries on from where its chain was.
 *
 * Restore mode: the install script, run by pg_dump's restore script (which
 * turns check_function_bodies and row_security off), leaves the extension
 * in restore mode.  Until outbox.finish_restore() runs, every call refuses
 * and the worker does nothing, so nothing acts on half-restored tables (the
 * worker would empty event buckets no subscription needs yet).
 *
 *-------------------------------------------------------------------------
 */
#include "outbox.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "miscadmin.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(outbox_state_changed);

typedef struct StateCache
{
	bool		valid;
	Oid			relid;
	int			bucket;
	uint64		xid_shift;
	uint64		xid_floor;
	bool		restoring;
} StateCache;

static StateCache state = {false, InvalidOid, 0, 0, 0, false};

static void
state_invalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == state.relid)
		state.valid = false;
}

/*
 * A column of outbox.state, by name, or dflt if the schema predates it:
 * version 1.0, which knew no restores, has no shift and is never in
 * restore mode, so producers keep working until ALTER EXTENSION UPDATE.
 */
static Datum
state_value(HeapTuple tup, Relation rel, const char *name, Datum dflt)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(rel), name);
	bool		isnull;
	Datum		d;

	if (attnum == InvalidAttrNumber)
		return dflt;
	d = heap_getattr(tup, attnum, RelationGetDescr(rel), &isnull);
	if (isnull)
		elog(ERROR, "outbox.state has a null \"%s\"", name);
	return d;
}

/*
 * Read outbox.state with a snapshot taken now: a transaction whose own
 * snapshot predates finish_restore() has taken its invalidation and must
 * not cache what was there before.
 */
static void
state_load(void)
{
	static bool callback_registered = false;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	Snapshot	snap;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(state_invalidate, (Datum) 0);
		callback_registered = true;
	}
	state.relid = outbox_relid("state");
	rel = table_open(state.relid, AccessShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	tup = heap_getnext(scan, ForwardScanDirection);
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "outbox.state is missing its row");
	state.bucket = DatumGetInt16(state_value(tup, rel, "bucket", Int16GetDatum(-1)));
	state.xid_shift = (uint64) DatumGetInt64(state_value(tup, rel, "xid_shift", Int64GetDatum(0)));
	state.xid_floor = (uint64) DatumGetInt64(state_value(tup, rel, "xid_floor", Int64GetDatum(0)));
	state.restoring = DatumGetBool(state_value(tup, rel, "restoring", BoolGetDatum(false)));
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	if (state.bucket < 0 || state.bucket >= OUTBOX_BUCKETS)
		elog(ERROR, "invalid outbox bucket %d", state.bucket);
	state.valid = true;
}

static const StateCache *
cached_state(void)
{
	if (!state.valid)
		state_load();
	return &state;
}

/*
 * Forget the cached state, and which layouts were checked: the extension
 * may have been updated, or made again.
 */
void
outbox_state_forget(void)
{
	state.valid = false;
	outbox_layout_forget();
}

/*
 * The bucket new events go to.  The worker's rotation sends a relcache
 * invalidation on outbox.state.  A stale value is harmless: consumers find
 * events by id in whatever bucket holds them, and retention empties a
 * bucket only once nothing in it is still needed.
 */
int
outbox_current_bucket(void)
{
	return cached_state()->bucket;
}

/* The server's full xid as outbox stores it. */
FullTransactionId
outbox_shift_xid(FullTransactionId fxid)
{
	return FullTransactionIdFromU64(U64FromFullTransactionId(fxid) +
									cached_state()->xid_shift);
}

uint64
outbox_xid_shift(void)
{
	return cached_state()->xid_shift;
}

/*
 * Stored xids below this came from the cluster a dump was taken from (0
 * until a restore): the server's own bookkeeping says nothing about them.
 */
uint64
outbox_xid_floor(void)
{
	return cached_state()->xid_floor;
}

/*
 * Refuse to work on a database whose restore has not been finished.  The
 * worker asks instead (outbox_restore_pending) and leaves it alone.
 */
void
outbox_check_restored(void)
{
	if (cached_state()->restoring)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("outbox is waiting for the restore of this database to finish"),
				 errdetail("The extension was created by a restore of a dump, and outbox.finish_restore() has not run since."),
				 errhint("Once the restore has completed, run SELECT outbox.finish_restore(); in this database.")));
}

bool
outbox_restore_pending(void)
{
	return cached_state()->restoring;
}

/*
 * outbox._state_changed(): after finish_restore() wrote outbox.state, so
 * that every backend reads it again.
 */
Datum
outbox_state_changed(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheByRelid(outbox_relid("state"));
	state.valid = false;
	PG_RETURN_VOID();
}
