/* The Redis invalidations a commit owes, kept in PostgreSQL
 * (sluice_owed_invalidations) from the batch's own transaction until Redis
 * confirms them, so they survive a restart of the worker while Redis is
 * down. The table is the only record of what is owed: nothing is kept in
 * memory but the ids of rows already confirmed, to delete. */
#ifndef SLUICE_OWED_H
#define SLUICE_OWED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "pgsink.h"

struct owed;

/* Rows are scoped by ps's group and topic. */
struct owed *owed_new(struct pgsink *ps, struct cache *cache);
void owed_destroy(struct owed *o);

/* Inside the batch's open transaction, before its commit: one statement
 * that inserts keys (unique already) as owed by the batch's partitions and
 * deletes the rows Redis confirmed since the last commit. false: a
 * transient failure (errstr); the batch is retried whole. */
bool owed_write(struct owed *o, const int32_t *parts, int n,
		const struct cache_keys *keys, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
/* After the commit and the invalidation: confirmed says whether Redis
 * removed the keys. Confirmed rows are deleted by the next owed_write() or
 * owed_idle(); the others stay owed. */
void owed_committed(struct owed *o, bool confirmed);

/* The partitions held now (start, assignment, revocation): rows owed for
 * them by an earlier owner are performed by the next owed_idle() or
 * owed_after_batch() that finds Redis answering. */
void owed_assign(struct owed *o, const int32_t *parts, int n);
/* After a batch whose invalidation Redis confirmed: performs what is owed
 * for the partitions held, if anything may be. */
void owed_after_batch(struct owed *o);
/* Between batches, on the worker thread: deletes the confirmed rows, and
 * performs what is owed once Redis answers (pipelined, in pages). */
void owed_idle(struct owed *o);
/* Rows of the partitions held still owed (cache_pending() shows it too). */
size_t owed_count(const struct owed *o);

#endif
