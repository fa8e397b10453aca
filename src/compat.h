/*-------------------------------------------------------------------------
 *
 * compat.h
 *		Every difference between the PostgreSQL majors outbox supports.
 *
 * One source tree builds on PostgreSQL 15 to 18 (README, "Supported
 * PostgreSQL versions").  The code is written against the newest API where
 * that costs nothing, and each older or newer spelling is mapped here, in
 * #if PG_VERSION_NUM blocks, so that no other file tests the version.  The
 * macros expand at their use sites: those files include the headers the
 * names come from.
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_COMPAT_H
#define OUTBOX_COMPAT_H

#if PG_VERSION_NUM < 150000
#error "outbox needs PostgreSQL 15 or later"
#endif

/*
 * PostgreSQL 16 folded the per-catalog ownership checks into
 * object_ownercheck() (utils/acl.h).
 */
#if PG_VERSION_NUM >= 160000
#define pg_database_ownercheck(db, role) \
	object_ownercheck(DatabaseRelationId, (db), (role))
#define pg_namespace_ownercheck(nsp, role) \
	object_ownercheck(NamespaceRelationId, (nsp), (role))
#endif

/*
 * Index entries for a freshly inserted heap tuple, neither an update nor
 * ON CONFLICT.  PostgreSQL 16 added "onlySummarizing" (true only for a HOT
 * update that must still maintain BRIN-like indexes).
 */
#if PG_VERSION_NUM >= 160000
#define outbox_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL, false)
#else
#define outbox_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL)
#endif

/*
 * A backend's number, the index of its PGPROC: MyProcNumber from
 * PostgreSQL 17 on (storage/proc.h).
 */
#if PG_VERSION_NUM < 170000
#define MyProcNumber (MyProc->pgprocno)
#endif

/*
 * A function that never returns: pg_noreturn, before the declaration, from
 * PostgreSQL 18 on (C11's _Noreturn, c.h); before, pg_attribute_noreturn(),
 * after it, which 18 no longer has.  GCC and Clang take the attribute at
 * the start of a declaration as well.
 */
#if PG_VERSION_NUM < 180000
#define pg_noreturn pg_attribute_noreturn()
#endif

/* c.h has no Abs() from PostgreSQL 17 on. */
#ifndef Abs
#define Abs(x)	((x) >= 0 ? (x) : -(x))
#endif

#endif							/* OUTBOX_COMPAT_H */
