/* A pipeline: one consumer group's consumer, batch, PostgreSQL session,
 * Redis connections, lead-context service and dead-letter producer, on an
 * event_base of its own, run on a thread of its own. Nothing in it is
 * shared with another pipeline but the configuration (read only), the
 * stop flag and the metrics registry (locked), so a pipeline waiting on a
 * hung dependency holds no other pipeline back. */
#include "pipeline.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "cache.h"
#include "consume.h"
#include "contexts.h"
#include "dlq.h"
#include "composer.h"
#include "httpc.h"
#include "redisconn.h"
#include "handlers/handler.h"
#include "metrics.h"
#include "pgsink.h"
#include "status.h"

/* The loop's heartbeat while a batch waits on it (lookups, retries). */
#define BEAT_MS 250

struct pipeline {
	/* The worker's configuration with this pipeline's group: a shallow
	 * copy, whose strings belong to the worker's (group_id to group). */
	struct worker_config cfg;
	char *group;
	char *topic; /* cfg.topic when the spec named one */
	char name[32];
	volatile int *stopping;
	struct event_base *base;
	struct pgsink *ps;
	struct cache *cache;
	struct dlq *dlq;
	struct httpc *httpc; /* the lead source's and the composer's */
	struct composer *composer;
	struct rconn *redis; /* the handlers' reads (the model cache) */
	struct contexts *contexts;
	struct batch_env env;
	struct batch *batch;
	struct consumer *consumer;
	struct metrics_pipe *metrics;
	/* Holding its partitions paused for the operator (/admin/pause). */
	bool held;
	struct event *idle_ev; /* bounds an idle wait on the loop */
	struct event *beat_ev;
	pthread_t thread;
	bool started;
	bool fatal;
	atomic_llong beat_ms;
	atomic_bool done;
};

static void kind_saved(void *arg, const char *kind, unsigned long long saved,
		       unsigned long long skipped)
{
	struct metrics_figures *f = arg;

	(void)skipped;
	for (int i = 0; i < MAX_KINDS && handlers[i]; i++)
		if (strcmp(handlers[i]->kind, kind) == 0)
			f->kind_saved[i] = saved;
}

static void partition_offsets(void *arg, int32_t partition, int64_t *low,
			      int64_t *high, int64_t *position)
{
	consume_offsets(arg, partition, low, high, position);
}

/* batch_env.serve: on the pipeline's thread, inside its batch. */
static void serve_consumer(void *arg)
{
	consume_serve(arg);
}

/* What the endpoint shows of this pipeline, handed to metrics.c from the
 * pipeline's own thread. */
static void pipeline_report(struct pipeline *p)
{
	struct metrics_figures f = {0};
	struct batch_totals t;

	batch_totals(p->batch, &t);
	f.totals = (struct metrics_totals){t.batches, t.records, t.saved,
					   t.skipped, t.dead,	 {0}};
	memcpy(f.totals.dead_by, t.dead_by, sizeof(f.totals.dead_by));
	batch_kind_totals(p->batch, kind_saved, &f);
	cache_totals(p->cache, &f.invalidations, &f.keys_removed);
	composer_figures(p->composer, &f.composer);
	f.owed = (unsigned long long)cache_pending(p->cache);
	f.assigned = p->consumer ? consume_assigned(p->consumer) : 0;
	f.lookups_inflight = contexts_inflight(p->contexts);
	f.held = p->held;
	metrics_pipe_report(&f, p->consumer ? partition_offsets : NULL,
			    p->consumer);
}

/* The consumer's flush callback, on the pipeline's thread: the batch, with
 * its start shown by /status while it runs. */
static void pipeline_flush(void *arg, rd_kafka_message_t **msgs, size_t n)
{
	struct pipeline *p = arg;

	metrics_batch_open(n);
	batch_process(p->batch, msgs, n);
	metrics_batch_open(0);
}

static void pipeline_wait(void *arg, int ms)
{
	struct pipeline *p = arg;

	batch_wait(p->batch, ms);
}

/* Loop timer: only ends an idle wait (EVLOOP_ONCE) after 100 ms. */
static void handle_idle(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Also while a batch waits (lookups, retries with PostgreSQL down): the
 * endpoint's figures, lag above all, keep up with it. */
static void handle_beat(evutil_socket_t fd, short what, void *arg)
{
	struct pipeline *p = arg;

	(void)fd;
	(void)what;
	atomic_store(&p->beat_ms, util_mono_ms());
	if (p->consumer)
		pipeline_report(p);
}

struct pipeline *pipeline_new(const struct worker_config *cfg,
			      const struct pipeline_spec *spec, char *err,
			      size_t errsz)
{
	struct pipeline *p = xcalloc(1, sizeof(*p));
	char *staging = batch_staging_sql();
	struct timeval beat = util_ms_tv(BEAT_MS);

	p->cfg = *cfg;
	p->group = xstrdup(spec->group);
	p->cfg.group_id = p->group;
	if (spec->topic) {
		p->topic = xstrdup(spec->topic);
		p->cfg.topic = p->topic;
	}
	p->cfg.gather_fetches = spec->gather_fetches;
	snprintf(p->name, sizeof(p->name), "%s", spec->name);
	p->stopping = spec->stopping;
	atomic_store(&p->beat_ms, util_mono_ms());
	p->metrics = metrics_pipe_new(
	    spec->name, spec->consumer ? spec->group : NULL, p->cfg.topic);
	p->base = event_base_new();
	if (!p->base) {
		snprintf(err, errsz, "event_base_new failed");
		goto fail;
	}
	p->ps = pgsink_new(cfg->postgres_dsn, p->group, p->cfg.topic, staging);
	pgsink_set_idle_tx_timeout(p->ps, cfg->pg_idle_tx_timeout_ms);
	/* A kind's own group starts where the shared one stopped. */
	if (strcmp(p->group, cfg->group_id) != 0)
		pgsink_set_start_group(p->ps, cfg->group_id);
	p->cache = cache_new(p->base, cfg->redis_url, cfg->redis_password,
			     cfg->redis_timeout_ms, err, errsz);
	if (!p->cache)
		goto fail;
	/* One HTTP client per pipeline, on its event_base: the services
	 * that call out share its connections. */
	p->httpc = httpc_new(p->base,
			     cfg->lc_concurrency > cfg->composer_concurrency
				 ? cfg->lc_concurrency
				 : cfg->composer_concurrency,
			     cfg->http_ca_file, err, errsz);
	if (!p->httpc)
		goto fail;
	p->contexts = contexts_new(p->base, &p->cfg, p->httpc, err, errsz);
	if (!p->contexts)
		goto fail;
	p->composer = composer_new(p->base, p->httpc, &p->cfg, err, errsz);
	if (!p->composer)
		goto fail;
	p->redis =
	    rconn_new(p->base, cfg->redis_url, cfg->redis_password,
		      cfg->redis_timeout_ms, "campaign models", err, errsz);
	if (!p->redis)
		goto fail;
	if (!pgsink_connect(p->ps, err, errsz))
		log_warn("%s: postgres not reachable yet: %s (will retry)",
			 p->name, err);
	p->dlq =
	    dlq_new(cfg->brokers, cfg->dlq_topic, cfg->kafka,
		    cfg->topic_partitions, cfg->group_instance_id, err, errsz);
	if (!p->dlq)
		goto fail;
	p->env = (struct batch_env){
	    .cfg = &p->cfg,
	    .base = p->base,
	    .ps = p->ps,
	    .cache = p->cache,
	    .dlq = p->dlq,
	    .contexts = p->contexts,
	    .composer = p->composer,
	    .redis = p->redis,
	    .stopping = spec->stopping,
	    .kinds = spec->kinds,
	    .owns_unknown = spec->owns_unknown,
	    .record_clock = spec->record_clock,
	};
	p->batch = batch_new(&p->env);
	p->beat_ev = event_new(p->base, -1, EV_PERSIST, handle_beat, p);
	if (!p->beat_ev || event_add(p->beat_ev, &beat) != 0) {
		snprintf(err, errsz, "cannot arm the pipeline's timer");
		goto fail;
	}
	free(staging);
	staging = NULL;
	if (!spec->consumer)
		return p;
	p->consumer = consume_new(&p->cfg, p->ps, spec->stopping,
				  pipeline_flush, pipeline_wait, p, err, errsz);
	if (!p->consumer)
		goto fail;
	p->env.consumer = p->consumer;
	p->env.serve = serve_consumer;
	p->env.serve_arg = p->consumer;
	if (!consume_watch(p->consumer, p->base, err, errsz))
		goto fail;
	p->idle_ev = evtimer_new(p->base, handle_idle, p);
	if (!p->idle_ev) {
		snprintf(err, errsz, "cannot arm the pipeline's idle timer");
		goto fail;
	}
	return p;
fail:
	free(staging);
	pipeline_destroy(p);
	return NULL;
}

/* The consume loop: a batch at a time until the stop flag. */
static void *pipeline_main(void *arg)
{
	struct pipeline *p = arg;
	const struct timeval idle = {0, 100 * 1000};
	struct batch_totals t;

	metrics_pipe_enter(p->metrics);
	log_info("pipeline %s: consuming %s as group %s", p->name, p->cfg.topic,
		 p->group);
	while (!*p->stopping && !consume_fatal(p->consumer)) {
		bool hold = status_paused();
		size_t n = 0;

		/* Paused by the operator: no new batch, but the consumer is
		 * served (partitions paused, the group kept, rebalances
		 * answered); the batch that ran when the pause came has
		 * committed already, since this is checked between batches.
		 * consume_batch() resumes the partitions. */
		if (hold)
			consume_serve(p->consumer);
		else
			n = consume_batch(p->consumer, 0);
		if (hold != p->held) {
			p->held = hold;
			log_info("pipeline %s: %s", p->name,
				 hold ? "paused by the operator: holding its "
					"partitions, taking no batch"
				      : "resumed");
		}

		if (n == 0) {
			batch_idle(p->batch);
			/* Idle: wait on the loop (late replies, retries)
			 * until the consumer queue wakes it, at most
			 * 100 ms. */
			evtimer_add(p->idle_ev, &idle);
			event_base_loop(p->base, EVLOOP_ONCE);
		}
		atomic_store(&p->beat_ms, util_mono_ms());
		pipeline_report(p);
	}
	if (!*p->stopping) {
		p->fatal = true;  /* consume_fatal(): logged */
		*p->stopping = 1; /* the others drain and the worker exits */
	}
	consume_close(p->consumer); /* may flush a last batch */
	p->consumer = NULL;
	p->env.consumer = NULL;
	p->env.serve = NULL;
	batch_idle(p->batch); /* the outbox's last upkeep */
	pipeline_report(p);
	batch_totals(p->batch, &t);
	log_info(
	    "pipeline %s stopped: %llu batches, %llu records, %llu rows saved, %llu duplicates skipped, %llu dead-lettered",
	    p->name, t.batches, t.records, t.saved, t.skipped, t.dead);
	atomic_store(&p->done, true);
	return NULL;
}

bool pipeline_start(struct pipeline *p, char *err, size_t errsz)
{
	int rc = pthread_create(&p->thread, NULL, pipeline_main, p);

	if (rc != 0) {
		snprintf(err, errsz, "cannot start pipeline %s: %s", p->name,
			 strerror(rc));
		return false;
	}
	p->started = true;
	return true;
}

bool pipeline_done(const struct pipeline *p)
{
	return !p->started || atomic_load(&p->done);
}

int64_t pipeline_beat(const struct pipeline *p)
{
	return atomic_load(&p->beat_ms);
}

int pipeline_join(struct pipeline *p)
{
	if (p->started) {
		pthread_join(p->thread, NULL);
		p->started = false;
	}
	return p->fatal ? 1 : 0;
}

void pipeline_destroy(struct pipeline *p)
{
	if (!p)
		return;
	pipeline_join(p);
	metrics_pipe_enter(p->metrics); /* a last batch may count */
	if (p->consumer)
		consume_close(p->consumer);
	p->env.consumer = NULL;
	p->env.serve = NULL;
	if (p->batch)
		batch_idle(p->batch);
	metrics_pipe_enter(NULL);
	if (p->idle_ev)
		event_free(p->idle_ev);
	if (p->beat_ev)
		event_free(p->beat_ev);
	dlq_destroy(p->dlq);
	batch_destroy(p->batch);
	contexts_destroy(p->contexts);
	composer_destroy(p->composer);
	rconn_destroy(p->redis);
	httpc_destroy(p->httpc);
	cache_destroy(p->cache);
	pgsink_destroy(p->ps);
	if (p->base)
		event_base_free(p->base);
	free(p->group);
	free(p->topic);
	free(p);
}

struct batch_env *pipeline_env(struct pipeline *p)
{
	return &p->env;
}

struct batch *pipeline_batch(struct pipeline *p)
{
	return p->batch;
}

struct pgsink *pipeline_pgsink(struct pipeline *p)
{
	return p->ps;
}

const char *pipeline_name(const struct pipeline *p)
{
	return p->name;
}
