/*-------------------------------------------------------------------------
 *
 * chain.h
 *		A subscription's position in the event stream: the folded cursor
 *		plus the batch rows of claims after it (see chain.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_CHAIN_H
#define OUTBOX_CHAIN_H

#include "outbox.h"

#include "storage/itemptr.h"

/* one outbox.batch row as read with a dirty snapshot */
typedef struct OutboxSlice
{
	int64		gen;			/* generation of its batch row */
	int64		batch_no;
	int64		delta;
	OutboxSnap *lo;
	OutboxSnap *hi;
	int64		pos_from;
	int64		pos_to;
	bool		ended;
	TimestampTz lease_until;
	bool		visible;		/* inserted by a committed transaction or ours */
	bool		committed;		/* committed, and no settlement in progress */
	bool		settled;		/* committed, and no ids left */
	int			nids;			/* ids not settled yet */
	int			nlive;			/* ids no committed settlement took */
	int64	   *ids;			/* the nids not settled */
	int64	   *live_ids;		/* the nlive no committed settlement took */
	int			nkeys;
	int64	   *key_hashes;		/* ordered subscriptions: hashes of keys */
	bool		is_new;			/* written by this claim */
	bool		folded;			/* being folded by outbox_chain_fold */
	bool		held;			/* read through a record of the cursor */
	bool		passed;			/* being recorded as passed by outbox_chain_fold */
} OutboxSlice;

/*
 * A slice a fold passed while its claiming transaction was in progress, as
 * the cursor row records it (outbox.held_slice): its batch row, and the
 * range it covered, which becomes a hole if that transaction rolls back.
 * batch_no -1: the row is known to be gone.
 */
typedef struct OutboxHeld
{
	int64		gen;
	int64		batch_no;
	int64		delta;
	OutboxSnap *lo;
	OutboxSnap *hi;
	int64		pos_from;
	int64		pos_to;
	bool		ended;
} OutboxHeld;

/* ids > from and <= to */
typedef struct OutboxRange
{
	int64		from;
	int64		to;
} OutboxRange;

/* a part of a delta not yet handed out */
typedef struct OutboxSegment
{
	int64		delta;
	OutboxSnap *lo;
	OutboxSnap *hi;
	int64		from;			/* ids > from ... */
	int64		to;				/* ... and <= to */
	bool		to_end;			/* reaches the end of the delta */
	bool		is_gap;			/* left by a claim that rolled back */
	bool		new_delta;		/* a delta no claim has started yet */
} OutboxSegment;

typedef struct OutboxChain
{
	int32		sub_id;
	int64		gen_now;		/* the current generation when read */
	/* the folded cursor: its latest row */
	int64		cursor_gen;		/* generation the row is in */
	int64		fold_no;
	int64		scan_from;		/* batch rows below this are folded */
	int64		scan_gen;		/* ... and the rest are in this one or later */
	int64		delta;
	OutboxSnap *lo;
	OutboxSnap *hi;
	int64		pos;
	bool		ended;
	/* slices the cursor row records as passed */
	int			nheld;
	OutboxHeld *held;
	/* ... of which the batch row is gone: ranges to hand out again */
	int			nholes;
	int			maxholes;
	OutboxHeld *holes;
	/* batch rows, in stream order */
	int			nslices;
	int			maxslices;
	OutboxSlice *slices;
	/* snapshot all reads of this claim use (registered) */
	Snapshot	snapshot;
	OutboxSnap *now;
} OutboxChain;

/*
 * Cursor, batch and settle rows are written to generation "gen" of four
 * rotating partitions (gen % 4), which the worker empties with TRUNCATE in
 * turn; see retention.c.
 */
#define OUTBOX_CHAIN_PARTS 4

extern int64 outbox_chain_gen(void);
extern bool outbox_chain_gen_still(int64 gen);
extern int64 outbox_chain_gen_for_insert(const char *table);
extern Oid	outbox_chain_part(const char *table, int64 gen);
extern bool outbox_cursor_read(OutboxChain *chain, Snapshot snapshot);
extern int	outbox_batches_holding(int32 sub_id, int64 *ids, int n,
								   int64 **gens, int64 **nos);
extern int	outbox_batch_take(int32 sub_id, int64 gen, int64 batch_no,
							  int64 *ids, int n, bool skip_locked,
							  int64 **taken, Datum **keys, bool **key_nulls);
extern void outbox_taken_arrays(int64 *taken, Datum *keys, bool *key_nulls,
								int n, Datum *ids_array, Datum *keys_array);
extern int	outbox_cmp_int64(const void *a, const void *b);
extern int	outbox_cmp_range(const void *a, const void *b);
extern OutboxChain *outbox_chain_read(int32 sub_id);
extern void outbox_chain_prefetch(void);
extern void outbox_chain_prefetch_end(void);
extern void outbox_chain_prefetch_forget(void);
extern void outbox_chain_release(OutboxChain *chain);
extern List *outbox_chain_segments(OutboxChain *chain);
extern bool outbox_chain_pending(OutboxChain *chain, uint64 xid, int64 first,
								 int64 last);
extern void outbox_chain_add(OutboxChain *chain, OutboxSlice *slice);
extern void outbox_chain_fold(OutboxChain *chain, int min_slices);
extern void outbox_chain_hand_over_all(OutboxChain *chain, bool unkeyed_only);
extern bool outbox_try_lock_sub(int32 sub_id);
extern void outbox_lock_event_tables(void);

/* claims fold once this many settled slices lead the chain */
#define OUTBOX_FOLD_MIN_SLICES 8
/* a batch row with leases still out is folded once this many follow it */
#define OUTBOX_FOLD_PAST_LEASES 64
extern bool outbox_segment_contains(const OutboxSegment *seg, int64 id);
extern void outbox_lock_sub(int32 sub_id);
extern void outbox_unlock_sub(int32 sub_id);

#endif							/* OUTBOX_CHAIN_H */
