/* Key templates: placeholders, patterns, glob escaping of ids; the Redis
 * connection layer's failures (refused, overdue, back-off). */
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../worker/cache.h"
#include "../../worker/redisconn.h"
#include "check.h"

struct got {
	int calls, nulls;
};

static void got_cb(void *arg, const redisReply *r)
{
	struct got *g = arg;

	g->calls++;
	g->nulls += r == NULL;
}

/* A port that completes handshakes and never answers (a stopped Redis). */
static int mute_listener(int *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    listen(fd, 16) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		return -1;
	*port = ntohs(a.sin_port);
	return fd;
}

static void test_rconn(struct event_base *base)
{
	char err[256], url[64];
	const char *ping[1] = {"PING"};
	struct got g = {0};
	struct rconn *r;
	int port = 0, fd;

	/* Refused: every command accepted is answered NULL, then the
	 * back-off refuses at once, and the error is there for /readyz. */
	r = rconn_new(base, "redis://u:secret@127.0.0.1:1/0", NULL, 200, "test",
		      err, sizeof(err));
	CHECK(r != NULL, "%s", err);
	CHECK(rconn_up(r), "not up before the first use");
	CHECK(rconn_command(r, got_cb, &g, 1, ping, NULL), "refused at once");
	CHECK(rconn_command(r, got_cb, &g, 1, ping, NULL), "second refused");
	CHECK(rconn_pending(r) == 2, "pending %d", rconn_pending(r));
	while (g.calls < 2)
		event_base_loop(base, EVLOOP_ONCE);
	CHECK(g.nulls == 2, "nulls %d", g.nulls);
	CHECK(rconn_pending(r) == 0, "pending %d", rconn_pending(r));
	CHECK(!rconn_up(r), "up in the back-off");
	CHECK(rconn_error(r)[0] != '\0', "no error");
	CHECK(strstr(rconn_error(r), "secret") == NULL, "%s", rconn_error(r));
	CHECK(!rconn_command(r, got_cb, &g, 1, ping, NULL),
	      "sent in the back-off");
	rconn_destroy(r);
	CHECK(rconn_new(base, "http://x", NULL, 200, "test", err,
			sizeof(err)) == NULL,
	      "non-redis url accepted");

	/* Overdue: the reply never comes; after timeout_ms the command is
	 * answered NULL and the connection is dropped. */
	fd = mute_listener(&port);
	CHECK(fd >= 0, "listener");
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
	r = rconn_new(base, url, NULL, 100, "test", err, sizeof(err));
	CHECK(r != NULL, "%s", err);
	memset(&g, 0, sizeof(g));
	CHECK(rconn_command(r, got_cb, &g, 1, ping, NULL), "refused");
	while (g.calls < 1)
		event_base_loop(base, EVLOOP_ONCE);
	CHECK(g.nulls == 1, "nulls %d", g.nulls);
	CHECK(strstr(rconn_error(r), "no answer") != NULL, "%s",
	      rconn_error(r));
	CHECK(!rconn_up(r), "up after an overdue reply");
	/* Destroyed with a command pending: its callback never runs. */
	usleep(250 * 1000); /* past the back-off (at most 100 ms now) */
	memset(&g, 0, sizeof(g));
	CHECK(rconn_command(r, got_cb, &g, 1, ping, NULL), "no reconnect");
	rconn_destroy(r);
	event_base_loop(base, EVLOOP_NONBLOCK);
	CHECK(g.calls == 0, "called after destroy");
	close(fd);
}

static const struct {
	const char *tmpl, *id, *want;
	bool pattern;
} cases[] = {
    {"messages:{conversation_id}:*", "c1", "messages:c1:*", true},
    {"conversation:{conversation_id}", "c1", "conversation:c1", false},
    {"conversation:{conversation_id}", "a*b", "conversation:a*b", false},
    {"messages:{conversation_id}:*", "a*b?[c]\\",
     "messages:a\\*b\\?\\[c\\]\\\\:*", true},
    {"x:{conversation_id}:{conversation_id}", "q", "x:q:q", false},
    {"static-key", "q", "static-key", false},
};

/* Which patterns join the one walk of the keyspace, and their prefix. */
static const struct {
	const char *pattern, *prefix; /* NULL: scanned on its own */
} prefixes[] = {
    {"messages:c1:*", "messages:c1:"},
    {"messages:a\\*b\\?\\[c\\]\\\\:*", "messages:a*b?[c]\\:"},
    {"x:\\\\*", "x:\\"}, /* an escaped backslash, then the star */
    {"*", ""},
    {"x:\\*", NULL}, /* the star is escaped: an exact key */
    {"a*b*", NULL},
    {"a?*", NULL},
    {"a[bc]*", NULL},
    {"messages:c1", NULL},
    {"", NULL},
    {"trailing\\", NULL},
};

/* A kind's three lists: which op each template gets, the key it makes
 * for an id holding glob characters, and the mode the start-up log tells. */
static const struct {
	const char *scan, *gen, *index;
	size_t n;
	struct {
		const char *key;
		enum cache_op op;
		const char *mode;
	} want[3];
} loads[] = {
    {"messages:{conversation_id}:*",
     "",
     "",
     1,
     {{"messages:a\\*:*", CACHE_PATTERN,
       "messages:{conversation_id}:* by SCAN (walks the keyspace per batch; "
       "see docs/caching.md)"}}},
    {"conversation:{conversation_id}",
     "cache_gen:conversation:{conversation_id}",
     "sluice:keys:conversation:{conversation_id}",
     3,
     {{"conversation:a*", CACHE_KEY,
       "conversation:{conversation_id} by UNLINK (one key)"},
      {"cache_gen:conversation:a*", CACHE_GEN,
       "cache_gen:conversation:{conversation_id} by generation"},
      {"sluice:keys:conversation:a*", CACHE_INDEX,
       "sluice:keys:conversation:{conversation_id} by key index"}}},
    /* Taken literally: a generation key with a "*" is no pattern. */
    {"",
     " g:{conversation_id}:* , ",
     NULL,
     1,
     {{"g:a*:*", CACHE_GEN, "g:{conversation_id}:* by generation"}}},
    {"", "", "", 0, {{NULL, CACHE_KEY, NULL}}},
};

static void test_templates(void)
{
	for (size_t i = 0; i < sizeof(loads) / sizeof(loads[0]); i++) {
		struct cache_templates t;
		struct cache_keys k = {0};

		cache_templates_load(&t, loads[i].scan, loads[i].gen,
				     loads[i].index);
		CHECK(t.n == loads[i].n, "load %zu: %zu templates", i, t.n);
		cache_keys_expand(&k, &t, "{conversation_id}", "a*");
		CHECK(k.n == t.n, "load %zu: %zu keys", i, k.n);
		for (size_t j = 0; j < t.n && j < loads[i].n; j++) {
			char *mode = cache_template_mode(&t.v[j]);

			CHECK_STR(k.v[j].key, loads[i].want[j].key, "key");
			CHECK(k.v[j].op == loads[i].want[j].op,
			      "load %zu/%zu: op %d", i, j, (int)k.v[j].op);
			CHECK_STR(mode, loads[i].want[j].mode, "mode");
			/* Stored in the outbox and read back as the same op. */
			{
				enum cache_op back = CACHE_PATTERN;

				CHECK(cache_op_parse(cache_op_name(k.v[j].op),
						     &back) &&
					  back == k.v[j].op,
				      "op %d round trip", (int)k.v[j].op);
			}
			free(mode);
		}
		cache_keys_free(&k);
		cache_templates_clear(&t);
	}
	{
		enum cache_op op = CACHE_KEY;

		CHECK(cache_op_parse("bump", &op) && op == CACHE_BUMP, "bump");
		CHECK(cache_op_parse("key", &op) && op == CACHE_KEY, "key");
		/* A newer worker's op is not guessed to be a key. */
		CHECK(!cache_op_parse("nonsense", &op), "unknown op");
	}
}

int main(void)
{
	char err[128];
	struct cache *c;
	struct event_base *base;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool pattern = !cases[i].pattern;
		char *got = cache_expand(cases[i].tmpl, "{conversation_id}",
					 cases[i].id, &pattern);

		CHECK_STR(got, cases[i].want, cases[i].tmpl);
		CHECK(pattern == cases[i].pattern, "case %zu pattern flag", i);
		free(got);
	}
	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		char *got = cache_prefix_of(prefixes[i].pattern);

		if (prefixes[i].prefix)
			CHECK_STR(got, prefixes[i].prefix, prefixes[i].pattern);
		else
			CHECK(got == NULL, "%s: prefix %s", prefixes[i].pattern,
			      got);
		free(got);
	}
	test_templates();
	base = event_base_new();
	test_rconn(base);
	c = cache_new(base, "redis://127.0.0.1:1/0", NULL, 50, err,
		      sizeof(err));
	CHECK(c != NULL, "%s", err);
	CHECK(cache_new(base, "http://x", NULL, 50, err, sizeof(err)) == NULL,
	      "non-redis url accepted");
	/* Nothing listens on port 1: the invalidation fails (the caller
	 * keeps the keys owed, in PostgreSQL), each key named once however
	 * often a batch names it, and nothing is kept in memory. */
	{
		char *tmpl[] = {(char *)"a:{conversation_id}",
				(char *)"m:{conversation_id}:*"};
		struct cache_keys k = {0};

		cache_keys_add(&k, tmpl, 2, "{conversation_id}", "c1");
		cache_keys_add(&k, tmpl, 2, "{conversation_id}", "c2");
		cache_keys_add(&k, tmpl, 2, "{conversation_id}", "c1");
		cache_keys_bump(&k, "v:c1");
		CHECK(k.n == 7, "keys %zu", k.n);
		CHECK(cache_invalidate(c, &k) == -1, "invalidate succeeded");
		CHECK(k.n == 5, "unique keys %zu", k.n);
		CHECK(cache_pending(c) == 0, "pending %zu", cache_pending(c));
		CHECK(!cache_ping(c), "ping answered");
		cache_set_owed(c, 5);
		CHECK(cache_pending(c) == 5, "owed %zu", cache_pending(c));
		cache_keys_free(&k);
	}
	/* URLs: credentials, database, defaults. */
	{
		struct redis_addr a;

		CHECK(redis_addr_parse("redis://u:p%40@h:1234/3", &a, err,
				       sizeof(err)),
		      "%s", err);
		CHECK_STR(a.user, "u", "user");
		CHECK_STR(a.password, "p%40", "password");
		CHECK_STR(a.host, "h", "host");
		CHECK(a.port == 1234 && a.db == 3, "port %d db %d", a.port,
		      a.db);
		redis_addr_free(&a);
		CHECK(redis_addr_parse("redis://h", &a, err, sizeof(err)), "%s",
		      err);
		CHECK(a.port == 6379 && a.db == 0 && !a.password, "defaults");
		redis_addr_free(&a);
		CHECK(!redis_addr_parse("redis://:0", &a, err, sizeof(err)),
		      "empty host accepted");
	}
	cache_destroy(c);
	event_base_free(base);
	return check_done("test_cache");
}
