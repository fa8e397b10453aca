/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared state of the launcher and the per-database workers, and the
 *		after-commit wake-up that producers send to their database's worker.
 *
 * It exists only with shared_preload_libraries = 'outbox'.  Without it
 * outbox_shared is NULL: there is no launcher, and workers poll at
 * outbox.naptime instead of being woken.
 *
 * One LWLock guards the slot table.  The wake-up path does not take it: a
 * committing backend remembers its database's slot, checks it still
 * belongs to its database, ORs its topics into the slot's atomic bitmap
 * and sets the worker's latch.  A wake-up that races with a worker's
 * restart is at worst late by one naptime.  A prepared transaction's
 * wake-up is sent by the session that runs COMMIT PREPARED.
 *
 *-------------------------------------------------------------------------
 */
#include "shmem.h"

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(outbox_wake_sql);

OutboxShared *outbox_shared = NULL;

/* outbox.max_databases: slots, for databases that have the extension */
int			outbox_max_databases = 128;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_utility_hook = NULL;

/* topics this transaction made ready, as bits (see outbox_wake_add_topic) */
static OutboxBits pending_wake;
static bool pending_wake_any = false;
static bool pending_subs_change = false;
static bool pending_activity = false;
/* the earliest end of the slice leases it took, by bucket; 0: none */
static uint64 pending_lease[OUTBOX_LEASE_BUCKETS];
static bool pending_lease_any = false;
static int	my_slot = -1;

static Size
shared_size(void)
{
	return add_size(offsetof(OutboxShared, slots),
					mul_size(sizeof(OutboxDbSlot), outbox_max_databases));
}

static void
outbox_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestAddinShmemSpace(outbox_waiters_size());
	RequestNamedLWLockTranche("outbox", 1);
}

static void
outbox_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	outbox_shared = ShmemInitStruct("outbox", shared_size(), &found);
	if (!found)
	{
		int			i;

		memset(outbox_shared, 0, shared_size());
		outbox_shared->lock = &(GetNamedLWLockTranche("outbox"))->lock;
		outbox_shared->nslots = outbox_max_databases;
		for (i = 0; i < outbox_shared->nslots; i++)
		{
			for (int w = 0; w < OUTBOX_BITS_WORDS; w++)
				pg_atomic_init_u64(&outbox_shared->slots[i].wake[w], 0);
			pg_atomic_init_u32(&outbox_shared->slots[i].subs_changes, 0);
			pg_atomic_init_u32(&outbox_shared->slots[i].activity, 0);
			for (int t = 0; t < OUTBOX_TOPIC_XIDS; t++)
				pg_atomic_init_u64(&outbox_shared->slots[i].topic_xid[t], 0);
			for (int b = 0; b < OUTBOX_LEASE_BUCKETS; b++)
				pg_atomic_init_u64(&outbox_shared->slots[i].lease_due[b], 0);
		}
	}
	outbox_waiters_startup();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Called from _PG_init while shared_preload_libraries is being processed.
 */
void
outbox_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = outbox_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = outbox_shmem_startup;
}

/*
 * The slot of a database, or NULL.  Caller holds the lock.
 */
OutboxDbSlot *
outbox_slot_find(Oid dboid)
{
	int			i;

	for (i = 0; i < outbox_shared->nslots; i++)
		if (outbox_shared->slots[i].dboid == dboid)
			return &outbox_shared->slots[i];
	return NULL;
}

/*
 * The slot of a database, made if needed; NULL if the table is full.
 * Caller holds the lock exclusively.
 */
OutboxDbSlot *
outbox_slot_get(Oid dboid)
{
	OutboxDbSlot *slot = outbox_slot_find(dboid);
	int			i;

	if (slot != NULL)
		return slot;
	for (i = 0; i < outbox_shared->nslots; i++)
	{
		slot = &outbox_shared->slots[i];
		if (slot->dboid == InvalidOid)
		{
			memset(slot, 0, offsetof(OutboxDbSlot, wake));
			slot->dboid = dboid;
			for (int w = 0; w < OUTBOX_BITS_WORDS; w++)
				pg_atomic_write_u64(&slot->wake[w], 0);
			pg_atomic_write_u32(&slot->activity, 0);
			for (int t = 0; t < OUTBOX_TOPIC_XIDS; t++)
				pg_atomic_write_u64(&slot->topic_xid[t], 0);
			/* a new worker looks at every subscription's leases */
			for (int b = 0; b < OUTBOX_LEASE_BUCKETS; b++)
				pg_atomic_write_u64(&slot->lease_due[b], 0);

			/*
			 * After the slot can be found: a transaction that looked for it
			 * before has its xid already (outbox_topic_enqueued), so it is
			 * below this.
			 */
			slot->topics_tracked_from = ReadNextFullTransactionId();
			return slot;
		}
	}
	return NULL;
}

/*
 * The hash of a topic's bytes: its wake-up bit and its entry of topic_xid
 * are taken from it.
 */
uint32
outbox_topic_hash(const char *topic, size_t len)
{
	return hash_bytes((const unsigned char *) topic, len);
}

/* Set the bit of a topic in a wake-up bitmap. */
void
outbox_wake_add_topic(OutboxBits *bits, const char *topic)
{
	outbox_bits_add(bits, outbox_topic_hash(topic, strlen(topic)));
}

/* OR a set of bits into shared ones; only the words that have any. */
void
outbox_bits_publish(pg_atomic_uint64 *shared, const OutboxBits *b)
{
	for (int w = 0; w < OUTBOX_BITS_WORDS; w++)
		if (b->w[w] != 0)
			pg_atomic_fetch_or_u64(&shared[w], b->w[w]);
}

/*
 * Take shared bits and clear them.  A word is read before it is swapped:
 * most are empty, and an exchange writes.  Returns whether any was set.
 */
bool
outbox_bits_take(pg_atomic_uint64 *shared, OutboxBits *b)
{
	outbox_bits_clear(b);
	for (int w = 0; w < OUTBOX_BITS_WORDS; w++)
		if (pg_atomic_read_u64(&shared[w]) != 0)
			b->w[w] = pg_atomic_exchange_u64(&shared[w], 0);
	return outbox_bits_any(b);
}

/*
 * Note that this transaction's claim leased slices of a subscription until
 * lease_until: when it commits, the worker is told to look at its bucket
 * then.
 */
void
outbox_lease_after_commit(int32 sub_id, TimestampTz lease_until)
{
	int			b = outbox_lease_bucket(sub_id);
	uint64		t = (uint64) Max(lease_until, 1);	/* 0 is none */

	if (pending_lease[b] == 0 || t < pending_lease[b])
		pending_lease[b] = t;
	pending_lease_any = true;
}

/* an atomic min */
static void
lease_publish(pg_atomic_uint64 *p, uint64 t)
{
	uint64		cur = pg_atomic_read_u64(p);

	while (t < cur && !pg_atomic_compare_exchange_u64(p, &cur, t))
		;
}

/*
 * For the worker: take the buckets whose leases are due at "now" (due[b]
 * set, the bucket's time cleared), and return the earliest time of the
 * others (0: none).  A claim that publishes after the take is seen by the
 * next one; what the taker reads afterwards sees every claim published
 * before it.
 */
TimestampTz
outbox_lease_take_due(OutboxDbSlot *slot, TimestampTz now, bool *due)
{
	TimestampTz next = 0;

	for (int b = 0; b < OUTBOX_LEASE_BUCKETS; b++)
	{
		uint64		t = pg_atomic_read_u64(&slot->lease_due[b]);

		due[b] = false;
		if (t == OUTBOX_LEASE_NONE)
			continue;
		if (t <= (uint64) Max(now, 0))
		{
			(void) pg_atomic_exchange_u64(&slot->lease_due[b], OUTBOX_LEASE_NONE);
			due[b] = true;
		}
		else if (next == 0 || (TimestampTz) t < next)
			next = (TimestampTz) t;
	}
	return next;
}

static void
forget_wake(void)
{
	if (pending_lease_any)
		memset(pending_lease, 0, sizeof(pending_lease));
	pending_lease_any = false;
	if (pending_wake_any)
		outbox_bits_clear(&pending_wake);
	pending_wake_any = false;
}

/*
 * Note that this transaction, if it commits, makes deliveries of the
 * topics of these bits ready.
 */
void
outbox_wake_after_commit(const OutboxBits *bits)
{
	outbox_bits_or(&pending_wake, bits);
	pending_wake_any = true;
}

/*
 * This backend's database's slot, or NULL; found once and remembered, and
 * looked up again when it no longer belongs to this database.
 */
static OutboxDbSlot *
my_db_slot(void)
{
	OutboxDbSlot *slot;

	if (outbox_shared == NULL || !OidIsValid(MyDatabaseId))
		return NULL;
	if (my_slot < 0 || outbox_shared->slots[my_slot].dboid != MyDatabaseId)
	{
		LWLockAcquire(outbox_shared->lock, LW_SHARED);
		slot = outbox_slot_find(MyDatabaseId);
		my_slot = slot ? (int) (slot - outbox_shared->slots) : -1;
		LWLockRelease(outbox_shared->lock);
		if (my_slot < 0)
			return NULL;
	}
	return &outbox_shared->slots[my_slot];
}

/* the entries of topic_xid this transaction has published */
static uint64 published[OUTBOX_TOPIC_XIDS / 64];
static FullTransactionId published_xid;

/* ... of the topic of this hash (outbox_topic_hash) */
void
outbox_wake_hash_after_commit(uint32 hash)
{
	outbox_bits_add(&pending_wake, hash);
	pending_wake_any = true;
}

/*
 * An event of this topic is being enqueued: publish now, before the
 * transaction can commit, that its xid enqueued the topic
 * (OUTBOX_TOPIC_XIDS).  Returns the topic's hash, for its wake-up bit.  The xid is assigned before the
 * slot is looked up, so a transaction that finds no slot has an xid below
 * the slot's topics_tracked_from when one is made.  Publishing costs an
 * atomic operation per topic per transaction; a transaction that then
 * rolls back (or a savepoint) only makes a reader look for nothing.
 */
uint32
outbox_topic_enqueued(const char *topic)
{
	uint32		h = outbox_topic_hash(topic, strlen(topic));
	FullTransactionId fxid = GetTopFullTransactionId();
	OutboxDbSlot *slot;
	uint32		e = h % OUTBOX_TOPIC_XIDS;

	if (!FullTransactionIdEquals(fxid, published_xid))
	{
		memset(published, 0, sizeof(published));
		published_xid = fxid;
	}
	if ((published[e / 64] & (UINT64CONST(1) << (e % 64))) != 0)
		return h;
	slot = my_db_slot();
	if (slot != NULL)
	{
		pg_atomic_uint64 *p = &slot->topic_xid[e];
		uint64		cur = pg_atomic_read_u64(p);

		while (cur < U64FromFullTransactionId(fxid))
			if (pg_atomic_compare_exchange_u64(p, &cur, U64FromFullTransactionId(fxid)))
				break;
	}
	published[e / 64] |= UINT64CONST(1) << (e % 64);
	return h;
}

/*
 * Can a transaction that a snapshot with this xmin does not see have
 * events of these topics?  False means certainly not: every transaction
 * that a snapshot taken before this call sees and one with this xmin does
 * not has an xid of at least xmin, and published its topics before it
 * committed.  Unknown (no slot, or one made after xmin: transactions that
 * began before it did not publish) is "maybe".  topics NULL (every topic):
 * maybe.  Under the lock, since a slot may be freed and made again.
 */
bool
outbox_topics_quiet_since(ArrayType *topics, FullTransactionId xmin)
{
	OutboxDbSlot *slot;
	Datum	   *elems;
	int			n;
	bool		quiet;

	if (outbox_shared == NULL || topics == NULL || !OidIsValid(MyDatabaseId))
		return false;

	/*
	 * The slot tracks the server's xids.  Below the floor, xids are a
	 * restored cluster's (restore.c), about which it knows nothing.
	 */
	if (U64FromFullTransactionId(xmin) < outbox_xid_floor())
		return false;
	xmin = FullTransactionIdFromU64(U64FromFullTransactionId(xmin) - outbox_xid_shift());
	deconstruct_array(topics, TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
	LWLockAcquire(outbox_shared->lock, LW_SHARED);
	slot = outbox_slot_find(MyDatabaseId);
	quiet = slot != NULL &&
		FullTransactionIdPrecedesOrEquals(slot->topics_tracked_from, xmin);
	for (int i = 0; quiet && i < n; i++)
	{
		text	   *t = DatumGetTextPP(elems[i]);
		uint32		h = outbox_topic_hash(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));

		if (pg_atomic_read_u64(&slot->topic_xid[h % OUTBOX_TOPIC_XIDS]) >=
			U64FromFullTransactionId(xmin))
			quiet = false;
	}
	LWLockRelease(outbox_shared->lock);
	pfree(elems);
	return quiet;
}

/* ... of every subscription */
void
outbox_wake_all_after_commit(void)
{
	outbox_bits_fill(&pending_wake);
	pending_wake_any = true;
}

/*
 * Note that this transaction changes subscriptions.  The worker caches the
 * list it notifies; it learns of the change from the slot rather than from
 * the relcache invalidation alone, because this transaction's wake-up (sent
 * from the commit callback) can reach it before the invalidation does.
 */
void
outbox_subs_changed_after_commit(void)
{
	pending_subs_change = true;
}

/*
 * Note that this transaction writes rows the worker has timed work for
 * (leases, folds, retries).  When it ends, committed or not, it bumps the
 * slot's activity count: a worker that found nothing to do sleeps until the
 * count moves or a time it knows of comes (issue 9), and looks at the
 * count every outbox.naptime without a transaction.  A rollback counts
 * too: a claim held open and rolled back leaves a hole for a fold.
 */
void
outbox_activity_at_end(void)
{
	pending_activity = true;
}

/*
 * Wake this database's worker with the bits of this transaction.  Called
 * after commit, when what it made ready is visible; after a rollback only
 * to count activity (nothing to wake it for).
 */
static void
wake_worker(bool committed)
{
	OutboxDbSlot *slot;
	Latch	   *latch;

	slot = my_db_slot();
	if (slot == NULL)
		return;
	/* a round that starts after this sees the count moved */
	pg_atomic_fetch_add_u32(&slot->activity, 1);
	if (!committed)
		return;
	/* before the bits: the worker reads this after taking them */
	if (pending_subs_change)
		pg_atomic_fetch_add_u32(&slot->subs_changes, 1);
	if (pending_wake_any)
		outbox_bits_publish(slot->wake, &pending_wake);
	if (pending_lease_any)
		for (int b = 0; b < OUTBOX_LEASE_BUCKETS; b++)
			if (pending_lease[b] != 0)
				lease_publish(&slot->lease_due[b], pending_lease[b]);
	if (!pending_wake_any && !pending_subs_change)
		return;
	latch = slot->latch;
	if (latch != NULL)
		SetLatch(latch);
}

static void
shmem_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			outbox_waiters_at_end(true);
			if (pending_wake_any || pending_subs_change || pending_activity ||
				pending_lease_any)
				wake_worker(true);
			forget_wake();
			pending_subs_change = false;
			pending_activity = false;
			break;
		case XACT_EVENT_ABORT:
			outbox_waiters_at_end(false);
			if (pending_activity)
				wake_worker(false);
			forget_wake();
			pending_subs_change = false;
			pending_activity = false;
			break;
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			outbox_waiters_at_end(false);
			forget_wake();
			pending_subs_change = false;
			pending_activity = false;
			break;
		default:
			break;
	}
}

/*
 * COMMIT PREPARED: the prepared transaction's wake-up bits stayed in the
 * memory of the backend that prepared it, which dropped them at PREPARE (a
 * prepared transaction may be committed by any session, after a restart
 * too).  So the session that commits it wakes the worker for every topic,
 * and has it reread the subscriptions, after its own commit.  Which topics
 * that transaction touched is not known here; waking all costs one
 * notification per subscription, and two-phase commit is rare.  ROLLBACK
 * PREPARED makes nothing ready and wakes no one.
 */
static void
wake_utility_hook(PlannedStmt *pstmt, const char *queryString,
				  bool readOnlyTree, ProcessUtilityContext context,
				  ParamListInfo params, QueryEnvironment *queryEnv,
				  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
						  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED)
	{
		outbox_wake_all_after_commit();
		outbox_subs_changed_after_commit();
		/* and look at every lease: its claims' slices are visible now */
		for (int b = 0; b < OUTBOX_LEASE_BUCKETS; b++)
			pending_lease[b] = 1;
		pending_lease_any = true;
	}

	/*
	 * DROP EXTENSION (or of its schema): an idle worker runs no round that
	 * would notice (issue 9), so wake it to look.  Any extension's drop
	 * does; that costs one round.
	 */
	if (IsA(parsetree, DropStmt) &&
		(((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION ||
		 ((DropStmt *) parsetree)->removeType == OBJECT_SCHEMA))
		outbox_subs_changed_after_commit();
}

/*
 * Called from _PG_init.  The COMMIT PREPARED hook only when preloaded: only
 * then is there a worker to wake.
 */
void
outbox_wake_init(void)
{
	RegisterXactCallback(shmem_xact_callback, NULL);
	if (process_shared_preload_libraries_in_progress)
	{
		prev_utility_hook = ProcessUtility_hook;
		ProcessUtility_hook = wake_utility_hook;
	}
}

/*
 * outbox._wake(): after commit, have the worker notify every subscription
 * (replay and resume free deliveries of any topic).
 */
Datum
outbox_wake_sql(PG_FUNCTION_ARGS)
{
	outbox_wake_all_after_commit();
	PG_RETURN_VOID();
}
