/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Module entry point: GUCs, shared memory and the launcher when
 *		preloaded, and the callbacks the other files need.
 *
 *-------------------------------------------------------------------------
 */
#include "shmem.h"

#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("outbox.retention",
							"How long done deliveries and finished events are kept.",
							"Events every subscription is done with, and done deliveries, are removed once older than this. Dead letters stay until replayed.",
							&outbox_retention,
							7 * 24 * 3600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("outbox.naptime",
							"The longest the outbox worker sleeps between rounds.",
							"The worker also wakes when a commit makes deliveries ready, and when a lease or a delayed delivery falls due.",
							&outbox_naptime,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("outbox.chain_rotation",
							"How often the worker starts a new generation of subscription bookkeeping.",
							"Cursor, batch and settle rows go to the current of four rotating partitions; the oldest is emptied with TRUNCATE once nothing needs it, so acks and folds leave no dead tuples.",
							&outbox_chain_rotation,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	/* slots exist only when preloaded (and only then may it be defined) */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("outbox.max_databases",
								"How many databases with the extension the launcher serves.",
								"Each has a slot in shared memory, through which commits wake its worker; databases without the extension need none.",
								&outbox_max_databases,
								128, 1, 65536,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	MarkGUCPrefixReserved("outbox");

	/* pg_upgrade's servers run no worker and need no slots */
	if (process_shared_preload_libraries_in_progress && !IsBinaryUpgrade)
	{
		outbox_shmem_init();
		outbox_launcher_register();
	}
	outbox_launcher_init();
	outbox_wake_init();
	outbox_enqueue_init();
}
