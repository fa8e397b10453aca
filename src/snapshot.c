/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *		64-bit transaction snapshots: the boundaries of a subscription's
 *		deltas.
 *
 * A delta of the event stream is the set of events whose transaction is
 * visible in a later snapshot S and not in an earlier one F.  Snapshots are
 * kept in pg_snapshot columns, so we build and read that exact layout.
 *
 *-------------------------------------------------------------------------
 */
#include "outbox.h"

#include "access/xact.h"
#include "storage/procarray.h"
#include "utils/memutils.h"

/*
 * Widen a 32-bit xid that is not older than the oldest running transaction
 * into a full xid, relative to the next full xid.
 */
static FullTransactionId
widen_xid(FullTransactionId next, TransactionId xid)
{
	uint32		epoch = EpochFromFullTransactionId(next);

	if (!TransactionIdIsNormal(xid))
		return FullTransactionIdFromEpochAndXid(0, xid);
	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

static int
cmp_fxid(const void *a, const void *b)
{
	uint64		x = U64FromFullTransactionId(*(const FullTransactionId *) a);
	uint64		y = U64FromFullTransactionId(*(const FullTransactionId *) b);

	return (x > y) - (x < y);
}

/*
 * Build a pg_snapshot from an MVCC snapshot, in CurrentMemoryContext.  The
 * calling transaction's own xid, if it has one, is added to the in-progress
 * list: its events are not committed yet and belong to a later delta.
 */
OutboxSnap *
outbox_snap_from_snapshot(Snapshot snap)
{
	FullTransactionId next = ReadNextFullTransactionId();
	FullTransactionId mine = GetTopFullTransactionIdIfAny();
	OutboxSnap *res;
	uint32		n = 0;
	uint32		i;

	res = palloc(offsetof(OutboxSnap, xip) +
				 sizeof(FullTransactionId) * (snap->xcnt + 1));
	/* as outbox stores xids (restore.c) */
	res->xmin = outbox_shift_xid(widen_xid(next, snap->xmin));
	res->xmax = outbox_shift_xid(widen_xid(next, snap->xmax));
	for (i = 0; i < snap->xcnt; i++)
		res->xip[n++] = outbox_shift_xid(widen_xid(next, snap->xip[i]));
	if (FullTransactionIdIsValid(mine))
		mine = outbox_shift_xid(mine);
	if (FullTransactionIdIsValid(mine) &&
		FullTransactionIdPrecedes(mine, res->xmax))
		res->xip[n++] = mine;
	qsort(res->xip, n, sizeof(FullTransactionId), cmp_fxid);

	/* drop duplicates; keep xmin consistent with the list */
	if (n > 1)
	{
		uint32		k = 1;

		for (i = 1; i < n; i++)
			if (!FullTransactionIdEquals(res->xip[i], res->xip[k - 1]))
				res->xip[k++] = res->xip[i];
		n = k;
	}
	if (n > 0 && FullTransactionIdPrecedes(res->xip[0], res->xmin))
		res->xmin = res->xip[0];
	res->nxip = n;
	SET_VARSIZE(res, offsetof(OutboxSnap, xip) + sizeof(FullTransactionId) * n);
	return res;
}

/*
 * Is a committed transaction's work visible in this snapshot?  Only called
 * for transactions known to have committed (their events were found), so
 * "not in progress and older than xmax" is enough.
 */
bool
outbox_snap_visible(const OutboxSnap *snap, uint64 xid)
{
	uint32		lo = 0,
				hi = snap->nxip;

	if (xid < U64FromFullTransactionId(snap->xmin))
		return true;
	if (xid >= U64FromFullTransactionId(snap->xmax))
		return false;
	while (lo < hi)
	{
		uint32		mid = lo + (hi - lo) / 2;
		uint64		v = U64FromFullTransactionId(snap->xip[mid]);

		if (v == xid)
			return false;
		if (v < xid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return true;
}

bool
outbox_snap_equal(const OutboxSnap *a, const OutboxSnap *b)
{
	return VARSIZE(a) == VARSIZE(b) && memcmp(a, b, VARSIZE(a)) == 0;
}

OutboxSnap *
outbox_snap_copy(const OutboxSnap *snap)
{
	OutboxSnap *res = palloc(VARSIZE(snap));

	memcpy(res, snap, VARSIZE(snap));
	return res;
}
