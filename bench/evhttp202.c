/* The ceiling the mandated stack sets for sluice-ingest: a bare evhttp
 * server, built from the same libevent, that reads each request whole and
 * answers 202 with a small JSON body, doing nothing else (no checks, no
 * Kafka). make bench measures sluice-ingest against it in the same run.
 *
 * Usage: evhttp202 PORT   (listens on 127.0.0.1:PORT until killed) */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>

static const char BODY[] = "{\"status\":\"accepted\"}\n";

static void answer(struct evhttp_request *req, void *arg)
{
	struct evbuffer *out = arg;

	evhttp_add_header(evhttp_request_get_output_headers(req),
			  "Content-Type", "application/json");
	evbuffer_add_reference(out, BODY, sizeof(BODY) - 1, NULL, NULL);
	evhttp_send_reply(req, 202, "Accepted", out);
}

int main(int argc, char **argv)
{
	struct event_base *base;
	struct evhttp *http;
	struct evbuffer *out;
	int port = argc == 2 ? atoi(argv[1]) : 0;

	if (port <= 0 || port > 65535) {
		fprintf(stderr, "usage: evhttp202 PORT\n");
		return 2;
	}
	base = event_base_new();
	http = base ? evhttp_new(base) : NULL;
	out = evbuffer_new();
	if (!http || !out)
		return 1;
	evhttp_set_max_body_size(http, 4 * 1048576);
	evhttp_set_gencb(http, answer, out);
	if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
		fprintf(stderr, "evhttp202: cannot listen on 127.0.0.1:%d\n",
			port);
		return 1;
	}
	event_base_dispatch(base);
	return 0;
}
