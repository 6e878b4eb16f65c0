/* sluice-worker: consumes the events topic in a consumer group and turns
 * each batch into rows in PostgreSQL (one transaction, offsets included),
 * then invalidates the affected Redis keys. */
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
#include "cache.h"
#include "consume.h"
#include "dlq.h"
#include "handlers/transcript.h"
#include "pgsink.h"
#include "settings.h"

static volatile sig_atomic_t stop_signal;
static volatile int stopping;

struct worker {
	struct worker_config cfg;
	struct pgsink *ps;
	struct cache *cache;
	struct dlq *dlq;
	struct consumer *consumer;
	struct transcript_rows rows;
	char **conv_ids;
	size_t n_conv_ids;
	unsigned long long batches, records, saved, skipped, dead;
};

static struct worker w;

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

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void conv_ids_clear(void)
{
	for (size_t i = 0; i < w.n_conv_ids; i++)
		free(w.conv_ids[i]);
	w.n_conv_ids = 0;
}

/* The batch's partitions and the next offset of each. */
struct partmap {
	int32_t *parts;
	int64_t *next;
	int64_t *fence;
	int n;
};

static int partmap_index(struct partmap *pm, int32_t p)
{
	for (int i = 0; i < pm->n; i++)
		if (pm->parts[i] == p)
			return i;
	return -1;
}

/* Builds and writes one attempt at the batch. false = transient failure
 * (nothing committed); the caller retries. */
static bool batch_attempt(rd_kafka_message_t **msgs, size_t n,
			  struct partmap *pm, char *err, size_t errsz,
			  struct pgsink_result *res, size_t *dead,
			  size_t *fenced)
{
	size_t dlq_count = 0;

	transcript_rows_reset(&w.rows);
	conv_ids_clear();
	*dead = *fenced = 0;
	if (!pgsink_begin(w.ps, pm->parts, pm->n, pm->fence, err, errsz))
		return false;
	for (size_t i = 0; i < n; i++) {
		rd_kafka_message_t *m = msgs[i];
		int pi = partmap_index(pm, m->partition);
		char kind[32], source[128], received[32], reason[300];
		char *cid = NULL;
		int64_t received_ms;

		if (pm->fence[pi] >= 0 && m->offset < pm->fence[pi]) {
			(*fenced)++; /* applied by an earlier owner */
			continue;
		}
		kafka_header(m, HDR_KIND, kind, sizeof(kind));
		kafka_header(m, HDR_SOURCE, source, sizeof(source));
		kafka_header(m, HDR_RECEIVED_AT, received, sizeof(received));
		received_ms = received[0] ? atoll(received) : 0;
		if (received_ms <= 0)
			received_ms = rd_kafka_message_timestamp(m, NULL);
		if (strcmp(kind, "transcript") != 0) {
			snprintf(reason, sizeof(reason),
				 "unknown kind \"%s\" (header %s)", kind,
				 HDR_KIND);
		} else if (transcript_handle(m->payload, m->len, source,
					     received_ms, (int64_t)i, &w.rows,
					     &cid, reason, sizeof(reason))) {
			w.conv_ids[w.n_conv_ids++] = cid;
			continue;
		}
		if (!dlq_send(w.dlq, m, reason)) {
			snprintf(err, errsz,
				 "dead-letter topic refused a record");
			pgsink_rollback(w.ps);
			return false;
		}
		dlq_count++;
	}
	if (dlq_count > 0 && !dlq_flush(w.dlq, 10000)) {
		snprintf(err, errsz, "dead-letter topic did not confirm");
		pgsink_rollback(w.ps);
		return false;
	}
	*dead = dlq_count;
	return pgsink_write(w.ps, &w.rows, pm->parts, pm->next, pm->n, res, err,
			    errsz);
}

/* The consumer's flush callback: runs on the worker thread. */
static void process_batch(void *arg, rd_kafka_message_t **msgs, size_t n)
{
	struct partmap pm = {.n = 0};
	int32_t *parts = calloc(n, sizeof(*parts));
	int64_t *next = calloc(n, sizeof(*next));
	int64_t *fence = calloc(n, sizeof(*fence));
	struct pgsink_result res = {0, 0};
	int backoff = w.cfg.retry_backoff_min_ms;
	size_t dead = 0, fenced = 0, uniq = 0;
	int64_t t0 = util_mono_ms(), t_commit, t_end;
	long long removed;
	char err[1024];

	(void)arg;
	if (!parts || !next || !fence)
		abort();
	pm.parts = parts;
	pm.next = next;
	pm.fence = fence;
	for (size_t i = 0; i < n; i++) {
		int pi = partmap_index(&pm, msgs[i]->partition);

		if (pi < 0) {
			pi = pm.n++;
			pm.parts[pi] = msgs[i]->partition;
			pm.next[pi] = 0;
		}
		if (msgs[i]->offset + 1 > pm.next[pi])
			pm.next[pi] = msgs[i]->offset + 1;
	}
	while (!batch_attempt(msgs, n, &pm, err, sizeof(err), &res, &dead,
			      &fenced)) {
		log_warn("batch of %zu records not committed: %s; retrying in "
			 "%d ms",
			 n, err, backoff);
		if (stopping) {
			log_warn("stopping: the batch stays uncommitted and "
				 "will be consumed again");
			goto done;
		}
		sleep_ms(backoff);
		backoff = backoff * 2 > w.cfg.retry_backoff_max_ms
			      ? w.cfg.retry_backoff_max_ms
			      : backoff * 2;
	}
	t_commit = util_mono_ms();
	consume_commit_async(w.consumer, pm.parts, pm.next, pm.n);

	/* After the commit: invalidate each affected conversation once. */
	qsort(w.conv_ids, w.n_conv_ids, sizeof(char *), cmp_str);
	for (size_t i = 0; i < w.n_conv_ids; i++)
		if (uniq == 0 ||
		    strcmp(w.conv_ids[uniq - 1], w.conv_ids[i]) != 0)
			w.conv_ids[uniq++] = w.conv_ids[i];
		else
			free(w.conv_ids[i]);
	w.n_conv_ids = uniq;
	removed = cache_invalidate(w.cache, w.conv_ids, w.n_conv_ids);
	t_end = util_mono_ms();

	w.batches++;
	w.records += n;
	w.saved += (unsigned long long)res.inserted;
	w.skipped += w.rows.n_messages - (size_t)res.inserted;
	w.dead += dead;
	log_info(
	    "batch of %zu records: saved %lld messages in %lld ms (database "
	    "%lld ms, cache %lld ms), skipped %lld duplicates, %zu "
	    "conversations, %zu dead-lettered, %zu already applied, %s%lld "
	    "cache keys removed",
	    n, res.inserted, (long long)(t_end - t0),
	    (long long)(t_commit - t0), (long long)(t_end - t_commit),
	    (long long)w.rows.n_messages - res.inserted, uniq, dead, fenced,
	    removed < 0 ? "redis down: " : "", removed < 0 ? 0 : removed);
done:
	free(parts);
	free(next);
	free(fence);
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
	int64_t wd_ms, last_wd = 0;
	int c;

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

	transcript_rows_init(&w.rows);
	w.conv_ids = calloc((size_t)w.cfg.batch_max, sizeof(char *));
	w.ps = pgsink_new(w.cfg.postgres_dsn, w.cfg.group_id, w.cfg.topic);
	w.cache = cache_new(w.cfg.redis_url, w.cfg.redis_timeout_ms,
			    w.cfg.invalidate_keys, err, sizeof(err));
	if (!w.conv_ids || !w.cache) {
		log_error("%s", w.cache ? "out of memory" : err);
		return 1;
	}
	if (!pgsink_connect(w.ps, err, sizeof(err)))
		log_warn("postgres not reachable yet: %s (will retry)", err);
	w.dlq = dlq_new(w.cfg.brokers, w.cfg.dlq_topic, w.cfg.kafka,
			w.cfg.topic_partitions, err, sizeof(err));
	if (!w.dlq) {
		log_error("%s", err);
		return 1;
	}
	w.consumer = consume_new(&w.cfg, w.ps, &stopping, process_batch, NULL,
				 err, sizeof(err));
	if (!w.consumer) {
		log_error("%s", err);
		return 1;
	}
	log_info("consuming %s as group %s on %s", w.cfg.topic, w.cfg.group_id,
		 w.cfg.brokers);
	sdnotify("READY=1");
	wd_ms = sdnotify_watchdog_interval_ms();

	while (!stopping) {
		size_t n = consume_batch(w.consumer, 100);

		if (n == 0)
			cache_retry(w.cache);
		if (wd_ms > 0 && util_mono_ms() - last_wd >= wd_ms) {
			last_wd = util_mono_ms();
			sdnotify("WATCHDOG=1");
			sdnotify_status("partitions=%d batches=%llu saved=%llu "
					"skipped=%llu dead=%llu",
					consume_assigned(w.consumer), w.batches,
					w.saved, w.skipped, w.dead);
		}
	}

	log_info("received %s: finishing the batch and leaving the group",
		 strsignal(stop_signal ? stop_signal : SIGTERM));
	sdnotify("STOPPING=1");
	consume_close(w.consumer);
	cache_retry(w.cache);
	dlq_destroy(w.dlq);
	log_info("stopped: %llu batches, %llu records, %llu messages saved, "
		 "%llu duplicates skipped, %llu dead-lettered",
		 w.batches, w.records, w.saved, w.skipped, w.dead);
	conv_ids_clear();
	free(w.conv_ids);
	transcript_rows_free(&w.rows);
	cache_destroy(w.cache);
	pgsink_destroy(w.ps);
	worker_config_free(&w.cfg);
	return 0;
}
