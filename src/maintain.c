/*-------------------------------------------------------------------------
 *
 * maintain.c
 *		The worker's maintenance round: chains moved on and folded, clean-up,
 *		retention of events and of bookkeeping.
 *
 * Every unit runs in a transaction of its own, connected to SPI as the
 * worker (the bootstrap superuser), with search_path pinned by the worker.
 * Units work in small steps: no statement touches more than a bounded
 * number of rows, and the only strong locks, on partitions being emptied,
 * are taken without waiting.  Notifications (notify.c), lease expiry
 * (lease.c) and retention (retention.c) have files of their own.
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

/*
 * Start a unit of work: a transaction of its own, connected to SPI, with
 * an active snapshot.  outbox_unit_end commits it.
 */
void
outbox_unit_begin(const char *what)
{
	pgstat_report_activity(STATE_RUNNING, what);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

void
outbox_unit_end(void)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
}

/*
 * Move every subscription's chain past what is not for it and fold what
 * is settled, each subscription in its own short transaction.
 */
static void
advance_subscriptions(void)
{
	static SPIPlanPtr plan = NULL;
	List	   *names = NIL;
	ListCell   *lc;
	uint64		i;
	MemoryContext outer = CurrentMemoryContext;

	outbox_unit_begin("outbox: advance");
	if (plan == NULL)
		plan = outbox_prepare("SELECT name FROM outbox.subscription ORDER BY id", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "subscription list failed");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(outer);

		names = lappend(names, TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc, 1, &isnull)));
		MemoryContextSwitchTo(old);
	}
	outbox_unit_end();

	foreach(lc, names)
	{
		outbox_unit_begin("outbox: advance");
		PG_TRY();
		{
			outbox_claim_advance(outbox_lookup_sub((char *) lfirst(lc)));
		}
		PG_CATCH();
		{
			/* unsubscribed meanwhile: nothing to do */
			if (geterrcode() != ERRCODE_UNDEFINED_OBJECT)
				PG_RE_THROW();
			FlushErrorState();
			AbortCurrentTransaction();
			continue;
		}
		PG_END_TRY();
		outbox_unit_end();
		outbox_notify_between();
	}
}

/*
 * Maintenance, at most once a second.
 */
void
outbox_maintain(void)
{
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (!TimestampDifferenceExceeds(last, now, Min(outbox_naptime, 1000)))
		return;
	last = now;
	advance_subscriptions();
	outbox_clean_up();
	outbox_notify_between();
	outbox_rotate_and_truncate();
	outbox_notify_between();
	outbox_rotate_chain();
}
