/* Mode "dlq": what is in the dead-letter topic, without changing it:
 * "list" prints each record's place, origin, reason, attempts, time and a
 * preview of its body; "show" prints one record whole. Read-only: no
 * group offset is committed, nothing is produced. */
#ifndef SLUICE_DLQTOOL_H
#define SLUICE_DLQTOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "settings.h"

struct dlq_tool_opts {
	bool show;	   /* false: list */
	int32_t partition; /* show: the record's place */
	int64_t offset;
	bool json;  /* one JSON object per line */
	long limit; /* list: at most this many records (0: all) */
};

/* Parses "PARTITION:OFFSET" (or "PARTITION@OFFSET") for show. */
bool dlq_tool_parse_place(const char *s, struct dlq_tool_opts *o);

/* Returns the exit status: 0 done, 1 failed (logged), 3 show: no such
 * record. */
int dlq_tool_run(const struct worker_config *cfg, const struct dlq_tool_opts *o,
		 volatile const int *stopping);

#endif
