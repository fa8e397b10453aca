/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The per-database outbox worker: its life and its loop.
 *
 * Each round does, each in a transaction of its own: the wake-up
 * notifications for commits that made deliveries ready (first, because
 * consumers are waiting for them), lease expiry, notifications for
 * deliveries that came due, and maintenance (folding, retention).  Then it
 * sleeps on its latch until woken by a commit, until the next lease or
 * delivery falls due, or for outbox.naptime at most.
 *
 * An error in a round is logged and the round is tried again after a
 * growing pause; the worker does not die for it.  It exits when the
 * extension is dropped, and is then started again only by the launcher.
 *
 *-------------------------------------------------------------------------
 */
#include "shmem.h"
#include "maintain.h"
#include "tally.h"

#include "access/xact.h"
#include "access/htup_details.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

int			outbox_naptime = 1000;
int			outbox_retention = 7 * 24 * 3600;

/* the longest pause after repeated errors */
#define MAX_ERROR_PAUSE_MS (60 * 1000)
/* how long wake-ups gather after a round that sent notifications */
#define WAKE_GATHER_MS 1
/* the longest an idle worker goes without a round */
#define IDLE_ROUND_MS (5 * 60 * 1000)

static OutboxDbSlot *my_slot = NULL;

static bool clean_exit = false;

static void
worker_detach(int code, Datum arg)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
	if (my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
		if (clean_exit)
			my_slot->failures = 0;
		else
		{
			/* let the launcher wait longer each time before a restart */
			my_slot->failures = Min(my_slot->failures + 1, 10);
			my_slot->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															Min(1000 << my_slot->failures,
																MAX_ERROR_PAUSE_MS));
		}
	}
	LWLockRelease(outbox_shared->lock);
	if (outbox_shared->launcher_latch != NULL)
		SetLatch(outbox_shared->launcher_latch);
}

/*
 * Take this database's slot, if there is one to take (every slot may serve
 * another database).  Caller holds no lock.
 */
static void
take_slot(void)
{
	OutboxDbSlot *slot;

	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
	slot = outbox_slot_get(MyDatabaseId);
	if (slot != NULL && slot->pid != 0 && slot->pid != MyProcPid)
		slot = NULL;			/* can't happen: we hold the database's lock */
	if (slot != NULL)
	{
		slot->pid = MyProcPid;
		slot->latch = MyLatch;
		slot->no_extension = false;
	}
	my_slot = slot;
	LWLockRelease(outbox_shared->lock);
	outbox_notify_attach(my_slot);
}

/*
 * Claim this database: its lock, and its slot if there is one.  Returns
 * false if another worker runs here.
 */
static bool
attach(void)
{
	LOCKTAG		tag;

	/* one worker per database, with or without a launcher */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, 0x4f44);
	if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		return false;

	if (outbox_shared == NULL)
		return true;
	take_slot();
	on_shmem_exit(worker_detach, 0);
	return true;
}

/* Tell the launcher this database has no outbox, and leave. */
static void
exit_no_extension(void)
{
	if (my_slot != NULL)
	{
		LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
		my_slot->no_extension = true;
		my_slot->has_extension = false;
		my_slot->checked_at = GetCurrentTimestamp();
		LWLockRelease(outbox_shared->lock);
	}
	clean_exit = true;
	proc_exit(0);
}

/*
 * Tell the launcher this database has outbox: should the worker die and no
 * background worker process be free for its restart, the log says so.
 */
static void
mark_has_extension(void)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
	my_slot->has_extension = true;
	LWLockRelease(outbox_shared->lock);
}

/* this worker's database, for the log */
static char dbname[NAMEDATALEN] = "";

static void
extension_present_unit(void *arg)
{
	bool		present;
	HeapTuple	tup;

	present = OidIsValid(get_extension_oid("outbox", true));
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(MyDatabaseId));
	if (HeapTupleIsValid(tup))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datistemplate || !db->datallowconn)
			present = false;
		strlcpy(dbname, NameStr(db->datname), sizeof(dbname));
		ReleaseSysCache(tup);
	}
	*(bool *) arg = present;
}

/*
 * Should this worker go on?  Not once the extension is dropped, nor when
 * its database became a template or stopped allowing connections (the
 * worker would keep it from being copied).  If the lookup itself fails,
 * the worker goes on, and looks again next round.
 */
static bool
extension_present(void)
{
	bool		present = true;

	(void) outbox_unit("outbox: check the extension", OUTBOX_UNIT_BARE,
					   extension_present_unit, &present);
	return present;
}

/*
 * One round of work.  A wake-up by commits only notifies; leases, due
 * deliveries and maintenance wait for their time (timed), so that a busy
 * stream of commits does not make the worker redo them after every one.
 * Sets *next to when the timed work is due next.  Returns false if the
 * notifications failed (the rest of the round contains its own errors).
 */
static bool
round_of_work(const OutboxBits *wake_bits, bool timed, uint32 activity,
			  TimestampTz *next, bool *quiet)
{
	TimestampTz timer;

	*quiet = false;
	if (timed)
		outbox_round_begin();
	if (!outbox_notify_round(wake_bits, timed, next))
		return false;
	if (!timed)
		return true;
	outbox_maintain(my_slot, activity);

	/*
	 * Idle (issue 9): nothing written, nothing left to retry.  Then nothing
	 * changes until a known time (a lease, a delivery or a bucket falling
	 * due, a generation to start) or until a transaction writes outbox rows
	 * (the slot's activity count), so the worker sleeps until then, waking
	 * each naptime only to look at the count.  A round at least every
	 * IDLE_ROUND_MS all the same, as a safety net.
	 */
	if (my_slot != NULL && outbox_round_quiet(&timer))
	{
		*quiet = true;
		*next = outbox_earliest(outbox_earliest(*next, timer),
								TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															IDLE_ROUND_MS));
		return true;
	}
	*next = outbox_earliest(*next, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															   outbox_naptime));
	return true;
}

void
outbox_worker_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	int			error_pause = 0;
	TimestampTz paused_until = 0;
	MemoryContext round_cxt;
	TimestampTz next_timed = 0;
	bool		idle = false;	/* the last timed round left nothing to do */
	uint32		activity_seen = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("outbox worker");

	/* nothing a user creates may change what our queries mean */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The maintenance queries are short but their estimates are not (views
	 * over partitions, per-row subplans): with JIT they paid hundreds of
	 * milliseconds of compilation a round, and notifications waited.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker's own commits need not wait for their WAL flush: all it
	 * writes is redone from what consumers and producers committed (a lost
	 * advance or fold leaves a chain behind, a lost lease expiry expires
	 * again), a crash loses only a suffix of WAL, and any transaction that
	 * acted on one of its commits flushes it with its own.  A TRUNCATE
	 * still flushes (PostgreSQL forces it for dropped files).  With 1,000
	 * subscriptions the flushes of its advances were 8 % of its time, and
	 * notifications waited behind them.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	if (!attach())
	{
		clean_exit = true;
		proc_exit(0);
	}
	if (!extension_present())
		exit_no_extension();
	mark_has_extension();

	ereport(LOG, (errmsg("outbox worker started for database \"%s\"", dbname)));
	if (outbox_shared != NULL && my_slot == NULL)
		ereport(LOG,
				(errmsg("outbox worker for database \"%s\" has no slot: all %d serve other databases",
						dbname, outbox_shared->nslots),
				 errdetail("It is not woken by commits; it looks for work every outbox.naptime."),
				 errhint("Raise outbox.max_databases.")));

	round_cxt = AllocSetContextCreate(TopMemoryContext, "outbox worker round",
									  ALLOCSET_DEFAULT_SIZES);
	/* wake-ups of commits before a crash or restart were lost: look at all */
	outbox_wake_again_all();

	/*
	 * Every piece of work runs as a unit (outbox_unit), which contains its
	 * own errors: nothing here needs to catch any.
	 */
	for (;;)
	{
		long		timeout;
		OutboxBits	wake_bits;
		bool		woken;
		bool		timed;
		bool		round_quiet;
		TimestampTz now;
		TimestampTz next;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* an idle worker's times were reckoned with the old settings */
			if (idle)
				next_timed = 0;
		}

		/*
		 * Without a slot, take one as soon as one is free: until then no
		 * commit can wake this worker, and the launcher would start another.
		 */
		if (outbox_shared != NULL && my_slot == NULL)
		{
			take_slot();
			if (my_slot != NULL)
			{
				mark_has_extension();
				ereport(LOG, (errmsg("outbox worker for database \"%s\" now has a slot", dbname)));
				/* commits while it had none woke nobody */
				outbox_wake_again_all();
			}
		}

		now = GetCurrentTimestamp();
		if (now >= paused_until)
		{
			uint32		activity = 0;

			/* before the bits and the round: what commits after, it misses */
			if (my_slot != NULL)
				activity = pg_atomic_read_u32(&my_slot->activity);
			woken = outbox_take_wake_bits(&wake_bits);
			timed = next_timed == 0 || now >= next_timed ||
				(idle && (activity != activity_seen || woken));
			if (!timed && !woken)
			{
				/* idle: no transaction at all; what the last round counted */
				pgstat_report_stat(false);
				goto nap;
			}

			if (timed && !extension_present())
			{
				ereport(LOG, (errmsg("outbox worker stopping: database \"%s\" no longer has the extension, or is a template or closed to connections",
									 dbname)));
				exit_no_extension();
			}

			/* a bound on enqueue times by xid, for stats (tally.c) */
			outbox_tally_sample();
			MemoryContextSwitchTo(round_cxt);
			if (round_of_work(&wake_bits, timed, activity, &next, &round_quiet))
			{
				error_pause = 0;
				if (timed)
				{
					next_timed = next;
					idle = round_quiet;
					activity_seen = activity;
				}

				/*
				 * Under a stream of commits, let a millisecond's worth
				 * gather before the next round: one notification then
				 * serves them all, and the worker takes little CPU from the
				 * producers.
				 */
				if (woken)
					(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
									 WAKE_GATHER_MS, PG_WAIT_EXTENSION);
			}
			else
			{
				/* logged; the bits are back; try again after a growing pause */
				error_pause = error_pause == 0 ? 1000 : Min(error_pause * 2, MAX_ERROR_PAUSE_MS);
				paused_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), error_pause);
				next_timed = paused_until;
				idle = false;
			}
			MemoryContextSwitchTo(TopMemoryContext);
			MemoryContextReset(round_cxt);
			pgstat_report_activity(STATE_IDLE, NULL);
			/* what its units did (dead rows for autovacuum among them) */
			pgstat_report_stat(false);
		}

nap:
		/* until the timed work is due, or a commit wakes us; while paused, the pause */
		timeout = outbox_naptime;
		if (next_timed != 0)
		{
			long		until = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_timed);

			timeout = Min(timeout, Max(until, 1));
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
