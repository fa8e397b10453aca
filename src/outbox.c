/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Module entry point: registers what the other files need.
 *
 *-------------------------------------------------------------------------
 */
#include "outbox.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	outbox_enqueue_init();
}
