/* sluice-worker: the launcher. Reads the configuration, builds the
 * daemon's objects and runs a mode: consume (the consumer group). The
 * batch logic lives in batch.c, each kind's in handlers/. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/sdnotify.h"
#include "../common/util.h"
#include "batch.h"
#include "cache.h"
#include "consume.h"
#include "contexts.h"
#include "dlq.h"
#include "pgsink.h"
#include "settings.h"

static volatile sig_atomic_t stop_signal;
static volatile int stopping;

/* A raw signal handler only sets the flag; the loop does the work. */
static void on_signal(int sig)
{
	stop_signal = sig;
	stopping = 1;
}

static void usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: sluice-worker -c FILE [--check-config]\n"
	    "       sluice-worker --help | --version | --list-keys\n"
	    "\n"
	    "Consumes sluice events from Kafka in a consumer group and writes\n"
	    "them to PostgreSQL, one transaction per batch with the offsets,\n"
	    "then invalidates the affected Redis keys.\n"
	    "\n"
	    "  -c, --config FILE   configuration file (see "
	    "docs/configuration.md)\n"
	    "      --check-config  validate the configuration, print it, exit\n"
	    "      --list-keys     print every configuration key\n"
	    "  -h, --help          this text\n"
	    "  -V, --version       print the version\n"
	    "\n"
	    "Environment: SLUICE_KAFKA_BROKERS, SLUICE_TOPIC, "
	    "SLUICE_POSTGRES_DSN,\n"
	    "SLUICE_REDIS_URL override the file.\n");
}

/* The daemon's objects, built in order and torn down in reverse. */
struct worker {
	struct worker_config cfg;
	struct event_base *base;
	struct pgsink *ps;
	struct cache *cache;
	struct dlq *dlq;
	struct contexts *contexts;
	struct batch_env env;
	struct batch *batch;
	struct consumer *consumer;
};

static bool worker_setup(struct worker *w, char *err, size_t errsz)
{
	char *staging = batch_staging_sql();

	w->base = event_base_new();
	if (!w->base) {
		snprintf(err, errsz, "event_base_new failed");
		free(staging);
		return false;
	}
	w->ps = pgsink_new(w->cfg.postgres_dsn, w->cfg.group_id, w->cfg.topic,
			   staging);
	free(staging);
	w->cache = cache_new(w->base, w->cfg.redis_url, w->cfg.redis_timeout_ms,
			     err, errsz);
	if (!w->cache)
		return false;
	w->contexts = contexts_new(w->base, &w->cfg, err, errsz);
	if (!w->contexts)
		return false;
	if (!pgsink_connect(w->ps, err, errsz))
		log_warn("postgres not reachable yet: %s (will retry)", err);
	w->dlq = dlq_new(w->cfg.brokers, w->cfg.dlq_topic, w->cfg.kafka,
			 w->cfg.topic_partitions, err, errsz);
	if (!w->dlq)
		return false;
	w->env = (struct batch_env){
	    .cfg = &w->cfg,
	    .base = w->base,
	    .ps = w->ps,
	    .cache = w->cache,
	    .dlq = w->dlq,
	    .contexts = w->contexts,
	    .stopping = &stopping,
	};
	w->batch = batch_new(&w->env);
	w->consumer = consume_new(&w->cfg, w->ps, &stopping, batch_process,
				  batch_wait, w->batch, err, errsz);
	if (!w->consumer)
		return false;
	w->env.consumer = w->consumer;
	return true;
}

static void worker_cleanup(struct worker *w)
{
	if (w->consumer)
		consume_close(w->consumer); /* may flush a last batch */
	w->env.consumer = NULL;
	if (w->batch)
		batch_idle(w->batch); /* the outbox's last upkeep */
	dlq_destroy(w->dlq);
	batch_destroy(w->batch);
	contexts_destroy(w->contexts);
	cache_destroy(w->cache);
	pgsink_destroy(w->ps);
	if (w->base)
		event_base_free(w->base);
}

/* Mode "consume": the consumer group, a batch at a time, until SIGTERM. */
static int run_consume(struct worker *w)
{
	struct batch_totals t;
	int64_t wd_ms, last_wd = 0;

	log_info("consuming %s as group %s on %s", w->cfg.topic,
		 w->cfg.group_id, w->cfg.brokers);
	sdnotify("READY=1");
	wd_ms = sdnotify_watchdog_interval_ms();
	while (!stopping) {
		size_t n = consume_batch(w->consumer, 100);

		if (n == 0) {
			batch_idle(w->batch);
			/* serve what is left on the loop (late replies) */
			event_base_loop(w->base, EVLOOP_NONBLOCK);
		}
		if (wd_ms > 0 && util_mono_ms() - last_wd >= wd_ms) {
			last_wd = util_mono_ms();
			batch_totals(w->batch, &t);
			sdnotify("WATCHDOG=1");
			sdnotify_status("partitions=%d batches=%llu saved=%llu "
					"skipped=%llu dead=%llu",
					consume_assigned(w->consumer),
					t.batches, t.saved, t.skipped, t.dead);
		}
	}
	log_info("received %s: finishing the batch and leaving the group",
		 strsignal(stop_signal ? stop_signal : SIGTERM));
	sdnotify("STOPPING=1");
	consume_close(w->consumer);
	w->consumer = NULL;
	w->env.consumer = NULL;
	batch_totals(w->batch, &t);
	log_info(
	    "stopped: %llu batches, %llu records, %llu transcript messages "
	    "saved, %llu duplicates skipped, %llu dead-lettered",
	    t.batches, t.records, t.saved, t.skipped, t.dead);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, 'k'},
	    {"list-keys", no_argument, NULL, 'l'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0}};
	const char *config_path = NULL;
	bool check_only = false;
	char err[1024];
	struct sigaction sa;
	static struct worker w;
	int c, rc;

	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': config_path = optarg; break;
		case 'k': check_only = true; break;
		case 'l': cfg_list_keys(worker_settings, stdout); return 0;
		case 'h': usage(stdout); return 0;
		case 'V':
			printf("sluice-worker %s (librdkafka %s)\n",
			       SLUICE_VERSION, rd_kafka_version_str());
			return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || !config_path) {
		usage(stderr);
		return 2;
	}
	if (!worker_config_load(&w.cfg, config_path, err, sizeof(err))) {
		fprintf(stderr, "sluice-worker: %s\n", err);
		worker_config_free(&w.cfg);
		return 1;
	}
	if (check_only) {
		worker_config_dump(&w.cfg);
		printf("configuration ok\n");
		worker_config_free(&w.cfg);
		return 0;
	}
	log_setup("sluice-worker", w.cfg.log_level, w.cfg.log_format == 1);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (!worker_setup(&w, err, sizeof(err))) {
		log_error("%s", err);
		worker_cleanup(&w);
		worker_config_free(&w.cfg);
		return 1;
	}
	rc = run_consume(&w);
	worker_cleanup(&w);
	worker_config_free(&w.cfg);
	return rc;
}
