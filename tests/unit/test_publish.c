/* The producer against librdkafka's mock cluster: a record is confirmed;
 * an injected fatal idempotent-producer error answers what was in flight
 * with an error (503 upstream) and a new producer takes over. */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../../common/validate.h"
#include "../../ingest/ingest.h"
#include "../../ingest/publish.h"
#include "check.h"

static int reports, failures;
static rd_kafka_resp_err_t last_err;

/* Stands in for pending.c's pending_delivered: the reply a request would get.
 */
static void delivered(struct pending *p, rd_kafka_resp_err_t err)
{
	reports++;
	if (err)
		failures++;
	last_err = err;
	free(p);
}

static struct ingest ing;

static void run_until(int want_reports, int timeout_ms)
{
	int64_t until = util_mono_ms() + timeout_ms;
	struct timeval tv = {0, 20 * 1000};

	while (reports < want_reports && util_mono_ms() < until) {
		event_base_loopexit(ing.base, &tv);
		event_base_dispatch(ing.base);
	}
}

static rd_kafka_resp_err_t send_one(const struct source *src)
{
	struct pending *p = calloc(1, sizeof(*p));

	p->ing = &ing;
	p->id = (char *)"wh_test";
	p->key = (char *)"k";
	p->event_type = (char *)"test";
	return publish_record(&ing, p, src, "{}", 2, "req_test", util_now_ms());
}

int main(void)
{
	struct cfg_kv *kafka = NULL;
	struct source src = {.name = (char *)"t",
			     .kind = &transcript_kind,
			     .topic = (char *)"sluice.test"};
	char err[512];
	rd_kafka_t *first;
	rd_kafka_mock_cluster_t *mc;

	cfg_kv_append(&kafka, "kafka.test.mock.num.brokers", "1", NULL);
	ing.cfg.brokers = (char *)"";
	ing.cfg.topic = (char *)"sluice.test";
	ing.cfg.topic_partitions = 0; /* the mock creates it on use */
	ing.cfg.delivery_timeout_ms = 5000;
	ing.cfg.max_body_bytes = 1048576;
	ing.cfg.kafka = kafka;
	ing.cfg.sources = &src;
	ing.base = event_base_new();
	ing.delivered = delivered;
	CHECK(publish_setup(&ing, err, sizeof(err)), "setup: %s", err);

	CHECK(send_one(&src) == 0, "produce");
	run_until(1, 10000);
	CHECK(reports == 1 && failures == 0, "first record: %d reports, %s",
	      reports, rd_kafka_err2str(last_err));

	/* In flight when the producer fails for good: slow the broker. */
	mc = rd_kafka_handle_mock_cluster(ing.rk);
	CHECK(mc != NULL, "no mock cluster");
	rd_kafka_mock_broker_set_rtt(mc, 1, 1000);
	CHECK(send_one(&src) == 0, "produce in flight");
	first = ing.rk;
	rd_kafka_test_fatal_error(
	    ing.rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
	    "injected by test_publish");
	run_until(2, 10000);
	CHECK(reports == 2 && failures == 1,
	      "the in-flight record: %d reports, %d failures", reports,
	      failures);
	CHECK(ing.m.producer_rebuilds == 1, "rebuilds %llu",
	      (unsigned long long)ing.m.producer_rebuilds);
	CHECK(ing.rk != first, "the producer was not replaced");

	/* The new producer works. */
	CHECK(send_one(&src) == 0, "produce after the rebuild");
	run_until(3, 15000);
	CHECK(reports == 3 && failures == 1, "after rebuild: %d reports, %s",
	      reports, rd_kafka_err2str(last_err));

	publish_cleanup(&ing, 2000);
	event_base_free(ing.base);
	cfg_kv_free(kafka);
	return check_done("test_publish");
}
