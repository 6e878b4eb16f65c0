/* sluice-ingest's counters and their Prometheus text. Every figure is
 * counted on the event loop thread, where /metrics reads it too. */
#include "metrics.h"

#include <stdio.h>
#include <string.h>

#include "../common/prom.h"
#include "../common/util.h"
#include "ingest.h"

/* The delivery histogram's upper bounds, ms: from a loopback broker's
 * millisecond up to delivery_timeout_ms's usual range, so a p99 past
 * 100 ms still reads as a figure rather than as the last bound. */
static const int64_t delivery_le_ms[DELIVERY_BUCKETS] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

static const char *const codes[ST_COUNT] = {
    "200", "202", "400", "401", "404", "405", "408",  "411",
    "413", "415", "422", "429", "500", "503", "other"};
static const char *const routes[RT_COUNT] = {"webhook", "campaign", "probe",
					     "metrics", "other"};

static enum status_slot status_slot(int code)
{
	switch (code) {
	case 200: return ST_200;
	case 202: return ST_202;
	case 400: return ST_400;
	case 401: return ST_401;
	case 404: return ST_404;
	case 405: return ST_405;
	case 408: return ST_408;
	case 411: return ST_411;
	case 413: return ST_413;
	case 415: return ST_415;
	case 422: return ST_422;
	case 429: return ST_429;
	case 500: return ST_500;
	case 503: return ST_503;
	default: return ST_OTHER;
	}
}

static enum route_slot route_slot(const char *path)
{
	if (!path)
		return RT_OTHER;
	if (strncmp(path, "/v1/webhooks/", 13) == 0)
		return RT_WEBHOOK;
	if (strncmp(path, "/v1/campaigns/", 14) == 0)
		return RT_CAMPAIGN;
	if (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0)
		return RT_PROBE;
	if (strcmp(path, "/metrics") == 0)
		return RT_METRICS;
	return RT_OTHER;
}

void metrics_response(struct ingest *ing, const char *path, int code)
{
	ing->m.responses[route_slot(path)][status_slot(code)]++;
}

void metrics_config_loaded(struct ingest *ing)
{
	ing->m.config_loaded_ms = util_now_ms();
}

void metrics_delivery(struct ingest *ing, int64_t ms)
{
	int i = 0;

	while (i < DELIVERY_BUCKETS && ms > delivery_le_ms[i])
		i++;
	ing->m.delivery_buckets[i]++;
	ing->m.delivery_ms_sum += (uint64_t)ms;
}

/* Zero or not, the series an alert divides by are always there, so that
 * their first increase is not lost to rate(). */
static bool always_shown(int route, int code)
{
	switch (route) {
	case RT_WEBHOOK:
	case RT_CAMPAIGN: return code == ST_202 || code == ST_503;
	case RT_PROBE: return code == ST_200 || code == ST_503;
	case RT_METRICS: return code == ST_200;
	default: return false;
	}
}

static void put_responses(const struct ingest *ing, struct buf *out)
{
	prom_family(out, "sluice_ingest_responses_total", "counter",
		    "Answers sent, by route class (webhook, campaign, probe, "
		    "metrics, other) and status code.");
	for (int r = 0; r < RT_COUNT; r++)
		for (int c = 0; c < ST_COUNT; c++)
			if (ing->m.responses[r][c] || always_shown(r, c))
				buf_printf(
				    out,
				    "sluice_ingest_responses_total{"
				    "route=\"%s\",code=\"%s\"} %llu\n",
				    routes[r], codes[c],
				    (unsigned long long)ing->m.responses[r][c]);
}

static void put_delivery(const struct ingest *ing, struct buf *out)
{
	uint64_t cum = 0;

	prom_family(out, "sluice_ingest_delivery_seconds", "histogram",
		    "Time from a request's arrival to Kafka's confirmation of "
		    "its records.");
	for (int i = 0; i <= DELIVERY_BUCKETS; i++) {
		cum += ing->m.delivery_buckets[i];
		if (i < DELIVERY_BUCKETS)
			buf_printf(out,
				   "sluice_ingest_delivery_seconds_bucket{le="
				   "\"%g\"} %llu\n",
				   (double)delivery_le_ms[i] / 1000.0,
				   (unsigned long long)cum);
		else
			buf_printf(out,
				   "sluice_ingest_delivery_seconds_bucket{le="
				   "\"+Inf\"} %llu\n",
				   (unsigned long long)cum);
	}
	buf_printf(out,
		   "sluice_ingest_delivery_seconds_sum %.3f\n"
		   "sluice_ingest_delivery_seconds_count %llu\n",
		   (double)ing->m.delivery_ms_sum / 1000.0,
		   (unsigned long long)cum);
}

void metrics_render(const struct ingest *ing, struct evbuffer *out)
{
	const struct ingest_metrics *m = &ing->m;
	struct buf b;

	buf_init(&b);
	prom_build_info(&b, "sluice_ingest");
	prom_gauge_s(&b, "sluice_ingest_last_reload_timestamp_seconds",
		     "When the configuration in force was loaded (Unix time): "
		     "the start, or the last successful SIGHUP reload.",
		     (double)m->config_loaded_ms / 1000.0);
	put_responses(ing, &b);
	put_delivery(ing, &b);
	prom_counter(&b, "sluice_ingest_delivered_total",
		     "Records Kafka confirmed.", m->delivered);
	prom_counter(&b, "sluice_ingest_delivery_failed_total",
		     "Records Kafka did not confirm (their request got 503).",
		     m->delivery_failed);
	prom_counter(&b, "sluice_ingest_late_deliveries_total",
		     "Delivery reports after their request's deadline had "
		     "answered it.",
		     m->late_deliveries);
	prom_counter(&b, "sluice_ingest_accept_errors_total",
		     "Errors accepting a connection (out of descriptors).",
		     m->accept_errors);
	prom_counter(&b, "sluice_ingest_producer_rebuilds_total",
		     "Kafka producers rebuilt after a fatal error.",
		     m->producer_rebuilds);
	prom_gauge(&b, "sluice_ingest_connections",
		   "Open client connections, refused ones included.",
		   ing->conns);
	prom_gauge(&b, "sluice_ingest_max_connections",
		   "The cap on connections in force (max_connections).",
		   ing->max_connections);
	prom_counter(
	    &b, "sluice_ingest_tls_handshake_failures_total",
	    "HTTPS connections closed before TLS was set up (a "
	    "refused protocol or cipher, plain HTTP, or the deadline).",
	    m->tls_handshake_failures);
	prom_counter(&b, "sluice_ingest_connections_refused_total",
		     "Connections over max_connections, answered 503.",
		     m->connections_refused);
	prom_counter(&b, "sluice_ingest_request_timeouts_total",
		     "Connections closed at their request deadline.",
		     m->request_timeouts);
	prom_gauge(&b, "sluice_ingest_inflight",
		   "Requests waiting for Kafka's confirmation.", ing->inflight);
	prom_gauge(&b, "sluice_ingest_kafka_up",
		   "1 while Kafka is reachable, by librdkafka's reports.",
		   ing->kafka_up ? 1 : 0);
	prom_family(&b, "sluice_ingest_rate_limited_total", "counter",
		    "Requests answered 429, by source.");
	for (const struct source *src = ing->cfg.sources; src;
	     src = src->next) {
		buf_puts(&b, "sluice_ingest_rate_limited_total{source=\"");
		prom_label(&b, src->name);
		buf_printf(&b, "\"} %llu\n", src->limited);
	}
	prom_family(&b, "sluice_ingest_reloads_total", "counter",
		    "SIGHUP reloads, by result.");
	buf_printf(&b,
		   "sluice_ingest_reloads_total{result=\"ok\"} %llu\n"
		   "sluice_ingest_reloads_total{result=\"restart_required\"} "
		   "%llu\n"
		   "sluice_ingest_reloads_total{result=\"failed\"} %llu\n",
		   (unsigned long long)m->reloads,
		   (unsigned long long)m->reloads_restart,
		   (unsigned long long)m->reload_failures);
	prom_gauge(&b, "sluice_ingest_config_restart_pending",
		   "1 while a reload changed keys that wait for a restart.",
		   m->restart_pending ? 1 : 0);
	prom_process(&b);
	evbuffer_add(out, b.data, b.len);
	buf_free(&b);
}
