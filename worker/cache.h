/* Redis invalidation after commit: every key of the affected
 * conversations, in pipelined round trips (SCAN + UNLINK, never KEYS). */
#ifndef SLUICE_CACHE_H
#define SLUICE_CACHE_H

#include <stdbool.h>
#include <stddef.h>

struct cache;

struct cache *cache_new(const char *url, int timeout_ms, const char *templates,
			char *errstr, size_t errstr_size);
void cache_destroy(struct cache *c);

/* Removes the keys of these conversations. When Redis is unreachable the
 * ids are kept and retried by later calls; the data is already committed.
 * Returns the number of keys removed, or -1 when it had to defer. */
long long cache_invalidate(struct cache *c, char *const *ids, size_t n);
/* Retries deferred invalidations (call when idle). */
void cache_retry(struct cache *c);
size_t cache_pending(const struct cache *c);

/* Expands one key template for a conversation id. A template holding a
 * glob character is a SCAN pattern, and the id is escaped inside it so an
 * id such as "*" matches only itself. Returns a malloc'd string. */
char *cache_expand(const char *tmpl, const char *id, bool *is_pattern);

#endif
