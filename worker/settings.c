/* sluice-worker's settings: the table of every key. */
#include "settings.h"

#include <event2/http.h>

#include "../common/access.h"
#include "../common/kinds.h"
#include "../common/log.h"
#include "../common/util.h"
#include "cache.h"
#include "dsn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const lc_source_names[] = {"postgres", "http", NULL};
static const char *const pipelines_names[] = {"per_kind", "shared", NULL};
static const char *const topics_names[] = {"shared", "per_kind", NULL};

#define F(x) offsetof(struct worker_config, x)
const struct cfg_setting worker_settings[] = {
    {"brokers", CFG_STR, F(brokers), "127.0.0.1:9092", 0, 0, NULL,
     "SLUICE_KAFKA_BROKERS", "Kafka bootstrap servers", CFG_RESTART, NULL},
    {"kafka_sasl_password_file", CFG_STR, F(kafka_sasl_password_file), "", 0, 0,
     NULL, NULL, "file holding the Kafka SASL password (mode 0600)",
     CFG_RESTART, NULL},
    {"topic", CFG_STR, F(topic), "sluice.events", 0, 0, NULL, "SLUICE_TOPIC",
     "topic consumed (with topics = per_kind, the prefix of each kind's)",
     CFG_RESTART, NULL},
    {"topics", CFG_ENUM, F(topics), "shared", 0, 0, topics_names, NULL,
     "shared: every kind in topic; per_kind: each kind's pipeline reads "
     "<topic>.<kind> only (as sluice-ingest's topics = per_kind writes)",
     CFG_RESTART, NULL},
    {"topic_partitions", CFG_INT, F(topic_partitions), "4", 0, 1024, NULL, NULL,
     "partitions when the topic is created at start-up", CFG_RESTART, NULL},
    {"group_id", CFG_STR, F(group_id), "sluice-worker", 0, 0, NULL, NULL,
     "consumer group, also the key of the offsets in PostgreSQL", CFG_RESTART,
     NULL},
    {"group_instance_id", CFG_STR, F(group_instance_id), "", 0, 0, NULL,
     "SLUICE_GROUP_INSTANCE_ID",
     "static group membership id, unique per worker (default dynamic)",
     CFG_RESTART, NULL},
    {"pipelines", CFG_ENUM, F(pipelines), "per_kind", 0, 0, pipelines_names,
     NULL,
     "per_kind: each kind in a pipeline of its own, consumer group "
     "<group_id>.<kind>; shared: every kind in one, group group_id",
     CFG_RESTART, NULL},
    {"kinds", CFG_STR, F(kinds), "", 0, 0, NULL, NULL,
     "kinds this worker applies, comma-separated (default every kind)",
     CFG_RESTART, NULL},
    {"stall_alert_s", CFG_INT, F(stall_alert_s), "300", 1, 86400, NULL, NULL,
     "/readyz fails for a partition behind and not committed for this long",
     CFG_RUNTIME, NULL},
    {"dlq_topic", CFG_STR, F(dlq_topic), "", 0, 0, NULL, NULL,
     "dead-letter topic (default <topic>.dlq)", CFG_RESTART, NULL},
    {"postgres_dsn", CFG_STR, F(postgres_dsn), "postgresql:///sluice", 0, 0,
     NULL, "SLUICE_POSTGRES_DSN", "libpq connection string", CFG_RESTART, NULL},
    {"redis_url", CFG_STR, F(redis_url), "redis://127.0.0.1:6379/0", 0, 0, NULL,
     "SLUICE_REDIS_URL", "Redis to invalidate keys in", CFG_RESTART, NULL},
    {"redis_password_file", CFG_STR, F(redis_password_file), "", 0, 0, NULL,
     NULL, "file holding the Redis password AUTH sends (mode 0600)",
     CFG_RESTART, NULL},
    {"redis_timeout_ms", CFG_INT, F(redis_timeout_ms), "500", 10, 60000, NULL,
     NULL, "Redis connect and command timeout", CFG_RESTART, NULL},
    {"invalidate_keys", CFG_STR, F(invalidate_keys),
     "messages:{conversation_id}:*,conversation:{conversation_id}", 0, 0, NULL,
     NULL, "keys removed after each commit", CFG_RESTART, "{conversation_id}"},
    {"invalidate_generation", CFG_STR, F(invalidate_generation), "", 0, 0, NULL,
     NULL,
     "generation counters INCRed after each commit (no TTL; "
     "docs/caching.md)",
     CFG_RESTART, "{conversation_id}"},
    {"invalidate_index", CFG_STR, F(invalidate_index), "", 0, 0, NULL, NULL,
     "key-index sets whose members are removed after each commit "
     "(docs/caching.md)",
     CFG_RESTART, "{conversation_id}"},
    {"batch_max", CFG_INT, F(batch_max), "2000", 1, 100000, NULL, NULL,
     "most records in one batch", CFG_RESTART, NULL},
    {"batch_wait_ms", CFG_INT, F(batch_wait_ms), "0", 0, 10000, NULL, NULL,
     "extra time to let a batch fill", CFG_RESTART, NULL},
    {"retry_backoff_min_ms", CFG_INT, F(retry_backoff_min_ms), "100", 1, 60000,
     NULL, NULL, "first back-off step after a transient failure", CFG_RESTART,
     NULL},
    {"retry_backoff_max_ms", CFG_INT, F(retry_backoff_max_ms), "5000", 1,
     600000, NULL, NULL, "largest back-off step between retries", CFG_RESTART,
     NULL},
    {"campaign_invalidate_keys", CFG_STR, F(campaign_invalidate_keys),
     "campaign_run:{run_id}", 0, 0, NULL, NULL,
     "keys removed after a campaign batch commits", CFG_RESTART, "{run_id}"},
    {"campaign_invalidate_generation", CFG_STR,
     F(campaign_invalidate_generation), "", 0, 0, NULL, NULL,
     "generation counters INCRed after a campaign batch commits", CFG_RESTART,
     "{run_id}"},
    {"campaign_invalidate_index", CFG_STR, F(campaign_invalidate_index), "", 0,
     0, NULL, NULL,
     "key-index sets whose members are removed after a campaign batch "
     "commits",
     CFG_RESTART, "{run_id}"},
    {"lead_context.source", CFG_ENUM, F(lc_source), "postgres", 0, 0,
     lc_source_names, NULL,
     "postgres (get_lead_full_context) or http (lead_context.url)", CFG_RESTART,
     NULL},
    {"lead_context.url", CFG_STR, F(lc_url), "", 0, 0, NULL, NULL,
     "HTTP context source, {lead_id} is replaced", CFG_RESTART, "{lead_id}"},
    {"lead_context.phone_url", CFG_STR, F(lc_phone_url), "", 0, 0, NULL, NULL,
     "HTTP context source by phone, {phone} is replaced", CFG_RESTART,
     "{phone}"},
    {"lead_context.postgres_dsn", CFG_STR, F(lc_postgres_dsn), "", 0, 0, NULL,
     NULL, "database of get_lead_full_context (default postgres_dsn)",
     CFG_RESTART, NULL},
    {"lead_context.concurrency", CFG_INT, F(lc_concurrency), "5", 1, 1000, NULL,
     NULL, "most lookups in flight (K)", CFG_RESTART, NULL},
    {"lead_context.timeout_ms", CFG_INT, F(lc_timeout_ms), "5000", 10, 600000,
     NULL, NULL, "deadline of one lookup", CFG_RESTART, NULL},
    {"lead_context.retries", CFG_INT, F(lc_retries), "2", 0, 100, NULL, NULL,
     "further attempts after a failed lookup", CFG_RESTART, NULL},
    {"lead_context.cache_ttl_s", CFG_INT, F(lc_cache_ttl_s), "300", 1, 86400,
     NULL, NULL, "TTL of lead_ctx:{lead_id} in Redis", CFG_RESTART, NULL},
    {"lead_context.not_found_ttl_s", CFG_INT, F(lc_not_found_ttl_s), "30", 0,
     86400, NULL, NULL,
     "TTL of the cached answer that a lead or phone is unknown (0: not cached)",
     CFG_RESTART, NULL},
    {"lead_context.lease_ms", CFG_INT, F(lc_lease_ms), "5000", 10, 600000, NULL,
     NULL, "lifetime of the lease a miss takes before fetching", CFG_RESTART,
     NULL},
    {"lead_context.lease_wait_ms", CFG_INT, F(lc_lease_wait_ms), "10000", 0,
     600000, NULL, NULL,
     "how long to wait for another worker's fill before fetching", CFG_RESTART,
     NULL},
    {"lead_context.batch_budget_ms", CFG_INT, F(lc_batch_budget_ms), "60000",
     100, 3600000, NULL, NULL,
     "most time one batch waits for its lookups; the rest fail "
     "context_unavailable",
     CFG_RESTART, NULL},
    {"composer.base_url", CFG_STR, F(composer_base_url), "", 0, 0, NULL,
     "SLUICE_COMPOSER_BASE_URL",
     "OpenAI-compatible endpoint of campaign batches with a prompt, e.g. "
     "https://openrouter.ai/api/v1 (empty = none: they fail "
     "compose_failed:not_configured)",
     CFG_RESTART, NULL},
    {"composer.api_key_file", CFG_STR, F(composer_api_key_file), "", 0, 0, NULL,
     "SLUICE_COMPOSER_API_KEY_FILE",
     "file holding the endpoint's API key (sent as Bearer)", CFG_RESTART, NULL},
    {"composer.headers", CFG_STR, F(composer_headers), "", 0, 0, NULL, NULL,
     "extra request headers, \"Name: value; Name: value\"", CFG_RESTART, NULL},
    {"composer.concurrency", CFG_INT, F(composer_concurrency), "5", 1, 1000,
     NULL, NULL, "most model calls in flight (K)", CFG_RESTART, NULL},
    {"composer.rate", CFG_INT, F(composer_rate), "0", 0, 1000000, NULL, NULL,
     "most model calls per minute (0 = no cap)", CFG_RESTART, NULL},
    {"composer.timeout_ms", CFG_INT, F(composer_timeout_ms), "30000", 100,
     600000, NULL, NULL, "deadline of one model call", CFG_RESTART, NULL},
    {"composer.retries", CFG_INT, F(composer_retries), "3", 0, 100, NULL, NULL,
     "further attempts after a timeout, connection error, 5xx or 429",
     CFG_RESTART, NULL},
    {"composer.default_model", CFG_STR, F(composer_default_model), "", 0, 0,
     NULL, "SLUICE_COMPOSER_DEFAULT_MODEL",
     "model when neither the batch nor workspaces.ai_model names one",
     CFG_RESTART, NULL},
    {"composer.model_cache_ttl_s", CFG_INT, F(composer_model_cache_ttl_s),
     "300", 1, 86400, NULL, NULL, "TTL of workspace:{id} in Redis", CFG_RESTART,
     NULL},
    {"http.ca_file", CFG_STR, F(http_ca_file), "", 0, 0, NULL, NULL,
     "CA certificates (PEM) that https:// calls trust; empty = the system's "
     "trust store",
     CFG_RESTART, NULL},
    {"listen", CFG_STR, F(listen), "", 0, 0, NULL, "SLUICE_WORKER_LISTEN",
     "host:port of /healthz, /readyz, /metrics, /status and /admin/; "
     "empty = off",
     CFG_RESTART, NULL},
    {"admin_token_file", CFG_STR, F(admin_token_file), "", 0, 0, NULL, NULL,
     "file holding the bearer token of /status and /admin/ for clients "
     "other than loopback (empty = loopback only)",
     CFG_RESTART, NULL},
    {"access_log", CFG_ENUM, F(access_log), "text", 0, 0, access_mode_names,
     NULL, "one line per HTTP answer at info: off, text or json", CFG_RESTART,
     NULL},
    {"postgres_idle_tx_timeout_ms", CFG_INT, F(pg_idle_tx_timeout_ms), "10000",
     0, 3600000, NULL, NULL,
     "server ends a batch transaction left idle this long (0 = never)",
     CFG_RESTART, NULL},
    {"log_level", CFG_ENUM, F(log_level), "info", 0, 0, log_level_names, NULL,
     "debug, info, warn or error", CFG_RUNTIME, NULL},
    {"log_format", CFG_ENUM, F(log_format), "text", 0, 0, log_format_names,
     NULL, "text or json", CFG_RESTART, NULL},
    CFG_END};
#undef F

const struct cfg_family_key worker_family_keys[] = {
    {"kafka.PROPERTY", "librdkafka property", NULL, false},
    {NULL, NULL, NULL, false}};

static bool worker_extra(void *target, const char *key, const char *value,
			 const char *origin, char *errstr, size_t errstr_size)
{
	struct worker_config *cfg = target;

	if (strncmp(key, "kafka.", 6) == 0 && key[6]) {
		cfg_kv_append(&cfg->kafka, key, value, origin);
		return true;
	}
	snprintf(errstr, errstr_size, "unknown setting \"%s\"", key);
	return false;
}

bool worker_config_load(struct worker_config *cfg, const char *path,
			char *errstr, size_t errstr_size)
{
	memset(cfg, 0, sizeof(*cfg));
	if (!cfg_load(worker_settings, cfg, path, worker_extra, &cfg->seen,
		      errstr, errstr_size))
		return false;
	/* Read into the kafka.* pairs every Kafka client is built from, so
	 * the config file holds no password. */
	if (!cfg_kv_secret_file(&cfg->kafka, "kafka.sasl.password",
				cfg->kafka_sasl_password_file,
				"kafka_sasl_password_file", errstr,
				errstr_size))
		return false;
	if (!cfg->dlq_topic[0]) {
		size_t n = strlen(cfg->topic) + 5;

		free(cfg->dlq_topic);
		cfg->dlq_topic = xmalloc(n);
		snprintf(cfg->dlq_topic, n, "%s.dlq", cfg->topic);
	}
	if (cfg->topics == TOPICS_PER_KIND &&
	    cfg->pipelines != PIPELINES_PER_KIND) {
		/* A shared pipeline would read every kind's topic: one
		 * consumer over all of them is what per-kind topics end. */
		snprintf(errstr, errstr_size,
			 "topics = per_kind needs pipelines = per_kind");
		return false;
	}
	for (int i = 0; cfg->topics == TOPICS_PER_KIND && kinds[i]; i++) {
		size_t n = strlen(cfg->topic);

		/* A pipeline reading its own dead letters would apply them
		 * again, for ever. */
		if (strncmp(cfg->dlq_topic, cfg->topic, n) == 0 &&
		    cfg->dlq_topic[n] == '.' &&
		    strcmp(cfg->dlq_topic + n + 1, kinds[i]->name) == 0) {
			snprintf(errstr, errstr_size,
				 "dlq_topic must differ from the kinds' topics "
				 "(%s is %s's)",
				 cfg->dlq_topic, kinds[i]->name);
			return false;
		}
	}
	if (strcmp(cfg->dlq_topic, cfg->topic) == 0) {
		snprintf(errstr, errstr_size,
			 "dlq_topic must differ from topic");
		return false;
	}
	if (cfg->retry_backoff_min_ms > cfg->retry_backoff_max_ms) {
		snprintf(errstr, errstr_size,
			 "retry_backoff_min_ms is above retry_backoff_max_ms");
		return false;
	}
	if (cfg->lc_source == LC_SOURCE_HTTP) {
		/* Non-conformant: "{lead_id}" is not a valid path character. */
		struct evhttp_uri *u = evhttp_uri_parse_with_flags(
		    cfg->lc_url, EVHTTP_URI_NONCONFORMANT);
		bool ok = u && evhttp_uri_get_scheme(u) &&
			  (strcmp(evhttp_uri_get_scheme(u), "http") == 0 ||
			   strcmp(evhttp_uri_get_scheme(u), "https") == 0) &&
			  evhttp_uri_get_host(u) && evhttp_uri_get_host(u)[0];

		if (u)
			evhttp_uri_free(u);
		if (!ok) {
			snprintf(
			    errstr, errstr_size,
			    "lead_context.url: expected "
			    "http(s)://host[:port]/path/{lead_id}, got \"%s\"",
			    cfg->lc_url);
			return false;
		}
	}
	{
		struct cache_templates t;
		bool ok;

		cache_templates_load(&t, cfg->invalidate_keys,
				     cfg->invalidate_generation,
				     cfg->invalidate_index);
		ok = cache_templates_check(&t, "{conversation_id}", "", errstr,
					   errstr_size);
		cache_templates_clear(&t);
		cache_templates_load(&t, cfg->campaign_invalidate_keys,
				     cfg->campaign_invalidate_generation,
				     cfg->campaign_invalidate_index);
		ok = ok && cache_templates_check(&t, "{run_id}", "campaign_",
						 errstr, errstr_size);
		cache_templates_clear(&t);
		if (!ok)
			return false;
	}
	if (cfg->listen[0] && !strchr(cfg->listen, ':')) {
		snprintf(errstr, errstr_size, "listen: \"%s\" is not host:port",
			 cfg->listen);
		return false;
	}
	if (strncmp(cfg->redis_url, "redis://", 8) != 0) {
		snprintf(errstr, errstr_size,
			 "redis_url must look like redis://host:port[/db]");
		return false;
	}
	if (cfg->redis_password_file[0]) {
		char err[512];

		if (dsn_has_password(cfg->redis_url)) {
			snprintf(errstr, errstr_size,
				 "redis_url holds a password and "
				 "redis_password_file is set: keep one");
			return false;
		}
		cfg->redis_password = util_read_secret(cfg->redis_password_file,
						       err, sizeof(err));
		if (!cfg->redis_password) {
			snprintf(errstr, errstr_size, "redis_password_file %s",
				 err);
			return false;
		}
	}
	return true;
}

void worker_config_free(struct worker_config *cfg)
{
	if (cfg->redis_password) {
		memset(cfg->redis_password, 0, strlen(cfg->redis_password));
		free(cfg->redis_password);
		cfg->redis_password = NULL;
	}
	cfg_kv_free(cfg->kafka);
	cfg_kv_free(cfg->seen);
	cfg_free(worker_settings, cfg);
	memset(cfg, 0, sizeof(*cfg));
}

void worker_config_dump(const struct worker_config *cfg)
{
	cfg_dump(worker_settings, cfg, cfg->seen, stdout);
	cfg_kv_dump(cfg->kafka, stdout);
}
