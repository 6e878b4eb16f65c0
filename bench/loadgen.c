/* Open-loop HTTP load generator for the benchmarks: sends POSTs at a fixed
 * rate whatever the server's speed, and measures each latency from the
 * moment the request was due, so a stall is never hidden (no coordinated
 * omission). Each body gets a fresh conversation id.
 *
 * usage: loadgen HOST PORT PATH RATE SECONDS CONNECTIONS
 * prints: sent, ok (2xx), other, achieved rate, p50/p90/p99/max in ms. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct conn {
	struct evhttp_connection *evcon;
	int busy;
};

static struct event_base *base;
static struct conn *conns;
static struct conn **idle; /* stack of connections with nothing in flight */
static int n_conns, n_idle;
static const char *host, *path;
static double rate, seconds, start;
static long long due, sent, done, ok, other;
static double *lat, *queue_due;
static long long q_head, q_tail, q_cap;
static char hostport[300];
static int pid;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct pending {
	struct conn *c;
	double due;
};

static void dispatch(void);

static void on_done(struct evhttp_request *req, void *arg)
{
	struct pending *p = arg;
	int code = req ? evhttp_request_get_response_code(req) : 0;

	lat[done++] = (now_s() - p->due) * 1000.0;
	if (code >= 200 && code < 300)
		ok++;
	else
		other++;
	p->c->busy = 0;
	idle[n_idle++] = p->c;
	free(p);
	dispatch();
}

static void send_one(struct conn *c, double due_at)
{
	struct evhttp_request *req;
	struct pending *p = malloc(sizeof(*p));
	struct evbuffer *out;

	p->c = c;
	p->due = due_at;
	req = evhttp_request_new(on_done, p);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Host", hostport);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	out = evhttp_request_get_output_buffer(req);
	evbuffer_add_printf(
		out,
		"{\"conversation_id\":\"lg-%d-%lld\",\"event_type\":"
		"\"application.transcription_ready\",\"message_type\":\"application\","
		"\"timestamp\":\"2025-05-01T12:00:00Z\",\"properties\":{\"transcript\":["
		"{\"role\":\"user\",\"content\":\"hello there\"},{\"role\":\"assistant\","
		"\"content\":\"hi, how can I help?\"}]}}",
		pid, sent);
	c->busy = 1;
	sent++;
	evhttp_make_request(c->evcon, req, EVHTTP_REQ_POST, path);
}

static void dispatch(void)
{
	while (n_idle > 0 && q_head < q_tail) {
		send_one(idle[--n_idle], queue_due[q_head % q_cap]);
		q_head++;
	}
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	double t = now_s() - start;
	long long target = (long long)(t * rate);

	(void)fd;
	(void)what;
	(void)arg;
	if (t >= seconds)
		target = (long long)(seconds * rate);
	while (due < target && q_tail - q_head < q_cap) {
		queue_due[q_tail % q_cap] = start + (double)due / rate;
		q_tail++;
		due++;
	}
	dispatch();
	if (t >= seconds && done >= sent && q_head == q_tail)
		event_base_loopexit(base, NULL);
	if (t >= seconds + 30)
		event_base_loopexit(base, NULL); /* give up on stragglers */
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	struct timeval tick = { 0, 200 };
	struct event_config *cfg;
	struct event *ev;
	int port;

	if (argc != 7) {
		fprintf(stderr, "usage: loadgen HOST PORT PATH RATE SECONDS CONNECTIONS\n");
		return 2;
	}
	pid = (int)getpid();
	host = argv[1];
	port = atoi(argv[2]);
	path = argv[3];
	rate = atof(argv[4]);
	seconds = atof(argv[5]);
	n_conns = atoi(argv[6]);
	snprintf(hostport, sizeof(hostport), "%s:%d", host, port);
	q_cap = (long long)(rate * seconds) + 16;
	lat = calloc((size_t)q_cap, sizeof(double));
	queue_due = calloc((size_t)q_cap, sizeof(double));
	/* libevent's default clock is CLOCK_MONOTONIC_COARSE, one tick per
	 * jiffy (4 ms here): requests would leave in bursts every 4 ms and
	 * every latency would carry up to 4 ms of the generator's own. */
	cfg = event_config_new();
	event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	conns = calloc((size_t)n_conns, sizeof(*conns));
	idle = calloc((size_t)n_conns, sizeof(*idle));
	for (int i = 0; i < n_conns; i++) {
		idle[n_idle++] = &conns[i];
		conns[i].evcon = evhttp_connection_base_new(base, NULL, host,
							    (ev_uint16_t)port);
		evhttp_connection_set_timeout(conns[i].evcon, 30);
	}
	ev = event_new(base, -1, EV_PERSIST, on_tick, NULL);
	start = now_s();
	event_add(ev, &tick);
	event_base_dispatch(base);
	qsort(lat, (size_t)done, sizeof(double), cmp);
#define PCT(p) (done ? lat[(long long)((double)(done - 1) * (p))] : 0.0)
	printf("sent %lld ok %lld other %lld rate %.0f p50 %.3f p90 %.3f p99 %.3f max %.3f\n",
	       sent, ok, other, (double)done / (now_s() - start), PCT(0.5), PCT(0.9),
	       PCT(0.99), done ? lat[done - 1] : 0.0);
	return 0;
}
