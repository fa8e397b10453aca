/*-------------------------------------------------------------------------
 *
 * notify.c
 *		Wake-up notifications: one NOTIFY per subscription per round, for
 *		commits that made deliveries ready, returned leases and deliveries
 *		that came due.
 *
 *-------------------------------------------------------------------------
 */
#include "chain.h"
#include "shmem.h"
#include "maintain.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

static void notify_matching(const OutboxBits *bits);

/*
 * The worker's slot in shared memory.  NULL without shared memory, or when
 * every slot serves another database: then no wake-ups come, and each
 * timed round looks for what became ready instead.
 */
static OutboxDbSlot *wake_slot = NULL;

void
outbox_notify_sub(const char *name)
{
	char		channel[NAMEDATALEN];

	snprintf(channel, sizeof(channel), "outbox.%s", name);
	Async_Notify(channel, name);
	/* and the claims that wait for it (wait.c), once this commits */
	outbox_wake_waiters_after_commit(name);
}

/*
 * Notify the subscriptions (not paused) that read any of the topics whose
 * bits are set.  Without a slot there are no bits: look at the events and
 * ready deliveries that appeared since the last round instead.
 */

static void
notify_ready(const OutboxBits *given)
{
	static SPIPlanPtr new_topics_plan = NULL;
	static SPIPlanPtr ready_plan = NULL;
	static int64 seen_id = -1;
	uint64		i;
	OutboxBits	bits = *given;

	if (ready_plan == NULL)
	{
		Oid			t1[1] = {INT8OID};

		new_topics_plan = outbox_prepare("SELECT DISTINCT topic, max(id) OVER ()"
										 " FROM outbox.event WHERE id > $1", 1, t1);
		ready_plan = outbox_prepare("SELECT DISTINCT d.sub_id FROM outbox.delivery d"
									" WHERE d.state = 'ready'", 0, NULL);
	}

	if (wake_slot == NULL)
	{
		Datum		arg;

		if (seen_id < 0)
		{
			/* first round: anything may be waiting */
			outbox_bits_fill(&bits);
			seen_id = 0;
		}
		arg = Int64GetDatum(seen_id);
		if (SPI_execute_plan(new_topics_plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "new events lookup failed");
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			outbox_wake_add_topic(&bits, TextDatumGetCString(
				SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)));
			seen_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 2, &isnull));
		}
		if (SPI_execute_plan(ready_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "ready deliveries lookup failed");
		if (SPI_processed > 0)
			outbox_bits_fill(&bits);
	}

	notify_matching(&bits);
}


/* subs_changes of the slot when the worker last took it in */
static uint32 subs_changes_seen = 0;

/* The worker has its slot: take wake-ups from it. */
void
outbox_notify_attach(OutboxDbSlot *slot)
{
	wake_slot = slot;
}

/* Put wake-up bits back, for a later round to notify. */
void
outbox_wake_again(const OutboxBits *bits)
{
	if (wake_slot != NULL)
		outbox_bits_publish(wake_slot->wake, bits);
}

/* ... every bit: every subscription */
void
outbox_wake_again_all(void)
{
	OutboxBits	all;

	outbox_bits_fill(&all);
	outbox_wake_again(&all);
}

/* subscriptions as notify_matching needs them, cached in the worker */
typedef struct SubBits
{
	char	   *name;
	uint32		stamp;			/* the notify_matching call that notified it */
} SubBits;

static List *sub_cache = NIL;
static bool sub_cache_valid = false;

/*
 * The cached subscriptions by topic bit, and those of every topic: a
 * wake-up looks at the subscriptions of its bits, not at all of them (with
 * 1,000 subscriptions, matching every one against every wake-up's bits
 * was 13 % of the worker's time).
 */
static List *bit_subs[OUTBOX_BITS];
static List *every_topic_subs = NIL;
static Oid	sub_cache_relid = InvalidOid;

static void
sub_cache_invalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == sub_cache_relid)
		sub_cache_valid = false;
}

/* A commit changed subscriptions: reload the list before notifying again. */
static void
forget_subscriptions(void)
{
	sub_cache_valid = false;
}

/*
 * The subscriptions that are not paused, with their topic bits.  Reloaded
 * after subscribe, unsubscribe, pause and resume, which send a relcache
 * invalidation on outbox.subscription.
 */
static List *
subscriptions(void)
{
	static SPIPlanPtr plan = NULL;
	static bool registered = false;
	MemoryContext oldcxt;
	ListCell   *lc;
	uint64		i;

	if (sub_cache_valid)
		return sub_cache;
	if (!registered)
	{
		CacheRegisterRelcacheCallback(sub_cache_invalidate, (Datum) 0);
		registered = true;
	}
	sub_cache_relid = outbox_relid("subscription");
	sub_cache_valid = true;
	if (plan == NULL)
		plan = outbox_prepare("SELECT name, topics FROM outbox.subscription"
							  " WHERE NOT paused", 0, NULL);
	/*
	 * A fresh snapshot, not the unit's: an invalidation accepted earlier in
	 * this transaction may be for a commit its snapshot does not see, and
	 * the list would then stay stale until the next change.
	 */
	if (SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT)
	{
		sub_cache_valid = false;
		elog(ERROR, "subscription lookup failed");
	}
	foreach(lc, sub_cache)
		pfree(((SubBits *) lfirst(lc))->name);
	list_free_deep(sub_cache);
	sub_cache = NIL;
	for (i = 0; i < OUTBOX_BITS; i++)
	{
		list_free(bit_subs[i]);
		bit_subs[i] = NIL;
	}
	list_free(every_topic_subs);
	every_topic_subs = NIL;
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		bool		all_topics;
		SubBits    *sb = palloc(sizeof(SubBits));
		Datum		topics = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &all_topics);

		sb->name = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull));
		sb->stamp = 0;
		if (all_topics)
			every_topic_subs = lappend(every_topic_subs, sb);
		else
		{
			Datum	   *elems;
			int			nelems,
						j;
			OutboxBits	bits;	/* its bits listed so far: each once */

			outbox_bits_clear(&bits);
			deconstruct_array(DatumGetArrayTypeP(topics), TEXTOID, -1, false,
							  TYPALIGN_INT, &elems, NULL, &nelems);
			for (j = 0; j < nelems; j++)
			{
				text	   *t = DatumGetTextPP(elems[j]);
				uint32		h = outbox_topic_hash(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));

				if (outbox_bits_has(&bits, h))
					continue;
				outbox_bits_add(&bits, h);
				bit_subs[h % OUTBOX_BITS] = lappend(bit_subs[h % OUTBOX_BITS], sb);
			}
		}
		sub_cache = lappend(sub_cache, sb);
	}
	MemoryContextSwitchTo(oldcxt);
	return sub_cache;
}

/*
 * Notify every subscription (not paused) with a topic whose bit is set.
 */
static void
notify_matching(const OutboxBits *bits)
{
	static uint32 stamp = 0;
	ListCell   *lc;

	if (!outbox_bits_any(bits))
		return;
	(void) subscriptions();
	/* a subscription with several topics is notified once */
	if (++stamp == 0)
	{
		foreach(lc, sub_cache)
			((SubBits *) lfirst(lc))->stamp = 0;
		stamp = 1;
	}
	foreach(lc, every_topic_subs)
	{
		SubBits    *sb = lfirst(lc);

		outbox_notify_sub(sb->name);
		sb->stamp = stamp;
	}
	for (int w = 0; w < OUTBOX_BITS_WORDS; w++)
	{
		uint64		word = bits->w[w];

		while (word != 0)
		{
			int			b = pg_rightmost_one_pos64(word);

			word &= word - 1;
			foreach(lc, bit_subs[w * 64 + b])
			{
				SubBits    *sb = lfirst(lc);

				if (sb->stamp == stamp)
					continue;
				sb->stamp = stamp;
				outbox_notify_sub(sb->name);
			}
		}
	}
}


/*
 * Notify the subscriptions whose delayed or retried deliveries came due
 * after last, up to now.  Returns when the next one comes due.
 */
static TimestampTz
notify_due(TimestampTz last, TimestampTz now)
{
	static SPIPlanPtr due_plan = NULL;
	static SPIPlanPtr next_plan = NULL;
	static SPIPlanPtr delayed_plan = NULL;
	static SPIPlanPtr next_delayed_plan = NULL;
	TimestampTz next = 0;
	Datum		args[2];
	uint64		i;
	bool		isnull;
	Datum		d;
	OutboxBits	bits;

	if (next_delayed_plan == NULL)
	{
		Oid			t2[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
		Oid			t1[1] = {TIMESTAMPTZOID};

		due_plan = outbox_prepare(
			"SELECT DISTINCT s.name FROM outbox.delivery d"
			" JOIN outbox.subscription s ON s.id = d.sub_id"
			" WHERE d.state IN ('ready', 'scheduled')"
			" AND d.visible_at > $1 AND d.visible_at <= $2 AND NOT s.paused", 2, t2);
		next_plan = outbox_prepare(
			"SELECT min(visible_at) FROM outbox.delivery"
			" WHERE state IN ('ready', 'scheduled') AND visible_at > $1", 1, t1);
		/* delayed events no claim has reached yet are only in the stream */
		delayed_plan = outbox_prepare(
			"SELECT DISTINCT topic FROM outbox.event"
			" WHERE deliver_at > $1 AND deliver_at <= $2", 2, t2);
		next_delayed_plan = outbox_prepare(
			"SELECT min(deliver_at) FROM outbox.event WHERE deliver_at > $1", 1, t1);
	}
	outbox_bits_clear(&bits);
	args[0] = TimestampTzGetDatum(last);
	args[1] = TimestampTzGetDatum(now);
	if (SPI_execute_plan(due_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "due deliveries lookup failed");
	for (i = 0; i < SPI_processed; i++)
		outbox_notify_sub(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull)));
	if (SPI_execute_plan(delayed_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "delayed events lookup failed");
	for (i = 0; i < SPI_processed; i++)
		outbox_wake_add_topic(&bits, TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																	   SPI_tuptable->tupdesc, 1, &isnull)));
	notify_matching(&bits);

	if (SPI_execute_plan(next_plan, &args[1], NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next due lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		next = DatumGetTimestampTz(d);
	if (SPI_execute_plan(next_delayed_plan, &args[1], NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "next delayed event lookup failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		next = outbox_earliest(next, DatumGetTimestampTz(d));
	return next;
}

/* deliveries that came due up to this time were notified */
static TimestampTz due_seen = 0;

/* the last notifications failed: leave them to the worker's next round */
static bool notify_failed = false;

typedef struct RoundArgs
{
	OutboxBits	bits;
	bool		timed;
	bool		done;			/* fast path: notified from the cache */
	TimestampTz now;			/* deliveries due by then are notified */
	TimestampTz next;
} RoundArgs;

/*
 * The usual wake-up: with the subscriptions cached (the check is made
 * after the transaction has taken in invalidations) there is no query to
 * run, only notifications to send.
 */
static void
notify_cached_unit(void *arg)
{
	RoundArgs  *r = arg;

	if (sub_cache_valid)
	{
		notify_matching(&r->bits);
		r->done = true;
	}
}

static void
notify_round_unit(void *arg)
{
	RoundArgs  *r = arg;

	if (outbox_bits_any(&r->bits) || (r->timed && wake_slot == NULL))
		notify_ready(&r->bits);
	if (r->timed)
		r->next = notify_due(due_seen, r->now);
}

/*
 * The notifying part of a round, in one transaction, so that a
 * subscription gets at most one notification per round (PostgreSQL folds
 * identical notifications of a transaction into one): for commits that
 * made deliveries ready, for deliveries that came due; then, when timed,
 * lease expiry (lease.c), a subscription at a time.  Sets *next to when
 * the next lease or delivery falls due.  Returns false if the
 * notifications failed; their bits are then put back for a later round.
 */
bool
outbox_notify_round(const OutboxBits *bits, bool timed, TimestampTz *next)
{
	RoundArgs	r;

	*next = 0;
	if (!timed && !outbox_bits_any(bits))
		return true;
	memset(&r, 0, sizeof(r));
	r.bits = *bits;
	r.timed = timed;
	r.now = GetCurrentTimestamp();
	if (!timed && wake_slot != NULL)
	{
		if (!outbox_unit("outbox: notify", OUTBOX_UNIT_BARE, notify_cached_unit, &r))
		{
			outbox_wake_again(bits);
			notify_failed = true;
			return false;
		}
		if (r.done)
		{
			notify_failed = false;
			return true;
		}
	}
	if (!outbox_unit("outbox: notify", 0, notify_round_unit, &r))
	{
		outbox_wake_again(bits);
		notify_failed = true;
		return false;
	}
	notify_failed = false;
	/* only once committed: a failed round's due deliveries are notified later */
	if (timed)
		due_seen = r.now;
	*next = r.next;
	if (timed)
		*next = outbox_earliest(*next, outbox_expire_leases(wake_slot));
	return true;
}

/*
 * Take the topic bits committed since the last call, and drop the cached
 * subscription list if a commit changed subscriptions meanwhile.
 */
bool
outbox_take_wake_bits(OutboxBits *bits)
{
	uint32		changes;
	bool		any;

	if (wake_slot == NULL)
	{
		outbox_bits_clear(bits);
		return false;
	}
	any = outbox_bits_take(wake_slot->wake, bits);
	changes = pg_atomic_read_u32(&wake_slot->subs_changes);
	if (changes != subs_changes_seen)
	{
		subs_changes_seen = changes;
		forget_subscriptions();
	}
	return any;
}

/*
 * Between the units of a maintenance round: send the notifications of
 * commits that came in meanwhile, so that a long round (many
 * subscriptions) does not hold them back.  If that fails, the bits are
 * put back and the worker's next round tries again (not this round,
 * once per subscription).
 */
void
outbox_notify_between(void)
{
	OutboxBits	bits;
	TimestampTz next;

	if (notify_failed)
		return;
	if (outbox_take_wake_bits(&bits))
		(void) outbox_notify_round(&bits, false, &next);
}
