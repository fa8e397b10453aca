/*-------------------------------------------------------------------------
 *
 * wait.c
 *		claim(..., wait): a claim that finds nothing waits on its latch
 *		until deliveries of its subscription may have become claimable.
 *
 * Each attempt is a claim in a subtransaction of its own.  An attempt that
 * leases nothing is rolled back, which releases every lock it took (the
 * extension's, the subscription's lifetime lock, the tables'): while the
 * claim waits it holds nothing that unsubscribe, subscribe, DROP EXTENSION,
 * the worker's truncates or another consumer would wait for.  An attempt
 * that leases something is kept, and the claim returns.
 *
 * Waiters announce themselves in shared memory, one entry per backend:
 * the database and a hash of the subscription's name.  The worker, when it
 * commits the notifications of a round (notify.c), sets the latches of the
 * waiters of every subscription it notified.  So a waiter wakes when a
 * LISTENer would be notified, for the same reasons: commits, deliveries
 * come due, leases returned, replay, resume.  A waiter also looks again
 * every outbox.naptime, for what no wake-up covers: no worker, no shared
 * memory (not preloaded), an unsubscribe.
 *
 * The snapshot.  The snapshot of the statement that waits would hold back
 * vacuum for the whole wait.  When the claim is the whole statement (SELECT
 * columns FROM outbox.claim(...), nothing read with that snapshot after the
 * function returns) and the transaction has no other snapshot, the
 * backend's xmin is withdrawn while it waits; every attempt takes a fresh
 * snapshot.  Inside a larger statement or a function, the caller's snapshot
 * stays, as for any statement that runs that long (README).
 *
 *-------------------------------------------------------------------------
 */
#include "shmem.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "nodes/plannodes.h"
#include "optimizer/optimizer.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/pquery.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/*
 * One entry per backend, by its number: (database << 32) | name hash, or 0
 * when it does not wait.  One atomic word, so that a reader never sees
 * half of an entry.
 */
static pg_atomic_uint64 *waiters = NULL;
static int	nwaiters = 0;
static bool exit_callback_set = false;

/* the names the worker notified in this transaction, as bits of their hash */
static OutboxBits pending;
static bool pending_any = false;

static uint32
name_hash(const char *name)
{
	return hash_bytes((const unsigned char *) name, strlen(name));
}

Size
outbox_waiters_size(void)
{
	return mul_size(sizeof(pg_atomic_uint64), MaxBackends);
}

/* In the shared memory startup hook, under AddinShmemInitLock. */
void
outbox_waiters_startup(void)
{
	bool		found;

	nwaiters = MaxBackends;
	waiters = ShmemInitStruct("outbox claim waiters", outbox_waiters_size(), &found);
	if (!found)
		for (int i = 0; i < nwaiters; i++)
			pg_atomic_init_u64(&waiters[i], 0);
}

static bool
have_entry(void)
{
	return waiters != NULL && MyProc != NULL && MyProcNumber >= 0 &&
		MyProcNumber < nwaiters;
}

static void
clear_entry(void)
{
	if (have_entry())
		pg_atomic_write_u64(&waiters[MyProcNumber], 0);
}

static void
clear_entry_at_exit(int code, Datum arg)
{
	clear_entry();
}

/*
 * Announce that this backend waits for the subscription.  The barrier
 * orders the entry before the attempt's snapshot: a commit the attempt
 * does not see is notified after the worker can see the entry.
 */
static void
set_entry(const char *name)
{
	if (!have_entry())
		return;
	if (!exit_callback_set)
	{
		before_shmem_exit(clear_entry_at_exit, (Datum) 0);
		exit_callback_set = true;
	}
	pg_atomic_write_u64(&waiters[MyProcNumber],
						((uint64) MyDatabaseId << 32) | name_hash(name));
	pg_memory_barrier();
}

/*
 * The worker notifies subscription name in this transaction: wake its
 * waiters when the transaction commits.
 */
void
outbox_wake_waiters_after_commit(const char *name)
{
	if (waiters == NULL)
		return;
	outbox_bits_add(&pending, name_hash(name));
	pending_any = true;
}

/*
 * At the end of a transaction: after a commit, set the latch of every
 * waiter of this database whose subscription's hash was notified (another
 * name of the same hash only costs its waiter an attempt).
 */
void
outbox_waiters_at_end(bool committed)
{
	if (!pending_any)
		return;
	if (committed)
	{
		pg_memory_barrier();
		for (int i = 0; i < nwaiters; i++)
		{
			uint64		e = pg_atomic_read_u64(&waiters[i]);

			if (e != 0 && (Oid) (e >> 32) == MyDatabaseId &&
				outbox_bits_has(&pending, (uint32) e))
				SetLatch(&GetPGProcByNumber(i)->procLatch);
		}
	}
	outbox_bits_clear(&pending);
	pending_any = false;
}

/*
 * Does this plan read nothing but this call's result?  A function scan of
 * exactly this call, under nodes that only reshape rows (aggregate, sort,
 * limit, ...), with immutable expressions only (which read no tables).
 * Anything else (a join, a scan of a table, a function of the plan's own)
 * may read with the statement's snapshot after the claim returns.
 */
static bool
reads_only_claim(Plan *plan, FunctionCallInfo fcinfo)
{
	if (plan == NULL)
		return false;
	if (plan->initPlan != NIL ||
		contain_mutable_functions((Node *) plan->targetlist) ||
		contain_mutable_functions((Node *) plan->qual))
		return false;
	switch (nodeTag(plan))
	{
		case T_FunctionScan:
			{
				FunctionScan *scan = (FunctionScan *) plan;

				return list_length(scan->functions) == 1 &&
					((RangeTblFunction *) linitial(scan->functions))->funcexpr ==
					fcinfo->flinfo->fn_expr;
			}
		case T_Limit:
			if (contain_mutable_functions(((Limit *) plan)->limitOffset) ||
				contain_mutable_functions(((Limit *) plan)->limitCount))
				return false;
			/* FALLTHROUGH */
		case T_Agg:
		case T_Sort:
		case T_IncrementalSort:
		case T_Material:
		case T_Unique:
		case T_Result:
			return plan->righttree == NULL &&
				reads_only_claim(plan->lefttree, fcinfo);
		default:
			return false;
	}
}

/*
 * Is this claim its whole statement, and the statement's snapshot the only
 * one of the transaction?  Then nothing reads with that snapshot once the
 * claim returns: the portal runs one plan, which reads nothing but this
 * call's result and has no subplans.
 */
static bool
claim_is_statement(FunctionCallInfo fcinfo)
{
	PlannedStmt *stmt;

	if (ActivePortal == NULL || list_length(ActivePortal->stmts) != 1)
		return false;
	stmt = linitial(ActivePortal->stmts);
	if (!IsA(stmt, PlannedStmt) || stmt->commandType != CMD_SELECT ||
		stmt->subplans != NIL || stmt->rowMarks != NIL ||
		!reads_only_claim(stmt->planTree, fcinfo))
		return false;
	/* the catalog snapshot is taken again when needed */
	InvalidateCatalogSnapshot();
	return ThereAreNoPriorRegisteredSnapshots();
}

/*
 * Let vacuum go past this backend while it waits (see the head comment):
 * what SnapshotResetXmin does when a transaction holds no snapshot.  The
 * next attempt's snapshot sets it again.
 */
static void
withdraw_xmin(void)
{
	MyProc->xmin = InvalidTransactionId;
	TransactionXmin = InvalidTransactionId;
}

/*
 * One attempt in a subtransaction: kept if it leased something, rolled back
 * (with its locks) if not.  Errors roll it back before they go on, so the
 * caller's transaction is left as an error would leave it without one.
 */
static int64
attempt_in_subxact(FunctionCallInfo fcinfo, OutboxClaimAttempt attempt,
				   void *arg, MemoryContext attempt_cxt)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int64 got = 0;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(attempt_cxt);
	/*
	 * A snapshot of its own, as a statement of its own would have: what
	 * reads with the active snapshot then sees what committed meanwhile,
	 * and never the statement's, which may no longer hold back vacuum
	 * (withdraw_xmin).  Subtransaction abort pops it on error.
	 */
	PushActiveSnapshot(GetTransactionSnapshot());
	PG_TRY();
	{
		got = attempt(fcinfo, arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ReThrowError(edata);
	}
	PG_END_TRY();
	PopActiveSnapshot();
	if (got > 0)
		ReleaseCurrentSubTransaction();
	else
		RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	MemoryContextReset(attempt_cxt);
	return got;
}

/*
 * claim(..., wait): attempt until an attempt leases something or the wait
 * runs out, waiting on the latch in between.  Returns what was leased.
 */
int64
outbox_claim_waiting(FunctionCallInfo fcinfo, Interval *wait,
					 OutboxClaimAttempt attempt, void *arg)
{
	char	   *name;
	TimestampTz deadline;
	bool		alone;
	MemoryContext attempt_cxt;
	volatile int64 got = 0;

	name = outbox_sub_name_arg(fcinfo);
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("claim cannot wait in a transaction whose snapshot does not see later commits"),
				 errdetail("The transaction's isolation level is REPEATABLE READ or SERIALIZABLE."),
				 errhint("Claim with wait in a READ COMMITTED transaction, or claim without wait.")));
	deadline = DatumGetTimestampTz(
		DirectFunctionCall2(timestamptz_pl_interval,
							TimestampTzGetDatum(GetCurrentTimestamp()),
							PointerGetDatum(wait)));
	alone = claim_is_statement(fcinfo);
	attempt_cxt = AllocSetContextCreate(CurrentMemoryContext, "outbox claim attempt",
										ALLOCSET_DEFAULT_SIZES);
	set_entry(name);
	PG_TRY();
	{
		for (;;)
		{
			TimestampTz now;
			long		secs;
			int			usecs;
			long		timeout;

			/* before the attempt: a wake-up during it is not lost */
			ResetLatch(MyLatch);
			got = attempt_in_subxact(fcinfo, attempt, arg, attempt_cxt);
			if (got > 0)
				break;
			now = GetCurrentTimestamp();
			if (now >= deadline)
				break;
			TimestampDifference(now, deadline, &secs, &usecs);
			timeout = Min(secs * 1000L + (usecs + 999) / 1000, (long) outbox_naptime);
			if (alone)
				withdraw_xmin();
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Max(timeout, 1L), PG_WAIT_EXTENSION);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_FINALLY();
	{
		clear_entry();
	}
	PG_END_TRY();
	MemoryContextDelete(attempt_cxt);
	return got;
}
