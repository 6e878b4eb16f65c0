/* sluice-ingest's HTTP server: the listener, routing by path to the
 * probes, /metrics and the gate (gate.c) of each source's POST. */
#include "http.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../common/campaign.h"
#include "../common/kinds.h"
#include "../common/log.h"
#include "../common/util.h"
#include "conn.h"
#include "gate.h"
#include "ingest.h"
#include "metrics.h"
#include "pending.h"
#include "reply.h"
#include "status.h"
#include "step.h"

/* A path segment, percent-decoded: NULL with *problem set when a '%' is not
 * followed by two hex digits or a byte decodes to NUL (either would make
 * the id differ between sluice, its logs and whoever reads them). */
static char *segment_decode(const char *raw, size_t len, char *problem,
			    size_t problem_size)
{
	char *copy, *decoded;
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		if (raw[i] != '%')
			continue;
		if (i + 2 >= len || !isxdigit((unsigned char)raw[i + 1]) ||
		    !isxdigit((unsigned char)raw[i + 2])) {
			int shown = 1;

			while (shown < 3 && i + (size_t)shown < len &&
			       isgraph((unsigned char)raw[i + shown]))
				shown++;
			snprintf(problem, problem_size,
				 "bad percent-encoding \"%.*s\" at byte %zu: "
				 "'%%' must be followed by two hex digits",
				 shown, raw + i, i);
			return NULL;
		}
		if (raw[i + 1] == '0' && raw[i + 2] == '0') {
			snprintf(problem, problem_size,
				 "%%00 at byte %zu decodes to a NUL byte, "
				 "which is not allowed",
				 i);
			return NULL;
		}
		i += 2;
	}
	copy = xstrndup(raw, len);
	decoded = evhttp_uridecode(copy, 0, &n);
	free(copy);
	if (!decoded)
		abort();
	return decoded;
}

static void handle_webhook(struct ingest *ing, struct evhttp_request *req,
			   const char *name)
{
	struct source *src = ingest_source_find(&ing->cfg, name, strlen(name));

	/* Campaign batches have their own path. */
	if (!src || src->kind->own_path) {
		reply_error(ing, req, 404, "unknown_source",
			    "no such webhook source", NULL);
		return;
	}
	if (src->kind->handshake &&
	    evhttp_request_get_command(req) == EVHTTP_REQ_GET) {
		step_handshake(ing, req, src);
		return;
	}
	gate_publish(ing, req, src, NULL);
}

/* POST /v1/campaigns/{campaign_id}/batches; id is the raw path segment. */
static void handle_campaign(struct ingest *ing, struct evhttp_request *req,
			    const char *id, size_t id_len)
{
	struct source *src = ingest_source_of_kind(&ing->cfg, KIND_CAMPAIGN);
	char problem[160];
	char *decoded = segment_decode(id, id_len, problem, sizeof(problem));
	size_t n = decoded ? strlen(decoded) : 0;

	if (!src) {
		reply_error(ing, req, 404, "not_found",
			    "no campaign source is configured", NULL);
	} else if (!decoded) {
		char msg[200];

		snprintf(msg, sizeof(msg), "the campaign id in the path: %s",
			 problem);
		reply_error(ing, req, 400, "bad_path", msg, NULL);
	} else if (n == 0 || n > CAMPAIGN_ID_MAX ||
		   !util_utf8_valid(decoded, n)) {
		reply_error(ing, req, 404, "not_found",
			    "the campaign id in the path is empty, too long "
			    "or not UTF-8",
			    NULL);
	} else {
		gate_publish(ing, req, src, decoded);
	}
	free(decoded);
}

static void handle_metrics(struct ingest *ing, struct evhttp_request *req)
{
	struct evbuffer *out = evbuffer_new();

	metrics_render(ing, out);
	reply_text(ing, req, 200, "text/plain; version=0.0.4", out);
	evbuffer_free(out);
}

/* One check of /readyz, shaped as the worker's are: {"ok": bool} and,
 * failing, "error" saying why. */
static cJSON *check_json(cJSON *parent, const char *name, bool ok,
			 const char *error)
{
	cJSON *o = cJSON_AddObjectToObject(parent, name);

	cJSON_AddBoolToObject(o, "ok", ok);
	if (!ok)
		cJSON_AddStringToObject(o, "error", error);
	return o;
}

static void handle_probe(struct ingest *ing, struct evhttp_request *req,
			 bool ready_check)
{
	cJSON *o = cJSON_CreateObject(), *queue;
	bool ok = true, room = ing->inflight < ing->cfg.max_inflight;
	/* A refusal retrying cannot cure (credentials, the broker's
	 * certificate, an ACL) is named even while brokers answer. */
	bool kafka_ok = ing->kafka_up && !ing->kafka_denied.cause[0];

	if (ready_check)
		ok = kafka_ok && !ing->draining && room;
	cJSON_AddStringToObject(o, "status", ok ? "ok" : "unavailable");
	if (ready_check) {
		check_json(
		    o, "kafka", kafka_ok,
		    ing->kafka_denied.cause[0]
			? ing->kafka_denied.cause
			: "no broker reachable, or records not confirmed "
			  "within delivery_timeout_ms");
		queue = check_json(o, "queue", room,
				   "max_inflight requests wait for Kafka");
		cJSON_AddNumberToObject(queue, "inflight", ing->inflight);
		cJSON_AddNumberToObject(queue, "max_inflight",
					ing->cfg.max_inflight);
		check_json(o, "accepting", !ing->draining,
			   "draining: SIGTERM received, finishing what is in "
			   "flight");
	}
	reply_json(ing, req, ok ? 200 : 503, o);
}

/* Two Content-Length headers that differ, or one beside a
 * Transfer-Encoding, let a proxy and sluice see different bodies (request
 * smuggling): refused, and the connection closed. */
static bool framing_ok(struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *cl = NULL;
	bool te = false;

	for (struct evkeyval *h = in ? in->tqh_first : NULL; h;
	     h = h->next.tqe_next) {
		if (strcasecmp(h->key, "Content-Length") == 0) {
			if (cl && strcmp(cl, h->value) != 0)
				return false;
			cl = h->value;
		} else if (strcasecmp(h->key, "Transfer-Encoding") == 0) {
			te = true;
		}
	}
	return !(cl && te);
}

/* evhttp reads a body only for POST, PUT and PATCH: any other request's
 * body stays in the input and would be parsed as the next request, one a
 * proxy in front never saw (request smuggling). So the connection of a
 * request of another method that declares a body is closed after its
 * answer, the body unread; a GET or HEAD is refused outright (400). */
static bool body_declared_without_reading(struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *cl = evhttp_find_header(in, "Content-Length");

	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_POST:
	case EVHTTP_REQ_PUT:
	case EVHTTP_REQ_PATCH: return false;
	default: break;
	}
	if (evhttp_find_header(in, "Transfer-Encoding"))
		return true;
	if (!cl)
		return false;
	cl += strspn(cl, "0"); /* "0", "00": no body */
	return *cl != '\0';
}

static bool probe_path(const char *path)
{
	return path &&
	       (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0 ||
		strcmp(path, "/metrics") == 0);
}

/* Every request, on the event loop thread. */
static void handle_request(struct evhttp_request *req, void *arg)
{
	struct ingest *ing = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	bool probe = probe_path(path) &&
		     (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD);

	reply_begin(req); /* its X-Request-Id, for every answer */

	/* Over max_connections only the probes are served: a liveness
	 * check must not fail because of a flood it is not part of. */
	if (!conn_request(ing, req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Connection", "close");
		if (!probe) {
			reply_error(ing, req, 503, "too_many_connections",
				    "too many open connections "
				    "(max_connections); retry later",
				    NULL);
			return;
		}
	}
	if (!framing_ok(req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Connection", "close");
		reply_error(ing, req, 400, "bad_request",
			    "conflicting Content-Length or Transfer-Encoding "
			    "headers",
			    NULL);
		return;
	}
	if (body_declared_without_reading(req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
				  "Connection", "close");
		if (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) {
			reply_error(
			    ing, req, 400, "body_not_allowed",
			    "a GET or HEAD request must not have a body "
			    "(Content-Length or Transfer-Encoding); the "
			    "connection is closed",
			    NULL);
			return;
		}
	}
	if (!path) {
		/* evhttp answers a request it could not parse itself (conn.c
		 * turns that answer into JSON); this is a safety net. */
		reply_error(ing, req, 400, "bad_request", "unparsable request",
			    NULL);
		return;
	}
	if (strncmp(path, WEBHOOK_PREFIX, strlen(WEBHOOK_PREFIX)) == 0 &&
	    path[strlen(WEBHOOK_PREFIX)] &&
	    !strchr(path + strlen(WEBHOOK_PREFIX), '/')) {
		const char *raw = path + strlen(WEBHOOK_PREFIX);
		char problem[160];
		char *name =
		    segment_decode(raw, strlen(raw), problem, sizeof(problem));

		if (!name) {
			char msg[200];

			snprintf(msg, sizeof(msg),
				 "the source name in the "
				 "path: %s",
				 problem);
			reply_error(ing, req, 400, "bad_path", msg, NULL);
			return;
		}
		handle_webhook(ing, req, name);
		free(name);
		return;
	}
	if (strncmp(path, CAMPAIGN_PREFIX, strlen(CAMPAIGN_PREFIX)) == 0) {
		const char *id = path + strlen(CAMPAIGN_PREFIX);
		const char *slash = strchr(id, '/');

		if (slash && slash > id &&
		    strcmp(slash, CAMPAIGN_SUFFIX) == 0) {
			handle_campaign(ing, req, id, (size_t)(slash - id));
			return;
		}
	}
	if (probe_path(path)) {
		if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
			evhttp_add_header(
			    evhttp_request_get_output_headers(req), "Allow",
			    "GET");
			reply_error(ing, req, 405, "method_not_allowed",
				    "use GET", NULL);
		} else if (path[1] == 'm') {
			handle_metrics(ing, req);
		} else {
			handle_probe(ing, req, path[1] == 'r');
		}
		return;
	}
	if (status_path(path)) {
		status_handle(ing, req, path);
		return;
	}
	reply_error(ing, req, 404, "not_found", "no such path", NULL);
}

/* Loop timer: accept again after an error paused it. */
static void handle_accept_retry(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *ing = arg;

	(void)fd;
	(void)what;
	if (ing->bound)
		evconnlistener_enable(
		    evhttp_bound_socket_get_listener(ing->bound));
	if (ing->bound_tls)
		evconnlistener_enable(
		    evhttp_bound_socket_get_listener(ing->bound_tls));
}

/* evconnlistener, on the loop: accept() failed. Out of descriptors the
 * listening socket stays readable, so without this the loop would spin on
 * it: pause accepting with a back-off (10 ms doubling to 1 s), shed the
 * waiting connection with the spare descriptor, log once a second. */
static struct ingest *accept_ing; /* the listener's argument is evhttp's */

static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct ingest *ing = accept_ing;
	int err = EVUTIL_SOCKET_ERROR();
	int wait = backoff_next(&ing->accept_backoff);
	struct timeval tv = util_ms_tv(wait);

	(void)arg;
	ing->m.accept_errors++;
	evconnlistener_disable(lev);
	if ((err == EMFILE || err == ENFILE) && ing->spare_fd >= 0) {
		int fd;

		close(ing->spare_fd);
		fd = accept(evconnlistener_get_fd(lev), NULL, NULL);
		if (fd >= 0)
			close(fd);
		ing->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	if (util_mono_ms() - ing->accept_logged_ms >= 1000) {
		ing->accept_logged_ms = util_mono_ms();
		log_warn(
		    "accept: %s; pausing new connections for %d ms (%llu accept errors so far)",
		    evutil_socket_error_to_string(err), wait,
		    (unsigned long long)ing->m.accept_errors);
	}
	evtimer_add(ing->accept_retry, &tv);
}

/* The settings evhttp holds, for one listener. */
static void http_apply(struct ingest *ing, struct evhttp *http)
{
	/* Bodies a little over the limit get our JSON 413 from
	 * the gate; evhttp's own (HTML) 413 only guards memory against
	 * far larger ones. */
	evhttp_set_max_body_size(http, (ev_ssize_t)ing->cfg.max_body_bytes * 4 +
					   65536);
	/* A second more than conn.c's whole-request deadline, which thus
	 * always comes first and answers 408; evhttp's own read timeout
	 * would close without a word. It still bounds writes. */
	evhttp_set_timeout(http, ing->cfg.request_timeout_s + 1);
}

void http_apply_settings(struct ingest *ing)
{
	if (ing->http)
		http_apply(ing, ing->http);
	if (ing->https)
		http_apply(ing, ing->https);
	conn_apply_settings(ing);
}

/* One listener on addr (the value of key), plain or TLS: an evhttp of its
 * own (the bufferevent callback is per evhttp) routing to the same
 * handle_request, its connections counted by conn.c with the others'. */
static bool http_listen(struct ingest *ing, const char *key, const char *addr,
			bool tls, struct evhttp **out,
			struct evhttp_bound_socket **bound, char *errstr,
			size_t errstr_size)
{
	char host[256];
	const char *colon = strrchr(addr, ':');
	size_t hlen = (size_t)(colon - addr);
	int port = atoi(colon + 1);
	struct evhttp *http;

	if (hlen >= sizeof(host) || port <= 0 || port > 65535) {
		snprintf(errstr, errstr_size, "%s: bad address \"%s\"", key,
			 addr);
		return false;
	}
	memcpy(host, addr, hlen);
	host[hlen] = '\0';
	http = *out = evhttp_new(ing->base);
	if (!http) {
		snprintf(errstr, errstr_size, "evhttp_new failed");
		return false;
	}
	http_apply(ing, http);
	conn_listen(ing, http, tls);
	evhttp_set_max_headers_size(http, 64 * 1024);
	evhttp_set_allowed_methods(
	    http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
		      EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
		      EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(http, handle_request, ing);
	*bound = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
	if (!*bound) {
		snprintf(errstr, errstr_size, "cannot listen on %s (%s)", addr,
			 key);
		return false;
	}
	evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(*bound),
				    accept_error_cb);
	return true;
}

bool http_setup(struct ingest *ing, char *errstr, size_t errstr_size)
{
	bool tls_here = ing->tls_ctx && !ing->cfg.tls_listen[0];

	if (!status_setup(ing, errstr, errstr_size))
		return false;
	conn_setup(ing, reply_evhttp_error);
	accept_ing = ing;
	if (!http_listen(ing, "listen", ing->cfg.listen, tls_here, &ing->http,
			 &ing->bound, errstr, errstr_size))
		return false;
	if (ing->tls_ctx && ing->cfg.tls_listen[0] &&
	    !http_listen(ing, "tls_listen", ing->cfg.tls_listen, true,
			 &ing->https, &ing->bound_tls, errstr, errstr_size))
		return false;
	conn_apply_settings(ing);
	ing->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	backoff_init(&ing->accept_backoff, 10, 1000);
	ing->accept_retry = evtimer_new(ing->base, handle_accept_retry, ing);
	return true;
}

void http_stop_accepting(struct ingest *ing)
{
	if (ing->bound) {
		evhttp_del_accept_socket(ing->http, ing->bound);
		ing->bound = NULL;
	}
	if (ing->bound_tls) {
		evhttp_del_accept_socket(ing->https, ing->bound_tls);
		ing->bound_tls = NULL;
	}
}

void http_cleanup(struct ingest *ing)
{
	/* Requests still waiting lose their connection with evhttp_free;
	 * their delivery reports must not touch them afterwards. */
	pending_abandon_all(ing);
	if (ing->http)
		evhttp_free(ing->http);
	ing->http = NULL;
	if (ing->https)
		evhttp_free(ing->https);
	ing->https = NULL;
	conn_cleanup(ing);
	status_cleanup();
	if (ing->accept_retry)
		event_free(ing->accept_retry);
	ing->accept_retry = NULL;
	if (ing->spare_fd > 0)
		close(ing->spare_fd);
	ing->spare_fd = -1;
}
