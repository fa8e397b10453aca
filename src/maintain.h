/*-------------------------------------------------------------------------
 *
 * maintain.h
 *		The units of work of the per-database worker (maintain.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_MAINTAIN_H
#define OUTBOX_MAINTAIN_H

#include "outbox.h"

extern TimestampTz outbox_notify_round(uint64 bits, bool timed);
extern void outbox_maintain(void);
extern void outbox_forget_subscriptions(void);

/* worker.c */
extern void outbox_notify_between(void);
extern TimestampTz outbox_earliest(TimestampTz a, TimestampTz b);

#endif							/* OUTBOX_MAINTAIN_H */
