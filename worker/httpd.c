/* The worker's own HTTP endpoint on its event_base: GET /healthz, /readyz
 * (PostgreSQL, Redis and Kafka, each from an asynchronous probe or what the
 * consumer last heard) and /metrics (Prometheus text format); GET /status
 * and the admin routes (pause, resume, log level), for loopback or the
 * admin token only. Every answer carries X-Request-Id and gets an access
 * log line. */
#include "httpd.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/async.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/access.h"
#include "../common/admin.h"
#include "../common/log.h"
#include "../common/util.h"
#include "cache.h"
#include "metrics.h"
#include "status.h"

/* A probe runs once a second and gives up after PROBE_TIMEOUT_MS, so what
 * /readyz reports is at most a couple of seconds old and never waits. */
#define PROBE_INTERVAL_MS 1000
#define PROBE_TIMEOUT_MS 2000

struct probe {
	bool ok;
	char error[256];
	bool busy;	    /* a connect or a ping is out */
	int64_t started_ms; /* of what is out */
};

struct httpd {
	struct event_base *base;
	const struct worker_config *cfg;
	struct evhttp *http;
	struct event *tick;
	/* PostgreSQL: its own connection, "SELECT 1" once a second. */
	struct probe pg;
	PGconn *pg_conn;
	struct event *pg_ev;
	bool pg_connected;
	/* Redis: its own connection, PING once a second. */
	struct probe redis;
	struct redis_addr raddr;
	redisAsyncContext *ac;
	char *admin_token; /* admin_token_file's; NULL: loopback only */
	int64_t started_ms;
};

/* The answer being sent: every route answers at once on this loop, one
 * request at a time, so the access log line reads it after the route. */
static struct {
	int status;
	size_t bytes;
	const char *reason; /* a refusal's error code */
} answer;

static void probe_fail(struct probe *p, const char *what, const char *msg)
{
	p->ok = false;
	p->busy = false;
	snprintf(p->error, sizeof(p->error), "%s%s%.*s", what,
		 msg && msg[0] ? ": " : "", msg ? (int)strcspn(msg, "\n") : 0,
		 msg ? msg : "");
}

static void probe_ok(struct probe *p)
{
	p->ok = true;
	p->busy = false;
	p->error[0] = '\0';
}

/* ---------------------------------------------------------- PostgreSQL */

static void pg_watch(struct httpd *h, short what);

static void pg_drop(struct httpd *h)
{
	if (h->pg_ev)
		event_free(h->pg_ev);
	h->pg_ev = NULL;
	if (h->pg_conn)
		PQfinish(h->pg_conn);
	h->pg_conn = NULL;
	h->pg_connected = false;
}

static void pg_failed(struct httpd *h, const char *what)
{
	probe_fail(&h->pg, what,
		   h->pg_conn ? PQerrorMessage(h->pg_conn) : "no connection");
	pg_drop(h);
}

static void pg_send(struct httpd *h)
{
	if (!PQsendQuery(h->pg_conn, "SELECT 1")) {
		pg_failed(h, "send");
		return;
	}
	pg_watch(h, PQflush(h->pg_conn) == 1 ? EV_WRITE | EV_READ : EV_READ);
}

/* libpq's socket, on the loop: connecting, sending or reading. */
static void handle_pg(evutil_socket_t fd, short what, void *arg)
{
	struct httpd *h = arg;
	PGresult *res;
	bool ok = false;

	(void)fd;
	if (!h->pg_connected) {
		switch (PQconnectPoll(h->pg_conn)) {
		case PGRES_POLLING_READING: pg_watch(h, EV_READ); return;
		case PGRES_POLLING_WRITING: pg_watch(h, EV_WRITE); return;
		case PGRES_POLLING_OK:
			PQsetnonblocking(h->pg_conn, 1);
			h->pg_connected = true;
			pg_send(h);
			return;
		default: pg_failed(h, "connect"); return;
		}
	}
	if ((what & EV_WRITE) && PQflush(h->pg_conn) == 1) {
		pg_watch(h, EV_WRITE | EV_READ);
		return;
	}
	if (!(what & EV_READ)) {
		pg_watch(h, EV_READ);
		return;
	}
	if (!PQconsumeInput(h->pg_conn)) {
		pg_failed(h, "read");
		return;
	}
	if (PQisBusy(h->pg_conn)) {
		pg_watch(h, EV_READ);
		return;
	}
	while ((res = PQgetResult(h->pg_conn)) != NULL) {
		ok = PQresultStatus(res) == PGRES_TUPLES_OK;
		if (!ok)
			probe_fail(&h->pg, "query", PQresultErrorMessage(res));
		PQclear(res);
	}
	if (ok)
		probe_ok(&h->pg);
	h->pg.busy = false;
	/* Idle until the next tick; a closed connection shows up then. */
	if (h->pg_ev)
		event_del(h->pg_ev);
	if (PQstatus(h->pg_conn) != CONNECTION_OK)
		pg_failed(h, "connection");
}

static void pg_watch(struct httpd *h, short what)
{
	if (h->pg_ev)
		event_free(h->pg_ev);
	h->pg_ev = event_new(h->base, PQsocket(h->pg_conn), what, handle_pg, h);
	event_add(h->pg_ev, NULL);
}

static void pg_probe(struct httpd *h)
{
	h->pg.busy = true;
	h->pg.started_ms = util_mono_ms();
	if (h->pg_conn && h->pg_connected &&
	    PQstatus(h->pg_conn) == CONNECTION_OK) {
		pg_send(h);
		return;
	}
	pg_drop(h);
	h->pg_conn = PQconnectStart(h->cfg->postgres_dsn);
	if (!h->pg_conn || PQstatus(h->pg_conn) == CONNECTION_BAD) {
		pg_failed(h, "connect");
		return;
	}
	pg_watch(h, EV_WRITE);
}

/* --------------------------------------------------------------- Redis */

/* hiredis, on the loop: PING answered (NULL: the connection went). */
static void ping_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	struct httpd *h = priv;
	redisReply *r = reply;

	if (h->ac != ac)
		return; /* dropped already; its error is recorded */
	if (!r)
		probe_fail(&h->redis, "no reply", ac->errstr);
	else if (r->type == REDIS_REPLY_ERROR)
		probe_fail(&h->redis, "error", r->str);
	else
		probe_ok(&h->redis);
}

static void redis_connect_cb(const redisAsyncContext *ac, int status)
{
	struct httpd *h = ac->data;

	if (status != REDIS_OK && h->ac == ac) {
		probe_fail(&h->redis, "connect", ac->errstr);
		h->ac = NULL; /* hiredis frees it */
	}
}

static void redis_disconnect_cb(const redisAsyncContext *ac, int status)
{
	struct httpd *h = ac->data;

	if (h->ac == ac) {
		probe_fail(&h->redis, "disconnected",
			   status == REDIS_OK ? "connection closed"
					      : ac->errstr);
		h->ac = NULL;
	}
}

/* Never from inside a hiredis callback. */
static void redis_drop(struct httpd *h)
{
	redisAsyncContext *ac = h->ac;

	h->ac = NULL;
	if (ac)
		redisAsyncFree(ac);
}

static void redis_probe(struct httpd *h)
{
	char err[256];

	h->redis.busy = true;
	h->redis.started_ms = util_mono_ms();
	if (!h->ac) {
		h->ac =
		    redis_async_open(h->base, &h->raddr, h, redis_connect_cb,
				     redis_disconnect_cb, err, sizeof(err));
		if (!h->ac) {
			probe_fail(&h->redis, "connect", err);
			return;
		}
	}
	if (redisAsyncCommand(h->ac, ping_cb, h, "PING") != REDIS_OK)
		probe_fail(&h->redis, "send", h->ac->errstr);
}

/* Loop timer, once a second: a probe still out after its deadline fails
 * and its connection goes; otherwise the next one starts. */
static void handle_tick(evutil_socket_t fd, short what, void *arg)
{
	struct httpd *h = arg;
	int64_t now = util_mono_ms();

	(void)fd;
	(void)what;
	if (h->pg.busy && now - h->pg.started_ms > PROBE_TIMEOUT_MS) {
		probe_fail(&h->pg, "timed out", NULL);
		pg_drop(h);
	}
	if (!h->pg.busy)
		pg_probe(h);
	if (h->redis.busy && now - h->redis.started_ms > PROBE_TIMEOUT_MS) {
		probe_fail(&h->redis, "timed out", NULL);
		redis_drop(h);
	}
	if (!h->redis.busy)
		redis_probe(h);
}

/* ------------------------------------------------------------ requests */

static void reply(struct evhttp_request *req, int code, const char *reason,
		  const char *type, struct evbuffer *body)
{
	evhttp_add_header(evhttp_request_get_output_headers(req),
			  "Content-Type", type);
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		char len[24];

		/* The headers a GET gets, no body. */
		snprintf(len, sizeof(len), "%zu", evbuffer_get_length(body));
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Content-Length", len);
		answer.status = code;
		answer.bytes = 0;
		evhttp_send_reply(req, code, reason, NULL);
		return;
	}
	answer.status = code;
	answer.bytes = evbuffer_get_length(body);
	evhttp_send_reply(req, code, reason, body);
}

static void reply_json(struct evhttp_request *req, int code, const char *reason,
		       cJSON *o)
{
	struct evbuffer *out = evbuffer_new();
	char *text = cJSON_PrintUnformatted(o);

	if (text) {
		evbuffer_add(out, text, strlen(text));
		evbuffer_add(out, "\n", 1);
	}
	reply(req, code, reason, "application/json", out);
	evbuffer_free(out);
	cJSON_free(text);
	cJSON_Delete(o);
}

static void reply_error(struct evhttp_request *req, int code,
			const char *reason, const char *error,
			const char *message)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "error", error);
	cJSON_AddStringToObject(o, "message", message);
	reply_json(req, code, reason, o);
	answer.reason = error;
}

static cJSON *check_json(cJSON *parent, const char *name, bool ok,
			 const char *error)
{
	cJSON *o = cJSON_AddObjectToObject(parent, name);

	cJSON_AddBoolToObject(o, "ok", ok);
	if (!ok)
		cJSON_AddStringToObject(o, "error",
					error && error[0] ? error : "checking");
	return o;
}

static void handle_readyz(struct httpd *h, struct evhttp_request *req)
{
	cJSON *o = cJSON_CreateObject(), *k;
	char kwhy[300] = "", cwhy[160] = "";
	bool held;
	bool kafka = metrics_kafka_up(kwhy, sizeof(kwhy));
	struct buf stalled;
	bool flowing, ok;

	/* A partition behind and without a commit for stall_alert_s: a
	 * pipeline stuck on a record or a dependency, which no probe of a
	 * service would show. */
	buf_init(&stalled);
	buf_puts(&stalled, "");
	flowing = metrics_stalled(h->cfg->stall_alert_s * 1000, &stalled) == 0;
	/* Paused by the operator is not a failure: partitions fall behind
	 * without a commit on purpose. */
	if (status_paused())
		flowing = true;
	held = metrics_composer_held(cwhy, sizeof(cwhy));
	ok = h->pg.ok && h->redis.ok && kafka && flowing && !held;
	cJSON_AddStringToObject(o, "status", ok ? "ok" : "unavailable");
	cJSON_AddBoolToObject(o, "paused", status_paused());
	check_json(o, "postgres", h->pg.ok, h->pg.error);
	check_json(o, "redis", h->redis.ok, h->redis.error);
	k = check_json(o, "kafka", kafka, kwhy);
	cJSON_AddNumberToObject(k, "assigned", metrics_assigned());
	check_json(o, "partitions", flowing, stalled.data);
	if (h->cfg->composer_base_url[0]) {
		/* The account behind the model endpoint (401, 402, 403):
		 * campaign batches wait until it is fixed. */
		char msg[200];

		snprintf(msg, sizeof(msg), "unavailable (%s)", cwhy);
		check_json(o, "composer", !held, msg);
	}
	buf_free(&stalled);
	reply_json(req, ok ? 200 : 503, ok ? "OK" : "Service Unavailable", o);
}

static void handle_metrics(struct evhttp_request *req)
{
	struct buf b;
	struct evbuffer *out = evbuffer_new();

	buf_init(&b);
	metrics_render(&b);
	evbuffer_add(out, b.data, b.len);
	reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", out);
	evbuffer_free(out);
	buf_free(&b);
}

static void handle_status(struct httpd *h, struct evhttp_request *req)
{
	cJSON *o = cJSON_CreateObject(), *cfg;
	int paused = 0, n = metrics_pipelines(&paused);

	cJSON_AddStringToObject(o, "daemon", "sluice-worker");
	cJSON_AddStringToObject(o, "version", SLUICE_VERSION);
	cJSON_AddNumberToObject(
	    o, "uptime_s", (double)(util_mono_ms() - h->started_ms) / 1000.0);
	/* Asked for by the operator; each pipeline's own "paused" says
	 * whether it holds its partitions already (its batch finished). */
	cJSON_AddBoolToObject(o, "paused", status_paused());
	cJSON_AddNumberToObject(o, "pipelines_paused", paused);
	cJSON_AddNumberToObject(o, "pipelines_total", n);
	cJSON_AddStringToObject(o, "log_level",
				log_level_names[log_level_current]);
	metrics_status(o);
	cfg = admin_config_json(worker_settings, h->cfg, h->cfg->kafka);
	/* The level in force, which PUT /admin/log-level may have moved. */
	cJSON_ReplaceItemInObjectCaseSensitive(
	    cJSON_GetObjectItemCaseSensitive(cfg, "log_level"), "value",
	    cJSON_CreateString(log_level_names[log_level_current]));
	/* Extra headers to the model endpoint may carry a credential. */
	if (h->cfg->composer_headers[0])
		cJSON_ReplaceItemInObjectCaseSensitive(
		    cJSON_GetObjectItemCaseSensitive(cfg, "composer.headers"),
		    "value", cJSON_CreateString("(hidden)"));
	cJSON_AddItemToObject(o, "config", cfg);
	reply_json(req, 200, "OK", o);
}

static void handle_pause(struct evhttp_request *req, bool pause,
			 const char *client)
{
	cJSON *o = cJSON_CreateObject();
	int paused = 0, n = metrics_pipelines(&paused);

	if (status_paused() != pause)
		log_info("%s requested by %s: %s", pause ? "pause" : "resume",
			 client,
			 pause ? "the batches running finish and commit, then "
				 "no new batch until resumed"
			       : "batches start again");
	status_set_paused(pause);
	cJSON_AddBoolToObject(o, "paused", pause);
	cJSON_AddNumberToObject(o, "pipelines_paused", paused);
	cJSON_AddNumberToObject(o, "pipelines_total", n);
	reply_json(req, 200, "OK", o);
}

static void handle_log_level(struct evhttp_request *req, const char *client)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *body = (const char *)evbuffer_pullup(in, -1);
	int level = admin_parse_level(body ? body : "", body ? len : 0);
	int was = log_level_current;
	cJSON *o;

	if (level < 0) {
		reply_error(req, 422, "Unprocessable Entity", "bad_log_level",
			    "expected debug, info, warn or error, or "
			    "{\"level\": \"...\"}");
		return;
	}
	log_set_level(level);
	/* At warn, so the change itself is seen at any level. */
	log_warn("log level %s -> %s (by %s)", log_level_names[was],
		 log_level_names[level], client);
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "log_level", log_level_names[level]);
	cJSON_AddStringToObject(o, "was", log_level_names[was]);
	reply_json(req, 200, "OK", o);
}

/* The peer's address as text, for the logs. */
static void peer_name(struct evhttp_request *req, char *out, size_t outsz)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	char *addr = NULL;
	ev_uint16_t port = 0;

	if (evcon)
		evhttp_connection_get_peer(evcon, &addr, &port);
	snprintf(out, outsz, "%s", addr ? addr : "-");
}

static const struct sockaddr *peer_addr(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);

	return evcon ? evhttp_connection_get_addr(evcon) : NULL;
}

enum route {
	R_NONE,
	R_HEALTHZ,
	R_READYZ,
	R_METRICS,
	R_STATUS,
	R_PAUSE,
	R_RESUME,
	R_LOG_LEVEL
};

static const struct {
	const char *path;
	enum route route;
	enum evhttp_cmd_type method; /* GET also admits HEAD */
	bool admin;
} routes[] = {
    {"/healthz", R_HEALTHZ, EVHTTP_REQ_GET, false},
    {"/readyz", R_READYZ, EVHTTP_REQ_GET, false},
    {"/metrics", R_METRICS, EVHTTP_REQ_GET, false},
    /* /status is read-only but shows the configuration: it asks what
     * the admin routes ask. */
    {"/status", R_STATUS, EVHTTP_REQ_GET, true},
    {"/admin/pause", R_PAUSE, EVHTTP_REQ_POST, true},
    {"/admin/resume", R_RESUME, EVHTTP_REQ_POST, true},
    {"/admin/log-level", R_LOG_LEVEL, EVHTTP_REQ_PUT, true},
};

static void route(struct httpd *h, struct evhttp_request *req, const char *path,
		  const char *client)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	size_t i, n = sizeof(routes) / sizeof(routes[0]);
	const char *denied;

	for (i = 0; i < n && strcmp(path, routes[i].path) != 0; i++)
		;
	if (i == n) {
		reply_error(req, 404, "Not Found", "not_found",
			    "no such path; try /healthz, /readyz, /metrics "
			    "or /status");
		return;
	}
	if (routes[i].admin &&
	    (denied = admin_authorize(
		 peer_addr(req),
		 evhttp_find_header(evhttp_request_get_input_headers(req),
				    "Authorization"),
		 h->admin_token)) != NULL) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "WWW-Authenticate", "Bearer");
		reply_error(req, 401, "Unauthorized", denied,
			    strcmp(denied, "admin_token_invalid") == 0
				? "the bearer token is not admin_token_file's"
				: "admin routes answer loopback clients, or "
				  "Authorization: Bearer <admin_token_file's "
				  "token>");
		return;
	}
	if (cmd != routes[i].method &&
	    !(routes[i].method == EVHTTP_REQ_GET && cmd == EVHTTP_REQ_HEAD)) {
		char msg[32];

		snprintf(msg, sizeof(msg), "use %s",
			 access_method_name((int)routes[i].method));
		evhttp_add_header(
		    evhttp_request_get_output_headers(req), "Allow",
		    routes[i].method == EVHTTP_REQ_GET
			? "GET, HEAD"
			: access_method_name((int)routes[i].method));
		reply_error(req, 405, "Method Not Allowed",
			    "method_not_allowed", msg);
		return;
	}
	switch (routes[i].route) {
	case R_METRICS: handle_metrics(req); break;
	case R_READYZ: handle_readyz(h, req); break;
	case R_STATUS: handle_status(h, req); break;
	case R_PAUSE: handle_pause(req, true, client); break;
	case R_RESUME: handle_pause(req, false, client); break;
	case R_LOG_LEVEL: handle_log_level(req, client); break;
	default: {
		cJSON *o = cJSON_CreateObject();

		cJSON_AddStringToObject(o, "status", "ok");
		reply_json(req, 200, "OK", o);
	}
	}
}

/* Every request, on the worker's event loop. */
static void handle_request(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	double t0 = util_mono_s();
	char id[ACCESS_ID_SIZE], client[64];

	peer_name(req, client, sizeof(client));
	access_request_id(
	    evhttp_find_header(evhttp_request_get_input_headers(req),
			       "X-Request-Id"),
	    id, sizeof(id));
	evhttp_add_header(evhttp_request_get_output_headers(req),
			  "X-Request-Id", id);
	answer.status = 0;
	answer.bytes = 0;
	answer.reason = NULL;
	if (!path)
		reply_error(req, 400, "Bad Request", "bad_request",
			    "unparsable request");
	else
		route(h, req, path, client);
	access_log(h->cfg->access_log,
		   &(struct access_entry){
		       .client = client,
		       .method = access_method_name(
			   (int)evhttp_request_get_command(req)),
		       .path = path ? path : "-",
		       .status = answer.status,
		       .bytes = answer.bytes,
		       .ms = (util_mono_s() - t0) * 1000.0,
		       .request_id = id,
		       .reason = answer.reason,
		   });
}

struct httpd *httpd_new(struct event_base *base,
			const struct worker_config *cfg, char *errstr,
			size_t errstr_size)
{
	struct httpd *h = xcalloc(1, sizeof(*h));
	const char *colon = strrchr(cfg->listen, ':');
	char host[256];
	size_t hlen = colon ? (size_t)(colon - cfg->listen) : 0;
	int port = colon ? atoi(colon + 1) : -1;
	struct timeval tv = util_ms_tv(PROBE_INTERVAL_MS);

	h->base = base;
	h->cfg = cfg;
	h->started_ms = util_mono_ms();
	if (cfg->admin_token_file[0] &&
	    !admin_token_load(cfg->admin_token_file, &h->admin_token, errstr,
			      errstr_size))
		goto fail;
	if (!colon || hlen == 0 || hlen >= sizeof(host) || port < 0 ||
	    port > 65535) {
		snprintf(errstr, errstr_size, "listen: bad address \"%s\"",
			 cfg->listen);
		goto fail;
	}
	memcpy(host, cfg->listen, hlen);
	host[hlen] = '\0';
	if (!redis_addr_parse(cfg->redis_url, &h->raddr, errstr, errstr_size))
		goto fail;
	redis_addr_set_password(&h->raddr, cfg->redis_password);
	h->http = evhttp_new(base);
	if (!h->http) {
		snprintf(errstr, errstr_size, "evhttp_new failed");
		goto fail;
	}
	/* Only probes come here: small requests, short timeouts. */
	evhttp_set_max_headers_size(h->http, 16 * 1024);
	evhttp_set_max_body_size(h->http, 16 * 1024);
	evhttp_set_timeout(h->http, 10);
	evhttp_set_allowed_methods(
	    h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
			 EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
			 EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(h->http, handle_request, h);
	if (!evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t)port)) {
		snprintf(errstr, errstr_size, "cannot listen on %s",
			 cfg->listen);
		goto fail;
	}
	snprintf(h->pg.error, sizeof(h->pg.error), "checking");
	snprintf(h->redis.error, sizeof(h->redis.error), "checking");
	h->tick = event_new(base, -1, EV_PERSIST, handle_tick, h);
	event_add(h->tick, &tv);
	handle_tick(-1, 0, h); /* the first probes start now */
	log_info(
	    "health and metrics on http://%s/ (/healthz, /readyz, /metrics; /status and /admin/ for %s)",
	    cfg->listen,
	    h->admin_token ? "loopback or the admin token" : "loopback only");
	return h;
fail:
	httpd_destroy(h);
	return NULL;
}

void httpd_destroy(struct httpd *h)
{
	if (!h)
		return;
	if (h->tick)
		event_free(h->tick);
	pg_drop(h);
	redis_drop(h);
	if (h->http)
		evhttp_free(h->http);
	redis_addr_free(&h->raddr);
	free(h->admin_token);
	free(h);
}
