/* PostgreSQL side of the worker: one transaction per batch holding the rows
 * and the consumed offsets. */
#ifndef SLUICE_PGSINK_H
#define SLUICE_PGSINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "handlers/transcript.h"

struct pgsink;

struct pgsink *pgsink_new(const char *dsn, const char *group_id,
			  const char *topic);
void pgsink_destroy(struct pgsink *ps);
/* (Re)connects when needed; false while the database is unreachable. */
bool pgsink_connect(struct pgsink *ps, char *errstr, size_t errstr_size);

/* next_offset of each partition, -1 where none is stored. */
bool pgsink_load_offsets(struct pgsink *ps, const int32_t *parts, int n,
			 int64_t *out, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* BEGIN, then lock the offsets rows of the batch's partitions and return
 * what is stored (-1 for none): records below it were applied already. */
bool pgsink_begin(struct pgsink *ps, const int32_t *parts, int n,
		  int64_t *fence, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

struct pgsink_result {
	long long conversations;
	long long inserted;
};

/* Writes the rows and the offsets, then COMMITs. */
bool pgsink_write(struct pgsink *ps, const struct transcript_rows *rows,
		  const int32_t *parts, const int64_t *next_offsets, int n,
		  struct pgsink_result *res, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
void pgsink_rollback(struct pgsink *ps);

#endif
