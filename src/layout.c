/*-------------------------------------------------------------------------
 *
 * layout.c
 *		The columns of outbox's tables that the C code reads or writes by
 *		attribute number, checked against the catalog once per backend.
 *
 * Scans and direct inserts address columns by number (the enums of
 * chain.c, claim.c and enqueue.c).  A schema of another version, where an
 * upgrade script added, dropped or reordered a column, would make those
 * numbers point at the wrong column and be misread silently.  So before the
 * first use of a relation (or of the composite type outbox.held_slice) in a
 * backend, its columns are compared by name with what the code expects,
 * and a mismatch is an error with the hint to update.  The checks are
 * forgotten whenever the extension is looked up again (an ALTER EXTENSION
 * or DROP and CREATE), so a backend checks the new tables too.
 *
 *-------------------------------------------------------------------------
 */
#include "outbox.h"

#include "access/tupdesc.h"
#include "catalog/partition.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/typcache.h"

/* relations and types whose layout this backend has checked */
static List *checked = NIL;

/* partitions (even members) and their indexes found (odd members) */
static List *part_indexes = NIL;

void
outbox_layout_forget(void)
{
	list_free(checked);
	checked = NIL;
	list_free(part_indexes);
	part_indexes = NIL;
}

/*
 * The index of a partition that is the partition of the parent index of
 * this name: found by name, never by position, and remembered until the
 * extension changes.
 */
Oid
outbox_part_index(Relation rel, const char *parent_index)
{
	ListCell   *lc;
	Oid			indexid;
	MemoryContext oldcxt;

	for (lc = list_head(part_indexes); lc != NULL; lc = lnext(part_indexes, lnext(part_indexes, lc)))
		if (lfirst_oid(lc) == RelationGetRelid(rel))
			return lfirst_oid(lnext(part_indexes, lc));
	indexid = index_get_partition(rel, outbox_relid(parent_index));
	if (!OidIsValid(indexid))
		outbox_schema_mismatch(psprintf("outbox.%s has no partition of the index outbox.%s.",
										RelationGetRelationName(rel), parent_index));
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	part_indexes = lappend_oid(lappend_oid(part_indexes, RelationGetRelid(rel)), indexid);
	MemoryContextSwitchTo(oldcxt);
	return indexid;
}

static void
check_desc(TupleDesc desc, Oid id, const char *what,
		   const char *const *names, int n, bool whole)
{
	MemoryContext oldcxt;
	int			i;

	if (list_member_oid(checked, id))
		return;
	for (i = 0; i < n; i++)
	{
		Form_pg_attribute a = i < desc->natts ? TupleDescAttr(desc, i) : NULL;

		if (a == NULL || a->attisdropped || strcmp(NameStr(a->attname), names[i]) != 0)
			outbox_schema_mismatch(psprintf("Column %d of %s is %s%s%s, where this library expects \"%s\".",
											i + 1, what,
											a == NULL || a->attisdropped ? "" : "\"",
											a == NULL ? "missing" : a->attisdropped ? "dropped" : NameStr(a->attname),
											a == NULL || a->attisdropped ? "" : "\"",
											names[i]));
	}
	if (whole && desc->natts != n)
		outbox_schema_mismatch(psprintf("%s has %d columns, where this library writes %d.",
										what, desc->natts, n));
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	checked = lappend_oid(checked, id);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * The first n columns of rel must be names, in this order; with whole, no
 * others (the caller forms whole rows).
 */
void
outbox_check_columns(Relation rel, const char *const *names, int n, bool whole)
{
	if (list_member_oid(checked, RelationGetRelid(rel)))
		return;
	check_desc(RelationGetDescr(rel), RelationGetRelid(rel),
			   psprintf("outbox.%s", RelationGetRelationName(rel)), names, n, whole);
}

/* The same for a composite type, by its oid. */
void
outbox_check_type_fields(Oid typid, const char *const *names, int n)
{
	TupleDesc	desc;

	if (list_member_oid(checked, typid))
		return;
	desc = lookup_rowtype_tupdesc(typid, -1);
	PG_TRY();
	{
		check_desc(desc, typid, psprintf("type %s", format_type_be(typid)), names, n, true);
	}
	PG_FINALLY();
	{
		ReleaseTupleDesc(desc);
	}
	PG_END_TRY();
}
