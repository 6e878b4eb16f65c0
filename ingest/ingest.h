/* sluice-ingest's process state, shared by its modules. */
#ifndef SLUICE_INGEST_H
#define SLUICE_INGEST_H

#include <event2/event.h>
#include <cjson/cJSON.h>
#include <event2/http.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>

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

struct ingest_metrics {
	uint64_t responses[ST_COUNT];
	uint64_t delivered;
	uint64_t delivery_failed;
	uint64_t late_deliveries; /* reports after the request's deadline */
	uint64_t accept_errors;
	uint64_t reloads, reload_failures;
	uint64_t
	    reloads_restart;  /* applied, but some keys wait for a restart */
	bool restart_pending; /* the file differs from what runs */
	uint64_t producer_rebuilds;
	uint64_t connections_refused; /* over max_connections: 503 */
	uint64_t request_timeouts;    /* closed at the request deadline */
	uint64_t delivery_ms_sum;
	uint64_t delivery_ms_buckets[8]; /* ≤1,2,5,10,25,50,100,+Inf ms */
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
	 * wires http_delivered): the answer is http.c's business. */
	void (*delivered)(struct pending *p, rd_kafka_resp_err_t err);
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
	rd_kafka_t *rk;
	int wake_fds[2];
	struct event *wake_ev;
	struct event *poll_ev;
	struct event *rebuild_ev; /* after a fatal producer error */
	struct pending *pending;  /* list of requests awaiting delivery */
	int inflight;
	bool draining;
	bool kafka_up;
	int max_record_bytes;  /* what Kafka takes: bodies above get 413 */
	long max_record_kafka; /* the Kafka setting it comes from, */
	const char *max_record_whose; /* and that setting's name */
	struct event *probe_ev;	      /* asks Kafka while it seems down */
	rd_kafka_queue_t *probe_q;    /* that question's answer, awaited */
	struct event *limit_ev;	      /* asks the topic's own limit */
	rd_kafka_queue_t *limit_q;    /* its answer, while awaited */
	int limit_asks;		      /* failed asks so far */
	struct event *accept_retry;   /* re-enables accepting after an error */
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

/* publish.c */
bool publish_setup(struct ingest *ing, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
/* --check-config: the producer's settings through librdkafka, no broker. */
bool publish_check_config(const struct ingest_config *cfg, char *errstr,
			  size_t errstr_size)
    __attribute__((warn_unused_result));
rd_kafka_resp_err_t publish_record(struct ingest *ing, struct pending *p,
				   const struct source *src, const void *body,
				   size_t len, const char *request_id,
				   int64_t received_ms);
void publish_cleanup(struct ingest *ing, int flush_ms);

/* http.c */
bool http_setup(struct ingest *ing, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
void http_stop_accepting(struct ingest *ing);
void http_cleanup(struct ingest *ing);
/* After a reload: settings evhttp holds (timeouts, body limits). */
void http_apply_settings(struct ingest *ing);
/* A whole error answer (status line, headers, JSON body) in buf, for the
 * places that write to a socket or buffer without evhttp's help; returns
 * its length. The caller counts it once sent. */
size_t http_raw_error(int status, const char *code, const char *message,
		      char *buf, size_t size);
/* A conn_error_fn: sluice's JSON answer for an error evhttp answers
 * itself (status is the one evhttp chose), counted, or for the request
 * deadline's 408 (counted by conn.c once sent). */
size_t http_evhttp_error(struct ingest *ing, int status, char *buf,
			 size_t size);
struct conn;
/* conn.c: per-connection request deadline and the connection cap; its
 * error answers come from error. */
void conn_setup(struct ingest *ing, conn_error_fn error);
void conn_apply_settings(struct ingest *ing);
void conn_cleanup(struct ingest *ing);
/* A whole request was read: its deadline stops. False when the
 * connection is over max_connections and the request must get a 503. */
bool conn_request(struct ingest *ing, struct evhttp_request *req);
/* The request is about to be answered: its connection (NULL when it is
 * gone), to pass to conn_answered once the answer is written. Until then
 * output on the connection is known to be sluice's. */
struct conn *conn_answering(struct ingest *ing, struct evhttp_request *req);
/* The request was answered: the next one's deadline starts. */
void conn_answered(struct ingest *ing, struct conn *c);

/* Answers the request behind p after its delivery report (loop thread);
 * frees p. */
void http_delivered(struct pending *p, rd_kafka_resp_err_t err);

#endif
