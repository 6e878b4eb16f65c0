/* The access log: one line per HTTP answer, at info, text or JSON; and the
 * request id every answer carries back in X-Request-Id. */
#ifndef SLUICE_ACCESS_H
#define SLUICE_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

enum access_mode { ACCESS_OFF = 0, ACCESS_TEXT, ACCESS_JSON };

/* NULL-terminated, by enum access_mode: what access_log accepts. */
extern const char *const access_mode_names[];

struct access_entry {
	const char *client; /* peer address */
	const char *method;
	const char *path;
	const char *source; /* NULL: not a webhook */
	int status;
	size_t bytes; /* of the answer's body */
	double ms;    /* from the request read to the answer */
	const char *request_id;
	const char *reason; /* the error code of a refusal; NULL: none */
};

void access_log(int mode, const struct access_entry *e);

/* A request's method as the access line names it ("OTHER" for one evhttp
 * has no name for). */
const char *access_method_name(int evhttp_cmd);

/* An incoming X-Request-Id worth keeping: 1 to 128 printable ASCII
 * characters, no space (it goes in log lines and a Kafka header). */
bool access_request_id_ok(const char *id);

/* The client's id when it is sane, else a new "req_" one, into out
 * (ACCESS_ID_SIZE bytes). */
#define ACCESS_ID_SIZE 129
void access_request_id(const char *incoming, char *out, size_t outsz);

#endif
