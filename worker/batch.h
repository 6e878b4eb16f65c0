/* One batch of records, start to end: dispatch each record to its kind's
 * handler, let the handlers look up what they need on the event_base, write
 * everything and the offsets in one transaction, then invalidate Redis. */
#ifndef SLUICE_BATCH_H
#define SLUICE_BATCH_H

#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "consume.h"
#include "contexts.h"
#include "dlq.h"
#include "metrics.h"
#include "pgsink.h"
#include "settings.h"

/* What a batch works with; owned by the caller, outliving the batches. */
struct batch_env {
	const struct worker_config *cfg;
	struct event_base *base;
	struct pgsink *ps;
	struct cache *cache;
	struct dlq *dlq;
	struct contexts *contexts;
	struct composer *composer; /* NULL: none (replay's is real too) */
	struct rconn *redis;	   /* the handlers' reads, NULL: none */
	struct consumer *consumer; /* set once the consumer exists */
	/* Keeps the consumer served while a batch waits on its lookups or
	 * its retries (consume_serve()), so a batch longer than
	 * kafka.max.poll.interval.ms keeps its partitions; called at most
	 * once a second with serve_arg. NULL without a consumer (replay). */
	void (*serve)(void *serve_arg);
	void *serve_arg;
	volatile const int *stopping;
	/* replay: time rules use each record's received-at */
	bool record_clock;
	/* replay --dry-run: every batch is rolled back, nothing is
	 * dead-lettered and no cache key is removed */
	bool dry_run;
	/* replay --no-invalidate: no cache key is removed or owed (a replay
	 * into another database than the one the cache is of) */
	bool no_invalidate;
	/* the one-line batch log at debug level (a terminal shows progress) */
	bool quiet;
	/* The kinds this pipeline applies: bit i = handlers[i], 0 = every
	 * kind. A record of another kind is passed over: its offset moves
	 * with the pipeline's next commit, nothing else happens. */
	uint32_t kinds;
	/* Records of a kind no handler knows, and empty ones, are
	 * dead-lettered here: by exactly one pipeline of a worker. */
	bool owns_unknown;
};

struct batch_totals {
	unsigned long long batches, records, saved, skipped, dead;
	unsigned long long passed;	      /* other pipelines' records */
	unsigned long long dead_by[MD_COUNT]; /* dead, by class of reason */
};

struct batch;

struct batch *batch_new(struct batch_env *env);
void batch_destroy(struct batch *b);
/* The consumer's flush callback (consume_flush_fn): runs on the worker
 * thread and processes msgs[0..n) completely, retrying transient failures
 * with back-off on the event_base, before it returns. */
void batch_process(void *arg, rd_kafka_message_t **msgs, size_t n);
/* Waits ms on the event_base (its lookups and Redis keep being served), in
 * slices so a stop request is seen within 100 ms; a consume_wait_fn. */
void batch_wait(void *arg, int ms);
void batch_totals(const struct batch *b, struct batch_totals *out);
/* Calls fn with each handler's totals (those that keep them), by kind. */
void batch_kind_totals(const struct batch *b,
		       void (*fn)(void *arg, const char *kind,
				  unsigned long long saved,
				  unsigned long long skipped),
		       void *arg);
/* Between batches (and once the consumer is closed): the outbox's upkeep,
 * deleting confirmed rows and performing owed invalidations once Redis
 * answers (owed.c). */
void batch_idle(struct batch *b);
/* Without a consumer (replay): the partitions it holds, whose owed
 * invalidations under its group it performs. */
void batch_hold(struct batch *b, const int32_t *parts, int n);
/* The staging tables of every handler, for pgsink_new(). */
char *batch_staging_sql(void);

#endif
