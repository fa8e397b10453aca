/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *		outbox.enqueue(), and the commit-order record of ordered keys.
 *
 * Enqueue adds exactly one row to outbox.event, whatever the number of
 * subscriptions, so that it costs the application's transaction about what
 * a plain INSERT costs.  The event id is built from the transaction's full
 * xid (see outbox.h), which is what lets consumers read the stream by
 * snapshot deltas.
 *
 * Ordered subscriptions need the order in which transactions of one key
 * commit, which no snapshot records.  So a transaction that enqueued keyed
 * events on a topic some ordered subscription reads takes, just before
 * commit, an exclusive lock per key (in hash order, so two such transactions
 * cannot deadlock) and writes one outbox.key_commit row per key with a
 * sequence number.  The lock is held until the commit is visible, so for
 * one key the sequence order is the commit order.  Nothing of this happens
 * when no ordered subscription exists.
 *
 *-------------------------------------------------------------------------
 */
#include "outbox.h"
#include "shmem.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(outbox_enqueue);
PG_FUNCTION_INFO_V1(outbox_enqueue_many);

/* lock tag field4 of the per-key commit locks; user advisory locks use 1, 2 */
#define OUTBOX_KEY_LOCK_SPACE	0x4f42

/* events enqueued so far by the current top-level transaction */
static FullTransactionId counter_xid = {0};
static int64 counter_next = 0;

/* key hashes whose commit order must be recorded (TopTransactionContext) */
static List *pending_keys = NIL;

/* which topics ordered subscriptions read; rebuilt after invalidation */
static bool ordered_valid = false;
static uint64 ordered_invals = 0;	/* invalidations taken so far */
static bool ordered_all = false;
static List *ordered_topics = NIL;	/* of char *, in TopMemoryContext */
static Oid	ordered_relid = InvalidOid;

static void
enqueue_invalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == ordered_relid)
	{
		ordered_valid = false;
		ordered_invals++;
	}
}

/*
 * Does some ordered subscription read this topic?  Cached per backend;
 * subscribe() and unsubscribe() send a relcache invalidation on
 * outbox.subscription, which transactions starting after their commit see.
 *
 * The cache is read with the latest snapshot, not the statement's: a
 * transaction (or statement) whose snapshot is older than a subscribe that
 * it has already seen the invalidation of would otherwise cache a list
 * without the new subscription for every later transaction of the backend,
 * which then wrote no commit order for its keys.  And an invalidation
 * taken while the read locks the table (a subscribe that committed after
 * the snapshot) makes it read again.
 */
static bool
topic_is_ordered(const char *topic)
{
	ListCell   *lc;

	while (!ordered_valid)
	{
		static SPIPlanPtr plan = NULL;
		MemoryContext oldcxt;
		uint64		i;
		uint64		invals;

		CHECK_FOR_INTERRUPTS();
		list_free_deep(ordered_topics);
		ordered_topics = NIL;
		ordered_all = false;
		ordered_relid = outbox_relid("subscription");
		if (plan == NULL)
			plan = outbox_prepare("SELECT topics FROM outbox.subscription WHERE ordered",
								  0, NULL);
		invals = ordered_invals;
		if (SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(),
								 InvalidSnapshot, true, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "ordered subscription lookup failed");
		oldcxt = MemoryContextSwitchTo(TopMemoryContext);
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i],
										  SPI_tuptable->tupdesc, 1, &isnull);
			Datum	   *elems;
			int			n,
						j;

			if (isnull)
			{
				ordered_all = true;
				continue;
			}
			deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false,
							  TYPALIGN_INT, &elems, NULL, &n);
			for (j = 0; j < n; j++)
				ordered_topics = lappend(ordered_topics,
										 TextDatumGetCString(elems[j]));
		}
		MemoryContextSwitchTo(oldcxt);
		SPI_freetuptable(SPI_tuptable);
		ordered_valid = invals == ordered_invals;
	}
	if (ordered_all)
		return true;
	foreach(lc, ordered_topics)
		if (strcmp((char *) lfirst(lc), topic) == 0)
			return true;
	return false;
}

/*
 * The key hash that orders and locks a key: ordering is per key, across
 * topics.
 */
int64
outbox_key_hash(const char *key)
{
	return (int64) hash_bytes_extended((const unsigned char *) key,
									   strlen(key), 0);
}

static int
cmp_int64(const ListCell *a, const ListCell *b)
{
	int64		x = *(int64 *) lfirst(a);
	int64		y = *(int64 *) lfirst(b);

	return (x > y) - (x < y);
}

/*
 * Just before commit: lock each pending key and record the commit sequence
 * of this transaction for it.  Runs inside the transaction, so an error
 * aborts it.
 */
static void
record_key_commits(void)
{
	static SPIPlanPtr plan = NULL;
	ListCell   *lc;
	Datum	   *hashes;
	int			n = 0;
	int64		prev = 0;
	Datum		args[2];
	Oid			save_user;
	int			save_sec;

	list_sort(pending_keys, cmp_int64);
	hashes = palloc(sizeof(Datum) * list_length(pending_keys));
	foreach(lc, pending_keys)
	{
		int64		h = *(int64 *) lfirst(lc);
		LOCKTAG		tag;

		if (n > 0 && h == prev)
			continue;
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) ((uint64) h >> 32),
							 (uint32) h, OUTBOX_KEY_LOCK_SPACE);
		(void) LockAcquire(&tag, ExclusiveLock, false, false);
		hashes[n++] = Int64GetDatum(h);
		prev = h;
	}

	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	outbox_become_owner(&save_user, &save_sec);
	if (plan == NULL)
	{
		Oid			types[2] = {INT8ARRAYOID, XID8OID};

		plan = outbox_prepare(
			"INSERT INTO outbox.key_commit (key_hash, xid, seq)"
			" SELECT h, $2, s.seq FROM pg_catalog.unnest($1) AS h,"
			" (SELECT pg_catalog.nextval('outbox.key_commit_seq'::pg_catalog.regclass) AS seq) AS s"
			" ON CONFLICT DO NOTHING", 2, types);
	}
	args[0] = PointerGetDatum(construct_array(hashes, n, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = FullTransactionIdGetDatum(outbox_shift_xid(GetTopFullTransactionId()));
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the commit order of ordered keys");
	outbox_restore_user(save_user, save_sec);
	PopActiveSnapshot();
	SPI_finish();
}

static void
enqueue_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (pending_keys != NIL)
				record_key_commits();
			pending_keys = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			pending_keys = NIL;
			break;
		default:
			break;
	}
}

void
outbox_enqueue_init(void)
{
	RegisterXactCallback(enqueue_xact_callback, NULL);
	CacheRegisterRelcacheCallback(enqueue_invalidate, (Datum) 0);
}

/*
 * The next event id of this transaction.  The xid is assigned first, so an
 * event of a transaction that a snapshot does not see has an id above
 * anything that snapshot could see of it.
 */
static int64
next_event_id(void)
{
	FullTransactionId fxid = GetTopFullTransactionId();

	if (!FullTransactionIdEquals(fxid, counter_xid))
	{
		counter_xid = fxid;
		counter_next = 0;
	}
	if (counter_next >= OUTBOX_MAX_PER_XACT)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many events in one transaction"),
				 errdetail("A transaction can enqueue at most " INT64_FORMAT " events.",
						   OUTBOX_MAX_PER_XACT),
				 errhint("Commit in smaller transactions.")));
	/* as outbox stores it (restore.c) */
	fxid = outbox_shift_xid(fxid);
	if (U64FromFullTransactionId(fxid) >= (uint64) OUTBOX_MAX_XID)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("transaction id too large for an outbox event id")));
	return OUTBOX_XID_FIRST_ID(U64FromFullTransactionId(fxid)) + counter_next++;
}

static void
null_argument(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("%s must not be null", what)));
}

/*
 * Refuse a text over max bytes: key and dedup_key end up in btree indexes,
 * which cannot hold a long one (see OUTBOX_MAX_KEY_LEN), and an event that
 * could be enqueued but not claimed or failed would wedge its topic.
 */
static void
check_text_length(text *value, const char *what, int max)
{
	int			len = VARSIZE_ANY_EXHDR(value);

	if (len > max)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most %d bytes long", what, max),
				 errdetail("The %s given was %d bytes long.", what, len)));
}

static void
check_topic(text *topic)
{
	int			topic_len = VARSIZE_ANY_EXHDR(topic);

	if (topic_len == 0 || topic_len > OUTBOX_MAX_TOPIC_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must be 1 to %d bytes long", OUTBOX_MAX_TOPIC_LEN),
				 errdetail("The topic given was %d bytes long.", topic_len)));
}

static void
check_headers(Jsonb *headers)
{
	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object"),
				 errhint("Pass NULL for no headers, or an object such as '{\"trace\": \"abc\"}'.")));
}

static void
check_deliver_at(TimestampTz deliver_at)
{
	if (TIMESTAMP_NOT_FINITE(deliver_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("deliver_at must be a finite time"),
				 errhint("Pass NULL to deliver at once.")));
}

/*
 * If (topic, dedup_key) belongs to a retained event, return its id.
 * Otherwise claim the pair for new_id and return new_id.  A concurrent
 * enqueue of the same pair makes the unique index wait for its outcome.
 */
static int64
dedup_claim(Datum topic, Datum dedup_key, int64 new_id)
{
	static SPIPlanPtr ins = NULL;
	static SPIPlanPtr sel = NULL;
	Datum		args[3] = {topic, dedup_key, Int64GetDatum(new_id)};
	bool		isnull;

	if (sel == NULL)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, INT8OID};

		ins = outbox_prepare("INSERT INTO outbox.dedup (topic, dedup_key, event_id)"
							 " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", 3, types);
		sel = outbox_prepare("SELECT event_id FROM outbox.dedup"
							 " WHERE topic OPERATOR(pg_catalog.=) $1"
							 " AND dedup_key OPERATOR(pg_catalog.=) $2", 2, types);
	}
	if (SPI_execute_plan(ins, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "dedup insert failed");
	if (SPI_processed == 1)
		return new_id;
	if (SPI_execute_plan(sel, args, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "dedup key vanished during enqueue");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/* the columns of the event tables, as insert_event forms their rows */
const char *const outbox_event_columns[OUTBOX_EVENT_NCOLUMNS] = {
	"id", "bucket", "topic", "key", "payload", "headers", "deliver_at", "enqueued_at"
};

/*
 * Insert the event row straight into its bucket: a heap insert and its
 * index entries, without planning or running an INSERT statement, which
 * would cost the application's transaction about a second statement.
 * What this skips on the buckets: constraints beyond NOT NULL (there are
 * none, and enqueue guarantees NOT NULL) and the statement triggers that
 * switch restore mode on when a restore loads rows by COPY or INSERT
 * (skipping them is their point).  The caller's right to enqueue was
 * checked when the function was called.
 */
typedef struct EventInserter
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	/* enqueue_many's rows not written yet (inserter_buffer) */
	TupleTableSlot **buffered;
	int			nbuffered;
} EventInserter;

/*
 * Rows enqueue_many writes with one table_multi_insert call, as COPY does
 * (its MAX_BUFFERED_TUPLES): one WAL record per heap page instead of one
 * per row.
 */
#define INSERTER_MAX_BUFFERED 1000

static void
inserter_open(EventInserter *ins, int bucket)
{
	char		relname[NAMEDATALEN];

	snprintf(relname, sizeof(relname), "event_%d", bucket);
	ins->rel = table_open(outbox_relid(relname), RowExclusiveLock);
	outbox_check_columns(ins->rel, outbox_event_columns, OUTBOX_EVENT_NCOLUMNS, true);
	ins->estate = CreateExecutorState();
	ins->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(ins->rri, ins->rel, 1, NULL, 0);
	ExecOpenIndices(ins->rri, false);
	ins->slot = ExecInitExtraTupleSlot(ins->estate, RelationGetDescr(ins->rel),
									   &TTSOpsHeapTuple);
	ins->buffered = NULL;
	ins->nbuffered = 0;
}

static void
inserter_put(EventInserter *ins, Datum *values, bool *nulls)
{
	ExecStoreHeapTuple(heap_form_tuple(RelationGetDescr(ins->rel), values, nulls),
					   ins->slot, true);
	table_tuple_insert(ins->rel, ins->slot, GetCurrentCommandId(true), 0, NULL);
	(void) outbox_insert_index_tuples(ins->rri, ins->slot, ins->estate);
	ExecClearTuple(ins->slot);
	ResetPerTupleExprContext(ins->estate);
}

/* Write the buffered rows, then their index entries. */
static void
inserter_flush(EventInserter *ins)
{
	int			i;

	if (ins->nbuffered == 0)
		return;
	table_multi_insert(ins->rel, ins->buffered, ins->nbuffered,
					   GetCurrentCommandId(true), 0, NULL);
	for (i = 0; i < ins->nbuffered; i++)
	{
		(void) outbox_insert_index_tuples(ins->rri, ins->buffered[i], ins->estate);
		ExecClearTuple(ins->buffered[i]);
		ResetPerTupleExprContext(ins->estate);
	}
	ins->nbuffered = 0;
}

/*
 * Buffer a row for inserter_flush.  The values are referenced, not copied,
 * until table_multi_insert materializes them: they must live until the
 * flush (enqueue_many's arguments do).
 */
static void
inserter_buffer(EventInserter *ins, Datum *values, bool *nulls)
{
	TupleTableSlot *slot;
	int			natts = RelationGetDescr(ins->rel)->natts;

	if (ins->buffered == NULL)
		ins->buffered = palloc0(sizeof(TupleTableSlot *) * INSERTER_MAX_BUFFERED);
	if (ins->buffered[ins->nbuffered] == NULL)
		ins->buffered[ins->nbuffered] = table_slot_create(ins->rel, NULL);
	/* empty: new, or cleared by the last flush */
	slot = ins->buffered[ins->nbuffered++];
	memcpy(slot->tts_values, values, sizeof(Datum) * natts);
	memcpy(slot->tts_isnull, nulls, sizeof(bool) * natts);
	ExecStoreVirtualTuple(slot);
	if (ins->nbuffered == INSERTER_MAX_BUFFERED)
		inserter_flush(ins);
}

static void
inserter_close(EventInserter *ins)
{
	int			i;

	inserter_flush(ins);
	for (i = 0; ins->buffered != NULL && i < INSERTER_MAX_BUFFERED; i++)
		if (ins->buffered[i] != NULL)
			ExecDropSingleTupleTableSlot(ins->buffered[i]);
	ExecDropSingleTupleTableSlot(ins->slot);
	ExecCloseIndices(ins->rri);
	FreeExecutorState(ins->estate);
	table_close(ins->rel, NoLock);
}

static void
insert_event(int bucket, Datum *values, bool *nulls)
{
	EventInserter ins;

	inserter_open(&ins, bucket);
	inserter_put(&ins, values, nulls);
	inserter_close(&ins);
}

/*
 * outbox.enqueue(topic, payload, key, headers, deliver_at, dedup_key)
 */
Datum
outbox_enqueue(PG_FUNCTION_ARGS)
{
	text	   *topic;
	char	   *topic_str;
	uint32		topic_hash;
	int64		id;
	int			bucket;
	Datum		values[8];
	bool		nulls[8] = {false, false, false, false, false, false, false, false};
	Oid			save_user = InvalidOid;
	int			save_sec = 0;
	bool		use_spi;

	PreventCommandIfReadOnly("outbox.enqueue()");
	/* before any table, whatever this backend has cached (subscription.c) */
	(void) outbox_lock_extension(false);
	if (PG_ARGISNULL(0))
		null_argument("topic");
	if (PG_ARGISNULL(1))
		null_argument("payload");
	topic = PG_GETARG_TEXT_PP(0);
	check_topic(topic);
	if (!PG_ARGISNULL(3))
		check_headers(PG_GETARG_JSONB_P(3));
	if (!PG_ARGISNULL(2))
		check_text_length(PG_GETARG_TEXT_PP(2), "key", OUTBOX_MAX_KEY_LEN);
	if (!PG_ARGISNULL(5))
		check_text_length(PG_GETARG_TEXT_PP(5), "dedup_key", OUTBOX_MAX_DEDUP_KEY_LEN);
	if (!PG_ARGISNULL(4))
		check_deliver_at(PG_GETARG_TIMESTAMPTZ(4));
	topic_str = text_to_cstring(topic);

	id = next_event_id();
	/* with the xid assigned, before anything can commit */
	topic_hash = outbox_topic_enqueued(topic_str);

	/* SPI only for dedup keys and for what is not cached yet */
	use_spi = !PG_ARGISNULL(5) || (!PG_ARGISNULL(2) && !ordered_valid);
	if (use_spi)
	{
		SPI_connect();
		outbox_become_owner(&save_user, &save_sec);
	}
	if (!PG_ARGISNULL(5))
	{
		int64		existing = dedup_claim(PointerGetDatum(topic),
										   PG_GETARG_DATUM(5), id);

		if (existing != id)
		{
			outbox_restore_user(save_user, save_sec);
			SPI_finish();
			PG_RETURN_INT64(existing);
		}
	}
	bucket = outbox_current_bucket();
	if (!PG_ARGISNULL(2) && topic_is_ordered(topic_str))
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
		int64	   *h = palloc(sizeof(int64));

		*h = outbox_key_hash(TextDatumGetCString(PG_GETARG_DATUM(2)));
		pending_keys = lappend(pending_keys, h);
		MemoryContextSwitchTo(oldcxt);
	}
	if (use_spi)
	{
		outbox_restore_user(save_user, save_sec);
		SPI_finish();
	}

	/* id, bucket, topic, key, payload, headers, deliver_at, enqueued_at */
	values[0] = Int64GetDatum(id);
	values[1] = Int16GetDatum(bucket);
	values[2] = PointerGetDatum(topic);
	values[3] = PG_GETARG_DATUM(2);
	nulls[3] = PG_ARGISNULL(2);
	values[4] = PG_GETARG_DATUM(1);
	values[5] = PG_GETARG_DATUM(3);
	nulls[5] = PG_ARGISNULL(3);
	values[6] = PG_GETARG_DATUM(4);
	nulls[6] = PG_ARGISNULL(4);
	values[7] = TimestampTzGetDatum(GetCurrentTimestamp());
	insert_event(bucket, values, nulls);

	outbox_wake_hash_after_commit(topic_hash);
	PG_RETURN_INT64(id);
}

/* The elements of an optional array argument, which must have n of them. */
static void
array_arg(FunctionCallInfo fcinfo, int argno, const char *what, Oid elemtype,
		  int n, Datum **elems, bool **nulls)
{
	ArrayType  *arr;
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			count;

	*elems = NULL;
	*nulls = NULL;
	if (PG_ARGISNULL(argno))
		return;
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array", what)));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(arr, elemtype, typlen, typbyval, typalign, elems, nulls, &count);
	if (count != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have as many elements as payloads", what),
				 errdetail("payloads has %d, %s %d.", n, what, count)));
}

/*
 * outbox.enqueue_many(topic, payloads, keys, headers, deliver_at,
 * dedup_keys) RETURNS bigint[]: enqueue once per element, in order, with
 * the relation, its indexes and the caches opened once for all of them and
 * the rows written by table_multi_insert.
 */
Datum
outbox_enqueue_many(PG_FUNCTION_ARGS)
{
	text	   *topic;
	char	   *topic_str;
	uint32		topic_hash;
	ArrayType  *payload_arr;
	Datum	   *payloads;
	bool	   *payload_nulls;
	Datum	   *keys,
			   *headers,
			   *dedups;
	bool	   *key_nulls,
			   *header_nulls,
			   *dedup_nulls;
	Datum	   *ids;
	bool	   *inserted;
	int			n,
				i;
	int			bucket;
	bool		ordered;
	bool		any_dedup = false;
	bool		use_spi;
	Oid			save_user = InvalidOid;
	int			save_sec = 0;
	TimestampTz now;
	EventInserter ins;

	PreventCommandIfReadOnly("outbox.enqueue_many()");
	(void) outbox_lock_extension(false);
	if (PG_ARGISNULL(0))
		null_argument("topic");
	if (PG_ARGISNULL(1))
		null_argument("payloads");
	topic = PG_GETARG_TEXT_PP(0);
	check_topic(topic);
	payload_arr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(payload_arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("payloads must be a one-dimensional array")));
	deconstruct_array(payload_arr, JSONBOID, -1, false, TYPALIGN_INT,
					  &payloads, &payload_nulls, &n);
	for (i = 0; i < n; i++)
		if (payload_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("payloads must not contain nulls"),
					 errdetail("Element %d is null.", i + 1)));
	array_arg(fcinfo, 2, "keys", TEXTOID, n, &keys, &key_nulls);
	array_arg(fcinfo, 3, "headers", JSONBOID, n, &headers, &header_nulls);
	array_arg(fcinfo, 5, "dedup_keys", TEXTOID, n, &dedups, &dedup_nulls);
	if (!PG_ARGISNULL(4))
		check_deliver_at(PG_GETARG_TIMESTAMPTZ(4));
	for (i = 0; i < n; i++)
	{
		if (keys && !key_nulls[i])
			check_text_length(DatumGetTextPP(keys[i]), "key", OUTBOX_MAX_KEY_LEN);
		if (headers && !header_nulls[i])
			check_headers(DatumGetJsonbP(headers[i]));
		if (dedups && !dedup_nulls[i])
		{
			check_text_length(DatumGetTextPP(dedups[i]), "dedup_key", OUTBOX_MAX_DEDUP_KEY_LEN);
			any_dedup = true;
		}
	}
	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	topic_str = text_to_cstring(topic);

	ids = palloc(sizeof(Datum) * n);
	inserted = palloc(sizeof(bool) * n);
	for (i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(next_event_id());
		inserted[i] = true;
	}
	/* with the xid assigned, before anything can commit */
	topic_hash = outbox_topic_enqueued(topic_str);

	use_spi = any_dedup || (keys != NULL && !ordered_valid);
	if (use_spi)
	{
		SPI_connect();
		outbox_become_owner(&save_user, &save_sec);
	}
	/* in order: an element whose key an earlier one took gets its id */
	if (any_dedup)
		for (i = 0; i < n; i++)
		{
			int64		existing;

			if (dedup_nulls[i])
				continue;
			existing = dedup_claim(PointerGetDatum(topic), dedups[i], DatumGetInt64(ids[i]));
			if (existing != DatumGetInt64(ids[i]))
			{
				ids[i] = Int64GetDatum(existing);
				inserted[i] = false;
			}
		}
	ordered = keys != NULL && topic_is_ordered(topic_str);
	if (use_spi)
	{
		outbox_restore_user(save_user, save_sec);
		SPI_finish();
	}
	if (ordered)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

		for (i = 0; i < n; i++)
			if (inserted[i] && !key_nulls[i])
			{
				int64	   *h = palloc(sizeof(int64));

				*h = outbox_key_hash(TextDatumGetCString(keys[i]));
				pending_keys = lappend(pending_keys, h);
			}
		MemoryContextSwitchTo(oldcxt);
	}

	bucket = outbox_current_bucket();
	now = GetCurrentTimestamp();
	inserter_open(&ins, bucket);
	for (i = 0; i < n; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {false, false, false, false, false, false, false, false};

		CHECK_FOR_INTERRUPTS();
		if (!inserted[i])
			continue;
		/* id, bucket, topic, key, payload, headers, deliver_at, enqueued_at */
		values[0] = ids[i];
		values[1] = Int16GetDatum(bucket);
		values[2] = PointerGetDatum(topic);
		values[3] = keys ? keys[i] : (Datum) 0;
		nulls[3] = keys == NULL || key_nulls[i];
		values[4] = payloads[i];
		values[5] = headers ? headers[i] : (Datum) 0;
		nulls[5] = headers == NULL || header_nulls[i];
		values[6] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
		nulls[6] = PG_ARGISNULL(4);
		values[7] = TimestampTzGetDatum(now);
		inserter_buffer(&ins, values, nulls);
	}
	inserter_close(&ins);

	outbox_wake_hash_after_commit(topic_hash);
	PG_RETURN_ARRAYTYPE_P(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}
