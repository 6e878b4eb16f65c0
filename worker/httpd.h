/* The worker's own HTTP endpoint on its event_base: GET /healthz, /readyz
 * (PostgreSQL, Redis and Kafka, each from an asynchronous probe or what the
 * consumer last heard) and /metrics (Prometheus text format). */
#ifndef SLUICE_HTTPD_H
#define SLUICE_HTTPD_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

#include "settings.h"

struct httpd;

/* Binds cfg->listen on base (false: bad address or port taken) and starts
 * the probes. /metrics and /readyz read what the pipelines copied into
 * metrics.c, never the pipelines' objects, which live on other threads. */
struct httpd *httpd_new(struct event_base *base,
			const struct worker_config *cfg, char *errstr,
			size_t errstr_size);
void httpd_destroy(struct httpd *h);

#endif
