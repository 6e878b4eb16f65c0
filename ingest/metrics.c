/* sluice-ingest's counters and their Prometheus text. Every figure is
 * counted on the event loop thread, where /metrics reads it too. */
#include "metrics.h"

#include <stdio.h>

#include "ingest.h"

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

void metrics_response(struct ingest *ing, int code)
{
	ing->m.responses[status_slot(code)]++;
}

void metrics_delivery(struct ingest *ing, int64_t ms)
{
	static const int64_t bounds[] = {1, 2, 5, 10, 25, 50, 100};
	int i = 0;

	while (i < 7 && ms > bounds[i])
		i++;
	ing->m.delivery_ms_buckets[i]++;
	ing->m.delivery_ms_sum += (uint64_t)ms;
}

void metrics_render(const struct ingest *ing, struct evbuffer *out)
{
	static const char *const codes[ST_COUNT] = {
	    "200", "202", "400", "401", "404", "405", "408",  "411",
	    "413", "415", "422", "429", "500", "503", "other"};
	static const char *const le[8] = {"1",	"2",  "5",   "10",
					  "25", "50", "100", "+Inf"};
	uint64_t cum = 0;

	evbuffer_add_printf(out,
			    "# TYPE sluice_ingest_responses_total counter\n");
	for (int i = 0; i < ST_COUNT; i++)
		evbuffer_add_printf(
		    out, "sluice_ingest_responses_total{code=\"%s\"} %llu\n",
		    codes[i], (unsigned long long)ing->m.responses[i]);
	evbuffer_add_printf(
	    out,
	    "# TYPE sluice_ingest_delivered_total counter\n"
	    "sluice_ingest_delivered_total %llu\n"
	    "# TYPE sluice_ingest_delivery_failed_total counter\n"
	    "sluice_ingest_delivery_failed_total %llu\n"
	    "# TYPE sluice_ingest_late_deliveries_total counter\n"
	    "sluice_ingest_late_deliveries_total %llu\n"
	    "# TYPE sluice_ingest_accept_errors_total counter\n"
	    "sluice_ingest_accept_errors_total %llu\n"
	    "# TYPE sluice_ingest_producer_rebuilds_total counter\n"
	    "sluice_ingest_producer_rebuilds_total %llu\n"
	    "# TYPE sluice_ingest_connections gauge\n"
	    "sluice_ingest_connections %d\n"
	    "# TYPE sluice_ingest_max_connections gauge\n"
	    "sluice_ingest_max_connections %d\n"
	    "# TYPE sluice_ingest_connections_refused_total counter\n"
	    "sluice_ingest_connections_refused_total %llu\n"
	    "# TYPE sluice_ingest_request_timeouts_total counter\n"
	    "sluice_ingest_request_timeouts_total %llu\n"
	    "# TYPE sluice_ingest_inflight gauge\n"
	    "sluice_ingest_inflight %d\n"
	    "# TYPE sluice_ingest_kafka_up gauge\n"
	    "sluice_ingest_kafka_up %d\n"
	    "# TYPE sluice_ingest_delivery_ms histogram\n",
	    (unsigned long long)ing->m.delivered,
	    (unsigned long long)ing->m.delivery_failed,
	    (unsigned long long)ing->m.late_deliveries,
	    (unsigned long long)ing->m.accept_errors,
	    (unsigned long long)ing->m.producer_rebuilds, ing->conns,
	    ing->max_connections,
	    (unsigned long long)ing->m.connections_refused,
	    (unsigned long long)ing->m.request_timeouts, ing->inflight,
	    ing->kafka_up ? 1 : 0);
	evbuffer_add_printf(
	    out, "# TYPE sluice_ingest_rate_limited_total counter\n");
	for (const struct source *src = ing->cfg.sources; src; src = src->next)
		evbuffer_add_printf(
		    out,
		    "sluice_ingest_rate_limited_total{source=\"%s\"} %llu\n",
		    src->name, src->limited);
	evbuffer_add_printf(out,
			    "# TYPE sluice_ingest_reloads_total counter\n"
			    "sluice_ingest_reloads_total{result=\"ok\"} %llu\n"
			    "sluice_ingest_reloads_total{result=\"failed\"} "
			    "%llu\n",
			    (unsigned long long)ing->m.reloads,
			    (unsigned long long)ing->m.reload_failures);
	for (int i = 0; i < 8; i++) {
		cum += ing->m.delivery_ms_buckets[i];
		evbuffer_add_printf(
		    out, "sluice_ingest_delivery_ms_bucket{le=\"%s\"} %llu\n",
		    le[i], (unsigned long long)cum);
	}
	evbuffer_add_printf(out,
			    "sluice_ingest_delivery_ms_sum %llu\n"
			    "sluice_ingest_delivery_ms_count %llu\n",
			    (unsigned long long)ing->m.delivery_ms_sum,
			    (unsigned long long)cum);
}
