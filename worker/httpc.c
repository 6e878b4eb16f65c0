/* The worker's HTTP client: pooled keep-alive connections per
 * scheme+host+port, TLS with the peer verified, evdns resolution and a
 * deadline per call, on one event_base (see httpc.h).
 *
 * A call waits in its host's FIFO queue until a connection is free (an
 * idle one, or a new one while fewer than max_per_host are open), runs on
 * it, and ends by its answer, a failure or its deadline. A connection that
 * failed, was cancelled or was closed by the peer is never used again:
 * evhttp would reconnect it, but an OpenSSL bufferevent cannot handshake
 * twice, and a fresh connection costs nothing a later call would miss.
 * Connections are freed from a loop event of their own (the reaper), never
 * inside one of their callbacks; queued calls start from another (the
 * kick), never inside httpc_request() or httpc_cancel(), so a caller's
 * callback never runs inside its own call into this module. */
#include "httpc.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/log.h"
#include "../common/util.h"

#define HTTPC_MAX_HEADERS (64 * 1024)
#define HTTPC_MAX_BODY (16 * 1024 * 1024)

struct hc_host;

struct hc_conn {
	struct hc_host *host;
	struct evhttp_connection *evcon;
	struct httpc_call *call; /* running on it; NULL when idle */
	int answered;		 /* calls it has carried to an answer */
	bool dead;		 /* out of the pool, waiting for the reaper */
	struct hc_conn *next;
};

/* One scheme+host+port: its connections and the calls waiting for one. */
struct hc_host {
	struct httpc *h;
	char *name; /* as connected to: no brackets around IPv6 */
	char *host_header;
	int port;
	bool tls;
	bool numeric;
	struct hc_conn *conns;
	int n_conns;
	struct httpc_call *q_head, *q_tail;
	struct hc_host *next;
};

struct httpc_call {
	struct httpc *h;
	struct hc_host *host;
	struct hc_conn *conn; /* NULL while queued */
	enum evhttp_cmd_type method;
	char *path;
	char **headers; /* name, value, name, value... */
	size_t n_headers;
	char *body;
	size_t body_len;
	int timeout_ms;
	struct evhttp_request *req;
	struct event *deadline;
	httpc_done_fn fn;
	void *arg;
	bool queued;
	bool starting;	     /* inside evhttp_make_request() */
	bool ended_starting; /* evhttp answered inside it */
	bool retried;	     /* sent again after a stale connection */
	struct httpc_call *next;
	char err[256];
};

struct httpc {
	struct event_base *base;
	struct evdns_base *dns;
	SSL_CTX *ssl;
	int max_per_host;
	int open;
	struct hc_host *hosts;
	struct hc_conn *dead;
	struct event *reaper;
	struct event *kick;
};

static void call_free(struct httpc_call *c)
{
	if (c->deadline)
		event_free(c->deadline);
	for (size_t i = 0; i < 2 * c->n_headers; i++)
		free(c->headers[i]);
	free(c->headers);
	free(c->path);
	free(c->body);
	free(c);
}

/* Takes a connection out of the pool; the reaper frees it. */
static void conn_kill(struct hc_conn *k)
{
	struct hc_host *host = k->host;
	struct hc_conn **pp;

	if (k->dead)
		return;
	k->dead = true;
	for (pp = &host->conns; *pp; pp = &(*pp)->next)
		if (*pp == k) {
			*pp = k->next;
			break;
		}
	host->n_conns--;
	host->h->open--;
	k->next = host->h->dead;
	host->h->dead = k;
	event_active(host->h->reaper, EV_TIMEOUT, 0);
}

static void conn_free(struct hc_conn *k)
{
	evhttp_connection_set_closecb(k->evcon, NULL, NULL);
	evhttp_connection_free(k->evcon);
	free(k);
}

static void handle_reaper(evutil_socket_t fd, short what, void *arg)
{
	struct httpc *h = arg;

	(void)fd;
	(void)what;
	while (h->dead) {
		struct hc_conn *k = h->dead;

		h->dead = k->next;
		conn_free(k);
	}
}

/* evhttp: the connection closed (the peer, a failure, a cancel). */
static void conn_close_cb(struct evhttp_connection *evcon, void *arg)
{
	(void)evcon;
	conn_kill(arg);
}

static void kick(struct httpc *h)
{
	event_active(h->kick, EV_TIMEOUT, 0);
}

/* Why a call failed, read from its connection before evhttp resets it:
 * the resolver's error, the TLS verification's, OpenSSL's, else evhttp's. */
static void describe_failure(struct httpc_call *c, enum evhttp_request_error e)
{
	struct bufferevent *bev =
	    evhttp_connection_get_bufferevent(c->conn->evcon);
	int dns_err = bev ? bufferevent_socket_get_dns_error(bev) : 0;

	if (dns_err) {
		snprintf(c->err, sizeof(c->err), "resolve: %s: %s",
			 c->host->name, evutil_gai_strerror(dns_err));
		return;
	}
	if (c->host->tls && bev) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
		unsigned long oe = bufferevent_get_openssl_error(bev);

		if (v != X509_V_OK) {
			snprintf(c->err, sizeof(c->err),
				 "tls: certificate verify failed for %s: %s",
				 c->host->name,
				 X509_verify_cert_error_string(v));
			return;
		}
		if (oe) {
			char s[200];

			ERR_error_string_n(oe, s, sizeof(s));
			snprintf(c->err, sizeof(c->err), "tls: %s", s);
			return;
		}
	}
	switch (e) {
	case EVREQ_HTTP_TIMEOUT:
		snprintf(c->err, sizeof(c->err), "timeout");
		break;
	case EVREQ_HTTP_EOF:
		snprintf(c->err, sizeof(c->err), "connection closed");
		break;
	case EVREQ_HTTP_INVALID_HEADER:
		snprintf(c->err, sizeof(c->err), "invalid answer");
		break;
	case EVREQ_HTTP_DATA_TOO_LONG:
		snprintf(c->err, sizeof(c->err), "answer too large");
		break;
	default: snprintf(c->err, sizeof(c->err), "connection error"); break;
	}
}

static void req_error_cb(enum evhttp_request_error e, void *arg)
{
	struct httpc_call *c = arg;

	if (e == EVREQ_HTTP_REQUEST_CANCEL || !c->conn)
		return; /* ours: the deadline or httpc_cancel() */
	describe_failure(c, e);
}

/* The call is over: its connection back to the pool (or out of it), its
 * callback called, the call freed. */
static void call_end(struct httpc_call *c, struct evhttp_request *req,
		     int status)
{
	struct hc_conn *k = c->conn;
	struct httpc_resp r = {0};

	evtimer_del(c->deadline);
	c->req = NULL;
	if (k) {
		k->call = NULL;
		c->conn = NULL;
		if (status == 0)
			conn_kill(k);
		else
			k->answered++;
	}
	kick(c->h); /* a connection is free, or one fewer is open */
	r.status = status;
	if (status == 0) {
		r.error = c->err[0] ? c->err : "connect: connection refused";
		r.body = "";
	} else {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);

		r.len = evbuffer_get_length(in);
		evbuffer_add(in, "", 1); /* the NUL the interface promises */
		r.body = (const char *)evbuffer_pullup(in, -1);
		r.priv_ = evhttp_request_get_input_headers(req);
	}
	c->fn(c->arg, &r);
	call_free(c);
}

/* A kept-alive connection that went stale while idle (the peer closed it,
 * or libevent's idle watch gave up on it) fails the next call at once,
 * with no answer: that call goes again, once, on a fresh connection, at
 * the head of its host's queue. Its deadline still covers both tries. A
 * connection that never answered (a new one) is not retried: its failure
 * is the server's. */
static bool retry_stale(struct httpc_call *c)
{
	struct hc_conn *k = c->conn;
	struct hc_host *host = c->host;

	if (!k || k->answered == 0 || c->retried)
		return false;
	c->retried = true;
	k->call = NULL;
	c->conn = NULL;
	c->req = NULL; /* evhttp frees it */
	c->err[0] = '\0';
	conn_kill(k);
	c->queued = true;
	c->next = host->q_head;
	host->q_head = c;
	if (!host->q_tail)
		host->q_tail = c;
	kick(c->h);
	return true;
}

/* evhttp: the answer, or the failure (req NULL or no status). */
static void req_done_cb(struct evhttp_request *req, void *arg)
{
	struct httpc_call *c = arg;
	int status = req ? evhttp_request_get_response_code(req) : 0;

	if (c->starting) {
		/* Failed inside evhttp_make_request(): call_start ends it. */
		c->ended_starting = true;
		if (!c->err[0])
			snprintf(c->err, sizeof(c->err),
				 "connect: cannot connect to %s",
				 c->host->name);
		return;
	}
	if (status == 0 && retry_stale(c))
		return;
	if (status == 0 && !c->err[0] && req)
		snprintf(c->err, sizeof(c->err), "connect: connection refused");
	call_end(c, req, status);
}

/* Takes a call out of its host's queue. */
static void queue_unlink(struct httpc_call *c)
{
	struct hc_host *host = c->host;
	struct httpc_call *prev = NULL;

	for (struct httpc_call *i = host->q_head; i; prev = i, i = i->next) {
		if (i != c)
			continue;
		if (prev)
			prev->next = c->next;
		else
			host->q_head = c->next;
		if (host->q_tail == c)
			host->q_tail = prev;
		break;
	}
	c->next = NULL;
	c->queued = false;
}

static void handle_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct httpc_call *c = arg;

	(void)fd;
	(void)what;
	snprintf(c->err, sizeof(c->err), "timeout");
	if (c->queued) {
		queue_unlink(c);
	} else if (c->req) {
		struct evhttp_request *req = c->req;
		struct hc_conn *k = c->conn;

		c->req = NULL;
		c->conn = NULL;
		k->call = NULL;
		conn_kill(k); /* a half-read answer may follow: never reuse */
		evhttp_cancel_request(req); /* no req_done_cb after this */
	}
	call_end(c, NULL, 0);
}

static struct hc_conn *conn_new(struct hc_host *host, char *errstr,
				size_t errstr_size)
{
	struct httpc *h = host->h;
	struct hc_conn *k;
	struct bufferevent *bev;
	const int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;

	if (host->tls) {
		SSL *ssl = SSL_new(h->ssl);

		if (!ssl) {
			snprintf(errstr, errstr_size, "tls: SSL_new failed");
			return NULL;
		}
		if (host->numeric) {
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl),
						      host->name);
		} else {
			SSL_set_tlsext_host_name(ssl, host->name);
			SSL_set1_host(ssl, host->name);
		}
		SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
		bev = bufferevent_openssl_socket_new(
		    h->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
		if (!bev) {
			SSL_free(ssl);
			snprintf(errstr, errstr_size,
				 "tls: cannot make the connection");
			return NULL;
		}
		/* Many servers close without close_notify; the answer's
		 * length already says whether it is whole. */
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	} else {
		bev = bufferevent_socket_new(h->base, -1, opts);
		if (!bev) {
			snprintf(errstr, errstr_size,
				 "connect: cannot make the connection");
			return NULL;
		}
	}
	k = xcalloc(1, sizeof(*k));
	k->host = host;
	k->evcon = evhttp_connection_base_bufferevent_new(
	    h->base, host->numeric ? NULL : h->dns, bev, host->name,
	    (ev_uint16_t)host->port);
	if (!k->evcon) {
		bufferevent_free(bev);
		free(k);
		snprintf(errstr, errstr_size,
			 "connect: cannot make the connection");
		return NULL;
	}
	/* evhttp retries nothing itself: the callers decide. */
	evhttp_connection_set_retries(k->evcon, 0);
	/* An endpoint that answers without end is cut off, not buffered:
	 * a lead context or a chat completion is kilobytes. */
	evhttp_connection_set_max_headers_size(k->evcon, HTTPC_MAX_HEADERS);
	evhttp_connection_set_max_body_size(k->evcon, HTTPC_MAX_BODY);
	evhttp_connection_set_closecb(k->evcon, conn_close_cb, k);
	k->next = host->conns;
	host->conns = k;
	host->n_conns++;
	h->open++;
	return k;
}

/* Sends c on k; a call that cannot even start ends here. */
static void call_start(struct httpc_call *c, struct hc_conn *k)
{
	struct evkeyvalq *hdrs;
	struct timeval tv;
	int rc;

	c->conn = k;
	k->call = c;
	c->req = evhttp_request_new(req_done_cb, c);
	evhttp_request_set_error_cb(c->req, req_error_cb);
	hdrs = evhttp_request_get_output_headers(c->req);
	evhttp_add_header(hdrs, "Host", c->host->host_header);
	for (size_t i = 0; i < c->n_headers; i++)
		evhttp_add_header(hdrs, c->headers[2 * i],
				  c->headers[2 * i + 1]);
	if (c->body || c->method == EVHTTP_REQ_POST) {
		char n[24];

		snprintf(n, sizeof(n), "%zu", c->body_len);
		evhttp_add_header(hdrs, "Content-Length", n);
		if (c->body_len)
			evbuffer_add(evhttp_request_get_output_buffer(c->req),
				     c->body, c->body_len);
	}
	/* The call's deadline ends it first; evhttp's own timeouts (45 s to
	 * connect, 50 s per read by default) must not end it earlier. */
	tv = util_ms_tv((int64_t)c->timeout_ms + 1000);
	evhttp_connection_set_timeout_tv(k->evcon, &tv);
	c->starting = true;
	rc = evhttp_make_request(k->evcon, c->req, c->method, c->path);
	c->starting = false;
	if (rc != 0 || c->ended_starting) {
		/* evhttp freed the request (rc != 0) or answered it. */
		if (retry_stale(c))
			return;
		if (!c->err[0])
			snprintf(c->err, sizeof(c->err),
				 "connect: cannot start the request to %s",
				 c->host->name);
		c->req = NULL;
		call_end(c, NULL, 0);
	}
}

/* Starts a host's queued calls on free connections, in order. */
static void host_pump(struct hc_host *host)
{
	while (host->q_head) {
		struct httpc_call *c = host->q_head;
		struct hc_conn *k = NULL;

		for (struct hc_conn *i = host->conns; i && !k; i = i->next)
			if (!i->call && !i->dead)
				k = i;
		if (!k && host->n_conns < host->h->max_per_host) {
			char why[200];

			k = conn_new(host, why, sizeof(why));
			if (!k) {
				host->q_head = c->next;
				if (!host->q_head)
					host->q_tail = NULL;
				c->queued = false;
				snprintf(c->err, sizeof(c->err), "%s", why);
				call_end(c, NULL, 0);
				continue;
			}
		}
		if (!k)
			return;
		host->q_head = c->next;
		if (!host->q_head)
			host->q_tail = NULL;
		c->next = NULL;
		c->queued = false;
		call_start(c, k);
	}
}

static void handle_kick(evutil_socket_t fd, short what, void *arg)
{
	struct httpc *h = arg;

	(void)fd;
	(void)what;
	for (struct hc_host *host = h->hosts; host; host = host->next)
		host_pump(host);
}

struct httpc *httpc_new(struct event_base *base, int max_per_host,
			const char *ca_file, char *errstr, size_t errstr_size)
{
	struct httpc *h = xcalloc(1, sizeof(*h));

	h->base = base;
	h->max_per_host = max_per_host > 0 ? max_per_host : 1;
	h->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
					  EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (!h->dns) {
		/* No usable resolv.conf: names from /etc/hosts still work,
		 * others fail "resolve: ..." per call. */
		log_warn(
		    "http client: cannot read /etc/resolv.conf; only /etc/hosts names and addresses resolve");
		h->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (h->dns)
			evdns_base_load_hosts(h->dns, NULL);
	}
	if (!h->dns) {
		snprintf(errstr, errstr_size,
			 "http client: cannot start the resolver");
		goto fail;
	}
	h->ssl = SSL_CTX_new(TLS_client_method());
	if (!h->ssl) {
		snprintf(errstr, errstr_size,
			 "http client: SSL_CTX_new failed");
		goto fail;
	}
	SSL_CTX_set_min_proto_version(h->ssl, TLS1_2_VERSION);
	SSL_CTX_set_verify(h->ssl, SSL_VERIFY_PEER, NULL);
	if (ca_file && ca_file[0]) {
		if (SSL_CTX_load_verify_locations(h->ssl, ca_file, NULL) != 1) {
			char s[200];

			ERR_error_string_n(ERR_get_error(), s, sizeof(s));
			snprintf(errstr, errstr_size,
				 "http.ca_file: cannot load \"%s\": %s",
				 ca_file, s);
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(h->ssl) != 1) {
		log_warn(
		    "http client: the system's trust store did not load; https:// calls will fail verification");
	}
	ERR_clear_error();
	h->reaper = event_new(base, -1, 0, handle_reaper, h);
	h->kick = event_new(base, -1, 0, handle_kick, h);
	if (!h->reaper || !h->kick)
		abort();
	return h;
fail:
	httpc_destroy(h);
	return NULL;
}

void httpc_destroy(struct httpc *h)
{
	if (!h)
		return;
	while (h->hosts) {
		struct hc_host *host = h->hosts;

		h->hosts = host->next;
		while (host->q_head) {
			struct httpc_call *c = host->q_head;

			host->q_head = c->next;
			call_free(c);
		}
		while (host->conns) {
			struct hc_conn *k = host->conns;

			host->conns = k->next;
			/* The cancel below closes it: its close callback must
			 * not hand it to the reaper as well (a double free). */
			k->dead = true;
			evhttp_connection_set_closecb(k->evcon, NULL, NULL);
			if (k->call) {
				struct httpc_call *c = k->call;

				k->call = NULL;
				c->conn = NULL;
				if (c->req)
					evhttp_cancel_request(c->req);
				call_free(c);
			}
			conn_free(k);
		}
		free(host->name);
		free(host->host_header);
		free(host);
	}
	if (h->reaper)
		handle_reaper(-1, 0, h);
	if (h->reaper)
		event_free(h->reaper);
	if (h->kick)
		event_free(h->kick);
	if (h->dns)
		evdns_base_free(h->dns, 1);
	if (h->ssl)
		SSL_CTX_free(h->ssl);
	free(h);
}

static struct hc_host *host_get(struct httpc *h, bool tls, const char *name,
				int port)
{
	struct hc_host *host;
	struct in6_addr a6;
	struct in_addr a4;
	bool v6;

	for (host = h->hosts; host; host = host->next)
		if (host->tls == tls && host->port == port &&
		    strcasecmp(host->name, name) == 0)
			return host;
	host = xcalloc(1, sizeof(*host));
	host->h = h;
	host->name = xstrdup(name);
	host->port = port;
	host->tls = tls;
	v6 = inet_pton(AF_INET6, name, &a6) == 1;
	host->numeric = v6 || inet_pton(AF_INET, name, &a4) == 1;
	{
		struct buf b;

		buf_init(&b);
		buf_printf(&b, v6 ? "[%s]" : "%s", name);
		if (port != (tls ? 443 : 80))
			buf_printf(&b, ":%d", port);
		host->host_header = b.data;
	}
	host->next = h->hosts;
	h->hosts = host;
	return host;
}

static bool header_ok(const char *s)
{
	return s && !strpbrk(s, "\r\n");
}

struct httpc_call *
httpc_request(struct httpc *h, const char *method, const char *url,
	      const struct httpc_header *headers, size_t n_headers,
	      const char *body, size_t body_len, int timeout_ms,
	      httpc_done_fn fn, void *arg, char *errstr, size_t errstr_size)
{
	struct evhttp_uri *u = NULL;
	const char *scheme, *host, *path, *query;
	char name[256];
	enum evhttp_cmd_type m;
	struct httpc_call *c;
	struct timeval tv;
	struct buf p;
	bool tls;
	int port;

	if (strcmp(method, "GET") == 0) {
		m = EVHTTP_REQ_GET;
	} else if (strcmp(method, "POST") == 0) {
		m = EVHTTP_REQ_POST;
	} else {
		snprintf(errstr, errstr_size, "method %s not supported",
			 method);
		return NULL;
	}
	for (size_t i = 0; i < n_headers; i++) {
		const char *n = headers[i].name;

		if (!header_ok(n) || !n[0] || !header_ok(headers[i].value)) {
			snprintf(errstr, errstr_size,
				 "a request header holds a line break");
			return NULL;
		}
		if (strcasecmp(n, "Host") == 0 ||
		    strcasecmp(n, "Content-Length") == 0 ||
		    strcasecmp(n, "Connection") == 0) {
			snprintf(errstr, errstr_size,
				 "header %s is the client's to set", n);
			return NULL;
		}
	}
	u = evhttp_uri_parse_with_flags(url, EVHTTP_URI_NONCONFORMANT);
	scheme = u ? evhttp_uri_get_scheme(u) : NULL;
	host = u ? evhttp_uri_get_host(u) : NULL;
	if (!scheme || !host || !host[0] ||
	    (strcasecmp(scheme, "http") != 0 &&
	     strcasecmp(scheme, "https") != 0)) {
		snprintf(errstr, errstr_size, "not an http(s) URL");
		if (u)
			evhttp_uri_free(u);
		return NULL;
	}
	tls = strcasecmp(scheme, "https") == 0;
	port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u)
					  : (tls ? 443 : 80);
	/* libevent keeps an IPv6 literal's brackets. */
	if (host[0] == '[' && host[strlen(host) - 1] == ']')
		snprintf(name, sizeof(name), "%.*s", (int)strlen(host) - 2,
			 host + 1);
	else
		snprintf(name, sizeof(name), "%s", host);
	path = evhttp_uri_get_path(u);
	query = evhttp_uri_get_query(u);
	buf_init(&p);
	buf_puts(&p, path && path[0] ? path : "/");
	if (query) {
		buf_puts(&p, "?");
		buf_puts(&p, query);
	}

	c = xcalloc(1, sizeof(*c));
	c->h = h;
	c->host = host_get(h, tls, name, port);
	evhttp_uri_free(u);
	c->method = m;
	c->path = p.data;
	c->n_headers = n_headers;
	c->headers = xcalloc(2 * n_headers + 1, sizeof(*c->headers));
	for (size_t i = 0; i < n_headers; i++) {
		c->headers[2 * i] = xstrdup(headers[i].name);
		c->headers[2 * i + 1] = xstrdup(headers[i].value);
	}
	if (body) {
		c->body = xmalloc(body_len + 1);
		memcpy(c->body, body, body_len);
		c->body_len = body_len;
	}
	c->timeout_ms = timeout_ms;
	c->fn = fn;
	c->arg = arg;
	c->deadline = evtimer_new(h->base, handle_deadline, c);
	if (!c->deadline)
		abort();
	tv = util_ms_tv(timeout_ms);
	evtimer_add(c->deadline, &tv);
	c->queued = true;
	if (c->host->q_tail)
		c->host->q_tail->next = c;
	else
		c->host->q_head = c;
	c->host->q_tail = c;
	kick(h);
	return c;
}

void httpc_cancel(struct httpc_call *c)
{
	if (!c)
		return;
	if (c->queued) {
		queue_unlink(c);
	} else if (c->conn) {
		struct hc_conn *k = c->conn;
		struct evhttp_request *req = c->req;

		k->call = NULL;
		c->conn = NULL;
		c->req = NULL;
		conn_kill(k);
		if (req)
			evhttp_cancel_request(req); /* no callback after it */
		kick(c->h);
	}
	call_free(c);
}

const char *httpc_resp_header(const struct httpc_resp *r, const char *name)
{
	if (!r->priv_)
		return NULL;
	return evhttp_find_header((const struct evkeyvalq *)r->priv_, name);
}

int httpc_open_connections(const struct httpc *h)
{
	return h->open;
}
