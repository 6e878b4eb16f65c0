/* Lead contexts, the shared service: a batch's distinct leads read through
 * Redis (cache-aside with a lease against stampedes and a version against
 * stale fills), misses fetched from the context source with at most K
 * lookups in flight, as a sliding window, all on the worker's event_base. */
#ifndef SLUICE_CONTEXTS_H
#define SLUICE_CONTEXTS_H

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "settings.h"

struct contexts;

/* How a lead is named: by its id, or by a phone number (digits only). */
enum ctx_ns { CTX_NS_LEAD = 0, CTX_NS_PHONE, CTX_NS_COUNT };

enum ctx_state {
	CTX_PENDING = 0,
	CTX_FOUND,	 /* *ctx is the context object */
	CTX_NOT_FOUND,	 /* the source says the lead does not exist */
	CTX_UNAVAILABLE, /* the source failed, retries exhausted, or the
			    batch's lookup budget ran out */
	CTX_INVALID,	 /* the source answered a context that cannot be
			    used: not UTF-8, a NUL, not one JSON object */
};

struct contexts_stats {
	size_t leads;	     /* distinct leads asked for */
	size_t hits;	     /* served by Redis */
	size_t misses;	     /* not in Redis (or Redis down) */
	size_t lease_waits;  /* waited for another worker's fill */
	size_t redis_errors; /* Redis replies that never came */
	size_t lookups;	     /* calls to the source, retries included */
	size_t failures;     /* calls that failed or timed out */
	size_t invalid;	     /* leads whose context was refused */
	size_t over_budget;  /* leads given up when the budget ran out */
	size_t cancels;	     /* running PostgreSQL lookups cancelled */
	int peak_inflight;
	int64_t ms; /* wall time from the first read to the last answer */
};

struct httpc;

/* httpc: the HTTP source's client (the caller's, outlives the service). */
struct contexts *contexts_new(struct event_base *base,
			      const struct worker_config *cfg,
			      struct httpc *httpc, char *errstr,
			      size_t errstr_size);
void contexts_destroy(struct contexts *c);

/* Forgets the previous batch's leads (their contexts and stats). */
void contexts_reset(struct contexts *c);
/* Adds a lead to the batch's set; asking twice costs nothing. */
void contexts_want(struct contexts *c, enum ctx_ns ns, const char *key);
/* Starts resolving every wanted lead not resolved yet; returns at once.
 * The event_base then runs until contexts_done(), which is at most
 * lead_context.batch_budget_ms away: the budget starts here, and when it
 * runs out every lead still unresolved becomes CTX_UNAVAILABLE. */
void contexts_fetch(struct contexts *c);
bool contexts_done(const struct contexts *c);
/* A safety net: every lead still unresolved becomes CTX_UNAVAILABLE. */
void contexts_give_up(struct contexts *c);
/* A resolved lead's state; *ctx is valid until contexts_reset(). */
enum ctx_state contexts_get(const struct contexts *c, enum ctx_ns ns,
			    const char *key, const cJSON **ctx);
const struct contexts_stats *contexts_stats(const struct contexts *c);
/* Lookups to the source in flight now. */
int contexts_inflight(const struct contexts *c);

/* Called on the event_base each time one of the batch's leads resolves
 * (contexts_get() then answers for it), so work per lead (a message's
 * composition) starts at once instead of after the whole batch. */
typedef void (*contexts_lead_fn)(void *arg, enum ctx_ns ns, const char *key);
void contexts_set_listener(struct contexts *c, contexts_lead_fn fn, void *arg);

#endif
