/* Publishing accepted requests to Kafka and turning delivery reports into
 * HTTP answers. */
#include <event2/event.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/kafka.h"
#include "../common/log.h"
#include "../common/util.h"
#include "ingest.h"
#include "publish.h"

/* Runs on the event loop thread, from rd_kafka_poll(). */
static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	struct pending *p = m->_private;
	struct ingest *ing = opaque;

	(void)rk;
	if (m->err && kafka_notice_take(&ing->kafka_denied, m->err, "write",
					rd_kafka_topic_name(m->rkt), NULL)) {
		/* Every request would fail alike: one line per cause. */
		ing->m.delivery_failed++;
		if (kafka_notice_due(&ing->kafka_denied, &ing->kafka_said))
			log_error("kafka: %s", ing->kafka_denied.cause);
	} else if (m->err) {
		ing->m.delivery_failed++;
		log_ctx_warn(p ? p->id : NULL, "delivery failed: %s",
			     rd_kafka_err2str(m->err));
		/* Not confirmed in message.timeout.ms: not ready until the
		 * probe hears from a broker again. */
		if (m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT ||
		    m->err == RD_KAFKA_RESP_ERR__TRANSPORT)
			ing->kafka_up = false;
	} else {
		ing->m.delivered++;
		ing->kafka_up = true;
		/* With a topic per kind, a write to one topic does not
		 * prove the right to write to another. */
		if (ing->kafka_denied.cause[0] &&
		    (ing->kafka_denied.err !=
			 RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
		     strncmp(ing->kafka_denied.subject,
			     rd_kafka_topic_name(m->rkt),
			     sizeof(ing->kafka_denied.subject) - 1) == 0)) {
			log_info("kafka: writes succeed again");
			kafka_notice_clear(&ing->kafka_denied);
		}
	}
	if (p)
		ing->delivered(p, m->err);
}

/* Runs on the event loop thread, from rd_kafka_poll(). */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	struct ingest *ing = opaque;

	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		ing->kafka_up = false;
	if (rd_kafka_fatal_error(rk, NULL, 0)) {
		/* Rebuilt from the loop, not inside librdkafka's callback. */
		log_error("kafka fatal error: %s", reason);
		event_active(ing->rebuild_ev, EV_TIMEOUT, 0);
	} else if (kafka_notice_take(&ing->kafka_denied, err, "write",
				     ing->cfg.sources->topic, reason)) {
		/* librdkafka retries at each reconnect; retrying cannot cure
		 * this, so it is said once per cause, not at every attempt. */
		if (ing->kafka_denied.kind == KAFKA_DENIAL_AUTH)
			ing->kafka_up = false;
		if (kafka_notice_due(&ing->kafka_denied, &ing->kafka_said))
			log_error("kafka: %s", ing->kafka_denied.cause);
	} else if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
		   ing->kafka_denied.kind != KAFKA_DENIAL_AUTH) {
		/* Brokers "down" because they refuse the login: said. */
		log_warn("kafka: %s: %s", rd_kafka_err2name(err), reason);
	}
}

/* librdkafka writes a byte to the pipe when the main queue gets an event;
 * serving it right away keeps the 202 latency at the broker's ack time. */
static void handle_wake(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ing = arg;
	char drain[256];

	(void)what;
	while (read(fd, drain, sizeof(drain)) > 0)
		;
	rd_kafka_poll(ing->rk, 0);
}

/* The wake-up byte does not cover every delivery report: at 8,000 to
 * 15,000 requests/s about 0.2 % of them were found by this timer instead
 * (librdkafka 2.0.2 writes one byte per period between polls), and with
 * a 100 ms backstop alone each of those answers waited up to 100 ms. So
 * while records are in flight the queue is also polled every
 * POLL_FAST_MS; an idle ingest wakes every POLL_IDLE_MS. Not 1 ms: on
 * two cores shared with the broker, 1,000 wake-ups a second gave p99s
 * at 15,000 requests/s of 12.9-66.4 ms (median 27) against 14.1-29.0
 * (median 20) without; 10 ms gave 13.6-25.8 against 13.2-14.4. */
#define POLL_FAST_MS 10
#define POLL_IDLE_MS 100

static void handle_poll_timer(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ing = arg;
	struct timeval tv;

	(void)fd;
	(void)what;
	handle_wake(ing->wake_fds[0], 0, ing);
	ing->poll_fast = ing->rk && rd_kafka_outq_len(ing->rk) > 0;
	tv = util_ms_tv(ing->poll_fast ? POLL_FAST_MS : POLL_IDLE_MS);
	evtimer_add(ing->poll_ev, &tv);
}

/* Loop timer, every PROBE_MS: while Kafka is thought down, ask a broker
 * something (the topic's configuration, an admin request answered
 * asynchronously on probe_q) and take any answer that came from a broker
 * as "up", so /readyz recovers without waiting for a POST to succeed.
 * Only a request that timed out or lost its connection means still down;
 * a refusal (no DescribeConfigs right, no such topic) is a broker
 * answering. Nothing here waits: the queue is polled with a 0 timeout. */
#define PROBE_MS 500
#define PROBE_TIMEOUT_MS 3000

static void handle_probe(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ing = arg;
	rd_kafka_event_t *ev;
	rd_kafka_resp_err_t err;

	(void)fd;
	(void)what;
	if (!ing->probe_q) {
		if (!ing->kafka_up && ing->rk)
			ing->probe_q = kafka_topic_config_ask(
			    ing->rk, ing->cfg.sources->topic, PROBE_TIMEOUT_MS);
		return;
	}
	ev = rd_kafka_queue_poll(ing->probe_q, 0);
	if (!ev)
		return;
	err = rd_kafka_event_error(ev);
	rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(ing->probe_q);
	ing->probe_q = NULL;
	if (err == RD_KAFKA_RESP_ERR__TIMED_OUT ||
	    err == RD_KAFKA_RESP_ERR__TRANSPORT ||
	    err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
	    err == RD_KAFKA_RESP_ERR__DESTROY ||
	    err == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
	    err == RD_KAFKA_RESP_ERR__SSL)
		return;
	/* A broker answered over an authenticated link: the credentials
	 * and certificate are fine now (an ACL is proven only by a write). */
	if (ing->kafka_denied.kind == KAFKA_DENIAL_AUTH)
		kafka_notice_clear(&ing->kafka_denied);
	if (!ing->kafka_up)
		log_info("kafka answers again (%s): ready",
			 err ? rd_kafka_err2name(err) : "probe");
	ing->kafka_up = true;
}

/* A body Kafka would refuse must get a 413, not a 503 the sender retries
 * forever: the limit is the producer's message.max.bytes less room for
 * the key and headers (each at most a few hundred bytes). */
#define RECORD_OVERHEAD 4096

static void record_limit_set(struct ingest *ing, long max, const char *whose)
{
	ing->max_record_bytes = (int)(max - RECORD_OVERHEAD);
	ing->max_record_kafka = max;
	ing->max_record_whose = whose; /* a string literal */
	if (ing->cfg.max_body_bytes > ing->max_record_bytes)
		log_warn(
		    "max_body_bytes %d is above what Kafka takes (%s %ld): bodies over %d bytes get 413",
		    ing->cfg.max_body_bytes, whose, max, ing->max_record_bytes);
}

/* Whether no source before s in the list publishes to s's topic: each
 * topic is ensured and asked once. */
static bool topic_first(const struct source *list, const struct source *s)
{
	for (const struct source *o = list; o != s; o = o->next)
		if (strcmp(o->topic, s->topic) == 0)
			return false;
	return true;
}

/* The first source from limit_at on with a topic of its own. */
static const struct source *limit_source(struct ingest *ing)
{
	int i = 0;

	for (const struct source *s = ing->cfg.sources; s; s = s->next, i++)
		if (i >= ing->limit_at && topic_first(ing->cfg.sources, s)) {
			ing->limit_at = i;
			return s;
		}
	return NULL;
}

/* Loop timer: the topics' own limit (the smallest, with a topic per
 * kind), asked at start without blocking the loop; each asked again
 * every few seconds until the broker answers. */
static void handle_topic_limit(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ing = arg;
	struct timeval again = {0, 200 * 1000}, now = {0, 0};
	const struct source *s;
	long max = -1;
	int r;

	(void)fd;
	(void)what;
	if (!ing->limit_q) {
		s = limit_source(ing);
		if (!s)
			return; /* every topic answered, or was given up */
		ing->limit_q = kafka_topic_config_ask(ing->rk, s->topic, 5000);
		evtimer_add(ing->limit_ev, &again);
		return;
	}
	r = kafka_topic_config_max_bytes(ing->limit_q, &max);
	if (r == 0) {
		evtimer_add(ing->limit_ev, &again);
		return;
	}
	rd_kafka_queue_destroy(ing->limit_q);
	ing->limit_q = NULL;
	if (r < 0) {
		struct timeval later = {5, 0};

		/* A broker that never answers (no DescribeConfigs right, a
		 * mock cluster) leaves the producer's limit in force. */
		if (++ing->limit_asks < 12) {
			evtimer_add(ing->limit_ev, &later);
			return;
		}
	} else if (max > 0 && max - RECORD_OVERHEAD < ing->max_record_bytes) {
		record_limit_set(ing, max, "the topic's max.message.bytes");
	}
	ing->limit_asks = 0;
	ing->limit_at++;
	evtimer_add(ing->limit_ev, &now); /* the next topic */
}

/* The producer's limit now; the topic's when the broker tells it. */
static void record_limit(struct ingest *ing)
{
	char v[32];
	size_t n = sizeof(v);
	long max = 1000000;
	struct timeval now = {0, 0};

	if (rd_kafka_conf_get(rd_kafka_conf(ing->rk), "message.max.bytes", v,
			      &n) == RD_KAFKA_CONF_OK)
		max = atol(v);
	record_limit_set(ing, max, "the producer's message.max.bytes");
	ing->limit_ev = evtimer_new(ing->base, handle_topic_limit, ing);
	evtimer_add(ing->limit_ev, &now);
}

static void producer_callbacks(rd_kafka_conf_t *conf)
{
	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
}

/* The producer's settings, in one place for the start and the check. */
struct producer_settings {
	char tmo[32];
	const char *kv[9];
};

static void producer_spec(const struct ingest_config *cfg,
			  struct producer_settings *ps,
			  struct kafka_client_spec *spec)
{
	const char *const kv[] = {"enable.idempotence",
				  "true",
				  "acks",
				  "all",
				  "message.timeout.ms",
				  ps->tmo,
				  "linger.ms",
				  "1",
				  NULL};

	snprintf(ps->tmo, sizeof(ps->tmo), "%d", cfg->delivery_timeout_ms);
	memcpy(ps->kv, kv, sizeof(kv));
	*spec = (struct kafka_client_spec){
	    .type = RD_KAFKA_PRODUCER,
	    .what = "kafka producer",
	    .brokers = cfg->brokers,
	    .client_id = "sluice-ingest",
	    .settings = ps->kv,
	    .passthrough = cfg->kafka,
	};
}

bool publish_check_config(const struct ingest_config *cfg, char *errstr,
			  size_t errstr_size)
{
	struct producer_settings ps;
	struct kafka_client_spec spec;

	producer_spec(cfg, &ps, &spec);
	return kafka_client_check(&spec, errstr, errstr_size);
}

/* A producer with sluice's settings whose main queue wakes the loop. */
static rd_kafka_t *producer_new(struct ingest *ing, char *errstr,
				size_t errstr_size)
{
	struct producer_settings ps;
	struct kafka_client_spec spec;
	rd_kafka_queue_t *mainq;
	rd_kafka_t *rk;

	producer_spec(&ing->cfg, &ps, &spec);
	spec.opaque = ing;
	spec.callbacks = producer_callbacks;
	rk = kafka_client_new(&spec, errstr, errstr_size);
	if (!rk)
		return NULL;
	mainq = rd_kafka_queue_get_main(rk);
	rd_kafka_queue_io_event_enable(mainq, ing->wake_fds[1], "1", 1);
	rd_kafka_queue_destroy(mainq);
	return rk;
}

/* Loop thread, after a fatal producer error (an idempotent producer's
 * sequence gap, librdkafka #3584 in 2.0.2): what the old producer holds
 * cannot be confirmed any more, so its requests get 503 (purged, their
 * reports served at once), and a new producer takes over; no restart. */
static void handle_rebuild(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ing = arg;
	rd_kafka_t *old = ing->rk, *fresh;
	char err[512];
	int64_t until = util_mono_ms() + 500;

	(void)fd;
	(void)what;
	if (!old || !rd_kafka_fatal_error(old, err, sizeof(err)))
		return;
	fresh = producer_new(ing, err, sizeof(err));
	if (!fresh) {
		log_error("rebuilding the kafka producer: %s", err);
		return;
	}
	rd_kafka_purge(old, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
				RD_KAFKA_PURGE_F_NON_BLOCKING);
	while (rd_kafka_outq_len(old) > 0 && util_mono_ms() < until)
		rd_kafka_poll(old, 10);
	if (rd_kafka_outq_len(old) > 0)
		log_warn(
		    "kafka producer rebuild: %d records of the old producer never reported",
		    rd_kafka_outq_len(old));
	ing->rk = fresh;
	if (ing->probe_q) { /* the old producer's too */
		rd_kafka_queue_destroy(ing->probe_q);
		ing->probe_q = NULL;
	}
	if (ing->limit_q) { /* a queue of the old producer's: ask again */
		struct timeval now = {0, 0};

		rd_kafka_queue_destroy(ing->limit_q);
		ing->limit_q = NULL;
		evtimer_add(ing->limit_ev, &now);
	}
	rd_kafka_destroy(old);
	ing->m.producer_rebuilds++;
	log_warn("kafka producer rebuilt after a fatal error (%llu so far)",
		 (unsigned long long)ing->m.producer_rebuilds);
}

bool publish_setup(struct ingest *ing, char *errstr, size_t errstr_size)
{
	char err[512];
	struct timeval tv = {0, 100 * 1000};

	if (pipe(ing->wake_fds) != 0) {
		snprintf(errstr, errstr_size, "pipe: %s", strerror(errno));
		return false;
	}
	for (int i = 0; i < 2; i++)
		fcntl(ing->wake_fds[i], F_SETFL,
		      fcntl(ing->wake_fds[i], F_GETFL) | O_NONBLOCK);
	ing->rk = producer_new(ing, errstr, errstr_size);
	if (!ing->rk)
		return false;
	ing->rebuild_ev = event_new(ing->base, -1, 0, handle_rebuild, ing);
	ing->wake_ev = event_new(ing->base, ing->wake_fds[0],
				 EV_READ | EV_PERSIST, handle_wake, ing);
	event_add(ing->wake_ev, NULL);
	/* Backstop for a wake-up byte librdkafka did not write. */
	ing->poll_ev = evtimer_new(ing->base, handle_poll_timer, ing);
	event_add(ing->poll_ev, &tv);

	{
		struct timeval every = util_ms_tv(PROBE_MS);

		ing->probe_ev =
		    event_new(ing->base, -1, EV_PERSIST, handle_probe, ing);
		event_add(ing->probe_ev, &every);
	}
	ing->kafka_up = true;
	for (const struct source *s = ing->cfg.sources; s && ing->kafka_up;
	     s = s->next) {
		if (!topic_first(ing->cfg.sources, s))
			continue; /* ensured already */
		if (!kafka_ensure_topic(ing->rk, s->topic,
					ing->cfg.topic_partitions, 5000, err,
					sizeof(err))) {
			/* Not fatal: requests get 503 until the broker is
			 * back. Nor are the other kinds' topics asked for:
			 * a broker that did not answer in 5 s would hold
			 * the start 5 s per topic. */
			log_warn("could not ensure topic: %s", err);
			ing->kafka_up = false;
		}
	}
	record_limit(ing);
	return true;
}

static void add_header(rd_kafka_headers_t *h, const char *name,
		       const char *value)
{
	rd_kafka_header_add(h, name, -1, value, -1);
}

rd_kafka_resp_err_t publish_record(struct ingest *ing, struct pending *p,
				   const struct source *src, const void *body,
				   size_t len, const char *request_id,
				   int64_t received_ms)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	char received[24];
	rd_kafka_resp_err_t err;

	snprintf(received, sizeof(received), "%lld", (long long)received_ms);
	add_header(h, HDR_SOURCE, src->name);
	add_header(h, HDR_KIND, src->kind->name);
	add_header(h, HDR_EVENT_TYPE, p->event_type);
	add_header(h, HDR_WEBHOOK_ID, p->id);
	add_header(h, HDR_RECEIVED_AT, received);
	add_header(h, HDR_REQUEST_ID, request_id);
	if (p->campaign_id)
		add_header(h, HDR_CAMPAIGN_ID, p->campaign_id);
	if (p->key_header)
		add_header(h, p->key_header, p->key);

	err = rd_kafka_producev(ing->rk, RD_KAFKA_V_TOPIC(src->topic),
				RD_KAFKA_V_KEY(p->key, strlen(p->key)),
				RD_KAFKA_V_VALUE((void *)body, len),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(p),
				RD_KAFKA_V_END);
	if (err) {
		rd_kafka_headers_destroy(h); /* not taken on failure */
	} else if (!ing->poll_fast) {
		struct timeval tv = util_ms_tv(POLL_FAST_MS);

		ing->poll_fast = true;
		evtimer_add(ing->poll_ev, &tv);
	}
	return err;
}

void publish_cleanup(struct ingest *ing, int flush_ms)
{
	if (ing->rk) {
		rd_kafka_resp_err_t err = rd_kafka_flush(ing->rk, flush_ms);
		int left = rd_kafka_outq_len(ing->rk);

		if (err || left > 0)
			log_warn(
			    "shutdown: %d records not confirmed by Kafka within %d ms (their requests got no 202)",
			    left, flush_ms);
		/* The producer's own queues go before it does. */
		if (ing->probe_q)
			rd_kafka_queue_destroy(ing->probe_q);
		ing->probe_q = NULL;
		rd_kafka_destroy(ing->rk);
		ing->rk = NULL;
	}
	if (ing->rebuild_ev)
		event_free(ing->rebuild_ev);
	ing->rebuild_ev = NULL;
	if (ing->limit_ev)
		event_free(ing->limit_ev);
	ing->limit_ev = NULL;
	if (ing->probe_ev)
		event_free(ing->probe_ev);
	ing->probe_ev = NULL;
	if (ing->probe_q)
		rd_kafka_queue_destroy(ing->probe_q);
	ing->probe_q = NULL;
	if (ing->limit_q)
		rd_kafka_queue_destroy(ing->limit_q);
	ing->limit_q = NULL;
	if (ing->wake_ev)
		event_free(ing->wake_ev);
	if (ing->poll_ev)
		event_free(ing->poll_ev);
	ing->wake_ev = ing->poll_ev = NULL;
	if (ing->wake_fds[0] > 0) {
		close(ing->wake_fds[0]);
		close(ing->wake_fds[1]);
	}
}
