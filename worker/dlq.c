/* The dead-letter topic: records that can never succeed go there with the
 * reason and their origin in headers, so their partition can move on. */
#include "dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/kafka.h"
#include "../common/log.h"

struct dlq {
	rd_kafka_t *rk;
	char *topic;
	int failed; /* delivery failures since the last flush */
};

/* Runs on the worker thread, from rd_kafka_flush()/rd_kafka_poll(). */
static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct dlq *d = opaque;

	(void)rk;
	if (m->err) {
		d->failed++;
		log_warn("dead-letter delivery failed: %s",
			 rd_kafka_err2str(m->err));
	}
}

struct dlq *dlq_new(const char *brokers, const char *topic,
		    const struct cfg_kv *kafka, int partitions, char *errstr,
		    size_t errstr_size)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	struct dlq *d = calloc(1, sizeof(*d));
	char err[512];

	if (!d)
		abort();
	/* Only the connection-level kafka.* settings make sense here; the
	 * consumer-only ones would be rejected by a producer. */
	for (const struct cfg_kv *kv = kafka; kv; kv = kv->next) {
		const char *k = kv->key + strlen("kafka.");

		if (strncmp(k, "security.", 9) == 0 ||
		    strncmp(k, "sasl.", 5) == 0 || strncmp(k, "ssl.", 4) == 0)
			if (!kafka_conf_set(conf, k, kv->value, errstr,
					    errstr_size))
				goto fail;
	}
	if (!kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			    errstr_size) ||
	    !kafka_conf_set(conf, "enable.idempotence", "true", errstr,
			    errstr_size) ||
	    !kafka_conf_set(conf, "client.id", "sluice-worker-dlq", errstr,
			    errstr_size))
		goto fail;
	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
	rd_kafka_conf_set_opaque(conf, d);
	d->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (!d->rk) {
		snprintf(errstr, errstr_size, "dead-letter producer: %s", err);
		goto fail;
	}
	conf = NULL; /* owned by rk now */
	d->topic = strdup(topic);
	if (!kafka_ensure_topic(d->rk, topic, partitions, 5000, err,
				sizeof(err)))
		log_warn("could not ensure dead-letter topic: %s", err);
	return d;
fail:
	if (conf)
		rd_kafka_conf_destroy(conf);
	free(d);
	return NULL;
}

void dlq_destroy(struct dlq *d)
{
	if (!d)
		return;
	if (rd_kafka_flush(d->rk, 5000) != RD_KAFKA_RESP_ERR_NO_ERROR)
		log_warn("dead-letter: %d records unflushed at exit",
			 rd_kafka_outq_len(d->rk));
	rd_kafka_destroy(d->rk);
	free(d->topic);
	free(d);
}

bool dlq_send(struct dlq *d, const rd_kafka_message_t *m, const char *reason)
{
	rd_kafka_headers_t *orig = NULL, *h;
	char origin[512];
	rd_kafka_resp_err_t err;

	if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
		h = rd_kafka_headers_copy(orig);
	else
		h = rd_kafka_headers_new(2);
	snprintf(origin, sizeof(origin), "%s/%d@%lld",
		 rd_kafka_topic_name(m->rkt), (int)m->partition,
		 (long long)m->offset);
	rd_kafka_header_add(h, HDR_DLQ_REASON, -1, reason, -1);
	rd_kafka_header_add(h, HDR_DLQ_ORIGIN, -1, origin, -1);
	err = rd_kafka_producev(d->rk, RD_KAFKA_V_TOPIC(d->topic),
				RD_KAFKA_V_KEY(m->key, m->key_len),
				RD_KAFKA_V_VALUE(m->payload, m->len),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
	if (err) {
		rd_kafka_headers_destroy(h);
		d->failed++;
		return false;
	}
	log_ctx_warn(origin, "dead-lettered to %s: %s", d->topic, reason);
	return true;
}

bool dlq_flush(struct dlq *d, int timeout_ms)
{
	bool ok;

	rd_kafka_flush(d->rk, timeout_ms);
	ok = d->failed == 0 && rd_kafka_outq_len(d->rk) == 0;
	d->failed = 0;
	return ok;
}
