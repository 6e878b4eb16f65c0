/* Redis invalidation after commit: every key the batch's handlers name, in
 * pipelined round trips (UNLINK, generation INCRs, key-index purges, SCAN;
 * never KEYS), on the worker's event_base. */
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
	CACHE_GEN,     /* INCR a generation counter, which never expires */
	CACHE_INDEX,   /* a key index: UNLINK its members, SREM exactly those */
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

/* The name an op is stored under in sluice_owed_invalidations.ops, and
 * back: false for a name this worker does not know (written by a newer
 * one), which must stay owed rather than be guessed at. */
const char *cache_op_name(enum cache_op op);
bool cache_op_parse(const char *name, enum cache_op *op);

/* One template of a kind's invalidation and how its keys go. */
struct cache_template {
	char *tmpl;
	enum cache_op op; /* CACHE_KEY, CACHE_PATTERN, CACHE_GEN, CACHE_INDEX */
};

struct cache_templates {
	struct cache_template *v;
	size_t n;
};

/* A kind's three lists (comma-separated; any may be empty): scan is the
 * classic list (a template with a glob character is a SCAN pattern, any
 * other one key), gen the generation counters, index the key-index sets.
 * Generation and index templates are keys, taken literally. */
void cache_templates_load(struct cache_templates *t, const char *scan,
			  const char *gen, const char *index);
void cache_templates_clear(struct cache_templates *t);
/* False, with why in errstr, when a SCAN template of t also matches one of
 * its generation counters or key indexes (expanded for the same id):
 * the walk would delete the counter or the index. what prefixes the key
 * names ("" or "campaign_"). */
bool cache_templates_check(const struct cache_templates *t,
			   const char *placeholder, const char *what,
			   char *errstr, size_t errstr_size);
/* "messages:{conversation_id}:* by SCAN (...)": how a template's keys go,
 * for the start-up log. malloc'd. */
char *cache_template_mode(const struct cache_template *t);
/* Logs each template's mode once (at start). */
void cache_templates_log(const struct cache_templates *t);
/* Adds every template of t expanded for id. */
void cache_keys_expand(struct cache_keys *k, const struct cache_templates *t,
		       const char *placeholder, const char *id);

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
/* Invalidations carried out (keys, patterns, version and generation bumps,
 * key-index purges; deferred ones when they finally ran) and the keys they
 * removed, since start. */
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
