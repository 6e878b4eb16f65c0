/* libFuzzer target: whatever a client sends over one connection (request
 * line, headers, body), through libevent's parser and every sluice-ingest
 * handler, against librdkafka's mock cluster. Built with clang
 * -fsanitize=fuzzer,address,undefined; `make fuzz` runs it longer. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../common/log.h"
#include "../../common/util.h"
#include "../../ingest/http.h"
#include "../../ingest/ingest.h"
#include "../../ingest/pending.h"
#include "../../ingest/publish.h"
#include "../../ingest/verify.h"

static struct ingest ing;
static int port;

static const char CONFIG[] =
    "topic = fuzz\n"
    "topic_partitions = 0\n"
    "delivery_timeout_ms = 2000\n"
    "max_body_bytes = 65536\n"
    "request_timeout_s = 1\n"
    "kafka.test.mock.num.brokers = 1\n"
    "source.t.kind = transcript\n"
    "source.t.signature = none\n"
    "source.s.kind = transcript\n"
    "source.s.signature = standard-webhooks\n"
    "source.s.secret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
    "source.c.kind = campaign\n"
    "source.c.signature = none\n"
    "source.l.kind = lead_updated\n"
    "source.l.signature = none\n"
    "source.w.kind = chat\n"
    "source.w.signature = none\n"
    "source.w.verify_token = tok\n"
    "source.m.kind = chat\n"
    "source.m.signature = meta\n"
    "source.m.secret = s3cret\n"
    "source.r.kind = transcript\n"
    "source.r.signature = none\n"
    "source.r.rate = 5/s\n";

static void setup(void)
{
	char path[] = "/tmp/sluice-fuzz-XXXXXX";
	char err[1024];
	int fd = mkstemp(path);
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);

	if (fd < 0 || write(fd, CONFIG, sizeof(CONFIG) - 1) < 0)
		abort();
	close(fd);
	{
		/* a free loopback port for the listener */
		int s = socket(AF_INET, SOCK_STREAM, 0);
		char listen[64];

		sa = (struct sockaddr_in){.sin_family = AF_INET};
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
		    getsockname(s, (struct sockaddr *)&sa, &sl) != 0)
			abort();
		close(s);
		snprintf(listen, sizeof(listen), "127.0.0.1:%d",
			 ntohs(sa.sin_port));
		setenv("SLUICE_INGEST_LISTEN", listen, 1);
	}
	setenv("SLUICE_SCHEMA_DIR", SCHEMA_DIR, 1);
	if (!ingest_config_load(&ing.cfg, path, err, sizeof(err))) {
		fprintf(stderr, "fuzz config: %s\n", err);
		abort();
	}
	unlink(path);
	log_setup("fuzz", LOG_ERROR, false);
	if (!verify_setup())
		abort();
	ing.spare_fd = -1;
	ing.base = event_base_new();
	ing.delivered = pending_delivered;
	if (!publish_setup(&ing, err, sizeof(err)) ||
	    !http_setup(&ing, err, sizeof(err))) {
		fprintf(stderr, "fuzz setup: %s\n", err);
		abort();
	}
	sl = sizeof(sa);
	if (getsockname(evhttp_bound_socket_get_fd(ing.bound),
			(struct sockaddr *)&sa, &sl) != 0)
		abort();
	port = ntohs(sa.sin_port);
}

/* One connection: send everything, half-close, serve until the daemon
 * closes or ~200 ms pass. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	char buf[4096];
	int fd, rounds = 0;
	size_t off = 0;

	if (!ing.base)
		setup();
	fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		abort();
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	while (rounds++ < 200) {
		struct pollfd p = {fd, POLLIN, 0};
		ssize_t n;

		if (off < size) {
			n = send(fd, data + off, size - off, MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
			if (off == size)
				shutdown(fd, SHUT_WR);
		} else if (size == 0 && rounds == 1) {
			shutdown(fd, SHUT_WR);
		}
		event_base_loop(ing.base, EVLOOP_NONBLOCK);
		if (poll(&p, 1, 1) > 0) {
			n = recv(fd, buf, sizeof(buf), 0);
			if (n == 0 || (n < 0 && errno != EAGAIN))
				break;
		}
	}
	close(fd);
	/* let the daemon notice the close */
	event_base_loop(ing.base, EVLOOP_NONBLOCK);
	return 0;
}
