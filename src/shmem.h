/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		Shared state of the launcher and the per-database workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_SHMEM_H
#define OUTBOX_SHMEM_H

#include "outbox.h"

#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

/*
 * A set of OUTBOX_BITS bits, each standing for a hash modulo OUTBOX_BITS:
 * the wake-up bits of topics.  Collisions only cost a needless
 * notification: with 1,000 topics, 64 bits made a commit notify the
 * subscriptions of about 16 topics.  Every bit set: every topic.
 */
#define OUTBOX_BITS				1024
#define OUTBOX_BITS_WORDS		(OUTBOX_BITS / 64)

typedef struct OutboxBits
{
	uint64		w[OUTBOX_BITS_WORDS];
} OutboxBits;

static inline void
outbox_bits_clear(OutboxBits *b)
{
	memset(b, 0, sizeof(*b));
}

static inline void
outbox_bits_fill(OutboxBits *b)
{
	memset(b, 0xff, sizeof(*b));
}

/* the bit of hash n */
static inline void
outbox_bits_add(OutboxBits *b, uint32 n)
{
	n %= OUTBOX_BITS;
	b->w[n / 64] |= UINT64CONST(1) << (n % 64);
}

static inline bool
outbox_bits_has(const OutboxBits *b, uint32 n)
{
	n %= OUTBOX_BITS;
	return (b->w[n / 64] & (UINT64CONST(1) << (n % 64))) != 0;
}

static inline void
outbox_bits_or(OutboxBits *b, const OutboxBits *o)
{
	for (int i = 0; i < OUTBOX_BITS_WORDS; i++)
		b->w[i] |= o->w[i];
}

static inline bool
outbox_bits_any(const OutboxBits *b)
{
	for (int i = 0; i < OUTBOX_BITS_WORDS; i++)
		if (b->w[i] != 0)
			return true;
	return false;
}

/*
 * Enqueued topics, by hash modulo OUTBOX_TOPIC_XIDS: the newest top-level
 * xid that enqueued an event of a topic of that hash, published before the
 * transaction can commit (outbox_topic_enqueued).  A reader that finds a
 * topic's entry below a snapshot's xmin knows that no transaction the
 * snapshot does not see has an event of it, without reading the stream
 * (outbox_topics_quiet_since).  4,096 entries: with 1,000 topics a topic
 * shares its entry with another about one time in five, which only costs a
 * read that finds nothing.
 */
#define OUTBOX_TOPIC_XIDS		4096

/*
 * Leases of slices, by subscription id modulo OUTBOX_LEASE_BUCKETS: the
 * earliest end of a lease that a claim of a subscription of that bucket
 * committed since the worker last took the bucket (OUTBOX_LEASE_NONE: none;
 * 0: due now, look at all).  Published after commit, so that whoever takes
 * a bucket and then reads sees the slice (outbox_lease_after_commit).  The
 * worker looks for expired slice leases only in buckets whose time came
 * (lease.c), not in every subscription every round (issue 9).
 */
#define OUTBOX_LEASE_BUCKETS	256
#define OUTBOX_LEASE_NONE		PG_UINT64_MAX

static inline int
outbox_lease_bucket(int32 sub_id)
{
	return (int) ((uint32) sub_id % OUTBOX_LEASE_BUCKETS);
}

/* What the launcher knows of one database. */
typedef struct OutboxDbSlot
{
	Oid			dboid;			/* InvalidOid: free */
	pid_t		pid;			/* its worker, 0 if none */
	Latch	   *latch;			/* the worker's latch, NULL if none */
	bool		no_extension;	/* its worker found no outbox there */
	bool		has_extension;	/* a worker, CREATE EXTENSION or start_worker()
								 * found outbox there */
	TimestampTz no_worker_logged_at;	/* when the log last said it has no
										 * worker for want of a process */
	TimestampTz checked_at;		/* when no_extension was found */
	TimestampTz dropping_until; /* DROP DATABASE under way: do not start */
	int			failures;		/* consecutive worker failures */
	TimestampTz retry_at;		/* no restart before this */
	pg_atomic_uint64 wake[OUTBOX_BITS_WORDS];	/* topic bits committed since
												 * the worker took them */
	pg_atomic_uint32 subs_changes;	/* commits that changed subscriptions */
	pg_atomic_uint32 activity;	/* transactions that wrote outbox rows */
	FullTransactionId topics_tracked_from;	/* the next xid when the slot
											 * was made: older ones may
											 * have enqueued unseen */
	pg_atomic_uint64 topic_xid[OUTBOX_TOPIC_XIDS];	/* see OUTBOX_TOPIC_XIDS */
	pg_atomic_uint64 lease_due[OUTBOX_LEASE_BUCKETS];	/* see
														 * OUTBOX_LEASE_BUCKETS */
} OutboxDbSlot;

typedef struct OutboxShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	int			nslots;			/* outbox.max_databases at start */
	bool		forget_no_extension;	/* CREATE EXTENSION found no slot */
	OutboxDbSlot slots[FLEXIBLE_ARRAY_MEMBER];
} OutboxShared;

extern OutboxShared *outbox_shared;

extern void outbox_shmem_init(void);
extern OutboxDbSlot *outbox_slot_find(Oid dboid);
extern OutboxDbSlot *outbox_slot_get(Oid dboid);
extern void outbox_wake_add_topic(OutboxBits *bits, const char *topic);
extern void outbox_wake_after_commit(const OutboxBits *bits);
extern uint32 outbox_topic_hash(const char *topic, size_t len);
extern void outbox_wake_hash_after_commit(uint32 hash);
extern uint32 outbox_topic_enqueued(const char *topic);
extern bool outbox_topics_quiet_since(ArrayType *topics, FullTransactionId xmin);
extern void outbox_wake_all_after_commit(void);
extern void outbox_wake_init(void);
extern void outbox_subs_changed_after_commit(void);
extern void outbox_activity_at_end(void);
extern void outbox_bits_publish(pg_atomic_uint64 *shared, const OutboxBits *b);
extern bool outbox_bits_take(pg_atomic_uint64 *shared, OutboxBits *b);
extern void outbox_lease_after_commit(int32 sub_id, TimestampTz lease_until);
extern TimestampTz outbox_lease_take_due(OutboxDbSlot *slot, TimestampTz now, bool *due);

/* launcher.c */
extern void outbox_launcher_register(void);
extern void outbox_launcher_init(void);
extern bool outbox_start_worker_for(Oid dboid, bool wait);
extern PGDLLEXPORT void outbox_launcher_main(Datum arg);

/* worker.c */
extern PGDLLEXPORT void outbox_worker_main(Datum arg);
extern int	outbox_naptime;

/* wait.c: claim(..., wait) */
typedef int64 (*OutboxClaimAttempt) (FunctionCallInfo fcinfo, void *arg);
extern Size outbox_waiters_size(void);
extern void outbox_waiters_startup(void);
extern void outbox_wake_waiters_after_commit(const char *name);
extern void outbox_waiters_at_end(bool committed);
extern int64 outbox_claim_waiting(FunctionCallInfo fcinfo, Interval *wait,
								  OutboxClaimAttempt attempt, void *arg);
extern int	outbox_retention;
extern int	outbox_chain_rotation;

/* shmem.c */
extern int	outbox_max_databases;

#endif							/* OUTBOX_SHMEM_H */
