/*-------------------------------------------------------------------------
 *
 * outbox.h
 *		Shared declarations of the outbox extension.
 *
 * Storage in brief (docs/design.md has the whole story): events live once in
 * outbox.event, whose id encodes the enqueuing transaction's full xid in its
 * high bits.  A subscription consumes the stream by snapshot deltas, as PgQ
 * does; each claim records one outbox.batch row covering a range of a delta
 * and the ids it leased.  Only exceptions (retries, delays, dead letters,
 * ordered keys held back) get one outbox.delivery row per event.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_H
#define OUTBOX_H

#include "postgres.h"

#include "compat.h"

#include "access/transam.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"
#include "utils/xid8.h"

/*
 * Event ids: (full xid << OUTBOX_SEQ_BITS) | n, n counting the events of one
 * transaction.  Id order is therefore (transaction, enqueue order), and the
 * transaction of an event is known from its id alone.
 */
#define OUTBOX_SEQ_BITS			20
#define OUTBOX_MAX_PER_XACT		(INT64CONST(1) << OUTBOX_SEQ_BITS)
#define OUTBOX_MAX_XID			(INT64CONST(1) << (63 - OUTBOX_SEQ_BITS))
#define OUTBOX_ID_XID(id)		((uint64) (id) >> OUTBOX_SEQ_BITS)
#define OUTBOX_XID_FIRST_ID(x)	((int64) ((uint64) (x) << OUTBOX_SEQ_BITS))
#define OUTBOX_POS_END			PG_INT64_MAX

/*
 * The schema version this library reads and writes: the extension's
 * default_version.  With an older schema (a new library installed, ALTER
 * EXTENSION outbox UPDATE not run yet) every call that needs what the
 * older schema lacks refuses with a hint to update (outbox_relid).
 */
#define OUTBOX_SCHEMA_VERSION	"1.1"

/* rotating event tables, outbox.event_0 .. _3 */
#define OUTBOX_BUCKETS			4

/* Limits from the SQL contract. */
#define OUTBOX_MAX_BATCH		10000
#define OUTBOX_MAX_TOPIC_LEN	200

/*
 * Limits that keep every input storable and computable later (README,
 * "Limits"): what enqueue, subscribe, claim and fail accept can never make
 * a later claim, fail or worker round fail.
 *
 * Texts that reach a btree index are bounded in bytes, whatever the
 * encoding.  An index entry holds at most 2704 bytes (a third of a page,
 * less overhead); key goes into delivery_key_idx beside an int4, dedup_key
 * into outbox.dedup's primary key beside a topic of up to 200 bytes.  1024
 * bytes leaves room for both, uncompressed.
 */
#define OUTBOX_MAX_KEY_LEN		1024
#define OUTBOX_MAX_DEDUP_KEY_LEN 1024

/*
 * Intervals (leases, backoff, retry_in) are at most 100 years, months
 * counted as 30 days as interval comparison does, and so is each of their
 * months, days and time parts.  now() plus that, or the backoff capped at
 * it, stays far inside the timestamp range (up to 294276 AD), and the
 * backoff's doubling can be computed in int64 microseconds.
 */
#define OUTBOX_MAX_INTERVAL_DAYS	36000
#define OUTBOX_MAX_INTERVAL_USECS	(INT64CONST(36000) * USECS_PER_DAY)
#define OUTBOX_MAX_INTERVAL_TEXT	"100 years"

/*
 * A transaction snapshot with 64-bit xids, laid out exactly like the core
 * type pg_snapshot so that it can be stored in columns of that type.
 */
typedef struct OutboxSnap
{
	int32		vl_len_;
	uint32		nxip;
	FullTransactionId xmin;
	FullTransactionId xmax;
	FullTransactionId xip[FLEXIBLE_ARRAY_MEMBER];
} OutboxSnap;

/* A subscription's settings, as claim, ack and fail need them. */
typedef struct OutboxSub
{
	int32		id;
	char	   *name;
	ArrayType  *topics;			/* NULL means every topic */
	int32		max_attempts;
	Interval	lease;
	Interval	backoff_base;
	Interval	backoff_max;
	bool		ordered;
	bool		paused;
	struct OutboxSnap *origin;	/* what it saw as finished when created */
} OutboxSub;

/* snapshot.c */
extern OutboxSnap *outbox_snap_from_snapshot(Snapshot snap);

/* restore.c: outbox.state, the xid shift and restore mode */
extern int	outbox_current_bucket(void);
extern FullTransactionId outbox_shift_xid(FullTransactionId fxid);
extern uint64 outbox_xid_shift(void);
extern uint64 outbox_xid_floor(void);
extern void outbox_check_restored(void);
extern bool outbox_restore_pending(void);
extern void outbox_state_forget(void);

/* layout.c: columns read by number, checked against the catalog */
extern void outbox_check_columns(Relation rel, const char *const *names, int n, bool whole);

/* enqueue.c: outbox.event's columns, in order */
#define OUTBOX_EVENT_NCOLUMNS 8
extern const char *const outbox_event_columns[OUTBOX_EVENT_NCOLUMNS];
extern void outbox_check_type_fields(Oid typid, const char *const *names, int n);
extern void outbox_layout_forget(void);
extern Oid	outbox_part_index(Relation rel, const char *parent_index);
pg_noreturn extern void outbox_schema_mismatch(const char *detail);
extern bool outbox_snap_visible(const OutboxSnap *snap, uint64 xid);
extern bool outbox_snap_equal(const OutboxSnap *a, const OutboxSnap *b);
extern OutboxSnap *outbox_snap_copy(const OutboxSnap *snap);

/* subscription.c */
extern void outbox_check_name(const char *name);
extern char *outbox_sub_name_arg(FunctionCallInfo fcinfo);
extern OutboxSub *outbox_lookup_sub(const char *name);
extern OutboxSub *outbox_find_sub(const char *name);
extern OutboxSub **outbox_find_subs(int *nsubs);
extern bool outbox_sub_receives(OutboxSub *sub, const char *topic);
extern void outbox_check_consume(OutboxSub *sub, Oid caller);
extern OutboxSub *outbox_consumer_begin(FunctionCallInfo fcinfo, Oid *save_user,
										int *save_sec);
extern void outbox_consumer_end(Oid save_user, int save_sec);
extern bool outbox_role_may_consume(Oid role, int32 sub_id);
extern Oid	outbox_owner(void);
extern void outbox_become_owner(Oid *save_userid, int *save_sec);
extern void outbox_restore_user(Oid save_userid, int save_sec);
extern Oid	outbox_relid(const char *relname);
extern bool outbox_lock_extension(bool missing_ok);
extern SPIPlanPtr outbox_prepare(const char *sql, int nargs, Oid *argtypes);
extern Datum outbox_make_array(Datum *elems, int n, Oid type);
extern SPIPlanPtr outbox_prepare_generic(const char *sql, int nargs, Oid *argtypes);
extern int64 outbox_interval_usecs(const Interval *iv);
extern void outbox_check_interval(const Interval *iv, const char *what);

/* lifecycle.c */
extern void outbox_hold_sub(const char *name);
extern bool outbox_try_hold_sub(const char *name);
extern bool outbox_sub_exists(int32 sub_id);

/* enqueue.c */
extern int64 outbox_key_hash(const char *key);
extern void outbox_enqueue_init(void);

/* claim.c */
extern void outbox_claim_advance(OutboxSub *sub);
extern bool outbox_claim_keep_topics(OutboxSub *sub, ArrayType *old_topics);
extern void outbox_claim_order_leases(OutboxSub *sub);

/* settle.c */
extern TimestampTz outbox_backoff(OutboxSub *sub, int32 attempts,
								  const Interval *retry_in);

#endif							/* OUTBOX_H */
