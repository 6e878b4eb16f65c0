/* What a batch needs from the handler of each record kind, and the table
 * that maps a kind (the record's "kind" header) to its handler, as
 * pgbouncer's admin command table maps a word to a function. Each handler
 * owns its SQL, its staging tables and its cache keys; pgsink only owns the
 * transaction, the offset fence and COPY. */
#ifndef SLUICE_HANDLER_H
#define SLUICE_HANDLER_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/kinds.h"
#include "../../common/util.h"
#include "../cache.h"
#include "../settings.h"

struct pgsink;
struct contexts;
struct composer;
struct rconn;

/* One record of a batch, as a handler sees it. */
struct record {
	const char *value; /* the body as received; not NUL-terminated */
	size_t len;
	const char *source;	 /* header "source" */
	const char *campaign_id; /* header "campaign-id", "" if absent */
	const char *sender;	 /* header "chat-sender", "" if absent */
	int64_t received_ms;	 /* header "received-at", else the timestamp */
	int64_t seq;		 /* position in the batch */
};

/* The worker's shared services a handler may use. */
struct handler_env {
	const struct worker_config *cfg;
	struct event_base *base;
	struct contexts *contexts;
	struct composer *composer;
	struct rconn *redis; /* the handlers' own reads (the model cache) */
	/* Rules that depend on the time (a run's end_time) use the record's
	 * received-at instead of the clock: a replay then decides as the
	 * live worker did. */
	bool record_clock;
};

struct handler {
	const char *kind; /* KIND_* of common/kinds.h */
	/* Its records come small and steady (a chat message each): its
	 * topic's consumer gathers them into fetches of 16 KiB or 10 ms, so
	 * a busy topic costs the broker a fetch per 16 KiB rather than one
	 * per record. Otherwise a fetch answers at the first record and an
	 * idle topic is asked twice a second (worker_config.gather_fetches,
	 * docs/operations.md, "Latency"). */
	bool gather_fetches;
	/* CREATE TEMP TABLE ... ON COMMIT DELETE ROWS, run on each new
	 * connection; NULL for none. */
	const char *staging_sql;
	void *(*create)(const struct handler_env *env);
	void (*destroy)(void *st);
	/* Forget the rows of the previous attempt. */
	void (*reset)(void *st);
	/* Takes one record. false: it can never succeed (reason says why)
	 * and nothing of it was kept. */
	bool (*add)(void *st, const struct record *r, char *reason,
		    size_t reason_size);
	/* Optional, for a kind with no lookups (no prepare): called after
	 * each record add() took when the batch streams (all its records of
	 * this one kind, no key twice; its transaction is open already), to
	 * send the rows built so far while the next records are decoded.
	 * It may leave its rows' stream open (pgsink_stream_*); write() must
	 * end it before any other statement. false: a transient failure
	 * (errstr). */
	bool (*stream)(void *st, struct pgsink *ps, char *errstr,
		       size_t errstr_size);
	/* Optional: starts asynchronous lookups on env->base once every
	 * record is added; the batch runs the loop until prepared() is
	 * true. It may read the database first (ps, no transaction open).
	 * false: a transient failure (errstr); the batch is retried. */
	bool (*prepare)(void *st, struct pgsink *ps, char *errstr,
			size_t errstr_size);
	bool (*prepared)(void *st);
	/* Writes its rows inside the batch's open transaction. false: a
	 * transient failure (errstr); the batch is retried whole. */
	bool (*write)(void *st, struct pgsink *ps, char *errstr,
		      size_t errstr_size);
	/* The Redis keys to remove after the commit. Called before write(),
	 * so it reads only what add() and prepare() set. */
	void (*keys)(void *st, struct cache_keys *out);
	/* Its part of the batch's log line, "" when it had no record. */
	void (*summary)(void *st, struct buf *line);
	/* Counters for the totals (saved rows, skipped duplicates). */
	void (*totals)(void *st, unsigned long long *saved,
		       unsigned long long *skipped);
};

/* Every handler, in the order their rows are written, NULL-terminated; at
 * most MAX_KINDS of them. */
#define MAX_KINDS 16
extern const struct handler *const handlers[];

#endif
