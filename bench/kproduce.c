/* The Kafka ceiling for sluice-ingest: librdkafka's producer alone, with
 * the ingest's settings (idempotent, acks=all, linger.ms=1) and the same
 * records (the transcript body wrk posts, a header set like the ingest's),
 * as fast as the broker confirms them for a number of seconds.
 *
 * Usage: kproduce BROKERS TOPIC SECONDS         → "rate N delivered N"
 *        kproduce BROKERS TOPIC SECONDS RATE    → the same at RATE records/s,
 *          sent each millisecond, and "latency p50 X p99 Y ms" from
 *          producev to the delivery report: the floor of an ingest that
 *          answers once the record is acknowledged. */
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long delivered, failed;
static double *lat; /* ms, one per delivery report while measuring */
static long n_lat, cap_lat;
static double measure_from;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	double sent_at = (double)(intptr_t)m->_private / 1e6;

	(void)rk;
	(void)opaque;
	if (m->err)
		failed++;
	else
		delivered++;
	if (lat && n_lat < cap_lat && sent_at >= measure_from)
		lat[n_lat++] = (now_s() - sent_at) * 1000.0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char err[512], body[512], key[64];
	rd_kafka_t *rk;
	double t0, t1, until, started = now_s(), rate = argc == 5 ? atof(argv[4]) : 0, next = 0;
	long sent = 0, at_start;

	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: kproduce BROKERS TOPIC SECONDS [RATE]\n");
		return 2;
	}
	if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err,
			      sizeof(err)) ||
	    rd_kafka_conf_set(conf, "enable.idempotence", "true", err,
			      sizeof(err)) ||
	    rd_kafka_conf_set(conf, "acks", "all", err, sizeof(err)) ||
	    rd_kafka_conf_set(conf, "linger.ms", "1", err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (!rk) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	/* Warm-up: records until the first is acknowledged (the topic is new:
	 * it is created, and its leader and the producer id found, which can
	 * take seconds on a busy box), then a second more; measured after. */
	t0 = until = measure_from = 1e18;
	at_start = -1;
	if (rate > 0) {
		cap_lat = (long)(rate * atof(argv[3])) + 1000;
		lat = malloc((size_t)cap_lat * sizeof(*lat));
		if (!lat)
			return 1;
		next = now_s();
	}
	while ((t1 = now_s()) < until) {
		rd_kafka_headers_t *h;
		int n;

		if (delivered > 0 && t0 > 1e17) {
			t0 = measure_from = t1 + 1.0;
			until = t0 + atof(argv[3]);
		} else if (t0 > 1e17 && t1 - started > 60.0) {
			fprintf(stderr, "kproduce: nothing acknowledged in 60 s\n");
			return 1;
		}

		if (rate > 0 && (double)sent >= (t1 - next) * rate) {
			/* ahead of the rate: let a millisecond pass */
			struct timespec ms = {0, 1000000};

			rd_kafka_poll(rk, 0);
			nanosleep(&ms, NULL);
			continue;
		}
		h = rd_kafka_headers_new(6);
		n = snprintf(
		    body, sizeof(body),
		    "{\"conversation_id\":\"kp-%ld\",\"event_type\":"
		    "\"application.transcription_ready\",\"message_type\":"
		    "\"application\",\"timestamp\":\"2025-05-01T12:00:00Z\","
		    "\"properties\":{\"transcript\":[{\"role\":\"user\","
		    "\"content\":\"hello there\"},{\"role\":\"assistant\","
		    "\"content\":\"hi, how can I help?\"}]}}",
		    sent);

		if (at_start < 0 && t1 >= t0)
			at_start = delivered;
		snprintf(key, sizeof(key), "kp-%ld", sent);
		rd_kafka_header_add(h, "source", -1, "tavus", -1);
		rd_kafka_header_add(h, "kind", -1, "transcript", -1);
		rd_kafka_header_add(h, "event-type", -1,
				    "application.transcription_ready", -1);
		rd_kafka_header_add(h, "webhook-id", -1,
				    "wh_0123456789abcdef0123456789abcdef", -1);
		rd_kafka_header_add(h, "received-at", -1, "1732350000000", -1);
		rd_kafka_header_add(h, "request-id", -1,
				    "req_0123456789abcdef0123456789abcdef", -1);
		if (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(argv[2]),
				      RD_KAFKA_V_KEY(key, strlen(key)),
				      RD_KAFKA_V_VALUE(body, (size_t)n),
				      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				      RD_KAFKA_V_HEADERS(h),
				      RD_KAFKA_V_OPAQUE(
					  (void *)(intptr_t)(now_s() * 1e6)),
				      RD_KAFKA_V_END) != 0) {
			rd_kafka_headers_destroy(h);
			rd_kafka_poll(rk, 1); /* queue full: let reports in */
			continue;
		}
		sent++;
		rd_kafka_poll(rk, 0);
	}
	if (at_start < 0)
		at_start = 0;
	printf("rate %.0f delivered %ld failed %ld\n",
	       (double)(delivered - at_start) / atof(argv[3]), delivered,
	       failed);
	rd_kafka_flush(rk, 10000);
	if (lat && n_lat > 0) {
		qsort(lat, (size_t)n_lat, sizeof(*lat), cmp_double);
		printf("latency p50 %.2f p99 %.2f ms (%ld reports)\n",
		       lat[n_lat / 2], lat[(long)((double)n_lat * 0.99)], n_lat);
	}
	free(lat);
	rd_kafka_destroy(rk);
	return 0;
}
