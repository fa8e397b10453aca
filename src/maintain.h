/*-------------------------------------------------------------------------
 *
 * maintain.h
 *		The units of work of the per-database worker: notifications
 *		(notify.c), lease expiry (lease.c), the maintenance round
 *		(maintain.c) and retention (retention.c).  worker.c runs them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_MAINTAIN_H
#define OUTBOX_MAINTAIN_H

#include "outbox.h"
#include "shmem.h"

/* maintain.c */
typedef void (*OutboxUnitFn) (void *arg);

#define OUTBOX_UNIT_BARE	0x01	/* no SPI, no snapshot */
#define OUTBOX_UNIT_GONE_OK 0x02	/* undefined_object: dropped meanwhile */

extern bool outbox_unit(const char *what, int flags, OutboxUnitFn fn, void *arg);
extern void outbox_maintain(OutboxDbSlot *slot, uint32 activity);
extern void outbox_round_begin(void);
extern void outbox_round_busy(void);
extern void outbox_round_timer(TimestampTz t);
extern bool outbox_round_quiet(TimestampTz *timer);
extern bool outbox_no_failures(void);

/*
 * Kinds of work, for outbox_sub_unit's memory of failures: per
 * subscription, or (sub_id 0) for the whole database.
 */
#define OUTBOX_SUB_ADVANCE	0
#define OUTBOX_SUB_EXPIRE	1
#define OUTBOX_DB_CLEAN_UP	2
#define OUTBOX_DB_TALLY		5
#define OUTBOX_DB_RETENTION 3
#define OUTBOX_DB_ROTATE	4

extern bool outbox_sub_unit(const char *what, int kind, int32 sub_id, int flags,
							OutboxUnitFn fn, void *arg);

/* notify.c */
extern void outbox_notify_attach(OutboxDbSlot *slot);
extern bool outbox_take_wake_bits(OutboxBits *bits);
extern void outbox_wake_again(const OutboxBits *bits);
extern void outbox_wake_again_all(void);
extern void outbox_notify_sub(const char *name);
extern bool outbox_notify_round(const OutboxBits *bits, bool timed, TimestampTz *next);
extern void outbox_notify_between(void);

/* lease.c */
extern TimestampTz outbox_expire_leases(OutboxDbSlot *slot);

/* retention.c */
extern void outbox_clean_up(void);
extern void outbox_rotate_and_truncate(void);
extern void outbox_rotate_chain(void);
extern List *outbox_chain_stale_subs(void);

/* The earlier of two times, 0 meaning none. */
static inline TimestampTz
outbox_earliest(TimestampTz a, TimestampTz b)
{
	if (a == 0)
		return b;
	if (b == 0)
		return a;
	return Min(a, b);
}

#endif							/* OUTBOX_MAINTAIN_H */
