/* sluice-ingest's connections: a total deadline per request that
 * drip-feeding cannot extend, and a cap on how many are open.
 *
 * libevent 2.1's evhttp has only per-read timeouts (a client sending a
 * byte every few seconds resets them forever) and no hook when a
 * connection or a request starts. So sluice makes each connection's
 * bufferevent itself (evhttp_set_bevcb) and keeps beside it a small
 * struct conn with a deadline and one timer:
 *   - the deadline is set when the connection is accepted and again when a
 *     request is answered: the next request must be read whole within
 *     request_timeout_s, however its bytes trickle in;
 *   - while sluice holds a request there is none (the delivery deadline
 *     covers that).
 * The timer is lazy: a request only writes the deadline down; the timer,
 * when it fires, re-arms itself for what is left or, once the deadline has
 * passed, answers 408 (if a request had begun) and closes the connection.
 * evhttp's close callback frees the struct; a reference held on the
 * bufferevent keeps a stale timer from touching freed memory.
 *
 * Over max_connections a connection is still read, but with a short
 * deadline, and its request is answered 503 with Retry-After and
 * Connection: close, so the refusal is an HTTP answer and not a reset.
 * The probes (/healthz, /readyz, /metrics) are the exception: they are
 * answered on such a connection as on any other (then it is closed), so a
 * connection flood never makes a liveness check fail.
 *
 * libevent 2.1 answers some requests itself, with an HTML page and no hook
 * (an unparsable request line or header, a bad Content-Length or chunked
 * body, a declared length over the memory guard, an unknown method, an
 * Expect it does not support). Every answer of sluice's is written while
 * its request is marked busy here; so bytes that reach an idle
 * connection's output can only be one of evhttp's own error pages (or its
 * 100 Continue, which is left alone). A callback on the output buffer
 * notices them, and an event that runs before the socket is next writable
 * replaces the page with sluice's JSON answer for the same status.
 *
 * HTTPS connections are the same struct over an OpenSSL bufferevent
 * (BUFFEREVENT_SSL_ACCEPTING), counted against the same cap: the deadline
 * runs from accept, so a client that never completes the handshake, or
 * completes it and sends nothing, is closed at request_timeout_s like a
 * silent plain one (2 s when over the cap). evhttp sees only plaintext,
 * so the error-page swap works unchanged; the 408 at the deadline goes
 * through the connection's SSL.
 *
 * Per request the cost is two array look-ups by descriptor and a clock
 * read (bench/callgrind_requests.py counts it). Everything runs on the
 * loop thread. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "../common/log.h"
#include "../common/util.h"
#include "conn.h"
#include "ingest.h"
#include "metrics.h"

/* How long a refused connection may take to send the request it is
 * refused on. */
#define REFUSED_DEADLINE_MS 2000

struct conn {
	struct ingest *ing;
	struct bufferevent *bev;	 /* evhttp's; one reference is ours */
	struct evhttp_connection *evcon; /* NULL until attached */
	struct event *timer;		 /* checks the deadline */
	int64_t deadline_ms;		 /* monotonic; unused while busy */
	evutil_socket_t fd;
	bool attached; /* evhttp's connection is known and ours is hooked */
	bool busy; /* a request is with sluice: no deadline until answered */
	double started_s; /* when that request was read whole */
	bool refused;	  /* over max_connections: answered 503 */
	bool tls;	  /* an OpenSSL bufferevent */
	bool replaced;	  /* swapping evhttp's error page */
	struct evbuffer_cb_entry *watch; /* on the output: evhttp's errors */
	struct event *replace_ev;	 /* replaces one; made when needed */
	struct conn *prev, *next;	 /* every open one, for shutdown */
};

static void conn_release(struct conn *c)
{
	struct ingest *ing = c->ing;

	if (c->fd >= 0 && c->fd < ing->conn_slots &&
	    ing->conn_by_fd[c->fd] == c)
		ing->conn_by_fd[c->fd] = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		ing->conn_list = c->next;
	if (c->next)
		c->next->prev = c->prev;
	ing->conns--;
	if (c->refused)
		ing->conns_refused_open--;
	evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->watch);
	if (c->replace_ev)
		event_free(c->replace_ev);
	event_free(c->timer);
	bufferevent_decref(c->bev);
	free(c);
}

/* A TLS connection closing before its handshake completed (plain HTTP
 * to the HTTPS port, an old protocol or cipher, a scanner, a client that
 * gave up): counted, and said at most once a second with OpenSSL's
 * reason, since any client can cause it. */
static void conn_tls_failed(struct conn *c)
{
	struct ingest *ing = c->ing;
	SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
	unsigned long err = bufferevent_get_openssl_error(c->bev);
	const char *why = err ? ERR_reason_error_string(err) : NULL;

	if (!ssl || SSL_is_init_finished(ssl))
		return;
	while (bufferevent_get_openssl_error(c->bev))
		; /* the rest of the queue */
	ing->m.tls_handshake_failures++;
	if (util_mono_ms() - ing->tls_failed_logged_ms < 1000)
		return;
	ing->tls_failed_logged_ms = util_mono_ms();
	log_info("TLS handshake failed on connection %d: %s (%llu so far)",
		 (int)c->fd,
		 why ? why : "closed by the client or at the deadline",
		 (unsigned long long)ing->m.tls_handshake_failures);
}

/* evhttp's close callback (loop thread): the connection is going away. */
static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct conn *c = arg;

	(void)evcon;
	if (c->tls)
		conn_tls_failed(c);
	conn_release(c);
}

static void conn_wait(struct conn *c, int64_t ms)
{
	struct timeval tv = util_ms_tv(ms);

	evtimer_add(c->timer, &tv);
}

/* Grows conn_by_fd to have a slot for fd. */
static void conn_slot(struct ingest *ing, evutil_socket_t fd)
{
	int n = ing->conn_slots ? ing->conn_slots : 1024;
	struct conn **grown;

	if (fd < ing->conn_slots)
		return;
	while (n <= fd)
		n *= 2;
	grown = xrealloc(ing->conn_by_fd, (size_t)n * sizeof(*grown));
	memset(grown + ing->conn_slots, 0,
	       (size_t)(n - ing->conn_slots) * sizeof(*grown));
	ing->conn_by_fd = grown;
	ing->conn_slots = n;
}

/* The deadline passed with no whole request read: a 408 if part of one is
 * waiting (in evhttp's input or the socket's) and nothing else is being
 * written, then the connection is closed; an idle one is just closed.
 * (Bytes evhttp has already parsed are not visible here; noting every
 * request's first bytes would cost an evbuffer callback per request, for
 * a 408 a slow sender rarely reads.) The kernel's unread input is drained
 * first so that the close is a FIN the client can read the 408 before,
 * not a reset that discards it. */
static void conn_expire(struct conn *c)
{
	struct ingest *ing = c->ing;
	char sink[4096];
	/* Over TLS the socket holds ciphertext: only what was decrypted
	 * (the input, and what OpenSSL decrypted but has not handed over)
	 * is a request begun, and only once the handshake is done. */
	SSL *ssl = c->tls ? bufferevent_openssl_get_ssl(c->bev) : NULL;
	bool ready = !c->tls || (ssl && SSL_is_init_finished(ssl));
	bool begun =
	    ready &&
	    (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 ||
	     (ssl ? SSL_pending(ssl) > 0
		  : recv(c->fd, sink, 1, MSG_PEEK | MSG_DONTWAIT) > 0));

	ing->m.request_timeouts++;
	if (begun && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		char answer[1024];
		size_t n = ing->conn_error(ing, 408, answer, sizeof(answer));

		/* The bufferevent's output is empty, so the SSL is between
		 * records: writing through it directly sends one record of
		 * its own now, as the plain send does, rather than after the
		 * connection is gone. */
		if ((ssl ? SSL_write(ssl, answer, (int)n)
			 : send(c->fd, answer, n,
				MSG_NOSIGNAL | MSG_DONTWAIT)) > 0)
			metrics_response(ing, NULL, 408);
		ERR_clear_error();
	}
	for (int i = 0; i < 16; i++)
		if (recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT) <= 0)
			break;
	log_debug("closed connection %d: no whole request within the deadline",
		  (int)c->fd);
	evhttp_connection_free(c->evcon); /* calls conn_closed: c is gone */
}

/* Loop event, activated by conn_watch in the same loop turn evhttp wrote
 * its error page, so before the socket can take any of it: the page is
 * swapped for sluice's JSON answer with the same status. evhttp closes the
 * connection once its output is written, as it would have. */
static void handle_replace(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char head[16], answer[1024];
	int status = 0;
	size_t n;

	(void)fd;
	(void)what;
	/* "HTTP/1.1 400 Bad Request": evhttp's own status line. */
	c->replaced = false;
	if (evbuffer_copyout(out, head, 12) != 12 ||
	    memcmp(head, "HTTP/1.", 7) != 0)
		return;
	for (int i = 9; i < 12; i++) {
		if (head[i] < '0' || head[i] > '9')
			return;
		status = status * 10 + (head[i] - '0');
	}
	c->replaced = true;
	n = c->ing->conn_error(c->ing, status, answer, sizeof(answer));
	evbuffer_drain(out, evbuffer_get_length(out));
	evbuffer_add(out, answer, n); /* conn_watch skips it: replaced */
	c->replaced = false;
}

/* Output buffer callback (loop thread), on every change to what the
 * connection is to send: only its first bytes written while no request
 * of sluice's is being answered are looked at. */
static void conn_watch(struct evbuffer *buf,
		       const struct evbuffer_cb_info *info, void *arg)
{
	struct conn *c = arg;
	char head[13];

	if (c->busy || c->replaced || info->orig_size != 0 ||
	    info->n_added == 0 || evbuffer_copyout(buf, head, 12) != 12)
		return;
	head[12] = '\0';
	if (memcmp(head, "HTTP/1.", 7) != 0 || strcmp(head + 8, " 100") == 0)
		return; /* a 100 Continue: the body follows */
	c->replaced = true;
	if (!c->replace_ev)
		c->replace_ev =
		    event_new(c->ing->base, -1, 0, handle_replace, c);
	if (!c->replace_ev)
		abort();
	event_active(c->replace_ev, EV_TIMEOUT, 0);
}

/* The connection's timer (loop thread): right after accept it attaches to
 * evhttp's connection; afterwards it is the request deadline. */
static void conn_timer(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	bufferevent_data_cb rcb, wcb;
	bufferevent_event_cb ecb;
	void *cbarg;

	(void)fd;
	(void)what;
	/* evhttp clears the callbacks when it frees the bufferevent; only our
	 * reference keeps it. Its close callback runs first, so this is only
	 * a connection evhttp dropped before we could hook it. */
	bufferevent_getcb(c->bev, &rcb, &wcb, &ecb, &cbarg);
	if (!ecb) {
		conn_release(c);
		return;
	}
	if (!c->attached) {
		int64_t ms = c->ing->conn_timeout_ms;

		c->attached = true;
		c->evcon = cbarg; /* evhttp's callback argument */
		c->fd = bufferevent_getfd(c->bev);
		evhttp_connection_set_closecb(c->evcon, conn_closed, c);
		if (c->fd >= 0) {
			conn_slot(c->ing, c->fd);
			c->ing->conn_by_fd[c->fd] = c;
		}
		/* The OpenSSL bufferevent writes an answer as one TLS record
		 * per buffer chain (headers, then body), each its own send:
		 * with Nagle the second waits for the client's delayed ACK,
		 * 40 ms per answer. Plain answers go in one writev. */
		if (c->tls && c->fd >= 0) {
			int one = 1;

			setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one,
				   sizeof(one));
		}
		if (c->refused && ms > REFUSED_DEADLINE_MS)
			ms = REFUSED_DEADLINE_MS;
		c->deadline_ms = util_mono_ms() + ms;
		conn_wait(c, ms);
		return;
	}
	if (c->busy) { /* answered later: look again a timeout from now */
		conn_wait(c, c->ing->conn_timeout_ms);
		return;
	}
	{
		int64_t left = c->deadline_ms - util_mono_ms();

		if (left > 0)
			conn_wait(c, left);
		else
			conn_expire(c);
	}
}

/* The struct beside a new connection's bufferevent (evhttp's, which it
 * gives the socket to once this returns). */
static struct bufferevent *conn_make(struct ingest *ing,
				     struct event_base *base,
				     struct bufferevent *bev, bool tls)
{
	struct conn *c = xcalloc(1, sizeof(*c));

	c->ing = ing;
	c->fd = -1;
	c->tls = tls;
	c->bev = bev;
	c->timer = evtimer_new(base, conn_timer, c);
	if (!c->bev || !c->timer)
		abort();
	bufferevent_incref(c->bev);
	c->watch =
	    evbuffer_add_cb(bufferevent_get_output(c->bev), conn_watch, c);
	if (!c->watch)
		abort();
	if (ing->conns - ing->conns_refused_open >= ing->max_connections) {
		c->refused = true;
		ing->conns_refused_open++;
		ing->m.connections_refused++;
		if (util_mono_ms() - ing->refused_logged_ms >= 1000) {
			ing->refused_logged_ms = util_mono_ms();
			log_warn(
			    "%d connections open (max_connections): refusing new ones with 503 (%llu so far)",
			    ing->conns,
			    (unsigned long long)ing->m.connections_refused);
		}
	}
	ing->conns++;
	c->next = ing->conn_list;
	if (c->next)
		c->next->prev = c;
	ing->conn_list = c;
	/* evhttp sets the bufferevent's callbacks (its argument is the
	 * connection) once this returns: attach on the next turn. */
	event_active(c->timer, EV_TIMEOUT, 0);
	return c->bev;
}

/* evhttp, on the loop thread, for every accepted connection: its
 * bufferevent, made as evhttp would, with our struct beside it. */
static struct bufferevent *conn_new(struct event_base *base, void *arg)
{
	return conn_make(arg, base, bufferevent_socket_new(base, -1, 0), false);
}

/* The same for an HTTPS listener: the server side of a TLS handshake,
 * with the certificate in force now (a reload changes it for the
 * connections after). The SSL, and the socket, go with the bufferevent
 * (BEV_OPT_CLOSE_ON_FREE; evhttp then leaves the socket to it). */
static struct bufferevent *conn_new_tls(struct event_base *base, void *arg)
{
	struct ingest *ing = arg;
	SSL *ssl = SSL_new(ing->tls_ctx);
	struct bufferevent *bev;

	/* Returning NULL would make evhttp build a plain bufferevent: a
	 * listener meant for TLS must never speak plaintext. */
	if (!ssl)
		abort();
	bev = bufferevent_openssl_socket_new(
	    base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (!bev)
		abort();
	/* A client closing without close_notify ends the stream like EOF
	 * on plain HTTP, not as an error. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return conn_make(ing, base, bev, true);
}

static struct conn *conn_of(struct ingest *ing, struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev;
	evutil_socket_t fd;
	struct conn *c;

	if (!evcon)
		return NULL;
	bev = evhttp_connection_get_bufferevent(evcon);
	fd = bufferevent_getfd(bev);
	if (fd < 0 || fd >= ing->conn_slots)
		return NULL;
	c = ing->conn_by_fd[fd];
	return c && c->bev == bev ? c : NULL;
}

bool conn_request(struct ingest *ing, struct evhttp_request *req)
{
	struct conn *c = conn_of(ing, req);

	if (!c)
		return true;
	c->busy = true;
	c->started_s = util_mono_s();
	return !c->refused;
}

double conn_started(const struct conn *c)
{
	return c->started_s;
}

struct conn *conn_answering(struct ingest *ing, struct evhttp_request *req)
{
	struct conn *c = conn_of(ing, req);

	return c && c->busy ? c : NULL;
}

void conn_answered(struct ingest *ing, struct conn *c)
{
	if (!c)
		return;
	c->busy = false;
	c->deadline_ms = util_mono_ms() + ing->conn_timeout_ms;
}

void conn_apply_settings(struct ingest *ing)
{
	struct rlimit rl;
	int cap = 10000;

	ing->conn_timeout_ms = (int64_t)ing->cfg.request_timeout_s * 1000;
	if (ing->cfg.max_connections > 0) {
		ing->max_connections = ing->cfg.max_connections;
		return;
	}
	/* Room below the descriptor limit for Kafka's sockets, the log and
	 * the spare descriptor, so refusing stays possible. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
	    rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)cap + 64)
		cap = rl.rlim_cur > 128 ? (int)rl.rlim_cur - 64 : 64;
	ing->max_connections = cap;
}

void conn_setup(struct ingest *ing, conn_error_fn error)
{
	ing->conn_error = error;
}

void conn_listen(struct ingest *ing, struct evhttp *http, bool tls)
{
	evhttp_set_bevcb(http, tls ? conn_new_tls : conn_new, ing);
}

void conn_cleanup(struct ingest *ing)
{
	/* evhttp_free closed every connection it knew, and so freed their
	 * conns; left are those accepted in the loop's last turn. */
	while (ing->conn_list)
		conn_release(ing->conn_list);
	free(ing->conn_by_fd);
	ing->conn_by_fd = NULL;
	ing->conn_slots = 0;
}
