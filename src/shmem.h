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

#define OUTBOX_CLAIMED_BITS		1024

/*
 * Wake-up bits: one per topic hash, OUTBOX_WAKE_BITS of them.  A commit
 * wakes the subscriptions of its topics' bits; collisions only cost a
 * needless notification (with 64 bits and 1,000 topics a commit notified
 * the subscriptions of about 16 topics).  Every bit set: every
 * subscription.
 */
#define OUTBOX_WAKE_BITS		1024
#define OUTBOX_WAKE_WORDS		(OUTBOX_WAKE_BITS / 64)

typedef struct OutboxWake
{
	uint64		w[OUTBOX_WAKE_WORDS];
} OutboxWake;

static inline void
outbox_wake_clear(OutboxWake *b)
{
	memset(b, 0, sizeof(*b));
}

static inline void
outbox_wake_fill(OutboxWake *b)
{
	memset(b, 0xff, sizeof(*b));
}

static inline void
outbox_wake_or(OutboxWake *b, const OutboxWake *o)
{
	for (int i = 0; i < OUTBOX_WAKE_WORDS; i++)
		b->w[i] |= o->w[i];
}

static inline bool
outbox_wake_any(const OutboxWake *b)
{
	for (int i = 0; i < OUTBOX_WAKE_WORDS; i++)
		if (b->w[i] != 0)
			return true;
	return false;
}

static inline bool
outbox_wake_meets(const OutboxWake *a, const OutboxWake *b)
{
	for (int i = 0; i < OUTBOX_WAKE_WORDS; i++)
		if ((a->w[i] & b->w[i]) != 0)
			return true;
	return false;
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
	pg_atomic_uint64 wake[OUTBOX_WAKE_WORDS];	/* topic bits committed since
												 * the worker took them */
	pg_atomic_uint32 subs_changes;	/* commits that changed subscriptions */
	pg_atomic_uint32 activity;	/* transactions that wrote outbox rows */
	/* subscriptions (bit: id % OUTBOX_CLAIMED_BITS) claimed since the worker looked */
	pg_atomic_uint64 claimed[OUTBOX_CLAIMED_BITS / 64];
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
extern void outbox_wake_add_topic(OutboxWake *bits, const char *topic);
extern void outbox_wake_after_commit(const OutboxWake *bits);
extern void outbox_wake_topic_after_commit(const char *topic);
extern void outbox_wake_all_after_commit(void);
extern void outbox_wake_init(void);
extern void outbox_subs_changed_after_commit(void);
extern void outbox_activity_at_end(void);
extern void outbox_claimed_at_commit(int32 sub_id);
extern bool outbox_take_claimed(OutboxDbSlot *slot, uint64 *bits);

/* launcher.c */
extern void outbox_launcher_register(void);
extern void outbox_launcher_init(void);
extern bool outbox_start_worker_for(Oid dboid, bool wait);
extern PGDLLEXPORT void outbox_launcher_main(Datum arg);

/* worker.c */
extern PGDLLEXPORT void outbox_worker_main(Datum arg);
extern int	outbox_naptime;
extern int	outbox_retention;
extern int	outbox_chain_rotation;

/* shmem.c */
extern int	outbox_max_databases;

#endif							/* OUTBOX_SHMEM_H */
