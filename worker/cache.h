/* Redis invalidation after commit: every key the batch's handlers name, in
 * pipelined round trips (SCAN + UNLINK, never KEYS), on the worker's
 * event_base. */
#ifndef SLUICE_CACHE_H
#define SLUICE_CACHE_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

/* redis_addr_parse and redis_async_open, for the users of cache.h that
 * keep a connection of their own (the /readyz probe). */
#include "redisconn.h"

enum cache_op {
	CACHE_KEY,     /* UNLINK the key */
	CACHE_PATTERN, /* SCAN MATCH it, UNLINK what matches */
	CACHE_BUMP,    /* INCR a version key (fills that began earlier lose) */
};

struct cache_key {
	char *key;
	enum cache_op op;
};

/* The keys a batch removes after its commit. */
struct cache_keys {
	struct cache_key *v;
	size_t n, cap;
};

/* Adds each template expanded for id (see cache_expand). */
void cache_keys_add(struct cache_keys *k, char *const *templates,
		    size_t n_templates, const char *placeholder,
		    const char *id);
void cache_keys_bump(struct cache_keys *k, const char *key);
/* Adds a copy of key. */
void cache_keys_push(struct cache_keys *k, const char *key, enum cache_op op);
/* Sorts and drops repeats. */
void cache_keys_unique(struct cache_keys *k);
void cache_keys_clear(struct cache_keys *k);
void cache_keys_free(struct cache_keys *k);

/* The literal of a pattern that is a literal then one "*" (escapes
 * undone), malloc'd; NULL for any other pattern. Such patterns are matched
 * together in one walk of the keyspace. */
char *cache_prefix_of(const char *pattern);

/* "a:{x}:*, b:{x}" → templates; returns how many. */
size_t cache_templates_parse(const char *list, char ***out);
void cache_templates_free(char **t, size_t n);

struct cache;

/* Invalidation runs on base: each round trip waits on the loop, at most
 * timeout_ms. */
struct cache *cache_new(struct event_base *base, const char *url,
			const char *password, int timeout_ms, char *errstr,
			size_t errstr_size);
void cache_destroy(struct cache *c);

/* Removes the keys (sorted and made unique first). Returns the number of
 * keys removed, or -1 when Redis is unreachable (or within the back-off
 * after a failure, so a Redis that is down costs a batch nothing): the
 * caller keeps them owed (owed.c holds them in PostgreSQL). */
long long cache_invalidate(struct cache *c, struct cache_keys *k);
/* One PING round trip (within the back-off: false at once). */
bool cache_ping(struct cache *c);
/* Invalidations still owed to Redis, as owed.c counts them (the rows of
 * sluice_owed_invalidations of this worker's partitions): the gauge
 * sluice_worker_invalidations_owed. */
size_t cache_pending(const struct cache *c);
/* Invalidations carried out (keys, patterns, version bumps; deferred ones
 * when they finally ran) and the keys they removed, since start. */
void cache_totals(const struct cache *c, unsigned long long *done,
		  unsigned long long *removed);
void cache_set_owed(struct cache *c, size_t n);

/* Expands a template: each placeholder ("{conversation_id}") becomes id. A
 * template holding a glob character is a SCAN pattern, and the id is
 * escaped inside it so an id such as "*" matches only itself. Returns a
 * malloc'd string. */
char *cache_expand(const char *tmpl, const char *placeholder, const char *id,
		   bool *is_pattern);

#endif
