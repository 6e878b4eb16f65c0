/* sluice-ingest's settings: the table of every key, and the sources. */
#ifndef SLUICE_INGEST_SETTINGS_H
#define SLUICE_INGEST_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/config.h"
#include "../common/kinds.h"

enum signature_mode {
	SIG_UNSET = -1,
	SIG_NONE = 0,
	SIG_STANDARD_WEBHOOKS,
	SIG_META, /* X-Hub-Signature-256 */
};

/* Where records go: one topic for every kind, or <topic>.<kind>. */
enum topics { TOPICS_SHARED = 0, TOPICS_PER_KIND };

struct source {
	char *name;
	/* Served at POST /v1/webhooks/{source}, except campaigns at
	 * POST /v1/campaigns/{id}/batches; NULL until set. */
	const struct kind *kind;
	char *topic;   /* where its records go: topic, or <topic>.<kind> */
	int signature; /* enum signature_mode */
	char *secret;  /* whsec_... as configured; never logged */
	char *secret_file;
	unsigned char *key; /* decoded HMAC key */
	size_t key_len;
	char *verify_token; /* Meta's subscription handshake; never logged */
	int success_status; /* 202, or 200 for senders that want it */
	struct schema *schema;
	/* token bucket: rate 0 = unlimited */
	double rate_per_s;
	double rate_count; /* N of "N/min" */
	double burst;
	double tokens;
	int64_t refilled_ms;
	unsigned long long limited; /* 429s answered */
	struct source *next;
};

struct ingest_config {
	char *listen;
	/* HTTPS: all "" without it. With a certificate and no tls_listen,
	 * listen itself is HTTPS. */
	char *tls_listen;
	char *tls_cert_file;
	char *tls_key_file;
	char *brokers;
	char *kafka_sasl_password_file; /* read into kafka.sasl.password */
	char *topic;
	int topics; /* enum topics */
	int topic_partitions;
	int delivery_timeout_ms;
	int retry_after_s;
	int max_body_bytes;
	int request_timeout_s;
	int max_inflight;
	int max_connections; /* 0: from the descriptor limit */
	int campaign_max_messages;
	char *schema_dir;
	int log_level;
	int log_format;
	char *admin_token_file; /* "" = admin routes for loopback only */
	int access_log;		/* enum access_mode */
	struct cfg_kv *kafka;
	struct source *sources;
	/* Every value the file and the environment set, with its origin:
	 * --check-config prints it, a reload diffs it. */
	struct cfg_kv *seen;
};

extern const struct cfg_setting ingest_settings[];
/* The source.NAME.* keys, as --list-keys shows them. */
extern const struct cfg_family_key ingest_family_keys[];

bool ingest_config_load(struct ingest_config *cfg, const char *path,
			char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
void ingest_config_free(struct ingest_config *cfg);
/* Takes one request from the source's bucket; false with the seconds
 * until one is there. */
bool source_take(struct source *src, int64_t now_ms, int *retry_after_s);
/* Prints the effective configuration with each value's origin, secrets
 * hidden (--check-config). */
void ingest_config_dump(const struct ingest_config *cfg);
/* Sets src->topic from cfg's topic and topics: at load, and again at a
 * reload from the running values, which a reload does not change. */
void ingest_source_route(const struct ingest_config *cfg, struct source *src);
struct source *ingest_source_find(const struct ingest_config *cfg,
				  const char *name, size_t len);
/* The first source of the kind called kind, or NULL. */
struct source *ingest_source_of_kind(const struct ingest_config *cfg,
				     const char *kind);

#endif
