/*-------------------------------------------------------------------------
 *
 * subscription.c
 *		Subscription lookup, name rules, consumer privileges, and the
 *		switch to the extension owner that the C functions run under.
 *
 * The API functions are ordinary (not SECURITY DEFINER) C functions: after
 * checking the caller's right to the subscription they switch to the owner
 * of the outbox tables for their SPI work, the way SECURITY DEFINER would,
 * without paying for a search_path change on every call.  Every query they
 * run is schema-qualified down to its operators, so the caller's
 * search_path cannot change what it means.
 *
 *-------------------------------------------------------------------------
 */
#include "shmem.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_class.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(outbox_lock_extension_sql);
PG_FUNCTION_INFO_V1(outbox_channel);
PG_FUNCTION_INFO_V1(outbox_may_consume);
PG_FUNCTION_INFO_V1(outbox_check_name_sql);
PG_FUNCTION_INFO_V1(outbox_subscriptions_changed);
PG_FUNCTION_INFO_V1(outbox_check_interval_sql);

/*
 * Subscription names: ^[a-z0-9_][a-z0-9_.-]{0,47}$, so that a channel name
 * built from one fits PostgreSQL's 63-byte identifiers.
 */
void
outbox_check_name(const char *name)
{
	size_t		len = strlen(name);
	size_t		i;
	bool		ok = len >= 1 && len <= 48;

	for (i = 0; ok && i < len; i++)
	{
		char		c = name[i];

		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')
			continue;
		if (i > 0 && (c == '.' || c == '-'))
			continue;
		ok = false;
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid subscription name \"%s\"", name),
				 errdetail("A subscription name is 1 to 48 characters from a-z, 0-9, \"_\", \".\" and \"-\", and does not start with \".\" or \"-\".")));
}

/*
 * The version of the outbox extension installed in this database, or NULL.
 */
static char *
installed_version(void)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("outbox"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Oids of outbox's tables by name, as looked up since the last relcache
 * invalidation: a reader of every subscription's chain looks up a dozen
 * names per subscription (two catalog cache lookups each).  Any
 * invalidation empties it, so a table dropped or renamed is looked up
 * again, exactly when the catalog caches would see it.
 */
#define RELID_CACHE_SIZE 48

static struct
{
	char		name[NAMEDATALEN];
	Oid			relid;
}			relid_cache[RELID_CACHE_SIZE];
static int	relid_cached = 0;

static void
relid_invalidate(Datum arg, Oid relid)
{
	relid_cached = 0;
}

/*
 * The oid of a table of the outbox schema.  A table that is missing
 * because the schema is older than this library (ALTER EXTENSION UPDATE
 * not run yet) is a clear error with a hint, never a misread.
 */
Oid
outbox_relid(const char *relname)
{
	static bool registered = false;
	Oid			nsp;
	Oid			relid;
	int			i;

	for (i = 0; i < relid_cached; i++)
		if (strcmp(relid_cache[i].name, relname) == 0)
			return relid_cache[i].relid;
	if (!registered)
	{
		CacheRegisterRelcacheCallback(relid_invalidate, (Datum) 0);
		registered = true;
	}
	nsp = get_namespace_oid("outbox", false);
	relid = get_relname_relid(relname, nsp);

	if (!OidIsValid(relid))
	{
		char	   *version = installed_version();

		if (version != NULL && strcmp(version, OUTBOX_SCHEMA_VERSION) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the outbox library needs version %s of the extension, but this database has version %s",
							OUTBOX_SCHEMA_VERSION, version),
					 errhint("Run ALTER EXTENSION outbox UPDATE.")));
		elog(ERROR, "outbox relation \"%s\" is missing", relname);
	}
	if (relid_cached < RELID_CACHE_SIZE && strlen(relname) < NAMEDATALEN)
	{
		strlcpy(relid_cache[relid_cached].name, relname, NAMEDATALEN);
		relid_cache[relid_cached++].relid = relid;
	}
	return relid;
}

/*
 * A table or type of the schema is not as this library reads it (layout.c):
 * the schema of an older version, or one changed by hand.
 */
void
outbox_schema_mismatch(const char *detail)
{
	char	   *version = installed_version();

	if (version != NULL && strcmp(version, OUTBOX_SCHEMA_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the outbox library needs version %s of the extension, but this database has version %s",
						OUTBOX_SCHEMA_VERSION, version),
				 errdetail_internal("%s", detail),
				 errhint("Run ALTER EXTENSION outbox UPDATE.")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the tables of the outbox extension do not have the layout this library reads"),
			 errdetail_internal("%s", detail),
			 errhint("They were changed outside the extension's scripts; recreate the extension.")));
}

/* the extension's oid as last looked up, and whether that still holds */
static Oid	ext_oid = InvalidOid;
static bool ext_checked = false;

/*
 * Any relcache invalidation may be a DROP (or a new CREATE) EXTENSION,
 * which drops (or makes) outbox's tables: look the extension up again.
 */
static void
ext_invalidate(Datum arg, Oid relid)
{
	ext_checked = false;
}

/*
 * Hold the extension in share mode until the end of the transaction, before
 * any of its tables.  DROP EXTENSION takes the extension's lock exclusively
 * before anything else: it then waits for every transaction using outbox
 * while holding nothing they could wait for (before, it locked tables one
 * by one, and one that a consumer or the worker held while it waited for
 * another that DROP had already taken was a deadlock), and calls that start
 * meanwhile wait for it, then find the extension gone, a clear error,
 * instead of tables dropped under them.  Returns false if the extension is
 * gone and missing_ok (the worker, which then stops).
 *
 * The extension's oid is looked up again only after a relcache
 * invalidation, so that a transaction of one enqueue pays a lock, not a
 * catalog scan.
 */
static bool
lock_extension(bool missing_ok)
{
	static bool callback_registered = false;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(ext_invalidate, (Datum) 0);
		callback_registered = true;
	}
	for (;;)
	{
		LOCKTAG		tag;
		Oid			now;

		if (!ext_checked || !OidIsValid(ext_oid))
		{
			ext_oid = get_extension_oid("outbox", true);
			ext_checked = true;
			outbox_state_forget();
		}
		if (!OidIsValid(ext_oid))
			break;
		SET_LOCKTAG_OBJECT(tag, MyDatabaseId, ExtensionRelationId, ext_oid, 0);
		if (LockAcquire(&tag, AccessShareLock, false, false) != LOCKACQUIRE_OK)
			return true;		/* held already in this transaction */
		/* a DROP EXTENSION we waited for has sent its invalidations */
		AcceptInvalidationMessages();
		if (ext_checked)
			return true;
		now = get_extension_oid("outbox", true);
		ext_checked = true;
		if (now == ext_oid)
			return true;
		LockRelease(&tag, AccessShareLock, false);
		ext_oid = now;
		outbox_state_forget();
	}
	ext_checked = false;
	if (!missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"outbox\" was dropped"),
				 errdetail("DROP EXTENSION outbox committed while this call was waiting for it.")));
	return false;
}

/*
 * ... and refuse while a restore is unfinished (restore.c).  The worker
 * (missing_ok) asks outbox_restore_pending() itself.
 */
bool
outbox_lock_extension(bool missing_ok)
{
	if (!lock_extension(missing_ok))
		return false;
	if (!missing_ok)
		outbox_check_restored();
	return true;
}

/*
 * The role that owns the outbox tables: the extension's owner.
 */
Oid
outbox_owner(void)
{
	Oid			relid = outbox_relid("subscription");
	HeapTuple	tp;
	Oid			owner;

	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tp))->relowner;
	ReleaseSysCache(tp);
	return owner;
}

/*
 * Run as the owner of the outbox tables until outbox_restore_user.  An error
 * in between is cleaned up by (sub)transaction abort, which restores the
 * user id and security context.
 */
void
outbox_become_owner(Oid *save_userid, int *save_sec)
{
	GetUserIdAndSecContext(save_userid, save_sec);
	SetUserIdAndSecContext(outbox_owner(),
						   *save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

void
outbox_restore_user(Oid save_userid, int save_sec)
{
	SetUserIdAndSecContext(save_userid, save_sec);
}

/* SPI_prepare with cursor options, and keep the plan for the session. */
static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes, int options)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, options);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/*
 * SPI_prepare and keep a plan; for statics that live for the session.
 */
SPIPlanPtr
outbox_prepare(const char *sql, int nargs, Oid *argtypes)
{
	return prepare_kept(sql, nargs, argtypes, 0);
}

/*
 * Like outbox_prepare, for a query that must keep its generic plan.  The
 * stream scans ask for the first rows of an id range in id order: with a
 * custom plan and no statistics yet (a freshly loaded backlog), the
 * planner may read the whole range and sort it, at every claim.
 */
SPIPlanPtr
outbox_prepare_generic(const char *sql, int nargs, Oid *argtypes)
{
	return prepare_kept(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

static Interval *
copy_interval(Datum d)
{
	Interval   *src = DatumGetIntervalP(d);
	Interval   *res = palloc(sizeof(Interval));

	memcpy(res, src, sizeof(Interval));
	return res;
}

/*
 * Look up a subscription by name; 42704 if there is none.  Requires SPI to
 * be connected and the owner's rights.  Allocates in SPI's procedure
 * context: the result lives until SPI_finish.
 */
OutboxSub *
outbox_lookup_sub(const char *name)
{
	OutboxSub  *sub = outbox_find_sub(name);

	if (sub == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("subscription \"%s\" does not exist", name),
				 errhint("Create it with outbox.subscribe().")));
	return sub;
}

#define SUB_COLUMNS "id, topics, max_attempts, lease, backoff_base, backoff_max," \
	" ordered, paused, origin, name"

/* An OutboxSub from a row of SUB_COLUMNS, in the current memory context. */
static OutboxSub *
sub_from_row(HeapTuple tup, TupleDesc desc)
{
	OutboxSub  *sub = palloc0(sizeof(OutboxSub));
	bool		isnull;
	Datum		d;

	sub->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	sub->topics = isnull ? NULL : DatumGetArrayTypePCopy(d);
	sub->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	sub->lease = *copy_interval(SPI_getbinval(tup, desc, 4, &isnull));
	sub->backoff_base = *copy_interval(SPI_getbinval(tup, desc, 5, &isnull));
	sub->backoff_max = *copy_interval(SPI_getbinval(tup, desc, 6, &isnull));
	sub->ordered = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	sub->paused = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	sub->origin = outbox_snap_copy((OutboxSnap *)
								   PG_DETOAST_DATUM(SPI_getbinval(tup, desc, 9, &isnull)));
	sub->name = TextDatumGetCString(SPI_getbinval(tup, desc, 10, &isnull));
	return sub;
}

/*
 * The same, NULL when there is none: for the readers of every subscription
 * (stats, event_status), which list them with the statement's snapshot and
 * must skip one that an unsubscribe has removed since.
 */
OutboxSub *
outbox_find_sub(const char *name)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = CStringGetTextDatum(name);

	if (plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		plan = outbox_prepare("SELECT " SUB_COLUMNS " FROM outbox.subscription"
							  " WHERE name OPERATOR(pg_catalog.=) $1", 1, types);
	}
	/*
	 * As it is now, not as an older transaction snapshot shows it: callers
	 * hold its lifetime lock (lifecycle.c), so it stays so until they end.
	 */
	if (SPI_execute_snapshot(plan, &arg, NULL, GetLatestSnapshot(),
							 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "subscription lookup failed");
	if (SPI_processed == 0)
		return NULL;
	return sub_from_row(SPI_tuptable->vals[0], SPI_tuptable->tupdesc);
}

/* Does the subscription receive events of this topic? */
bool
outbox_sub_receives(OutboxSub *sub, const char *topic)
{
	Datum	   *topics;
	int			n,
				i;

	if (sub->topics == NULL)
		return true;
	deconstruct_array(sub->topics, TEXTOID, -1, false, TYPALIGN_INT, &topics, NULL, &n);
	for (i = 0; i < n; i++)
		if (strcmp(TextDatumGetCString(topics[i]), topic) == 0)
			return true;
	return false;
}

/*
 * Every subscription as it is now, by name (outbox_find_sub for all of
 * them in one query: a reader of every subscription looked each one up,
 * an executor start per subscription).  Sets *nsubs.
 */
OutboxSub **
outbox_find_subs(int *nsubs)
{
	static SPIPlanPtr plan = NULL;
	OutboxSub **subs;
	uint64		i;

	if (plan == NULL)
		plan = outbox_prepare("SELECT " SUB_COLUMNS " FROM outbox.subscription"
							  " ORDER BY name", 0, NULL);
	if (SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(),
							 InvalidSnapshot, true, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "subscription list failed");
	subs = palloc(sizeof(OutboxSub *) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
		subs[i] = sub_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
	*nsubs = (int) SPI_processed;
	SPI_freetuptable(SPI_tuptable);
	return subs;
}

/*
 * May this role consume subscription sub_id?  Superusers and members of the
 * owner may; others need a grant_consume for a role whose privileges they
 * have (PostgreSQL's inheritance rules apply).  Requires SPI and the
 * owner's rights.
 */
bool
outbox_role_may_consume(Oid role, int32 sub_id)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = Int32GetDatum(sub_id);
	uint64		i;

	if (superuser_arg(role) || has_privs_of_role(role, outbox_owner()))
		return true;
	if (plan == NULL)
	{
		Oid			types[1] = {INT4OID};

		plan = outbox_prepare("SELECT role FROM outbox.consumer"
							  " WHERE sub_id OPERATOR(pg_catalog.=) $1",
							  1, types);
	}
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "consumer lookup failed");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			grantee = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc,
															 1, &isnull));

		if (has_privs_of_role(role, grantee))
			return true;
	}
	return false;
}

/*
 * Raise 42501 unless the caller (the user before outbox_become_owner) may
 * consume this subscription.
 */
void
outbox_check_consume(OutboxSub *sub, Oid caller)
{
	if (!outbox_role_may_consume(caller, sub->id))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for subscription \"%s\"", sub->name),
				 errhint("The owner grants it with outbox.grant_consume().")));
}

/*
 * The subscription name of a function's first argument: given (22004) and
 * well formed (22023).
 */
char *
outbox_sub_name_arg(FunctionCallInfo fcinfo)
{
	char	   *name;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("subscription must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	outbox_check_name(name);
	return name;
}

/*
 * The start of every consumer function: the subscription named by the
 * first argument must be given, well formed, known, and the caller's to
 * consume.  Connects to SPI and switches to the owner; undo with
 * outbox_consumer_end.
 */
OutboxSub *
outbox_consumer_begin(FunctionCallInfo fcinfo, Oid *save_user, int *save_sec)
{
	Oid			caller = GetUserId();
	char	   *name;
	OutboxSub  *sub;

	name = outbox_sub_name_arg(fcinfo);
	/* no DROP EXTENSION, then no unsubscribe or change of settings, until this transaction ends */
	(void) outbox_lock_extension(false);
	outbox_hold_sub(name);
	/* the worker's timed work (leases, folds) may change: tell it at the end */
	outbox_activity_at_end();
	SPI_connect();
	outbox_become_owner(save_user, save_sec);
	sub = outbox_lookup_sub(name);
	outbox_check_consume(sub, caller);
	return sub;
}

/*
 * outbox._lock_extension(): the first statement of the administration
 * functions written in PL/pgSQL, so that they take the extension's lock
 * before any table, as every other user of outbox does.
 */
Datum
outbox_lock_extension_sql(PG_FUNCTION_ARGS)
{
	(void) outbox_lock_extension(false);
	PG_RETURN_VOID();
}

void
outbox_consumer_end(Oid save_user, int save_sec)
{
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
}

/*
 * outbox._may_consume(sub_id): the row filter of the views.
 */
Datum
outbox_may_consume(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Oid			save_user;
	int			save_sec;
	bool		result;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	SPI_connect();
	outbox_become_owner(&save_user, &save_sec);
	result = outbox_role_may_consume(caller, PG_GETARG_INT32(0));
	outbox_restore_user(save_user, save_sec);
	SPI_finish();
	PG_RETURN_BOOL(result);
}

/*
 * outbox.channel(subscription): the LISTEN channel of a subscription.
 */
Datum
outbox_channel(PG_FUNCTION_ARGS)
{
	Oid			save_user;
	int			save_sec;
	OutboxSub  *sub;
	char	   *channel;

	sub = outbox_consumer_begin(fcinfo, &save_user, &save_sec);
	channel = psprintf("outbox.%s", sub->name);
	outbox_consumer_end(save_user, save_sec);
	PG_RETURN_TEXT_P(cstring_to_text(channel));
}

/*
 * outbox._check_name(subscription): the name rule, for the SQL functions.
 */
Datum
outbox_check_name_sql(PG_FUNCTION_ARGS)
{
	(void) outbox_sub_name_arg(fcinfo);
	PG_RETURN_VOID();
}

/*
 * outbox._subscriptions_changed(): at commit, tell every backend to drop
 * what it cached about subscriptions (enqueue caches which topics have
 * ordered subscriptions).
 */
Datum
outbox_subscriptions_changed(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheByRelid(outbox_relid("subscription"));
	outbox_subs_changed_after_commit();
	PG_RETURN_VOID();
}

/*
 * An interval in microseconds, months counted as 30 days.  Saturates rather
 * than overflowing.
 */
int64
outbox_interval_usecs(const Interval *iv)
{
	double		us = (double) iv->time +
		((double) iv->day + (double) iv->month * DAYS_PER_MONTH) * USECS_PER_DAY;

	if (us >= (double) PG_INT64_MAX)
		return PG_INT64_MAX;
	if (us <= (double) PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) us;
}

/*
 * Refuse an interval that is negative, or whose sum or any part (months,
 * days, time) is over OUTBOX_MAX_INTERVAL_USECS: timestamp arithmetic adds
 * the parts one at a time, so a huge part balanced by another would still
 * overflow.  "what" names the argument in the message.
 */
void
outbox_check_interval(const Interval *iv, const char *what)
{
	int64		us = outbox_interval_usecs(iv);
	bool		parts_ok;

	parts_ok = Abs((int64) iv->month) * DAYS_PER_MONTH <= OUTBOX_MAX_INTERVAL_DAYS &&
		Abs((int64) iv->day) <= OUTBOX_MAX_INTERVAL_DAYS &&
		iv->time <= OUTBOX_MAX_INTERVAL_USECS &&
		iv->time >= -OUTBOX_MAX_INTERVAL_USECS;
	if (us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", what),
				 errdetail("The value given was %s.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(iv))))));
	if (us > OUTBOX_MAX_INTERVAL_USECS || !parts_ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most %s", what, OUTBOX_MAX_INTERVAL_TEXT),
				 errdetail(us > OUTBOX_MAX_INTERVAL_USECS ?
						   "The value given was %s." :
						   "The value given was %s, with a part of over 100 years.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(iv))))));
}

/*
 * outbox._check_interval(value, what): the same rule for the SQL
 * functions (subscribe), so that there is one.
 */
Datum
outbox_check_interval_sql(PG_FUNCTION_ARGS)
{
	const char *what = PG_ARGISNULL(1) ? "interval" : text_to_cstring(PG_GETARG_TEXT_PP(1));

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	outbox_check_interval(PG_GETARG_INTERVAL_P(0), what);
	PG_RETURN_VOID();
}
