/* One Redis connection on the worker's event_base, the layer every service
 * that talks to Redis shares (invalidation, lead contexts, the composer's
 * model cache): connected on first use (AUTH and SELECT first), dropped
 * on an error or a reply overdue by timeout_ms, and connected again after
 * a capped back-off with jitter. A caller never blocks and never sees a
 * half-open connection: a command either is sent or is refused at once. */
#ifndef SLUICE_REDISCONN_H
#define SLUICE_REDISCONN_H

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

struct rconn;

/* reply is NULL when the command failed: the connection dropped or the
 * reply is overdue (the connection is then dropped too). Called once per
 * command that rconn_command() accepted, on the event_base, except after
 * rconn_destroy(). */
typedef void (*rconn_reply_fn)(void *arg, const redisReply *reply);

/* url: redis://[[user]:password@]host[:port][/db]; password, when not
 * NULL, is the one AUTH sends (redis_password_file's, the URL then holds
 * none). who names the user of the connection in log lines ("cache",
 * "lead contexts"). */
struct rconn *rconn_new(struct event_base *base, const char *url,
			const char *password, int timeout_ms, const char *who,
			char *errstr, size_t errstr_size);
void rconn_destroy(struct rconn *r);

/* Sends one command (argv form; argvlen NULL for C strings). false: not
 * connected and not connectable now (in back-off): fn will not be called.
 * A command sent while the connection is still being made is queued and
 * sent when it is up. */
bool rconn_command(struct rconn *r, rconn_reply_fn fn, void *arg, int argc,
		   const char **argv, const size_t *argvlen);
/* Connected (or connecting) and not in back-off. */
bool rconn_up(const struct rconn *r);
/* Replies still awaited. */
int rconn_pending(const struct rconn *r);
/* The last error, "" if none (never contains the password). */
const char *rconn_error(const struct rconn *r);

/* The pieces underneath, for a client that keeps its own connection (the
 * /readyz probe). redis://[[user]:password@]host[:port][/db] */
struct redis_addr {
	char *host;
	int port;
	int db;
	char *user;	/* optional */
	char *password; /* never logged */
};

bool redis_addr_parse(const char *url, struct redis_addr *a, char *errstr,
		      size_t errstr_size) __attribute__((warn_unused_result));
void redis_addr_free(struct redis_addr *a);
/* The password AUTH sends, in place of the URL's; NULL keeps the URL's. */
void redis_addr_set_password(struct redis_addr *a, const char *password);

/* A hiredis connection on the event_base, AUTH and SELECT queued first. */
redisAsyncContext *redis_async_open(struct event_base *base,
				    const struct redis_addr *a, void *data,
				    redisConnectCallback *on_connect,
				    redisDisconnectCallback *on_disconnect,
				    char *errstr, size_t errstr_size);

#endif
