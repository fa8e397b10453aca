/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The outbox launcher: keeps one worker per database that has the
 *		extension, and outbox.start_worker() for when there is no launcher.
 *
 * With shared_preload_libraries = 'outbox' the postmaster starts the
 * launcher, connected to no database.  It reads pg_database and starts a
 * worker for every database that allows connections and is not a
 * template.  A worker that finds no extension in its database says so in
 * its slot and exits; the launcher looks again only rarely, or at once
 * when CREATE EXTENSION outbox commits there.  Workers never restart
 * themselves: the launcher restarts one that died, after a growing delay
 * if it keeps failing, and never into a database that is gone or being
 * dropped.
 *
 * DROP DATABASE refuses while the worker is connected, so a utility hook
 * marks the database as being dropped and stops its worker first.
 *
 *-------------------------------------------------------------------------
 */
#include "shmem.h"
#include "maintain.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/pg_database.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_namespace.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "utils/acl.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(outbox_start_worker);
PG_FUNCTION_INFO_V1(outbox_worker_on_create);

/*
 * How often the launcher looks again at databases whose worker found no
 * outbox.  CREATE EXTENSION tells the launcher at once, so this only
 * catches what that could not (an extension restored by other means).
 */
#define RECHECK_NO_EXTENSION_MS	(10 * 60 * 1000)
/* the longest a database being dropped or copied goes without a worker */
#define PAUSE_MS				(10 * 1000)
/* workers being started at once: a probe of a database is quick */
#define MAX_STARTING			2
/* how often the log repeats that a worker could not start for want of a process */
#define NO_PROCESS_LOG_MS		(5 * 60 * 1000)

static ProcessUtility_hook_type prev_utility_hook = NULL;

/*
 * Register the launcher; from _PG_init under shared_preload_libraries.
 */
void
outbox_launcher_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "outbox_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "outbox launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "outbox launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * Ask the postmaster for a worker in a database.  With wait, wait until it
 * has started (or failed to).  Returns whether it was registered.
 */
static bool
register_worker(Oid dboid, bool notify_me, BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "outbox_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "outbox worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "outbox worker");
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = notify_me ? MyProcPid : 0;
	return RegisterDynamicBackgroundWorker(&worker, handle);
}

bool
outbox_start_worker_for(Oid dboid, bool wait)
{
	BackgroundWorkerHandle *handle = NULL;
	pid_t		pid;

	if (!register_worker(dboid, wait, wait ? &handle : NULL))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start an outbox worker"),
				 errhint("Raise max_worker_processes.")));
	if (wait && WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
		return false;
	return true;
}

/* Is an outbox worker connected to this database? */
static bool
worker_running_here(void)
{
	bool		running = false;
	int			ret;

	SPI_connect();
	ret = SPI_execute("SELECT 1 FROM pg_catalog.pg_stat_activity"
					  " WHERE backend_type OPERATOR(pg_catalog.=) 'outbox worker'"
					  " AND datid OPERATOR(pg_catalog.=) "
					  "(SELECT oid FROM pg_catalog.pg_database"
					  "  WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())",
					  true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_stat_activity lookup failed");
	running = SPI_processed > 0;
	SPI_finish();
	return running;
}

/*
 * outbox.start_worker() RETURNS boolean: start this database's worker if
 * none runs; true if this call started one.
 */
Datum
outbox_start_worker(PG_FUNCTION_ARGS)
{
	LOCKTAG		tag;

	/*
	 * A standby starts no worker before promotion (the launcher serves it
	 * then): waiting for this one would wait for ever.
	 */
	PreventCommandDuringRecovery("outbox.start_worker()");
	/* one caller at a time per database decides */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, 0x4f43);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	if (worker_running_here())
		PG_RETURN_BOOL(false);
	if (outbox_shared != NULL)
	{
		OutboxDbSlot *slot;

		LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
		slot = outbox_slot_get(MyDatabaseId);
		if (slot != NULL)
		{
			slot->no_extension = false;
			slot->has_extension = true;
			slot->failures = 0;
			slot->retry_at = 0;
		}
		LWLockRelease(outbox_shared->lock);
	}
	PG_RETURN_BOOL(outbox_start_worker_for(MyDatabaseId, true));
}

/* After CREATE EXTENSION outbox commits: get this database a worker. */
static void
create_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT)
	{
		if (outbox_shared != NULL)
		{
			OutboxDbSlot *slot;
			Latch	   *latch;

			LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
			slot = outbox_slot_get(MyDatabaseId);
			if (slot != NULL)
			{
				slot->no_extension = false;
				slot->has_extension = true;
				slot->failures = 0;
				slot->retry_at = 0;
			}
			else
			{
				/*
				 * No slot free: the launcher must at least stop believing
				 * this database has no outbox, to say it cannot serve it.
				 */
				outbox_shared->forget_no_extension = true;
			}
			latch = outbox_shared->launcher_latch;
			LWLockRelease(outbox_shared->lock);
			if (latch != NULL)
				SetLatch(latch);
		}
		else
		{
			/* no launcher: a worker of its own, if the postmaster has room */
			if (!register_worker(MyDatabaseId, false, NULL))
				ereport(WARNING,
						(errmsg("could not start an outbox worker"),
						 errhint("Raise max_worker_processes, then call outbox.start_worker().")));
		}
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE)
		UnregisterXactCallback(create_xact_callback, NULL);
}

/*
 * outbox._worker_on_create(): called by the install script.
 */
Datum
outbox_worker_on_create(PG_FUNCTION_ARGS)
{
	RegisterXactCallback(create_xact_callback, NULL);
	PG_RETURN_VOID();
}

/*
 * Keep the launcher away from a database for a moment and stop its worker,
 * so that a DROP DATABASE, or a CREATE DATABASE copying it, does not find
 * it connected.  Only for a command that can succeed: outside a
 * transaction block, by a role that owns the database (and, for a copy,
 * may create databases); anyone else would just stop a worker.
 */
static Oid
pause_worker(const char *dbname, bool for_copy)
{
	Oid			dboid;
	OutboxDbSlot *slot;
	pid_t		pid = 0;
	int			i;

	if (outbox_shared == NULL || IsTransactionBlock())
		return InvalidOid;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid))
		return InvalidOid;
	if (!pg_database_ownercheck(dboid, GetUserId()) ||
		(for_copy && !have_createdb_privilege()))
		return InvalidOid;

	/* a slot even without the extension: the launcher must not probe it */
	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
	slot = outbox_slot_get(dboid);
	if (slot != NULL)
	{
		slot->dropping_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   PAUSE_MS);
		pid = slot->pid;
	}
	LWLockRelease(outbox_shared->lock);
	if (pid == 0)
		return dboid;
	kill(pid, SIGTERM);
	/* the command itself waits up to 5 s for others to go; wait as long */
	for (i = 0; i < 500; i++)
	{
		bool		gone;

		LWLockAcquire(outbox_shared->lock, LW_SHARED);
		slot = outbox_slot_find(dboid);
		gone = slot == NULL || slot->pid != pid;
		LWLockRelease(outbox_shared->lock);
		if (gone)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	return dboid;
}

/* The command is over (or failed): the launcher may start the worker again. */
static void
resume_worker(Oid dboid)
{
	OutboxDbSlot *slot;
	Latch	   *latch = NULL;

	if (!OidIsValid(dboid) || outbox_shared == NULL)
		return;
	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
	slot = outbox_slot_find(dboid);
	if (slot != NULL)
		slot->dropping_until = 0;
	latch = outbox_shared->launcher_latch;
	LWLockRelease(outbox_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/* the template a CREATE DATABASE copies, if it names one */
static const char *
createdb_template(CreatedbStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		DefElem    *opt = lfirst(lc);

		if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

/* Does this statement drop the extension outbox? */
static bool
drops_outbox(Node *stmt)
{
	ListCell   *lc;

	if (!IsA(stmt, DropStmt) || ((DropStmt *) stmt)->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, ((DropStmt *) stmt)->objects)
		if (strcmp(strVal(lfirst(lc)), "outbox") == 0)
			return true;
	return false;
}

/*
 * After DROP EXTENSION outbox: drop the schema outbox too, if nothing is
 * left in it and the user owns it.  PostgreSQL creates the schema named in
 * the control file for the extension but does not make it a member, so
 * DROP EXTENSION leaves it behind; making it a member is not possible while
 * it is the extension's own schema, and pg_dump could not restore it then.
 * Anything else in it (or privileges on it only) is a reason to keep it:
 * no error, the drop of the extension stands.
 */
static void
drop_empty_schema(void)
{
	Oid			nsp = get_namespace_oid("outbox", true);
	Relation	rel;
	ScanKeyData key[2];
	SysScanDesc scan;
	bool		empty;
	ObjectAddress addr;

	if (!OidIsValid(nsp) || OidIsValid(get_extension_oid("outbox", true)) ||
		!pg_namespace_ownercheck(nsp, GetUserId()))
		return;
	CommandCounterIncrement();
	rel = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(NamespaceRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(nsp));
	scan = systable_beginscan(rel, DependReferenceIndexId, true, NULL, 2, key);
	empty = !HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (!empty)
		return;
	ObjectAddressSet(addr, NamespaceRelationId, nsp);
	performDeletion(&addr, DROP_RESTRICT, 0);
}

static void
outbox_utility_hook(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	volatile Oid paused = InvalidOid;
	Node	   *stmt = pstmt->utilityStmt;

	/*
	 * Only a DROP that removes the extension leaves its schema behind: a
	 * DROP EXTENSION IF EXISTS without one (pg_upgrade's restore runs it
	 * right after creating the schema) must leave the schema alone.
	 */
	bool		drops = drops_outbox(stmt) &&
		OidIsValid(get_extension_oid("outbox", true));

	if (IsA(stmt, DropdbStmt))
		paused = pause_worker(((DropdbStmt *) stmt)->dbname, false);
	else if (IsA(stmt, CreatedbStmt) && createdb_template((CreatedbStmt *) stmt))
		paused = pause_worker(createdb_template((CreatedbStmt *) stmt), true);

	PG_TRY();
	{
		if (prev_utility_hook)
			prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
							  queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		resume_worker(paused);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/*
	 * After a copy the worker may come back.  After a drop it must not: the
	 * pause lasts until the drop has committed and the launcher no longer
	 * sees the database.
	 */
	if (IsA(stmt, CreatedbStmt))
		resume_worker(paused);
	if (drops)
		drop_empty_schema();
}

void
outbox_launcher_init(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = outbox_utility_hook;
}

/* handles of the workers this launcher started, by slot */
static BackgroundWorkerHandle **handles;

/*
 * Databases whose worker found no outbox, and when.  Slots are for the
 * databases that have the extension: one without it gives its slot back
 * once its probe is over, and is remembered here (by this launcher only)
 * until it is looked at again.
 */
typedef struct NoExtensionDb
{
	Oid			dboid;			/* hash key */
	TimestampTz checked_at;
} NoExtensionDb;

static HTAB *no_extension_dbs = NULL;

/* databases the log was told have no slot (until a worker serves them) */
static HTAB *told_no_slot = NULL;

/* when the log last said databases could not be looked at, for want of a process */
static TimestampTz unprobed_logged_at = 0;

/*
 * How many background worker processes outbox needs, for the log: the
 * launcher, MAX_STARTING for probes, and one per database with outbox (of
 * which only those known so far are counted).
 */
static int
no_process_detail(int nknown)
{
	return errdetail("outbox needs max_worker_processes of at least %d here: 1 for the launcher, %d to look for the extension in databases, and 1 for each of the %d databases known to have outbox; other background workers (parallel queries, logical replication) take theirs from the same %d.",
					 1 + MAX_STARTING + nknown, MAX_STARTING, nknown,
					 max_worker_processes);
}

/*
 * One pass: forget dropped databases, notice workers that stopped, take
 * back the slots of databases without the extension, start the workers
 * that are missing.
 */
static void
launcher_pass_unit(void *arg)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	Oid		   *dbs;
	int			ndbs = 0;
	int			maxdbs = 256;
	int			nstarting = 0;
	int			i;
	TimestampTz now = GetCurrentTimestamp();
	List	   *unserved = NIL;
	ListCell   *lc;
	HASH_SEQ_STATUS seq;
	NoExtensionDb *ne;
	List	   *no_process = NIL;
	int			unprobed = 0;
	int			nknown = 0;

	/* every database there is, however many */
	dbs = palloc(sizeof(Oid) * maxdbs);
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (!db->datallowconn || db->datistemplate)
			continue;
		if (ndbs == maxdbs)
		{
			maxdbs *= 2;
			dbs = repalloc(dbs, sizeof(Oid) * maxdbs);
		}
		dbs[ndbs++] = db->oid;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	qsort(dbs, ndbs, sizeof(Oid), oid_cmp);

	/* forget databases without the extension that are gone */
	hash_seq_init(&seq, no_extension_dbs);
	while ((ne = hash_seq_search(&seq)) != NULL)
		if (bsearch(&ne->dboid, dbs, ndbs, sizeof(Oid), oid_cmp) == NULL)
			(void) hash_search(no_extension_dbs, &ne->dboid, HASH_REMOVE, NULL);
	hash_seq_init(&seq, told_no_slot);
	while ((ne = hash_seq_search(&seq)) != NULL)
		if (bsearch(&ne->dboid, dbs, ndbs, sizeof(Oid), oid_cmp) == NULL)
			(void) hash_search(told_no_slot, &ne->dboid, HASH_REMOVE, NULL);

	/* released by the transaction's end if anything below fails */
	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);

	/* a CREATE EXTENSION found no slot: look at every database again */
	if (outbox_shared->forget_no_extension)
	{
		outbox_shared->forget_no_extension = false;
		hash_seq_init(&seq, no_extension_dbs);
		while ((ne = hash_seq_search(&seq)) != NULL)
			(void) hash_search(no_extension_dbs, &ne->dboid, HASH_REMOVE, NULL);
	}

	/* workers that stopped */
	for (i = 0; i < outbox_shared->nslots; i++)
	{
		pid_t		pid;

		if (handles[i] == NULL)
			continue;
		if (GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
			continue;
		pfree(handles[i]);
		handles[i] = NULL;
	}

	/*
	 * Slots of databases that are gone, and of databases whose worker found
	 * no outbox: those are remembered here instead.
	 */
	for (i = 0; i < outbox_shared->nslots; i++)
	{
		OutboxDbSlot *slot = &outbox_shared->slots[i];

		if (slot->dboid == InvalidOid || slot->pid != 0 || handles[i] != NULL)
			continue;
		if (bsearch(&slot->dboid, dbs, ndbs, sizeof(Oid), oid_cmp) == NULL)
			slot->dboid = InvalidOid;
		else if (slot->no_extension && slot->dropping_until <= now)
		{
			ne = hash_search(no_extension_dbs, &slot->dboid, HASH_ENTER, NULL);
			ne->checked_at = slot->checked_at;
			slot->dboid = InvalidOid;
		}
	}

	for (i = 0; i < outbox_shared->nslots; i++)
	{
		/* asked for, not started yet */
		if (handles[i] != NULL && outbox_shared->slots[i].pid == 0)
			nstarting++;
		if (outbox_shared->slots[i].pid != 0)
		{
			(void) hash_search(told_no_slot, &outbox_shared->slots[i].dboid, HASH_REMOVE, NULL);
			/* served: a later shortage is news again */
			outbox_shared->slots[i].no_worker_logged_at = 0;
		}
	}

	for (i = 0; i < ndbs && nstarting < MAX_STARTING; i++)
	{
		OutboxDbSlot *slot = outbox_slot_find(dbs[i]);
		int			n;
		bool		registered;
		MemoryContext old;

		if (slot == NULL)
		{
			/* no outbox there when last looked at: not yet again */
			ne = hash_search(no_extension_dbs, &dbs[i], HASH_FIND, NULL);
			if (ne != NULL &&
				!TimestampDifferenceExceeds(ne->checked_at, now, RECHECK_NO_EXTENSION_MS))
				continue;
			slot = outbox_slot_get(dbs[i]);
			if (slot == NULL)
			{
				/* every slot serves a database with the extension */
				if (hash_search(told_no_slot, &dbs[i], HASH_FIND, NULL) == NULL)
					unserved = lappend_oid(unserved, dbs[i]);
				continue;
			}
			if (ne != NULL)
				(void) hash_search(no_extension_dbs, &dbs[i], HASH_REMOVE, NULL);
		}
		n = slot - outbox_shared->slots;
		if (slot->pid != 0 || handles[n] != NULL)
			continue;
		if (slot->dropping_until > now || slot->retry_at > now)
			continue;
		/* the handle outlives this transaction */
		old = MemoryContextSwitchTo(TopMemoryContext);
		registered = register_worker(slot->dboid, true, &handles[n]);
		MemoryContextSwitchTo(old);
		if (registered)
			nstarting++;
		else
		{
			/*
			 * Every background worker process is taken.  Tried again in a
			 * second, so that the worker comes soon after one is free; but
			 * said only for a database known to have outbox, and again only
			 * every few minutes.  Databases not looked at yet are counted.
			 */
			handles[n] = NULL;
			slot->retry_at = TimestampTzPlusMilliseconds(now, 1000);
			if (!slot->has_extension)
				unprobed++;
			else if (slot->no_worker_logged_at == 0 ||
					 TimestampDifferenceExceeds(slot->no_worker_logged_at, now,
												NO_PROCESS_LOG_MS))
			{
				slot->no_worker_logged_at = now;
				no_process = lappend_oid(no_process, slot->dboid);
			}
		}
	}
	for (i = 0; i < outbox_shared->nslots; i++)
		if (outbox_shared->slots[i].dboid != InvalidOid &&
			outbox_shared->slots[i].has_extension)
			nknown++;
	LWLockRelease(outbox_shared->lock);

	foreach(lc, no_process)
		ereport(LOG,
				(errmsg("outbox launcher could not start a worker for database \"%s\": no background worker process is free",
						get_database_name(lfirst_oid(lc))),
				 no_process_detail(nknown),
				 errhint("Raise max_worker_processes (a restart is needed). This is logged again every %d minutes while the database has no worker.",
						 NO_PROCESS_LOG_MS / 60000)));
	if (unprobed > 0 &&
		(unprobed_logged_at == 0 ||
		 TimestampDifferenceExceeds(unprobed_logged_at, now, NO_PROCESS_LOG_MS)))
	{
		unprobed_logged_at = now;
		ereport(LOG,
				(errmsg("outbox launcher could not start a worker to look for the extension in %d databases: no background worker process is free",
						unprobed),
				 no_process_detail(nknown),
				 errhint("Raise max_worker_processes (a restart is needed). This is logged again every %d minutes while databases are not looked at.",
						 NO_PROCESS_LOG_MS / 60000)));
	}

	/* said once per database, until a worker serves it */
	foreach(lc, unserved)
	{
		Oid			dboid = lfirst_oid(lc);

		(void) hash_search(told_no_slot, &dboid, HASH_ENTER, NULL);
		ereport(LOG,
				(errmsg("outbox launcher has no slot for database \"%s\": all %d serve databases with the extension",
						get_database_name(dboid), outbox_shared->nslots),
				 errdetail("It is not served (nor looked at, if it has no outbox) until a slot is free."),
				 errhint("Raise outbox.max_databases.")));
	}
}

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
	if (outbox_shared->launcher_pid == MyProcPid)
	{
		outbox_shared->launcher_pid = 0;
		outbox_shared->launcher_latch = NULL;
	}
	LWLockRelease(outbox_shared->lock);
}

void
outbox_launcher_main(Datum arg)
{
	HASHCTL		ctl;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	if (outbox_shared == NULL)
		elog(FATAL, "outbox launcher started without outbox in shared_preload_libraries");

	handles = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(BackgroundWorkerHandle *) * outbox_shared->nslots);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(NoExtensionDb);
	no_extension_dbs = hash_create("outbox databases without the extension", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS);
	told_no_slot = hash_create("outbox databases without a slot", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS);

	/*
	 * What this launcher has asked for is known by its handles alone, which
	 * live and die with it: a launcher that died between asking for a
	 * worker and seeing it start leaves nothing behind that would keep its
	 * successor from asking again (1.0 kept a "starting" mark in shared
	 * memory, which only the launcher that set it could clear).  A worker
	 * it did start claims its slot itself, and a second one in the same
	 * database leaves at once.
	 */
	LWLockAcquire(outbox_shared->lock, LW_EXCLUSIVE);
	outbox_shared->launcher_pid = MyProcPid;
	outbox_shared->launcher_latch = MyLatch;
	LWLockRelease(outbox_shared->lock);
	on_shmem_exit(launcher_detach, 0);

	ereport(LOG, (errmsg("outbox launcher started")));

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* an error here is logged (outbox_unit); the launcher carries on */
		(void) outbox_unit("outbox launcher", OUTBOX_UNIT_BARE, launcher_pass_unit, NULL);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(outbox_naptime, 5000), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
