/* sluice-ingest's process state, shared by its modules; each module's
 * functions are in its own header. */
#ifndef SLUICE_INGEST_H
#define SLUICE_INGEST_H

#include <event2/event.h>
#include <cjson/cJSON.h>
#include <event2/http.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/kafka.h"
#include "../common/util.h"
#include "settings.h"

/* A request whose records are several (a chat webhook with several
 * people): answered once every record reported. Freed with the last. */
struct pgroup {
	struct evhttp_request *req; /* NULL once answered */
	int left;		    /* records without a report yet */
	int n;
	rd_kafka_resp_err_t err; /* the first failure */
	cJSON *senders;		 /* for the answer */
};

/* A record waiting for its delivery report. Owned by the pending list;
 * freed in pending_destroy() once reported. */
struct pending {
	struct evhttp_request *req; /* NULL when answered (or in a group) */
	struct pgroup *group;	    /* or NULL */
	const char *key_header;	    /* the key is this header too, or NULL */
	int success_status;
	struct ingest *ing;
	char *id;
	char *key;
	const char *key_name; /* what the 202 calls the key (kind->key_name) */
	char *event_type;
	char *campaign_id; /* campaign batches: the path's id */
	int64_t started_ms;
	struct event *deadline; /* answers 503 if Kafka has not confirmed */
	struct pending *prev, *next;
};

enum status_slot {
	ST_200,
	ST_202,
	ST_400,
	ST_401,
	ST_404,
	ST_405,
	ST_408,
	ST_411,
	ST_413,
	ST_415,
	ST_422,
	ST_429,
	ST_500,
	ST_503,
	ST_OTHER,
	ST_COUNT
};

/* What a request was for (metrics.c tells it from the path), so the
 * share of 503s senders get is not diluted or inflated by probes and
 * scrapes. */
enum route_slot {
	RT_WEBHOOK,  /* /v1/webhooks/... */
	RT_CAMPAIGN, /* /v1/campaigns/... */
	RT_PROBE,    /* /healthz, /readyz */
	RT_METRICS,  /* /metrics */
	RT_OTHER,    /* any other path, or none known */
	RT_COUNT
};

#define DELIVERY_BUCKETS 13

struct ingest_metrics {
	uint64_t responses[RT_COUNT][ST_COUNT];
	uint64_t delivered;
	uint64_t delivery_failed;
	uint64_t late_deliveries; /* reports after the request's deadline */
	uint64_t accept_errors;
	uint64_t reloads, reload_failures;
	uint64_t
	    reloads_restart;  /* applied, but some keys wait for a restart */
	bool restart_pending; /* the file differs from what runs */
	uint64_t producer_rebuilds;
	uint64_t connections_refused;	 /* over max_connections: 503 */
	uint64_t request_timeouts;	 /* closed at the request deadline */
	uint64_t tls_handshake_failures; /* closed before TLS was set up */
	uint64_t delivery_ms_sum;
	/* metrics.c's bounds, then +Inf */
	uint64_t delivery_buckets[DELIVERY_BUCKETS + 1];
	int64_t config_loaded_ms; /* wall clock: the start or last reload */
};

struct ingest;
struct pending;
/* sluice's whole JSON error answer for a status (status line, headers,
 * body) in buf, for what writes to a socket or buffer without evhttp's
 * help: an error evhttp answers itself, the 408 of the request deadline;
 * returns its length. */
typedef size_t (*conn_error_fn)(struct ingest *ing, int status, char *buf,
				size_t size);

struct ingest {
	struct ingest_config cfg;
	struct event_base *base;
	conn_error_fn conn_error; /* conn.c's error answers (conn_setup) */
	/* publish.c hands each delivery report's request to it (main.c
	 * wires pending_delivered): the answer is pending.c's business. */
	void (*delivered)(struct pending *p, rd_kafka_resp_err_t err);
	struct evhttp *http; /* on listen: HTTPS when tls_listen is unset */
	struct evhttp_bound_socket *bound;
	struct evhttp *https; /* on tls_listen, or NULL */
	struct evhttp_bound_socket *bound_tls;
	/* The certificate new HTTPS connections get (NULL: no HTTPS); a
	 * reload swaps it, open connections keep theirs. */
	struct ssl_ctx_st *tls_ctx;
	int64_t tls_failed_logged_ms; /* last "handshake failed" line */
	rd_kafka_t *rk;
	int wake_fds[2];
	struct event *wake_ev;
	struct event *poll_ev;
	bool poll_fast; /* poll_ev armed at POLL_FAST_MS: records in flight */
	struct event *rebuild_ev; /* after a fatal producer error */
	struct pending *pending;  /* list of requests awaiting delivery */
	int inflight;
	bool draining;
	bool kafka_up;
	/* Credentials, certificate or ACL refused: /readyz names it. */
	struct kafka_notice kafka_denied;
	struct kafka_said kafka_said;
	int max_record_bytes;  /* what Kafka takes: bodies above get 413 */
	long max_record_kafka; /* the Kafka setting it comes from, */
	const char *max_record_whose; /* and that setting's name */
	struct event *probe_ev;	      /* asks Kafka while it seems down */
	rd_kafka_queue_t *probe_q;    /* that question's answer, awaited */
	struct event *limit_ev;	      /* asks the topic's own limit */
	rd_kafka_queue_t *limit_q;    /* its answer, while awaited */
	int limit_asks;		      /* failed asks so far */
	int limit_at; /* the source whose topic is asked (each topic once) */
	struct event *accept_retry; /* re-enables accepting after an error */
	struct backoff accept_backoff;
	int64_t accept_logged_ms;
	int spare_fd; /* closed to shed a connection when out of fds */
	struct conn **conn_by_fd;  /* conn.c: each open connection, by fd */
	int conn_slots;		   /* length of conn_by_fd */
	struct conn *conn_list;	   /* every open connection */
	int conns;		   /* open connections, refused ones too */
	int conns_refused_open;	   /* of those, refused (over the cap) */
	int max_connections;	   /* the cap in force */
	int64_t refused_logged_ms; /* last "refusing" log line */
	int64_t conn_timeout_ms;   /* request_timeout_s, in ms */
	int retry_after_429;	   /* Retry-After of the 429 being sent */
	const char *config_path;
	struct ingest_metrics m;
};

#endif
