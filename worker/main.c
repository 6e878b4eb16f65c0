/* sluice-worker: the launcher. Reads the configuration, builds the
 * daemon's objects and runs a mode: consume (the consumer group), replay
 * (a range of the topic under a group of its own), redrive (the
 * dead-letter topic back to where it came from), dlq (the dead-letter
 * topic read) or verify (two databases compared). The batch logic lives
 * in batch.c, each kind's in handlers/. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/kafka.h"
#include "../common/kinds.h"
#include "../common/log.h"
#include "../common/sdnotify.h"
#include "../common/util.h"
#include "batch.h"
#include "cache.h"
#include "composer.h"
#include "consume.h"
#include "dlq.h"
#include "dlqtool.h"
#include "dsn.h"
#include "handlers/handler.h"
#include "httpd.h"
#include "metrics.h"
#include "pgsink.h"
#include "pipeline.h"
#include "redrive.h"
#include "replay.h"
#include "settings.h"
#include "verify.h"

static volatile sig_atomic_t stop_signal;
static volatile sig_atomic_t reload_signal;
/* Read by every pipeline's thread. */
static volatile int stopping;

/* A raw signal handler only sets the flag; the loop does the work. */
static void on_signal(int sig)
{
	stop_signal = sig;
	stopping = 1;
}

static void on_hup(int sig)
{
	(void)sig;
	reload_signal = 1;
}

static void usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: sluice-worker [consume] -c FILE [--check-config]\n"
	    "       sluice-worker replay -c FILE --from TIME|PARTITION:OFFSET\n"
	    "                     [--kind KIND]\n"
	    "                     [--to TIME|PARTITION:OFFSET] [--group NAME]\n"
	    "                     [--dry-run] [--rate N]\n"
	    "                     [--into DSN | --into-file FILE]\n"
	    "                     [--redis-url URL] [--no-invalidate]\n"
	    "       sluice-worker redrive -c FILE [--dry-run] "
	    "[--max-attempts N]\n"
	    "       sluice-worker dlq list -c FILE [--json] [--limit N]\n"
	    "       sluice-worker dlq show PARTITION:OFFSET -c FILE [--json]\n"
	    "       sluice-worker verify -c FILE [--against DSN | "
	    "--against-file FILE]\n"
	    "       sluice-worker --help | --version | --list-keys\n"
	    "\n"
	    "consume (the default) reads sluice events from Kafka in a "
	    "consumer\n"
	    "group and writes them to PostgreSQL, one transaction per batch "
	    "with\n"
	    "the offsets, then invalidates the affected Redis keys.\n"
	    "replay applies a range of the topic again through the same "
	    "handlers\n"
	    "and transaction, under a group of its own, and stops at its end.\n"
	    "redrive sends the dead-letter topic's records back to their "
	    "topic.\n"
	    "dlq lists the dead-letter topic's records (origin, reason, "
	    "attempts,\n"
	    "time, a preview of the body) or shows one whole; it changes "
	    "nothing.\n"
	    "verify compares sluice's tables in the configured database with "
	    "another\n"
	    "by natural key: rows, checksums and the first keys that "
	    "differ.\n"
	    "\n"
	    "  -c, --config FILE   configuration file (see "
	    "docs/configuration.md)\n"
	    "      --check-config  validate the configuration as the start "
	    "does\n"
	    "                      (kafka.* through librdkafka), print each\n"
	    "                      value with its origin, exit\n"
	    "      --list-keys     print every configuration key: type, "
	    "default,\n"
	    "                      runtime or restart\n"
	    "  -h, --help          this text\n"
	    "  -V, --version       print the version\n"
	    "replay:\n"
	    "      --from POS      where to start: an RFC 3339 time (every\n"
	    "                      partition, by record timestamp) or\n"
	    "                      PARTITION:OFFSET[,PARTITION:OFFSET...]\n"
	    "      --to POS        where to stop (exclusive; default: the end\n"
	    "                      of each partition when the replay starts)\n"
	    "      --kind KIND     replay this kind only; needed with "
	    "topics =\n"
	    "                      per_kind, where it names the topic "
	    "read\n"
	    "      --group NAME    the replay's group (default "
	    "GROUP_ID-replay,\n"
	    "                      GROUP_ID-replay.KIND with --kind);\n"
	    "                      run again with it to resume\n"
	    "      --dry-run       count what would change, write nothing\n"
	    "      --rate N        apply at most N records per second\n"
	    "      --into DSN      write into this database instead of\n"
	    "                      postgres_dsn (no password here: use\n"
	    "                      --into-file or SLUICE_REPLAY_INTO)\n"
	    "      --into-file FILE  the DSN to write into, from FILE\n"
	    "      --redis-url URL  invalidate in this Redis instead of\n"
	    "                      redis_url (one with a password: "
	    "SLUICE_REPLAY_REDIS_URL)\n"
	    "      --no-invalidate  remove no cache key and owe none\n"
	    "                      (another database than postgres_dsn with\n"
	    "                      redis_url needs this or --redis-url)\n"
	    "redrive:\n"
	    "      --dry-run       report what would be sent back, send "
	    "nothing\n"
	    "      --max-attempts N  a record sent back N times stays dead\n"
	    "                      (default 5, 0: no limit)\n"
	    "dlq:\n"
	    "      --json          one JSON object per record\n"
	    "      --limit N       list at most N records (default 100, 0: "
	    "all)\n"
	    "verify:\n"
	    "      --against DSN   the database to compare with (no password\n"
	    "                      here: use --against-file or "
	    "SLUICE_VERIFY_AGAINST)\n"
	    "      --against-file FILE  its DSN, from FILE\n"
	    "\n"
	    "Environment: SLUICE_KAFKA_BROKERS, SLUICE_TOPIC, "
	    "SLUICE_POSTGRES_DSN,\n"
	    "SLUICE_REDIS_URL, SLUICE_GROUP_INSTANCE_ID override the file.\n"
	    "SLUICE_REPLAY_INTO, SLUICE_REPLAY_REDIS_URL and "
	    "SLUICE_VERIFY_AGAINST stand\n"
	    "for --into, --redis-url and --against.\n");
}

/* The daemon's objects, built in order and torn down in reverse. */
struct worker {
	struct worker_config cfg;
	const char *config_path;
	struct event_base *base; /* the launcher's: HTTP, watchdog */
	struct pipeline *pipes[MAX_KINDS + 1];
	int n_pipes;
	struct httpd *httpd;	   /* NULL when listen is "" */
	struct event *tick_ev;	   /* stop flag, pipelines' ends */
	struct event *watchdog_ev; /* WATCHDOG=1 while every pipeline runs */
	int64_t wd_ms, last_wd;
};

/* Whether the comma-separated list names kind ("" names every kind). */
static bool kind_listed(const char *list, const char *kind)
{
	size_t n = strlen(kind);

	if (!list[0])
		return true;
	for (const char *p = list; *p;) {
		size_t len = strcspn(p, ", ");

		if (len == n && strncmp(p, kind, n) == 0)
			return true;
		p += len;
		p += strspn(p, ", ");
	}
	return false;
}

/* A name in `kinds` that no handler has: the configuration is wrong. */
static bool kinds_check(const char *list, char *err, size_t errsz)
{
	for (const char *p = list; *p;) {
		size_t len = strcspn(p, ", ");
		bool known = len == 0;

		for (int i = 0; handlers[i] && !known; i++)
			known = strlen(handlers[i]->kind) == len &&
				strncmp(p, handlers[i]->kind, len) == 0;
		if (!known) {
			snprintf(err, errsz, "kinds: unknown kind \"%.*s\"",
				 (int)len, p);
			return false;
		}
		p += len;
		p += strspn(p, ", ");
	}
	return true;
}

static uint32_t all_kinds(void)
{
	uint32_t all = 0;

	for (int i = 0; handlers[i]; i++)
		all |= 1u << i;
	return all;
}

/* The topic a kind's records are in: <topic>.<kind> with topics =
 * per_kind, else the one topic. */
static void kind_topic(const struct worker_config *cfg, const char *kind,
		       char *out, size_t outsz)
{
	if (cfg->topics == TOPICS_PER_KIND)
		snprintf(out, outsz, "%s.%s", cfg->topic, kind);
	else
		snprintf(out, outsz, "%s", cfg->topic);
}

/* The pipelines of a consume: one per kind of `kinds`, each under the
 * consumer group <group_id>.<kind> (pipelines = per_kind), or one for
 * every kind under group_id (pipelines = shared). Records of a kind no
 * handler knows are dead-lettered by the first kind's pipeline, so by
 * exactly one. */
static bool worker_pipelines(struct worker *w, bool consumer, char *err,
			     size_t errsz)
{
	/* Replay (no consumer) judges time rules by each record's
	 * received-at. */
	struct pipeline_spec spec = {.consumer = consumer,
				     .stopping = &stopping,
				     .owns_unknown = true,
				     .record_clock = !consumer};
	bool shared = !consumer || w->cfg.pipelines == PIPELINES_SHARED;

	if (shared) {
		spec.name = "all";
		spec.gather_fetches = true; /* its topic holds every kind */
		spec.group = w->cfg.group_id;
		for (int i = 0; handlers[i]; i++)
			if (kind_listed(w->cfg.kinds, handlers[i]->kind))
				spec.kinds |= 1u << i;
		if (spec.kinds == all_kinds())
			spec.kinds = 0; /* every kind */
		w->pipes[w->n_pipes] = pipeline_new(&w->cfg, &spec, err, errsz);
		return w->pipes[w->n_pipes++] != NULL;
	}
	for (int i = 0; handlers[i]; i++) {
		char group[512], topic[512];

		if (!kind_listed(w->cfg.kinds, handlers[i]->kind))
			continue;
		snprintf(group, sizeof(group), "%s.%s", w->cfg.group_id,
			 handlers[i]->kind);
		kind_topic(&w->cfg, handlers[i]->kind, topic, sizeof(topic));
		spec.name = handlers[i]->kind;
		spec.group = group;
		spec.topic = topic;
		spec.kinds = 1u << i;
		spec.owns_unknown = i == 0;
		/* A shared topic brings every kind's records to each. */
		spec.gather_fetches = handlers[i]->gather_fetches ||
				      w->cfg.topics == TOPICS_SHARED;
		w->pipes[w->n_pipes] = pipeline_new(&w->cfg, &spec, err, errsz);
		if (!w->pipes[w->n_pipes++])
			return false;
	}
	return true;
}

static bool worker_setup(struct worker *w, bool consumer, char *err,
			 size_t errsz)
{
	if (!worker_pipelines(w, consumer, err, errsz))
		return false;
	if (!consumer)
		return true;
	w->base = event_base_new();
	if (!w->base) {
		snprintf(err, errsz, "event_base_new failed");
		return false;
	}
	if (w->cfg.listen[0]) {
		w->httpd = httpd_new(w->base, &w->cfg, err, errsz);
		if (!w->httpd)
			return false;
	}
	return true;
}

static void worker_cleanup(struct worker *w)
{
	httpd_destroy(w->httpd);
	if (w->tick_ev)
		event_free(w->tick_ev);
	if (w->watchdog_ev)
		event_free(w->watchdog_ev);
	for (int i = w->n_pipes - 1; i >= 0; i--)
		pipeline_destroy(w->pipes[i]); /* may flush a last batch */
	if (w->base)
		event_base_free(w->base);
	metrics_cleanup();
}

/* WATCHDOG=1 and the STATUS= line, from a timer on the launcher's loop,
 * only while every pipeline's loop turns: a pipeline's loop also runs
 * inside its batch's lookups and retry waits (a long PostgreSQL outage),
 * so the ping stops only when a loop itself is stuck. */
static void watchdog_ping(struct worker *w)
{
	struct metrics_totals t;
	int64_t now = util_mono_ms();

	if (w->wd_ms <= 0 || now - w->last_wd < w->wd_ms)
		return;
	for (int i = 0; i < w->n_pipes; i++)
		if (!pipeline_done(w->pipes[i]) &&
		    now - pipeline_beat(w->pipes[i]) > 2 * w->wd_ms)
			return;
	w->last_wd = now;
	metrics_totals(&t);
	sdnotify("WATCHDOG=1");
	sdnotify_status("partitions=%d batches=%llu saved=%llu skipped=%llu "
			"dead=%llu",
			metrics_assigned(), t.batches, t.saved, t.skipped,
			t.dead);
}

/* Loop timer, every half watchdog interval. */
static void handle_watchdog(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	watchdog_ping(arg);
}

/* Launcher thread, after a SIGHUP. The pipelines' threads read their
 * settings without a lock, so only what this thread alone reads changes
 * at run time: log_level (one int every thread checks before a line) and
 * stall_alert_s (/readyz). Every other changed key keeps its running
 * value and is named in a warning. A file that does not load keeps the
 * running configuration whole. */
static void worker_reload(struct worker *w)
{
	struct worker_config next;
	struct cfg_reload_report report = {.restart = ""};
	struct cfg_kv *seen;
	char err[1024];

	if (!worker_config_load(&next, w->config_path, err, sizeof(err)) ||
	    !kinds_check(next.kinds, err, sizeof(err))) {
		log_error(
		    "reload of %s failed: %s; keeping the running configuration",
		    w->config_path, err);
		worker_config_free(&next);
		metrics_reload(MR_FAILED, false);
		return;
	}
	/* The diff shows under the old level or the new, whichever says
	 * more. */
	if (next.log_level < log_level_current)
		log_level_current = next.log_level;
	cfg_diff(worker_settings, &w->cfg, w->cfg.seen, &next, next.seen, NULL,
		 cfg_reload_change, &report);
	w->cfg.log_level = next.log_level;
	log_level_current = next.log_level;
	w->cfg.stall_alert_s = next.stall_alert_s;
	seen = cfg_seen_merge(worker_settings, w->cfg.seen, next.seen, NULL);
	cfg_kv_free(w->cfg.seen);
	w->cfg.seen = seen;
	worker_config_free(&next);
	if (report.n_restart) {
		metrics_reload(MR_RESTART_REQUIRED, true);
		log_warn(
		    "reload: restart required for %s; they keep their running values",
		    report.restart);
		log_info("reloaded %s: restart required", w->config_path);
		return;
	}
	metrics_reload(MR_OK, false);
	log_info("reloaded %s", w->config_path);
}

/* Loop timer, every 100 ms: once the stop flag is up (a signal, or a
 * pipeline whose consumer failed for good) and every pipeline has
 * drained, the launcher's loop ends. */
static void handle_tick(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	(void)fd;
	(void)what;
	if (reload_signal && !stopping) {
		reload_signal = 0;
		worker_reload(w);
	}
	for (int i = 0; i < w->n_pipes; i++)
		if (!pipeline_done(w->pipes[i]))
			return;
	event_base_loopexit(w->base, NULL);
}

/* How each invalidation template's keys go, told once at start: SCAN
 * walks the whole keyspace, which an operator should know. */
static void log_cache_modes(const struct worker_config *cfg)
{
	struct cache_templates t;

	cache_templates_load(&t, cfg->invalidate_keys,
			     cfg->invalidate_generation, cfg->invalidate_index);
	cache_templates_log(&t);
	cache_templates_clear(&t);
	cache_templates_load(&t, cfg->campaign_invalidate_keys,
			     cfg->campaign_invalidate_generation,
			     cfg->campaign_invalidate_index);
	cache_templates_log(&t);
	cache_templates_clear(&t);
}

/* Mode "consume": every pipeline on its thread, until SIGTERM; the
 * launcher's loop serves HTTP and the watchdog meanwhile. */
static int run_consume(struct worker *w)
{
	struct metrics_totals t;
	const struct timeval tick = {0, 100 * 1000};
	char err[512];
	int rc = 0;

	log_info(
	    "consuming %s%s as group %s on %s (%d pipeline%s)", w->cfg.topic,
	    w->cfg.topics == TOPICS_PER_KIND ? ".<kind>" : "", w->cfg.group_id,
	    w->cfg.brokers, w->n_pipes, w->n_pipes == 1 ? "" : "s");
	log_cache_modes(&w->cfg);
	for (int i = 0; i < w->n_pipes; i++)
		if (!pipeline_start(w->pipes[i], err, sizeof(err))) {
			log_error("%s", err);
			stopping = 1;
			rc = 1;
			break;
		}
	sdnotify("READY=1");
	w->wd_ms = sdnotify_watchdog_interval_ms();
	if (w->wd_ms > 0) {
		struct timeval tv = util_ms_tv(w->wd_ms / 2);

		w->watchdog_ev =
		    event_new(w->base, -1, EV_PERSIST, handle_watchdog, w);
		event_add(w->watchdog_ev, &tv);
	}
	w->tick_ev = event_new(w->base, -1, EV_PERSIST, handle_tick, w);
	event_add(w->tick_ev, &tick);
	event_base_dispatch(w->base);
	if (stop_signal)
		log_info(
		    "received %s: finished the batches and left the groups",
		    strsignal(stop_signal));
	sdnotify("STOPPING=1");
	for (int i = 0; i < w->n_pipes; i++)
		if (pipeline_join(w->pipes[i]) != 0)
			rc = 1; /* consume_fatal(): logged */
	metrics_totals(&t);
	log_info(
	    "stopped: %llu batches, %llu records, %llu rows saved, %llu duplicates skipped, %llu dead-lettered",
	    t.batches, t.records, t.saved, t.skipped, t.dead);
	return rc;
}

enum mode { MODE_CONSUME, MODE_REPLAY, MODE_REDRIVE, MODE_DLQ, MODE_VERIFY };

struct cli {
	enum mode mode;
	const char *config_path;
	bool check_only;
	const char *from, *to, *group;
	bool dry_run;
	double rate;
	int max_attempts;
	bool max_attempts_set;
	struct replay_opts replay;
	struct dlq_tool_opts dlq;
	bool json, limit_set;
	/* replay's target and cache; verify's other database */
	const char *into, *into_file, *redis_url;
	const char
	    *kind; /* replay: one kind (its topic with topics = per_kind) */
	bool no_invalidate;
	const char *against, *against_file;
};

/* Parses argv; returns -1 to go on, else the exit status. */
static int parse_cli(int argc, char **argv, struct cli *cli)
{
	enum {
		OPT_CHECK = 256,
		OPT_LIST,
		OPT_FROM,
		OPT_TO,
		OPT_GROUP,
		OPT_DRY,
		OPT_RATE,
		OPT_MAX,
		OPT_JSON,
		OPT_LIMIT,
		OPT_INTO,
		OPT_INTO_FILE,
		OPT_REDIS_URL,
		OPT_NO_INVALIDATE,
		OPT_AGAINST,
		OPT_AGAINST_FILE,
		OPT_KIND
	};
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, OPT_CHECK},
	    {"list-keys", no_argument, NULL, OPT_LIST},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {"from", required_argument, NULL, OPT_FROM},
	    {"to", required_argument, NULL, OPT_TO},
	    {"group", required_argument, NULL, OPT_GROUP},
	    {"kind", required_argument, NULL, OPT_KIND},
	    {"dry-run", no_argument, NULL, OPT_DRY},
	    {"rate", required_argument, NULL, OPT_RATE},
	    {"max-attempts", required_argument, NULL, OPT_MAX},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"limit", required_argument, NULL, OPT_LIMIT},
	    {"into", required_argument, NULL, OPT_INTO},
	    {"into-file", required_argument, NULL, OPT_INTO_FILE},
	    {"redis-url", required_argument, NULL, OPT_REDIS_URL},
	    {"no-invalidate", no_argument, NULL, OPT_NO_INVALIDATE},
	    {"against", required_argument, NULL, OPT_AGAINST},
	    {"against-file", required_argument, NULL, OPT_AGAINST_FILE},
	    {NULL, 0, NULL, 0}};
	const char *bad = NULL;
	char err[256], *end;
	int c;

	cli->max_attempts = 5;
	if (argc > 1 && argv[1][0] != '-') {
		if (strcmp(argv[1], "consume") == 0)
			cli->mode = MODE_CONSUME;
		else if (strcmp(argv[1], "replay") == 0)
			cli->mode = MODE_REPLAY;
		else if (strcmp(argv[1], "redrive") == 0)
			cli->mode = MODE_REDRIVE;
		else if (strcmp(argv[1], "dlq") == 0)
			cli->mode = MODE_DLQ;
		else if (strcmp(argv[1], "verify") == 0)
			cli->mode = MODE_VERIFY;
		else {
			fprintf(stderr, "sluice-worker: unknown mode \"%s\"\n",
				argv[1]);
			usage(stderr);
			return 2;
		}
		argv++;
		argc--;
	}
	cli->dlq.limit = 100;
	if (cli->mode == MODE_DLQ) {
		/* dlq list | dlq show PARTITION:OFFSET */
		const char *verb = argc > 1 && argv[1][0] != '-' ? argv[1] : "";

		if (strcmp(verb, "list") == 0) {
			argv++;
			argc--;
		} else if (strcmp(verb, "show") == 0 && argc > 2 &&
			   dlq_tool_parse_place(argv[2], &cli->dlq)) {
			cli->dlq.show = true;
			argv += 2;
			argc -= 2;
		} else {
			fprintf(stderr, "sluice-worker: dlq needs \"list\" or "
					"\"show PARTITION:OFFSET\"\n");
			usage(stderr);
			return 2;
		}
	}
	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': cli->config_path = optarg; break;
		case OPT_CHECK: cli->check_only = true; break;
		case OPT_LIST:
			cfg_list_keys(worker_settings, worker_family_keys,
				      stdout);
			return 0;
		case 'h': usage(stdout); return 0;
		case 'V':
			printf("sluice-worker %s (librdkafka %s)\n",
			       SLUICE_VERSION, rd_kafka_version_str());
			return 0;
		case OPT_FROM: cli->from = optarg; break;
		case OPT_TO: cli->to = optarg; break;
		case OPT_GROUP: cli->group = optarg; break;
		case OPT_KIND: cli->kind = optarg; break;
		case OPT_DRY: cli->dry_run = true; break;
		case OPT_RATE:
			cli->rate = strtod(optarg, &end);
			if (end == optarg || *end || !(cli->rate > 0))
				bad = "--rate needs a number of records per "
				      "second above 0";
			break;
		case OPT_JSON: cli->dlq.json = cli->json = true; break;
		case OPT_INTO: cli->into = optarg; break;
		case OPT_INTO_FILE: cli->into_file = optarg; break;
		case OPT_REDIS_URL: cli->redis_url = optarg; break;
		case OPT_NO_INVALIDATE: cli->no_invalidate = true; break;
		case OPT_AGAINST: cli->against = optarg; break;
		case OPT_AGAINST_FILE: cli->against_file = optarg; break;
		case OPT_LIMIT:
			cli->limit_set = true;
			cli->dlq.limit = strtol(optarg, &end, 10);
			if (end == optarg || *end || cli->dlq.limit < 0)
				bad = "--limit needs a whole number of records "
				      "(0: all)";
			break;
		case OPT_MAX:
			cli->max_attempts_set = true;
			cli->max_attempts = (int)strtol(optarg, &end, 10);
			if (end == optarg || *end || cli->max_attempts < 0)
				bad = "--max-attempts needs a whole number "
				      "(0: no limit)";
			break;
		default: usage(stderr); return 2;
		}
	}
	if (!bad && cli->mode != MODE_REPLAY &&
	    (cli->from || cli->to || cli->group || cli->kind || cli->rate > 0 ||
	     cli->into || cli->into_file || cli->redis_url ||
	     cli->no_invalidate))
		bad = "--from, --to, --group, --kind, --rate, --into, "
		      "--into-file, --redis-url and --no-invalidate belong to "
		      "replay";
	if (!bad && cli->mode != MODE_VERIFY &&
	    (cli->against || cli->against_file))
		bad = "--against and --against-file belong to verify";
	/* argv is readable by every user of the machine */
	if (!bad && ((cli->into && dsn_has_password(cli->into)) ||
		     (cli->against && dsn_has_password(cli->against))))
		bad = "a password does not belong in argv: give the connection "
		      "string in a file (--into-file, --against-file) or the "
		      "environment (SLUICE_REPLAY_INTO, SLUICE_VERIFY_AGAINST)";
	if (!bad && cli->redis_url && dsn_has_password(cli->redis_url))
		bad = "a password does not belong in argv: give a Redis URL "
		      "with one in SLUICE_REPLAY_REDIS_URL";
	if (!bad && cli->redis_url && strncmp(cli->redis_url, "redis://", 8))
		bad = "--redis-url must look like redis://host:port[/db]";
	if (!bad &&
	    (cli->mode == MODE_CONSUME || cli->mode == MODE_DLQ ||
	     cli->mode == MODE_VERIFY) &&
	    cli->dry_run)
		bad = "--dry-run belongs to replay and redrive";
	if (!bad && cli->mode != MODE_DLQ && (cli->json || cli->limit_set))
		bad = "--json and --limit belong to dlq";
	if (!bad && cli->mode != MODE_REDRIVE && cli->max_attempts_set)
		bad = "--max-attempts belongs to redrive";
	if (!bad && cli->mode == MODE_REPLAY && !cli->from)
		bad = "replay needs --from";
	if (!bad && cli->mode == MODE_REPLAY && !cli->check_only) {
		struct replay_opts *r = &cli->replay;

		r->dry_run = cli->dry_run;
		r->rate = cli->rate;
		if (!replay_pos_parse(cli->from, &r->from, err, sizeof(err))) {
			fprintf(stderr, "sluice-worker: --from: %s\n", err);
			return 2;
		}
		r->has_to = cli->to != NULL;
		if (r->has_to &&
		    !replay_pos_parse(cli->to, &r->to, err, sizeof(err))) {
			fprintf(stderr, "sluice-worker: --to: %s\n", err);
			return 2;
		}
		if (r->has_to &&
		    !replay_range_check(&r->from, &r->to, err, sizeof(err))) {
			fprintf(stderr, "sluice-worker: %s\n", err);
			return 2;
		}
	}
	if (bad) {
		fprintf(stderr, "sluice-worker: %s\n", bad);
		return 2;
	}
	if (optind < argc || !cli->config_path) {
		usage(stderr);
		return 2;
	}
	return -1;
}

/* The group a side mode works under: --group, else GROUP_ID-suffix. */
static void side_group(struct worker_config *cfg, const char *group,
		       const char *suffix)
{
	char *g;

	if (group) {
		g = xstrdup(group);
	} else {
		size_t n = strlen(cfg->group_id) + strlen(suffix) + 2;

		g = xmalloc(n);
		snprintf(g, n, "%s-%s", cfg->group_id, suffix);
	}
	free(cfg->group_id);
	cfg->group_id = g;
}

/* Replay's --kind: that kind alone, read from its own topic when each
 * kind has one (there the topic is only known with the kind). */
static bool replay_kind(struct worker_config *cfg, const char *kind,
			bool check_only, char *err, size_t errsz)
{
	char topic[512];
	bool known = false;

	if (!kind) {
		if (cfg->topics == TOPICS_PER_KIND && !check_only) {
			snprintf(err, errsz,
				 "replay needs --kind KIND with topics = "
				 "per_kind: each kind is in %s.<kind>",
				 cfg->topic);
			return false;
		}
		return true;
	}
	for (int i = 0; handlers[i]; i++)
		known |= strcmp(handlers[i]->kind, kind) == 0;
	if (!known) {
		char names[256];

		kind_names(names, sizeof(names));
		snprintf(err, errsz, "--kind: \"%s\" is not a kind (%s)", kind,
			 names);
		return false;
	}
	kind_topic(cfg, kind, topic, sizeof(topic));
	free(cfg->topic);
	cfg->topic = xstrdup(topic);
	free(cfg->kinds);
	cfg->kinds = xstrdup(kind);
	return true;
}

/* A replay writes into --into (else postgres_dsn) and removes cache keys
 * in --redis-url (else redis_url). Into a database other than the live one
 * while removing keys from the live Redis, it would drop the live cache's
 * keys for rows it does not touch: refused unless --no-invalidate. Returns
 * -1 to go on, else the exit status. */
static int replay_target(struct worker_config *cfg, const struct cli *cli)
{
	const char *env_redis = getenv("SLUICE_REPLAY_REDIS_URL");
	char err[512], into_s[300], live_s[300];
	char *into = NULL, *redis = NULL;
	bool other_db, live_redis;

	if (cli->into || cli->into_file || getenv("SLUICE_REPLAY_INTO")) {
		into = dsn_pick("--into", cli->into, cli->into_file,
				"SLUICE_REPLAY_INTO", err, sizeof(err));
		if (!into) {
			fprintf(stderr, "sluice-worker: %s\n", err);
			return 2;
		}
	}
	if (cli->redis_url)
		redis = xstrdup(cli->redis_url);
	else if (env_redis && env_redis[0])
		redis = xstrdup(env_redis);
	if (redis && strncmp(redis, "redis://", 8) != 0) {
		fprintf(stderr, "sluice-worker: the replay's Redis URL must "
				"look like redis://host:port[/db]\n");
		free(into);
		free(redis);
		return 2;
	}
	other_db = into && !dsn_same_database(into, cfg->postgres_dsn);
	live_redis = !redis || dsn_same_redis(redis, cfg->redis_url);
	if (into)
		dsn_describe(into, into_s, sizeof(into_s));
	dsn_describe(cfg->postgres_dsn, live_s, sizeof(live_s));
	if (other_db && live_redis && !cli->no_invalidate) {
		fprintf(
		    stderr,
		    "sluice-worker: refusing to replay into %s, which is not postgres_dsn (%s), while removing cache keys in the live Redis (redis_url): the live cache would lose keys of rows this replay does not write there; give --redis-url URL (a Redis of that database's) or --no-invalidate\n",
		    into_s, live_s);
		free(into);
		free(redis);
		return 2;
	}
	if (other_db)
		log_info(
		    "replaying into %s, not postgres_dsn (%s)%s", into_s,
		    live_s,
		    cli->no_invalidate
			? "; no cache key is removed"
			: "; cache keys are removed in the replay's Redis");
	if (into) {
		/* Lead contexts come from where the live worker reads
		 * them, so the replay decides as it did. */
		if (!cfg->lc_postgres_dsn[0]) {
			free(cfg->lc_postgres_dsn);
			cfg->lc_postgres_dsn = cfg->postgres_dsn;
		} else {
			free(cfg->postgres_dsn);
		}
		cfg->postgres_dsn = into; /* owned by cfg now */
	}
	if (redis) {
		/* redis_password_file is the password of redis_url's server:
		 * another Redis takes the one its own URL holds, if any. */
		if (!live_redis && cfg->redis_password) {
			memset(cfg->redis_password, 0,
			       strlen(cfg->redis_password));
			free(cfg->redis_password);
			cfg->redis_password = NULL;
		}
		free(cfg->redis_url);
		cfg->redis_url = redis; /* owned by cfg now */
	}
	return -1;
}

/* Mode "verify": the configured database against --against. */
static int run_verify(const struct worker_config *cfg, const struct cli *cli)
{
	char err[512];
	char *against = dsn_pick("--against", cli->against, cli->against_file,
				 "SLUICE_VERIFY_AGAINST", err, sizeof(err));
	int rc;

	if (!against) {
		fprintf(stderr, "sluice-worker: %s\n", err);
		return 2;
	}
	rc = verify_run(cfg->postgres_dsn, against);
	free(against);
	return rc;
}

int main(int argc, char **argv)
{
	struct cli cli = {.mode = MODE_CONSUME};
	char err[1024];
	struct sigaction sa;
	static struct worker w;
	int rc;

	rc = parse_cli(argc, argv, &cli);
	if (rc >= 0)
		return rc;
	if (!worker_config_load(&w.cfg, cli.config_path, err, sizeof(err)) ||
	    !kinds_check(w.cfg.kinds, err, sizeof(err))) {
		fprintf(stderr, "sluice-worker: %s\n", err);
		worker_config_free(&w.cfg);
		return cli.mode == MODE_VERIFY ? 2 : 1;
	}
	metrics_config_loaded();
	if (cli.mode == MODE_REPLAY &&
	    !replay_kind(&w.cfg, cli.kind, cli.check_only, err, sizeof(err))) {
		fprintf(stderr, "sluice-worker: %s\n", err);
		worker_config_free(&w.cfg);
		return 2;
	}
	if (cli.mode == MODE_REPLAY) {
		/* A replay of one kind passes over the others' records of a
		 * shared topic and stores its position past them: a group
		 * of its own per kind, so that a later replay of another
		 * kind over the same range does not resume there. */
		char suffix[64];

		snprintf(suffix, sizeof(suffix), "replay%s%s",
			 cli.kind ? "." : "", cli.kind ? cli.kind : "");
		side_group(&w.cfg, cli.group, suffix);
	} else if (cli.mode == MODE_REDRIVE)
		side_group(&w.cfg, NULL, "redrive");
	if (cli.check_only) {
		/* The start's own checks, minus the sockets: the consumer's
		 * and the dead-letter producer's settings through librdkafka
		 * as consume.c and dlq.c make them. */
		if (!consume_check_config(&w.cfg, err, sizeof(err)) ||
		    !dlq_check_config(w.cfg.brokers, w.cfg.kafka, err,
				      sizeof(err))) {
			fprintf(stderr, "sluice-worker: %s\n", err);
			worker_config_free(&w.cfg);
			return 1;
		}
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
	/* consume reloads on SIGHUP (worker_reload); the one-shot modes have
	 * nothing to reload, and a closed terminal must not end them
	 * undrained. */
	if (cli.mode == MODE_CONSUME) {
		sa.sa_handler = on_hup;
		sigaction(SIGHUP, &sa, NULL);
	} else {
		signal(SIGHUP, SIG_IGN);
	}
	w.config_path = cli.config_path;

	if (cli.mode == MODE_VERIFY) {
		rc = run_verify(&w.cfg, &cli);
		worker_config_free(&w.cfg);
		return rc;
	}
	if (cli.mode == MODE_REPLAY) {
		rc = replay_target(&w.cfg, &cli);
		if (rc >= 0) {
			worker_config_free(&w.cfg);
			return rc;
		}
	}
	if (cli.mode == MODE_DLQ) {
		rc = dlq_tool_run(&w.cfg, &cli.dlq, &stopping);
		worker_config_free(&w.cfg);
		return rc;
	}
	if (cli.mode == MODE_REDRIVE) {
		struct redrive_opts ro = {.dry_run = cli.dry_run,
					  .max_attempts = cli.max_attempts};

		rc = redrive_run(&w.cfg, w.cfg.group_id, &ro, &stopping);
		worker_config_free(&w.cfg);
		return rc;
	}
	if (!worker_setup(&w, cli.mode == MODE_CONSUME, err, sizeof(err))) {
		log_error("%s", err);
		worker_cleanup(&w);
		worker_config_free(&w.cfg);
		return 1;
	}
	if (cli.mode == MODE_REPLAY) {
		struct pipeline *p = w.pipes[0];
		struct batch_env *env = pipeline_env(p);

		metrics_pipe_enter(NULL);
		env->dry_run = cli.dry_run;
		env->no_invalidate = cli.no_invalidate;
		env->quiet = isatty(STDERR_FILENO);
		pgsink_set_dry_run(pipeline_pgsink(p), cli.dry_run);
		/* A preview pays for no model call. */
		if (env->composer)
			composer_set_dry_run(env->composer, cli.dry_run);
		rc = replay_run(env, pipeline_batch(p), &cli.replay);
	} else {
		rc = run_consume(&w);
	}
	worker_cleanup(&w);
	worker_config_free(&w.cfg);
	return rc;
}
