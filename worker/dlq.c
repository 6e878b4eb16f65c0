/* The dead-letter topic: records that can never succeed go there with the
 * reason and their origin in headers, so their partition can move on. */
#include "dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/util.h"

struct dlq {
	rd_kafka_t *rk;
	char *topic;
	char worker[128]; /* dlq-worker */
	/* Failures since the last flush, counted on the worker thread (from
	 * rd_kafka_flush()/rd_kafka_poll()). */
	struct kafka_deliveries dr;
};

/* The producer's settings, in one place for the start and the check. */
static void dlq_spec(const char *brokers, const struct cfg_kv *kafka,
		     struct kafka_client_spec *spec)
{
	static const char *const settings[] = {"enable.idempotence", "true",
					       NULL};

	*spec = (struct kafka_client_spec){
	    .type = RD_KAFKA_PRODUCER,
	    .what = "dead-letter producer",
	    .brokers = brokers,
	    .client_id = "sluice-worker-dlq",
	    .settings = settings,
	    .passthrough = kafka,
	    .connection_only = true,
	};
}

bool dlq_check_config(const char *brokers, const struct cfg_kv *kafka,
		      char *errstr, size_t errstr_size)
{
	struct kafka_client_spec spec;

	dlq_spec(brokers, kafka, &spec);
	return kafka_client_check(&spec, errstr, errstr_size);
}

struct dlq *dlq_new(const char *brokers, const char *topic,
		    const struct cfg_kv *kafka, int partitions,
		    const char *worker, char *errstr, size_t errstr_size)
{
	struct dlq *d = xcalloc(1, sizeof(*d));
	struct kafka_client_spec spec;
	char err[512];

	dlq_spec(brokers, kafka, &spec);
	spec.deliveries = &d->dr;
	d->dr.what = "dead-letter";
	d->rk = kafka_client_new(&spec, errstr, errstr_size);
	if (!d->rk) {
		free(d);
		return NULL;
	}
	d->topic = xstrdup(topic);
	if (worker && worker[0]) {
		snprintf(d->worker, sizeof(d->worker), "%s", worker);
	} else {
		char host[64] = "";

		if (gethostname(host, sizeof(host) - 1) != 0)
			snprintf(host, sizeof(host), "unknown");
		snprintf(d->worker, sizeof(d->worker), "%s:%ld", host,
			 (long)getpid());
	}
	if (!kafka_ensure_topic(d->rk, topic, partitions, 5000, err,
				sizeof(err)))
		log_warn("could not ensure dead-letter topic: %s", err);
	return d;
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
	char origin[512], when[24];
	rd_kafka_resp_err_t err;

	if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
		h = rd_kafka_headers_copy(orig);
	else
		h = rd_kafka_headers_new(2);
	snprintf(origin, sizeof(origin), "%s/%d@%lld",
		 rd_kafka_topic_name(m->rkt), (int)m->partition,
		 (long long)m->offset);
	/* A record dead-lettered again after a redrive carries this time's
	 * headers only. */
	rd_kafka_header_remove(h, HDR_DLQ_REASON);
	rd_kafka_header_remove(h, HDR_DLQ_ORIGIN);
	rd_kafka_header_remove(h, HDR_DLQ_TIME);
	rd_kafka_header_remove(h, HDR_DLQ_WORKER);
	rd_kafka_header_remove(h, HDR_DLQ_VERSION);
	snprintf(when, sizeof(when), "%lld", (long long)util_now_ms());
	rd_kafka_header_add(h, HDR_DLQ_REASON, -1, reason, -1);
	rd_kafka_header_add(h, HDR_DLQ_ORIGIN, -1, origin, -1);
	rd_kafka_header_add(h, HDR_DLQ_TIME, -1, when, -1);
	rd_kafka_header_add(h, HDR_DLQ_WORKER, -1, d->worker, -1);
	rd_kafka_header_add(h, HDR_DLQ_VERSION, -1, SLUICE_VERSION, -1);
	err = kafka_produce_copy(d->rk, d->topic, m, h);
	if (err) {
		d->dr.failed++;
		return false;
	}
	log_ctx_warn(origin, "dead-lettered to %s: %s", d->topic, reason);
	return true;
}

bool dlq_flush(struct dlq *d, int timeout_ms)
{
	bool ok;

	rd_kafka_flush(d->rk, timeout_ms);
	ok = d->dr.failed == 0 && rd_kafka_outq_len(d->rk) == 0;
	d->dr.failed = 0;
	return ok;
}
