/*-------------------------------------------------------------------------
 *
 * tally.h
 *		Counts of the stream by topic, kept by the worker (tally.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_TALLY_H
#define OUTBOX_TALLY_H

#include "outbox.h"
#include "shmem.h"

#include "utils/hsearch.h"
#include "utils/snapshot.h"

/* a count of one topic's events without deliver_at over ids (a, b] */
typedef struct OutboxTallyProbe
{
	const char *topic;			/* "": every topic */
	int64		a;
	int64		b;
	HTAB	   *skip;			/* int64 ids the oldest leaves out, or NULL */
	int64		count;			/* result */
	TimestampTz oldest;			/* result; 0: none */
} OutboxTallyProbe;

extern void outbox_tally(OutboxDbSlot *slot, uint32 activity);
extern void outbox_tally_sample(void);
extern bool outbox_tally_bounds(Snapshot snap, int64 *start, int64 *upto,
								int64 **open, int *nopen);
extern void outbox_tally_count(OutboxTallyProbe *probes, int n, int64 newest,
							   Snapshot snap);

#endif							/* OUTBOX_TALLY_H */
