/* sluice-worker's settings: the table of every key. */
#ifndef SLUICE_WORKER_SETTINGS_H
#define SLUICE_WORKER_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/config.h"

enum lc_source { LC_SOURCE_POSTGRES = 0, LC_SOURCE_HTTP };
enum pipelines { PIPELINES_PER_KIND = 0, PIPELINES_SHARED };
/* Where records are read: one topic for every kind, or <topic>.<kind>. */
enum topics { TOPICS_SHARED = 0, TOPICS_PER_KIND };

struct worker_config {
	char *brokers;
	char *kafka_sasl_password_file; /* read into kafka.sasl.password */
	char *topic;
	int topics; /* enum topics */
	int topic_partitions;
	char *group_id;
	char *group_instance_id; /* "" = dynamic membership */
	int pipelines;		 /* enum pipelines */
	char *kinds;		 /* "" = every kind */
	/* Not a key: set for each pipeline's consumer (struct handler's
	 * gather_fetches, or a topic every kind shares). */
	bool gather_fetches;
	int stall_alert_s;
	char *dlq_topic;
	char *postgres_dsn;
	char *redis_url;
	char *redis_password_file; /* read into redis_password */
	char *redis_password;	   /* NULL: the URL's, if any; not a key */
	int redis_timeout_ms;
	char *invalidate_keys;
	char *invalidate_generation; /* CACHE_GEN templates */
	char *invalidate_index;	     /* CACHE_INDEX templates */
	int batch_max;
	int batch_wait_ms;
	int retry_backoff_min_ms;
	int retry_backoff_max_ms;
	char *listen;		/* health and metrics endpoint, "" = off */
	char *admin_token_file; /* "" = admin routes for loopback only */
	int access_log;		/* enum access_mode */
	int log_level;
	int log_format;
	/* campaigns and lead contexts */
	char *campaign_invalidate_keys;
	char *campaign_invalidate_generation;
	char *campaign_invalidate_index;
	int lc_source; /* enum lc_source */
	char *lc_url;
	char *lc_phone_url;
	char *lc_postgres_dsn;
	int lc_concurrency;
	int lc_timeout_ms;
	int lc_retries;
	int lc_cache_ttl_s;
	int lc_not_found_ttl_s;
	int lc_lease_ms;
	int lc_lease_wait_ms;
	int lc_batch_budget_ms;
	char *http_ca_file;
	int pg_idle_tx_timeout_ms;
	/* the composer (campaign messages written by a model) */
	char *composer_base_url;
	char *composer_api_key_file;
	char *composer_headers;
	int composer_concurrency;
	int composer_rate; /* calls per minute, 0 = no cap */
	int composer_timeout_ms;
	int composer_retries;
	char *composer_default_model;
	int composer_model_cache_ttl_s;
	struct cfg_kv *kafka;
	/* Every value the file and the environment set, with its origin:
	 * --check-config prints it, a reload diffs it. */
	struct cfg_kv *seen;
};

extern const struct cfg_setting worker_settings[];
/* The kafka.* family, as --list-keys shows it. */
extern const struct cfg_family_key worker_family_keys[];

bool worker_config_load(struct worker_config *cfg, const char *path,
			char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
void worker_config_free(struct worker_config *cfg);
void worker_config_dump(const struct worker_config *cfg);

#endif
