/* The operator's pause: one flag the endpoint sets and every pipeline
 * reads between batches (pipeline.c holds its partitions while it is
 * up). */
#include "status.h"

#include <stdatomic.h>

static atomic_bool pause_wanted;

void status_set_paused(bool paused)
{
	atomic_store(&pause_wanted, paused);
}

bool status_paused(void)
{
	return atomic_load(&pause_wanted);
}
