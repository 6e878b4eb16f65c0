/* sluice-ingest: receives webhooks over HTTP and publishes them to Kafka,
 * answering 202 only once Kafka holds the record. */
#include <event2/event.h>
#include <errno.h>
#include <getopt.h>
#include <sys/resource.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/sdnotify.h"
#include "../common/util.h"
#include "http.h"
#include "ingest.h"
#include "metrics.h"
#include "pending.h"
#include "publish.h"
#include "tls.h"
#include "verify.h"

static struct ingest ing;
static struct event *drain_ev;
static int64_t drain_deadline_ms;

static void usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: sluice-ingest -c FILE [--check-config]\n"
	    "       sluice-ingest --help | --version | --list-keys\n"
	    "\n"
	    "Receives webhooks on POST /v1/webhooks/{source} and publishes\n"
	    "each to Kafka, answering 202 once the record is durable.\n"
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
	    "\n"
	    "Environment: SLUICE_INGEST_LISTEN, SLUICE_KAFKA_BROKERS, "
	    "SLUICE_TOPIC\n"
	    "override the file.\n");
}

/* Loop thread: every 10 ms while draining. */
static void handle_drain(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	rd_kafka_poll(ing.rk, 0);
	if (ing.inflight == 0 || util_mono_ms() >= drain_deadline_ms)
		event_base_loopexit(ing.base, NULL);
}

/* Loop thread (libevent signal event, not a raw handler). */
static void handle_signal(evutil_socket_t sig, short what, void *arg)
{
	struct timeval tv = {0, 10 * 1000};

	(void)what;
	(void)arg;
	if (ing.draining)
		return;
	log_info("received %s: draining %d in-flight requests",
		 strsignal((int)sig), ing.inflight);
	sdnotify("STOPPING=1");
	ing.draining = true;
	http_stop_accepting(&ing);
	drain_deadline_ms = util_mono_ms() + ing.cfg.delivery_timeout_ms + 1000;
	drain_ev = event_new(ing.base, -1, EV_PERSIST, handle_drain, NULL);
	event_add(drain_ev, &tv);
}

static bool same(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool source_key(const char *key)
{
	return strncmp(key, "source.", 7) == 0;
}

/* A secret_file whose path stayed and whose content changed shows in no
 * line of the file: say so, without the secret. */
static void reload_secret_files(const struct ingest_config *next)
{
	for (const struct source *s = next->sources; s; s = s->next) {
		const struct source *old =
		    ingest_source_find(&ing.cfg, s->name, strlen(s->name));

		if (old && s->secret_file &&
		    same(old->secret_file, s->secret_file) &&
		    same(old->secret, s->secret) &&
		    (old->key_len != s->key_len ||
		     (s->key && memcmp(old->key, s->key, s->key_len) != 0)))
			log_info(
			    "reload: source.%s.secret_file: content (changed)",
			    s->name);
	}
}

/* The TLS part of a reload, before anything is applied: a new context
 * from the certificate and key files (read again even when their paths
 * stayed: rotation replaces the files in place). *out stays NULL when
 * there is nothing to swap; false when the files do not make one. HTTPS
 * switched on or off waits for a restart (its listener would change). */
static bool reload_tls(const struct ingest_config *next,
		       struct cfg_reload_report *report, SSL_CTX **out,
		       char *errstr, size_t errstr_size)
{
	bool want = next->tls_cert_file[0] != '\0';

	*out = NULL;
	if (!want && !ing.tls_ctx)
		return true;
	if (want != (ing.tls_ctx != NULL)) {
		size_t n = strlen(report->restart);

		snprintf(report->restart + n, sizeof(report->restart) - n,
			 "%sHTTPS %s (tls_cert_file)",
			 report->n_restart ? ", " : "",
			 want ? "switched on" : "switched off");
		report->n_restart++;
		return true;
	}
	*out = tls_ctx_new(next->tls_cert_file, next->tls_key_file, errstr,
			   errstr_size);
	return *out != NULL;
}

/* Loop thread (libevent signal event): SIGHUP reloads what can change
 * while connections stay open: the sources (kinds, secrets, limits), the
 * request limits, schema_dir, log_level and the TLS certificate. Every changed
 * key is logged; a key that needs a restart (listen, brokers, topic, kafka.*,
 * ...) keeps its running value and is named in a warning, and the reload counts
 * as restart_required. A file that does not load keeps the running
 * configuration whole. */
static void handle_reload(evutil_socket_t sig, short what, void *arg)
{
	struct ingest_config next;
	struct cfg_reload_report report = {.restart = ""};
	struct source *old;
	struct cfg_kv *seen;
	char *swap;
	char err[1024];
	SSL_CTX *tls_ctx = NULL;

	(void)sig;
	(void)what;
	(void)arg;
	if (!ingest_config_load(&next, ing.config_path, err, sizeof(err))) {
		log_error(
		    "reload of %s failed: %s; keeping the running configuration",
		    ing.config_path, err);
		ingest_config_free(&next);
		ing.m.reload_failures++;
		return;
	}
	if (!reload_tls(&next, &report, &tls_ctx, err, sizeof(err))) {
		log_error(
		    "reload of %s failed: %s; keeping the running configuration and certificate",
		    ing.config_path, err);
		ingest_config_free(&next);
		ing.m.reload_failures++;
		return;
	}
	/* The diff shows under the old level or the new, whichever says
	 * more. */
	if (next.log_level < log_level_current)
		log_level_current = next.log_level;
	cfg_diff(ingest_settings, &ing.cfg, ing.cfg.seen, &next, next.seen,
		 source_key, cfg_reload_change, &report);
	reload_secret_files(&next);
	/* A source keeps its bucket and counters across a reload. */
	for (struct source *s = next.sources; s; s = s->next) {
		old = ingest_source_find(&ing.cfg, s->name, strlen(s->name));
		if (!old)
			continue;
		s->limited = old->limited;
		if (s->rate_per_s == old->rate_per_s &&
		    s->burst == old->burst) {
			s->tokens = old->tokens;
			s->refilled_ms = old->refilled_ms;
		}
	}
	/* topic and topics need a restart: the new sources publish where
	 * the running ones did. A source whose kind is new here publishes
	 * to a topic this process did not create at start. */
	for (struct source *s = next.sources; s; s = s->next) {
		bool known = false;

		ingest_source_route(&ing.cfg, s);
		for (old = ing.cfg.sources; old && !known; old = old->next)
			known = strcmp(old->topic, s->topic) == 0;
		if (!known)
			log_warn(
			    "source %s: its records go to %s, which was not created at start (topic_partitions); create it or restart",
			    s->name, s->topic);
	}
	old = ing.cfg.sources;
	ing.cfg.sources = next.sources;
	next.sources = old; /* freed with next */
	/* The sources' schemas were read from the new schema_dir. */
	swap = ing.cfg.schema_dir;
	ing.cfg.schema_dir = next.schema_dir;
	next.schema_dir = swap;
	seen = cfg_seen_merge(ingest_settings, ing.cfg.seen, next.seen,
			      source_key);
	cfg_kv_free(ing.cfg.seen);
	ing.cfg.seen = seen;
	ing.cfg.delivery_timeout_ms = next.delivery_timeout_ms;
	ing.cfg.retry_after_s = next.retry_after_s;
	ing.cfg.max_body_bytes = next.max_body_bytes;
	ing.cfg.request_timeout_s = next.request_timeout_s;
	ing.cfg.max_inflight = next.max_inflight;
	ing.cfg.max_connections = next.max_connections;
	ing.cfg.campaign_max_messages = next.campaign_max_messages;
	ing.cfg.log_level = next.log_level;
	log_level_current = next.log_level;
	if (tls_ctx) {
		char desc[512];

		swap = ing.cfg.tls_cert_file;
		ing.cfg.tls_cert_file = next.tls_cert_file;
		next.tls_cert_file = swap;
		swap = ing.cfg.tls_key_file;
		ing.cfg.tls_key_file = next.tls_key_file;
		next.tls_key_file = swap;
		tls_describe(tls_ctx, desc, sizeof(desc));
		log_info("reload: certificate %s: %s",
			 tls_same_cert(ing.tls_ctx, tls_ctx) ? "unchanged"
							     : "now",
			 desc);
		/* Open connections hold the old context until they close. */
		SSL_CTX_free(ing.tls_ctx);
		ing.tls_ctx = tls_ctx;
	}
	ingest_config_free(&next);
	http_apply_settings(&ing);
	ing.m.restart_pending = report.n_restart > 0;
	if (report.n_restart) {
		ing.m.reloads_restart++;
		log_warn(
		    "reload: restart required for %s; they keep their running values",
		    report.restart);
		log_info("reloaded %s: restart required", ing.config_path);
		return;
	}
	ing.m.reloads++;
	metrics_config_loaded(&ing);
	log_info("reloaded %s", ing.config_path);
}

static void handle_watchdog(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	sdnotify("WATCHDOG=1");
	sdnotify_status("inflight=%d delivered=%llu failed=%llu", ing.inflight,
			(unsigned long long)ing.m.delivered,
			(unsigned long long)ing.m.delivery_failed);
}

/* Each connection is a descriptor: take every one the hard limit allows
 * (systemd's default soft limit is 1024). */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		log_warn("cannot raise the descriptor limit: %s",
			 strerror(errno));
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
	struct event *sigterm, *sigint, *sighup, *wd = NULL;
	struct event_config *evcfg;
	int64_t wd_ms;
	int c;

	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': config_path = optarg; break;
		case 'k': check_only = true; break;
		case 'l':
			cfg_list_keys(ingest_settings, ingest_family_keys,
				      stdout);
			return 0;
		case 'h': usage(stdout); return 0;
		case 'V':
			printf(
			    "sluice-ingest %s (librdkafka %s, libevent %s)\n",
			    SLUICE_VERSION, rd_kafka_version_str(),
			    event_get_version());
			return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || !config_path) {
		usage(stderr);
		return 2;
	}
	ing.config_path = config_path;
	if (!ingest_config_load(&ing.cfg, config_path, err, sizeof(err))) {
		fprintf(stderr, "sluice-ingest: %s\n", err);
		ingest_config_free(&ing.cfg);
		return 1;
	}
	if (check_only) {
		/* The start's own checks, minus the sockets: the producer's
		 * settings through librdkafka as publish.c makes them. */
		if (!publish_check_config(&ing.cfg, err, sizeof(err))) {
			fprintf(stderr, "sluice-ingest: %s\n", err);
			ingest_config_free(&ing.cfg);
			return 1;
		}
		if (ing.cfg.tls_cert_file[0]) {
			SSL_CTX *ctx =
			    tls_ctx_new(ing.cfg.tls_cert_file,
					ing.cfg.tls_key_file, err, sizeof(err));

			if (!ctx) {
				fprintf(stderr, "sluice-ingest: %s\n", err);
				ingest_config_free(&ing.cfg);
				return 1;
			}
			SSL_CTX_free(ctx);
		}
		ingest_config_dump(&ing.cfg);
		printf("configuration ok\n");
		ingest_config_free(&ing.cfg);
		return 0;
	}
	metrics_config_loaded(&ing);
	log_setup("sluice-ingest", ing.cfg.log_level, ing.cfg.log_format == 1);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (!verify_setup()) {
		log_error("OpenSSL has no HMAC");
		return 1;
	}
	/* The changelist folds the add/del pairs evhttp makes on a socket
	 * within one loop iteration into one epoll_ctl (or none). */
	evcfg = event_config_new();
	event_config_set_flag(evcfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	ing.spare_fd = -1;
	ing.base = event_base_new_with_config(evcfg);
	event_config_free(evcfg);
	if (!ing.base) {
		log_error("event_base_new failed");
		return 1;
	}
	ing.delivered = pending_delivered;
	if (ing.cfg.tls_cert_file[0]) {
		char desc[512];

		ing.tls_ctx =
		    tls_ctx_new(ing.cfg.tls_cert_file, ing.cfg.tls_key_file,
				err, sizeof(err));
		if (!ing.tls_ctx) {
			log_error("%s", err);
			return 1;
		}
		tls_describe(ing.tls_ctx, desc, sizeof(desc));
		log_info("HTTPS on %s: certificate %s",
			 ing.cfg.tls_listen[0] ? ing.cfg.tls_listen
					       : ing.cfg.listen,
			 desc);
	}
	if (!publish_setup(&ing, err, sizeof(err)) ||
	    !http_setup(&ing, err, sizeof(err))) {
		log_error("%s", err);
		return 1;
	}
	sigterm = evsignal_new(ing.base, SIGTERM, handle_signal, NULL);
	sigint = evsignal_new(ing.base, SIGINT, handle_signal, NULL);
	sighup = evsignal_new(ing.base, SIGHUP, handle_reload, NULL);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	event_add(sighup, NULL);
	wd_ms = sdnotify_watchdog_interval_ms();
	if (wd_ms > 0) {
		struct timeval tv = util_ms_tv(wd_ms);

		wd = event_new(ing.base, -1, EV_PERSIST, handle_watchdog, NULL);
		event_add(wd, &tv);
	}
	log_info(
	    "listening on %s%s%s%s, publishing to %s%s on %s (delivery deadline %d ms)",
	    ing.cfg.listen,
	    ing.tls_ctx && !ing.cfg.tls_listen[0] ? " (HTTPS)" : "",
	    ing.cfg.tls_listen[0] ? " and HTTPS on " : "", ing.cfg.tls_listen,
	    ing.cfg.topic, ing.cfg.topics == TOPICS_PER_KIND ? ".<kind>" : "",
	    ing.cfg.brokers, ing.cfg.delivery_timeout_ms);
	sdnotify("READY=1");

	event_base_dispatch(ing.base);

	http_cleanup(&ing);
	SSL_CTX_free(ing.tls_ctx);
	ing.tls_ctx = NULL;
	publish_cleanup(&ing, 5000);
	log_info("stopped: %llu delivered, %llu failed",
		 (unsigned long long)ing.m.delivered,
		 (unsigned long long)ing.m.delivery_failed);
	if (drain_ev)
		event_free(drain_ev);
	if (wd)
		event_free(wd);
	event_free(sigterm);
	event_free(sigint);
	event_free(sighup);
	event_base_free(ing.base);
	verify_cleanup();
	ingest_config_free(&ing.cfg);
	return 0;
}
