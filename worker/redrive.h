/* Mode "redrive": sends dead-lettered records back to the topic they came
 * from, once whatever made them fail has been fixed. */
#ifndef SLUICE_REDRIVE_H
#define SLUICE_REDRIVE_H

#include <stdbool.h>

#include "settings.h"

/* The header counting how many times a record was sent back. */
#define HDR_REDRIVE_ATTEMPTS "redrive-attempts"
/* Where the record was in the dead-letter topic: topic/partition@offset. */
#define HDR_REDRIVE_OF "redrive-of"

struct redrive_opts {
	bool dry_run;
	int max_attempts; /* a record sent back this often stays dead; 0:
			   * no limit */
};

/* Reads the dead-letter topic from where the redrive group left it to the
 * high watermarks of the start, sends each record back (or reports it as
 * staying dead), and commits its progress once Kafka has confirmed the
 * records sent. Returns the exit status: 0 done, 1 failed, 130 stopped. */
int redrive_run(const struct worker_config *cfg, const char *group,
		const struct redrive_opts *o, volatile const int *stopping);

#endif
