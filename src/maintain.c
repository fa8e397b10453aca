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
#include "tally.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* the SQLSTATE of the last unit that failed */
static int	unit_errcode = 0;

/*
 * What the worker's current timed round found (issue 9): whether a unit
 * wrote, failed, or left work it could not do yet (busy), and the earliest
 * time it knows something falls due (timer).  A round that was not busy
 * leaves nothing for the next one but what those times, or activity, bring.
 */
static bool round_busy = false;
static TimestampTz round_timer = 0;

void
outbox_round_begin(void)
{
	round_busy = false;
	round_timer = 0;
}

/* This round did something, or left something to do: the next one runs. */
void
outbox_round_busy(void)
{
	round_busy = true;
}

/* Something falls due at t (0: nothing). */
void
outbox_round_timer(TimestampTz t)
{
	round_timer = outbox_earliest(round_timer, t);
}

/*
 * Did the round leave nothing to do?  Sets *timer to when its timed work
 * falls due next (0 if never).  Units that failed and wait to be retried
 * count as left to do.
 */
bool
outbox_round_quiet(TimestampTz *timer)
{
	*timer = round_timer;
	return !round_busy && outbox_no_failures();
}

/* the unit running now, for the error context */
static const char *unit_what = NULL;

static void
unit_error_context(void *arg)
{
	if (unit_what != NULL)
		errcontext("%s", unit_what);
}

/*
 * Run fn(arg) as a unit of work: a transaction of its own, connected to SPI
 * (as the worker, with its pinned search_path) with an active snapshot,
 * unless OUTBOX_UNIT_BARE.  Commits it and returns true; or, if anything in
 * it raises an error, contains the error: reports it (with "what" as its
 * context), aborts the transaction, restores the caller's memory context
 * and resource owner, and returns false.  With OUTBOX_UNIT_GONE_OK an
 * undefined_object error (a subscription dropped meanwhile) is expected and
 * not reported.
 *
 * This is the one place the worker and the launcher catch errors: a unit's
 * failure is its own, and whatever runs next starts from a clean state.
 */
/*
 * Say once every ten minutes that this database waits for
 * outbox.finish_restore().
 */
static void
report_restore_pending(void)
{
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (last != 0 && !TimestampDifferenceExceeds(last, now, 10 * 60 * 1000))
		return;
	last = now;
	ereport(LOG,
			(errmsg("outbox worker is waiting for outbox.finish_restore() in database \"%s\"",
					get_database_name(MyDatabaseId)),
			 errdetail("The extension was created by a restore of a dump; until the restore is finished, the worker leaves the database alone.")));
}

bool
outbox_unit(const char *what, int flags, OutboxUnitFn fn, void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorContextCallback errcb;
	volatile bool ok = true;

	pgstat_report_activity(STATE_RUNNING, what);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	unit_what = what;
	errcb.callback = unit_error_context;
	errcb.arg = NULL;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	PG_TRY();
	{
		/*
		 * The extension first, before any table, as every user of outbox
		 * does (outbox_lock_extension): a DROP EXTENSION under way then
		 * waits for this unit, or this unit for it, never both.  Once it is
		 * dropped the unit does nothing, and the worker stops at its next
		 * look.
		 */
		bool		bare = (flags & OUTBOX_UNIT_BARE) != 0;
		bool		gone = !bare && !outbox_lock_extension(true);

		/* nothing acts on a database whose restore is unfinished */
		if (!bare && !gone && outbox_restore_pending())
		{
			report_restore_pending();
			gone = true;
		}

		if (!bare && !gone)
		{
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			PushActiveSnapshot(GetTransactionSnapshot());
		}
		if (!gone)
			fn(arg);
		if (!bare && !gone)
		{
			PopActiveSnapshot();
			SPI_finish();
		}
		/* it wrote: the next round may have more to do */
		if (TransactionIdIsValid(GetTopTransactionIdIfAny()))
			round_busy = true;
		/* commit inside: an error at commit is the unit's too */
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		unit_errcode = geterrcode();
		if (!((flags & OUTBOX_UNIT_GONE_OK) && unit_errcode == ERRCODE_UNDEFINED_OBJECT))
			EmitErrorReport();
		FlushErrorState();
		/* releases locks, LWLocks, snapshots, SPI and buffers of the unit */
		AbortCurrentTransaction();
		ok = false;
		round_busy = true;
	}
	PG_END_TRY();
	/* the callback lived in this frame; it is popped on either path */
	error_context_stack = errcb.previous;
	unit_what = NULL;
	CurrentResourceOwner = owner;
	MemoryContextSwitchTo(cxt);
	return ok;
}

/* a subscription whose unit of some kind failed */
typedef struct SubFailure
{
	int			kind;
	int32		sub_id;
	int			failures;
	TimestampTz retry_at;
} SubFailure;

/* the longest a failing subscription's work waits before it is tried again */
#define MAX_SUB_PAUSE_MS (60 * 1000)

static List *sub_failures = NIL;	/* in TopMemoryContext */

/* No unit waits to be tried again. */
bool
outbox_no_failures(void)
{
	return sub_failures == NIL;
}

/*
 * A unit of work for one subscription, or with sub_id 0 for the whole
 * database (outbox_unit).  If that work failed before, it waits a pause
 * that doubles with each failure, up to a minute, so that a subscription
 * whose row breaks its maintenance (or a step that keeps failing) costs a
 * logged error now and then, not every round, and never holds up the
 * others.  Returns whether the unit ran and committed.
 */
bool
outbox_sub_unit(const char *what, int kind, int32 sub_id, int flags,
				OutboxUnitFn fn, void *arg)
{
	ListCell   *lc;
	SubFailure *f = NULL;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext old;

	foreach(lc, sub_failures)
	{
		SubFailure *cand = lfirst(lc);

		if (cand->kind == kind && cand->sub_id == sub_id)
			f = cand;
	}
	if (f != NULL && f->retry_at > now)
		return false;
	if (outbox_unit(what, flags, fn, arg))
	{
		if (f != NULL)
		{
			sub_failures = list_delete_ptr(sub_failures, f);
			pfree(f);
		}
		return true;
	}
	/* dropped meanwhile: nothing to remember */
	if ((flags & OUTBOX_UNIT_GONE_OK) && unit_errcode == ERRCODE_UNDEFINED_OBJECT)
		return false;
	if (f == NULL)
	{
		old = MemoryContextSwitchTo(TopMemoryContext);
		f = palloc0(sizeof(SubFailure));
		f->kind = kind;
		f->sub_id = sub_id;
		sub_failures = lappend(sub_failures, f);
		MemoryContextSwitchTo(old);
	}
	f->failures = Min(f->failures + 1, 16);
	f->retry_at = TimestampTzPlusMilliseconds(now, Min(500L << f->failures, MAX_SUB_PAUSE_MS));
	return false;
}

/* a subscription advance_subscriptions goes through */
typedef struct SubName
{
	int32		id;
	char	   *name;
} SubName;

typedef struct AdvanceArgs
{
	bool		find_stale;		/* look up the chains that hold back rotation */
	List	   *subs;			/* of SubName, in cxt, by id */
	List	   *stale;			/* of their ids, in cxt, ascending */
	MemoryContext cxt;
} AdvanceArgs;

/*
 * The subscriptions to advance this round: all of them, and those whose
 * chains hold back the next rotation (see below).
 */
static void
list_subscriptions_unit(void *arg)
{
	static SPIPlanPtr plan = NULL;
	AdvanceArgs *a = arg;
	uint64		i;
	MemoryContext old;

	/*
	 * The selective list of branch idle9-listq probed each subscription's
	 * slices and cursor delta for events of its topics; with backlogs of
	 * 1.2M events (bench/run's latency phase) it took 1.1 s a round, and
	 * notifications waited for it (p99 800 ms).
	 */
	if (plan == NULL)
		plan = outbox_prepare("SELECT id, name FROM outbox.subscription ORDER BY id", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "subscription list failed");
	old = MemoryContextSwitchTo(a->cxt);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		SubName    *sn = palloc(sizeof(SubName));

		sn->id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
		sn->name = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 2, &isnull));
		a->subs = lappend(a->subs, sn);
	}
	MemoryContextSwitchTo(old);
	if (a->find_stale)
	{
		List	   *stale = outbox_chain_stale_subs();

		old = MemoryContextSwitchTo(a->cxt);
		a->stale = list_copy(stale);
		MemoryContextSwitchTo(old);
	}
}

static void
advance_unit(void *arg)
{
	outbox_claim_advance(outbox_lookup_sub(((SubName *) arg)->name));
}

/* when the worker last advanced each subscription, by id */
typedef struct AdvancedAt
{
	int32		sub_id;
	TimestampTz at;
	uint32		round;			/* the last round that listed it */
} AdvancedAt;

static HTAB *advanced_at = NULL;

/*
 * Move every subscription's chain past what is not for it and fold what
 * is settled, each subscription in its own short transaction: one that
 * fails is logged and the others go on.
 *
 * Only while something may still change (issue 9).  An advance moves a
 * chain past events committed since, and folds slices settled since: both
 * come from transactions that bump the database's activity count when they
 * end (enqueues, consumer functions, subscription changes).  "activity" is
 * the count read before this round; a transaction ending after that read
 * moves it again for the next round.  Once the count stops, the first
 * advance covers everything committed and folds what consumers settled,
 * but the folded cursor still passes the consumers' last slices, and
 * retention keeps events back to the oldest snapshot a passed slice
 * starts at (cursor_floor); the second folds the first one's slice, which
 * starts after them.  So the round that sees the count stopped advances
 * all, then ADVANCES_AFTER_ACTIVITY - 1 more.  Further advances would only
 * record a snapshot moved past the worker's own transactions: a slice and
 * a cursor row per subscription, each round, for nothing (the WAL of an
 * idle 1.0, and its chain rotations).  Without a slot nothing is counted,
 * and every round advances every subscription.
 *
 * While activity goes on, consumers move and fold their own chains, and
 * the worker advances only the chains that hold back the next rotation of
 * chain generations (outbox_chain_stale_subs): those nobody claimed from
 * for two to three rotations, or held back by a slice.  That keeps every
 * chain in the generations rotation keeps, and moves a quiet
 * subscription's cursor (so retention can drop what it passed) every few
 * rotations; a quiet topic's claims read none of the other topics' events
 * in between (outbox_topics_quiet_since).  A chain that stays stale after
 * its advance (a lease still running in its oldest slice) is advanced
 * again at most every half rotation.  Before, every subscription was
 * advanced every half rotation: with 1,000 subscriptions on their own
 * topics at 1,000 events/s, 200 transactions a second, each writing, 45 %
 * of the worker's time, while consumers moved the same chains anyway.
 */
#define ADVANCES_AFTER_ACTIVITY 2

static void
advance_subscriptions(OutboxDbSlot *slot, uint32 activity)
{
	static int	advances = 0;	/* since the count last moved */
	static uint32 advanced_activity = 0;
	static uint32 round = 0;
	int			advanced = 0;
	bool		only_stale;
	TimestampTz now = GetCurrentTimestamp();
	AdvanceArgs a;
	ListCell   *lc;
	ListCell   *stale_lc;
	HASH_SEQ_STATUS seq;
	AdvancedAt *e;

	if (slot != NULL && advances > ADVANCES_AFTER_ACTIVITY &&
		activity == advanced_activity && outbox_no_failures())
		return;

	if (advanced_at == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int32);
		ctl.entrysize = sizeof(AdvancedAt);
		advanced_at = hash_create("outbox subscriptions advanced", 256, &ctl,
								  HASH_ELEM | HASH_BLOBS);
	}

	if (slot == NULL || activity != advanced_activity)
		advances = 0;
	/* once the count stopped, every chain is advanced: no claim moves them */
	only_stale = slot != NULL && advances == 0;

	memset(&a, 0, sizeof(a));
	a.cxt = CurrentMemoryContext;
	a.find_stale = only_stale;
	if (!outbox_unit("outbox: list subscriptions", 0, list_subscriptions_unit, &a))
		return;
	advanced_activity = activity;
	advances++;
	round++;

	stale_lc = list_head(a.stale);
	foreach(lc, a.subs)
	{
		SubName    *sn = lfirst(lc);
		bool		found;
		bool		stale = false;
		char	   *what;

		CHECK_FOR_INTERRUPTS();
		e = hash_search(advanced_at, &sn->id, HASH_ENTER, &found);
		if (!found)
			e->at = 0;
		e->round = round;
		/* both lists ascend by id */
		while (stale_lc != NULL && lfirst_int(stale_lc) < sn->id)
			stale_lc = lnext(a.stale, stale_lc);
		if (stale_lc != NULL && lfirst_int(stale_lc) == sn->id)
			stale = true;
		if (only_stale &&
			(!stale || !TimestampDifferenceExceeds(e->at, now, outbox_chain_rotation / 2)))
			continue;
		e->at = now;
		advanced++;
		elog(DEBUG2, "outbox advances subscription \"%s\"", sn->name);
		what = psprintf("outbox: advance subscription \"%s\"", sn->name);
		/* unsubscribed since it was listed: nothing to do */
		(void) outbox_sub_unit(what, OUTBOX_SUB_ADVANCE, sn->id, OUTBOX_UNIT_GONE_OK,
							   advance_unit, sn);
		pfree(what);
		outbox_notify_between();
	}

	ereport(DEBUG1,
			(errmsg("outbox advanced %d of %d subscriptions", advanced, list_length(a.subs))));

	/* forget the subscriptions that are gone */
	hash_seq_init(&seq, advanced_at);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->round != round)
			(void) hash_search(advanced_at, &e->sub_id, HASH_REMOVE, NULL);
}

/*
 * Maintenance, at most once a second.  "activity": the slot's activity
 * count read before the round; slot NULL without one.
 */
void
outbox_maintain(OutboxDbSlot *slot, uint32 activity)
{
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (!TimestampDifferenceExceeds(last, now, Min(outbox_naptime, 1000)))
	{
		/* not this round: a round may not count as idle without it */
		outbox_round_busy();
		return;
	}
	last = now;
	advance_subscriptions(slot, activity);
	outbox_tally(slot, activity);
	outbox_clean_up();
	outbox_notify_between();
	outbox_rotate_and_truncate();
	outbox_notify_between();
	outbox_rotate_chain();
}
