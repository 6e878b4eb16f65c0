/* sluice-ingest's settings: the table of every key, and the sources. */
#include "settings.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/access.h"
#include "../common/log.h"
#include "../common/schema.h"
#include "../common/util.h"

static const char *const signature_values[] = {"none", "standard-webhooks",
					       "meta", NULL};

static const char *const topics_names[] = {"shared", "per_kind", NULL};

#define F(x) offsetof(struct ingest_config, x)
const struct cfg_setting ingest_settings[] = {
    {"listen", CFG_STR, F(listen), "127.0.0.1:8080", 0, 0, NULL,
     "SLUICE_INGEST_LISTEN",
     "listen address: plain HTTP, or HTTPS when the certificate is set and "
     "tls_listen is not",
     CFG_RESTART, NULL},
    {"tls_listen", CFG_STR, F(tls_listen), "", 0, 0, NULL, NULL,
     "HTTPS listen address beside listen (empty: HTTPS, if any, on listen)",
     CFG_RESTART, NULL},
    {"tls_cert_file", CFG_STR, F(tls_cert_file), "", 0, 0, NULL, NULL,
     "PEM certificate (then its chain) served over HTTPS; empty: no HTTPS",
     CFG_RUNTIME, NULL},
    {"tls_key_file", CFG_STR, F(tls_key_file), "", 0, 0, NULL, NULL,
     "PEM private key of tls_cert_file; mode 0600 or stricter", CFG_RUNTIME,
     NULL},
    {"brokers", CFG_STR, F(brokers), "127.0.0.1:9092", 0, 0, NULL,
     "SLUICE_KAFKA_BROKERS", "Kafka bootstrap servers", CFG_RESTART, NULL},
    {"kafka_sasl_password_file", CFG_STR, F(kafka_sasl_password_file), "", 0, 0,
     NULL, NULL, "file holding the Kafka SASL password (mode 0600)",
     CFG_RESTART, NULL},
    {"topic", CFG_STR, F(topic), "sluice.events", 0, 0, NULL, "SLUICE_TOPIC",
     "topic accepted requests go to (with topics = per_kind, the prefix "
     "of each kind's)",
     CFG_RESTART, NULL},
    {"topics", CFG_ENUM, F(topics), "shared", 0, 0, topics_names, NULL,
     "shared: every kind to topic; per_kind: each kind to <topic>.<kind>, "
     "read by sluice-worker's pipeline of that kind alone",
     CFG_RESTART, NULL},
    {"topic_partitions", CFG_INT, F(topic_partitions), "4", 0, 1024, NULL, NULL,
     "partitions when the topic is created at start-up", CFG_RESTART, NULL},
    {"delivery_timeout_ms", CFG_INT, F(delivery_timeout_ms), "5000", 100,
     300000, NULL, NULL, "deadline for Kafka to acknowledge a record",
     CFG_RUNTIME, NULL},
    {"retry_after_s", CFG_INT, F(retry_after_s), "5", 1, 3600, NULL, NULL,
     "Retry-After on 503", CFG_RUNTIME, NULL},
    {"max_body_bytes", CFG_INT, F(max_body_bytes), "1048576", 1, 67108864, NULL,
     NULL, "largest accepted body", CFG_RUNTIME, NULL},
    {"request_timeout_s", CFG_INT, F(request_timeout_s), "30", 1, 3600, NULL,
     NULL, "slow or idle connections are closed after this", CFG_RUNTIME, NULL},
    {"max_connections", CFG_INT, F(max_connections), "0", 0, 1000000, NULL,
     NULL,
     "open connections at most; more get 503 (0: min(10000, nofile - 64))",
     CFG_RUNTIME, NULL},
    {"max_inflight", CFG_INT, F(max_inflight), "10000", 1, 1000000, NULL, NULL,
     "requests waiting for Kafka at once", CFG_RUNTIME, NULL},
    {"campaign_max_messages", CFG_INT, F(campaign_max_messages), "1000", 1,
     100000, NULL, NULL, "most messages in one campaign batch", CFG_RUNTIME,
     NULL},
    /* SCHEMA_DIR: the source tree's schemas/, or the installed copy's. */
    {"schema_dir", CFG_STR, F(schema_dir), SCHEMA_DIR, 0, 0, NULL,
     "SLUICE_SCHEMA_DIR", "where the JSON Schemas are read from", CFG_RUNTIME,
     NULL},
    {"log_level", CFG_ENUM, F(log_level), "info", 0, 0, log_level_names, NULL,
     "debug, info, warn or error", CFG_RUNTIME, NULL},
    {"log_format", CFG_ENUM, F(log_format), "text", 0, 0, log_format_names,
     NULL, "text or json", CFG_RESTART, NULL},
    {"admin_token_file", CFG_STR, F(admin_token_file), "", 0, 0, NULL, NULL,
     "file holding the bearer token of /status and /admin/ for clients "
     "other than loopback (empty = loopback only)",
     CFG_RESTART, NULL},
    {"access_log", CFG_ENUM, F(access_log), "text", 0, 0, access_mode_names,
     NULL, "one line per answer at info: off, text or json", CFG_RESTART, NULL},
    CFG_END};
#undef F

/* A SIGHUP swaps every source whole, so all of them apply at run time. */
const struct cfg_family_key ingest_family_keys[] = {
    {"source.NAME.kind", "transcript/campaign/lead_updated/chat", NULL, true},
    {"source.NAME.signature", "none/standard-webhooks/meta", NULL, true},
    {"source.NAME.secret", "string (secret)", NULL, true},
    {"source.NAME.secret_file", "path", NULL, true},
    {"source.NAME.verify_token", "string (secret)", NULL, true},
    {"source.NAME.success_status", "200/202/204", "202", true},
    {"source.NAME.rate", "N/s, N/min, N/h or 0", "0", true},
    {"source.NAME.burst", "int 1..1000000000", NULL, true},
    {"kafka.PROPERTY", "librdkafka property", NULL, false},
    {NULL, NULL, NULL, false}};

static struct source *source_get(struct ingest_config *cfg, const char *name,
				 size_t len)
{
	struct source **p = &cfg->sources;

	for (; *p; p = &(*p)->next)
		if (strlen((*p)->name) == len &&
		    memcmp((*p)->name, name, len) == 0)
			return *p;
	*p = xcalloc(1, sizeof(**p));
	(*p)->name = xstrndup(name, len);
	(*p)->signature = SIG_UNSET;
	return *p;
}

static bool source_name_ok(const char *name, size_t len)
{
	if (len == 0 || len > 64)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return true;
}

static bool enum_index(const char *const *values, const char *v, int *out)
{
	for (int i = 0; values[i]; i++)
		if (strcmp(values[i], v) == 0) {
			*out = i;
			return true;
		}
	return false;
}

/* "100/min" → 1.667 per second; "0" → unlimited. */
static bool parse_rate(const char *v, double *per_s, double *count)
{
	char *end;
	double n = strtod(v, &end);

	if (end == v || n < 0 || n > 1e9)
		return false;
	*count = n;
	if (*end == '\0' && n == 0) {
		*per_s = 0;
		return true;
	}
	if (strcmp(end, "/s") == 0)
		*per_s = n;
	else if (strcmp(end, "/min") == 0)
		*per_s = n / 60.0;
	else if (strcmp(end, "/h") == 0)
		*per_s = n / 3600.0;
	else
		return false;
	return true;
}

bool source_take(struct source *src, int64_t now_ms, int *retry_after_s)
{
	double need;

	if (src->rate_per_s <= 0)
		return true;
	if (src->refilled_ms == 0) {
		src->tokens = src->burst;
	} else {
		src->tokens += (double)(now_ms - src->refilled_ms) / 1000.0 *
			       src->rate_per_s;
		if (src->tokens > src->burst)
			src->tokens = src->burst;
	}
	src->refilled_ms = now_ms;
	if (src->tokens >= 1.0) {
		src->tokens -= 1.0;
		return true;
	}
	need = (1.0 - src->tokens) / src->rate_per_s;
	*retry_after_s = (int)need + ((double)(int)need < need ? 1 : 0);
	if (*retry_after_s < 1)
		*retry_after_s = 1;
	return false;
}

static bool ingest_extra(void *target, const char *key, const char *value,
			 const char *origin, char *errstr, size_t errstr_size)
{
	struct ingest_config *cfg = target;
	const char *name, *dot;
	struct source *src;

	if (strncmp(key, "kafka.", 6) == 0 && key[6]) {
		cfg_kv_append(&cfg->kafka, key, value, origin);
		return true;
	}
	if (strncmp(key, "source.", 7) != 0) {
		snprintf(errstr, errstr_size, "unknown setting \"%s\"", key);
		return false;
	}
	name = key + 7;
	dot = strchr(name, '.');
	if (!dot || !source_name_ok(name, (size_t)(dot - name))) {
		snprintf(errstr, errstr_size,
			 "\"%s\": expected source.NAME.FIELD with NAME made of "
			 "letters, digits, - and _",
			 key);
		return false;
	}
	src = source_get(cfg, name, (size_t)(dot - name));
	if (strcmp(dot + 1, "kind") == 0) {
		src->kind = kind_find(value);
		if (!src->kind) {
			char known[128];

			kind_names(known, sizeof(known));
			snprintf(errstr, errstr_size,
				 "%s: unknown kind \"%s\" (known: %s)", key,
				 value, known);
			return false;
		}
	} else if (strcmp(dot + 1, "signature") == 0) {
		if (!enum_index(signature_values, value, &src->signature)) {
			snprintf(errstr, errstr_size,
				 "%s: \"%s\" is not none, standard-webhooks or "
				 "meta",
				 key, value);
			return false;
		}
	} else if (strcmp(dot + 1, "verify_token") == 0) {
		free(src->verify_token);
		src->verify_token = xstrdup(value);
	} else if (strcmp(dot + 1, "success_status") == 0) {
		if (strcmp(value, "200") != 0 && strcmp(value, "202") != 0 &&
		    strcmp(value, "204") != 0) {
			snprintf(errstr, errstr_size,
				 "%s: expected 200, 202 or 204", key);
			return false;
		}
		src->success_status = atoi(value);
	} else if (strcmp(dot + 1, "rate") == 0) {
		if (!parse_rate(value, &src->rate_per_s, &src->rate_count)) {
			snprintf(errstr, errstr_size,
				 "%s: \"%s\" is not N/s, N/min or N/h (0 for "
				 "no limit)",
				 key, value);
			return false;
		}
	} else if (strcmp(dot + 1, "burst") == 0) {
		char *end;
		long b = strtol(value, &end, 10);

		if (*end || b < 1 || b > 1000000000) {
			snprintf(errstr, errstr_size,
				 "%s: expected an integer from 1", key);
			return false;
		}
		src->burst = (double)b;
	} else if (strcmp(dot + 1, "secret") == 0) {
		free(src->secret);
		src->secret = xstrdup(value);
	} else if (strcmp(dot + 1, "secret_file") == 0) {
		free(src->secret_file);
		src->secret_file = xstrdup(value);
	} else {
		snprintf(errstr, errstr_size, "unknown setting \"%s\"", key);
		return false;
	}
	return true;
}

/* "whsec_<base64>" → raw key bytes. The prefix is optional, and so is the
 * padding: the Standard Webhooks reference libraries pad an unpadded
 * secret before decoding it, so a secret they accept is accepted here. */
static bool source_decode_secret(struct source *src, const char *secret,
				 char *errstr, size_t errstr_size)
{
	const char *text = secret;
	char *b64;
	size_t len, padded;

	if (strncmp(text, "whsec_", 6) == 0)
		text += 6;
	len = strlen(text);
	while (len > 0 && text[len - 1] == '=')
		len--;
	/* 4n+1 characters cannot be base64 of anything. */
	if (len == 0 || len % 4 == 1 || len > 4096) {
		snprintf(errstr, errstr_size,
			 "source %s: secret is not whsec_<base64>", src->name);
		return false;
	}
	padded = (len + 3) / 4 * 4;
	b64 = xmalloc(padded + 1);
	src->key = xmalloc(padded);
	memcpy(b64, text, len);
	memset(b64 + len, '=', padded - len);
	b64[padded] = '\0';
	if (EVP_DecodeBlock(src->key, (const unsigned char *)b64, (int)padded) <
	    0) {
		snprintf(errstr, errstr_size,
			 "source %s: secret is not valid base64", src->name);
		OPENSSL_cleanse(b64, padded);
		free(b64);
		return false;
	}
	OPENSSL_cleanse(b64, padded);
	free(b64);
	/* EVP_DecodeBlock counts the padding as output; these are the bytes
	 * the characters carry. */
	src->key_len = len * 3 / 4;
	return true;
}

void ingest_source_route(const struct ingest_config *cfg, struct source *src)
{
	free(src->topic);
	if (cfg->topics == TOPICS_PER_KIND) {
		size_t n = strlen(cfg->topic) + strlen(src->kind->name) + 2;

		src->topic = xmalloc(n);
		snprintf(src->topic, n, "%s.%s", cfg->topic, src->kind->name);
	} else {
		src->topic = xstrdup(cfg->topic);
	}
}

static bool source_finish(struct ingest_config *cfg, struct source *src,
			  char *errstr, size_t errstr_size)
{
	char path[4096];
	char err[512];

	if (!src->kind) {
		snprintf(errstr, errstr_size, "source %s: kind is not set",
			 src->name);
		return false;
	}
	ingest_source_route(cfg, src);
	/* The bucket holds one period's worth unless burst says otherwise:
	 * "100/min" lets 100 through at once, then one every 0.6 s. */
	if (src->rate_per_s > 0 && src->burst <= 0)
		src->burst = src->rate_count >= 1 ? src->rate_count : 1;
	if (src->signature == SIG_UNSET) {
		snprintf(errstr, errstr_size,
			 "source %s: signature must be set (standard-webhooks, "
			 "or none to accept unsigned requests)",
			 src->name);
		return false;
	}
	if (src->success_status == 0)
		src->success_status = 202;
	if (src->signature == SIG_STANDARD_WEBHOOKS ||
	    src->signature == SIG_META) {
		char *secret = src->secret;
		char *from_file = NULL;

		if (!secret && src->secret_file) {
			from_file = util_read_secret(src->secret_file, err,
						     sizeof(err));
			if (!from_file) {
				snprintf(errstr, errstr_size,
					 "source.%s.secret_file %s", src->name,
					 err);
				return false;
			}
			secret = from_file;
		}
		if (!secret || !secret[0]) {
			snprintf(errstr, errstr_size,
				 "source %s: signature %s needs secret or "
				 "secret_file",
				 src->name, signature_values[src->signature]);
			free(from_file);
			return false;
		}
		bool ok = true;

		if (src->signature == SIG_META) {
			/* Meta's app secret is used as it is shown. */
			src->key_len = strlen(secret);
			src->key = (unsigned char *)xstrdup(secret);
		} else {
			ok = source_decode_secret(src, secret, errstr,
						  errstr_size);
		}
		if (from_file) {
			memset(from_file, 0, strlen(from_file));
			free(from_file);
		}
		if (!ok)
			return false;
	}
	/* Campaign batches and lead updates are checked in full by
	 * common/campaign.c (every bad item at once); the others by their
	 * JSON Schema. */
	if (!src->kind->schema)
		return true;
	snprintf(path, sizeof(path), "%s/%s.schema.json", cfg->schema_dir,
		 src->kind->name);
	src->schema = schema_load(path, err, sizeof(err));
	if (!src->schema) {
		snprintf(errstr, errstr_size, "source %s: %s", src->name, err);
		return false;
	}
	return true;
}

bool ingest_config_load(struct ingest_config *cfg, const char *path,
			char *errstr, size_t errstr_size)
{
	memset(cfg, 0, sizeof(*cfg));
	if (!cfg_load(ingest_settings, cfg, path, ingest_extra, &cfg->seen,
		      errstr, errstr_size))
		return false;
	/* Read into the kafka.* pairs every Kafka client is built from, so
	 * the config file holds no password. */
	if (!cfg_kv_secret_file(&cfg->kafka, "kafka.sasl.password",
				cfg->kafka_sasl_password_file,
				"kafka_sasl_password_file", errstr,
				errstr_size))
		return false;
	if (!cfg->sources) {
		snprintf(errstr, errstr_size,
			 "no source configured (source.NAME.kind = ...)");
		return false;
	}
	if (!strchr(cfg->listen, ':')) {
		snprintf(errstr, errstr_size, "listen: \"%s\" is not host:port",
			 cfg->listen);
		return false;
	}
	if (!cfg->tls_cert_file[0] != !cfg->tls_key_file[0]) {
		snprintf(errstr, errstr_size,
			 "tls_cert_file and tls_key_file go together: set both "
			 "for HTTPS, or neither");
		return false;
	}
	if (cfg->tls_listen[0] && !cfg->tls_cert_file[0]) {
		snprintf(errstr, errstr_size,
			 "tls_listen needs tls_cert_file and tls_key_file");
		return false;
	}
	if (cfg->tls_listen[0] && !strchr(cfg->tls_listen, ':')) {
		snprintf(errstr, errstr_size,
			 "tls_listen: \"%s\" is not host:port",
			 cfg->tls_listen);
		return false;
	}
	for (struct source *s = cfg->sources; s; s = s->next)
		if (!source_finish(cfg, s, errstr, errstr_size))
			return false;
	return true;
}

void ingest_config_free(struct ingest_config *cfg)
{
	struct source *s = cfg->sources;

	while (s) {
		struct source *next = s->next;

		free(s->name);
		free(s->topic);
		if (s->secret)
			OPENSSL_cleanse(s->secret, strlen(s->secret));
		free(s->secret);
		free(s->secret_file);
		if (s->key)
			OPENSSL_cleanse(s->key, s->key_len);
		free(s->key);
		if (s->verify_token)
			OPENSSL_cleanse(s->verify_token,
					strlen(s->verify_token));
		free(s->verify_token);
		schema_destroy(s->schema);
		free(s);
		s = next;
	}
	cfg_kv_free(cfg->kafka);
	cfg_kv_free(cfg->seen);
	cfg_free(ingest_settings, cfg);
	memset(cfg, 0, sizeof(*cfg));
}

void ingest_config_dump(const struct ingest_config *cfg)
{
	cfg_dump(ingest_settings, cfg, cfg->seen, stdout);
	/* kafka.* and source.*, as written, each with its line. */
	for (const struct cfg_kv *kv = cfg->seen; kv; kv = kv->next) {
		char shown[4096];

		if (cfg_find(ingest_settings, kv->key))
			continue;
		printf(
		    "%s = %s  (%s)\n", kv->key,
		    cfg_value_shown(kv->key, kv->value, shown, sizeof(shown)),
		    kv->origin);
	}
	/* kafka.* pairs with no line of their own (the password read from
	 * kafka_sasl_password_file), hidden. */
	for (const struct cfg_kv *kv = cfg->kafka; kv; kv = kv->next) {
		char shown[4096];

		if (cfg_origin(cfg->seen, kv->key))
			continue;
		printf(
		    "%s = %s  (%s)\n", kv->key,
		    cfg_value_shown(kv->key, kv->value, shown, sizeof(shown)),
		    kv->origin ? kv->origin : "default");
	}
	/* What the sources got without a line of their own. */
	for (const struct source *s = cfg->sources; s; s = s->next) {
		char key[128];

		snprintf(key, sizeof(key), "source.%s.success_status", s->name);
		if (!cfg_origin(cfg->seen, key))
			printf("%s = %d  (default)\n", key, s->success_status);
		snprintf(key, sizeof(key), "source.%s.burst", s->name);
		if (s->rate_per_s > 0 && !cfg_origin(cfg->seen, key))
			printf("%s = %g  (default: N of the rate)\n", key,
			       s->burst);
	}
}

struct source *ingest_source_find(const struct ingest_config *cfg,
				  const char *name, size_t len)
{
	for (struct source *s = cfg->sources; s; s = s->next)
		if (strlen(s->name) == len && memcmp(s->name, name, len) == 0)
			return s;
	return NULL;
}

struct source *ingest_source_of_kind(const struct ingest_config *cfg,
				     const char *kind)
{
	for (struct source *s = cfg->sources; s; s = s->next)
		if (strcmp(s->kind->name, kind) == 0)
			return s;
	return NULL;
}
