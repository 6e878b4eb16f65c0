/* What both daemons agree on about Kafka: record header names, config
 * passthrough, creating the topic at start-up. */
#ifndef SLUICE_KAFKA_H
#define SLUICE_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Record headers written by sluice-ingest and read by sluice-worker. */
#define HDR_SOURCE "source"
#define HDR_KIND "kind"
#define HDR_EVENT_TYPE "event-type"
#define HDR_WEBHOOK_ID "webhook-id"
#define HDR_RECEIVED_AT "received-at" /* ms since the epoch, decimal */
#define HDR_REQUEST_ID "request-id"
#define HDR_CAMPAIGN_ID "campaign-id" /* campaign batches: from the path */
#define HDR_CHAT_SENDER "chat-sender" /* chat: whose part of the webhook */
/* Added to records sent to the dead-letter topic. */
#define HDR_DLQ_REASON "dlq-reason"
#define HDR_DLQ_ORIGIN "dlq-origin" /* topic/partition@offset */
#define HDR_DLQ_TIME "dlq-time"	    /* ms since the epoch, UTC */
#define HDR_DLQ_WORKER                                                         \
	"dlq-worker"		      /* which worker: instance id or host:pid \
				       */
#define HDR_DLQ_VERSION "dlq-version" /* sluice's version */

/* Applies every kafka.* pair (prefix stripped) to conf. */
bool kafka_conf_apply(rd_kafka_conf_t *conf, const struct cfg_kv *kv,
		      char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
bool kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value,
		    char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* A side producer's delivery failures since its owner last looked (its
 * flush): what a producer that only needs "did everything arrive" counts. */
struct kafka_deliveries {
	const char *what; /* "dead-letter", prefixes the log line */
	int failed;
};

/* What differs between sluice's Kafka clients; kafka_client_new() does the
 * rest the same way for all (bootstrap servers, client id, the kafka.*
 * passthrough, log routing, opaque). */
struct kafka_client_spec {
	rd_kafka_type_t type;
	const char *what; /* "kafka consumer", prefixes errors */
	const char *brokers;
	const char *client_id;
	const char *const *settings;	  /* key, value, ..., NULL */
	const struct cfg_kv *passthrough; /* kafka.* from the config */
	/* Only the connection-level passthrough keys (security., sasl.,
	 * ssl.): a side client must not get the main client's tuning. */
	bool connection_only;
	void *opaque;
	void (*callbacks)(rd_kafka_conf_t *conf); /* optional */
	/* Producers: count failed deliveries there. It becomes the client's
	 * opaque, so it excludes .opaque and a dr_msg_cb of .callbacks. */
	struct kafka_deliveries *deliveries;
};

rd_kafka_t *kafka_client_new(const struct kafka_client_spec *spec, char *errstr,
			     size_t errstr_size);
/* --check-config: builds the configuration kafka_client_new() would and
 * hands it to rd_kafka_new() with no broker to reach, so what it accepts
 * the start accepts; errstr names a refused kafka.* key's FILE:LINE. */
bool kafka_client_check(const struct kafka_client_spec *spec, char *errstr,
			size_t errstr_size) __attribute__((warn_unused_result));

/* A side consumer that reads ranges it assigns by hand (redrive, dlq):
 * group `group`, no automatic commit or offset store, end of partition
 * reported, connection-level passthrough only, polled through its
 * consumer queue. NULL with errstr on failure. */
rd_kafka_t *kafka_range_reader_new(const char *what, const char *brokers,
				   const char *client_id, const char *group,
				   const struct cfg_kv *passthrough,
				   char *errstr, size_t errstr_size);

/* A partition of a topic as a side reader maps it. */
struct kafka_part {
	int32_t id;
	int64_t lo, hi; /* its watermarks when it was mapped */
	int64_t start;	/* where kafka_side_assign() starts it (lo) */
	bool skip;	/* not assigned */
};

/* Maps topic for a side reader that assigns its partitions by hand
 * (replay, redrive, dlq): the partitions from the metadata, then each
 * one's watermarks (only partition `only`'s when only >= 0). Returns how
 * many partitions *out holds (malloc'd, the caller frees it), 0 when the
 * topic does not exist or has no such partition (*out NULL), -1 with
 * errstr on failure. */
int kafka_side_map(rd_kafka_t *rk, const char *topic, int32_t only,
		   struct kafka_part **out, char *errstr, size_t errstr_size);
/* Assigns the mapped partitions not skipped, each at its start. */
bool kafka_side_assign(rd_kafka_t *rk, const char *topic,
		       const struct kafka_part *parts, int n, char *errstr,
		       size_t errstr_size) __attribute__((warn_unused_result));

/* A reason a Kafka client cannot work that retrying will not cure: its
 * credentials, the broker's certificate, or a missing ACL. Kept for
 * /readyz, and logged once per cause every KAFKA_NOTICE_EVERY_MS instead of
 * at every reconnect. Owned by one thread. */
#define KAFKA_NOTICE_EVERY_MS 30000
enum kafka_denial {
	KAFKA_DENIAL_NONE,
	KAFKA_DENIAL_AUTH, /* credentials or TLS: cured by a broker link */
	KAFKA_DENIAL_ACL,  /* an ACL: cured by the right succeeding */
};
struct kafka_notice {
	enum kafka_denial kind;
	char cause[256]; /* what /readyz shows; "" for none */
	/* A cause is its error and subject: librdkafka's text varies
	 * ("after 354ms in state AUTH_REQ") for one and the same cause. */
	rd_kafka_resp_err_t err;
	char subject[128];
};
/* The causes logged lately; one per process when several clients (the
 * worker's pipelines) would each say the same. */
struct kafka_said {
	struct {
		rd_kafka_resp_err_t err;
		char subject[128];
		int64_t ms; /* 0: free */
	} slot[8];
};

/* Takes err as such a reason: fills n->cause ("authentication failed:
 * ...", "not authorized to <verb> topic X", "not authorized for consumer
 * group G") and returns true; false, n untouched, for any other error.
 * verb and subject (the topic or group) may be NULL; reason is
 * librdkafka's text, or NULL. */
bool kafka_notice_take(struct kafka_notice *n, rd_kafka_resp_err_t err,
		       const char *verb, const char *subject,
		       const char *reason);
/* True when n->cause is to be logged now (not said lately, or that line
 * is KAFKA_NOTICE_EVERY_MS old); records it in said. */
bool kafka_notice_due(const struct kafka_notice *n, struct kafka_said *said);
void kafka_notice_clear(struct kafka_notice *n);

/* Routes librdkafka's own log lines into log.h (any librdkafka thread). */
void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
		  const char *buf);

/* Creates topic with `partitions` partitions unless it exists already. */
bool kafka_ensure_topic(rd_kafka_t *rk, const char *topic, int partitions,
			int timeout_ms, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* Asks for a topic's configuration without waiting; the answer arrives on
 * the returned queue (destroy it when done). */
rd_kafka_queue_t *kafka_topic_config_ask(rd_kafka_t *rk, const char *topic,
					 int timeout_ms);
/* Polls that queue without blocking: 0 no answer yet, 1 *max is the
 * topic's max.message.bytes, -1 the request failed. */
int kafka_topic_config_max_bytes(rd_kafka_queue_t *q, long *max);

/* Produces a copy of m's key and value to topic with headers h, which rk
 * owns from then on; on failure h is destroyed here. */
rd_kafka_resp_err_t kafka_produce_copy(rd_kafka_t *rk, const char *topic,
				       const rd_kafka_message_t *m,
				       rd_kafka_headers_t *h);

/* The value of header name as a NUL-terminated copy in out ("" if absent). */
bool kafka_header(const rd_kafka_message_t *m, const char *name, char *out,
		  size_t outsz);

#endif
