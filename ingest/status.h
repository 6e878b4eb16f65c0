/* sluice-ingest's GET /status and PUT /admin/log-level, for loopback
 * clients or the bearer token of admin_token_file (common/admin.h). */
#ifndef SLUICE_INGEST_STATUS_H
#define SLUICE_INGEST_STATUS_H

#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>

struct ingest;

/* Reads admin_token_file (false: it cannot be read, errstr says why). */
bool status_setup(struct ingest *ing, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
void status_cleanup(void);
/* /status or a path under /admin/: status_handle answers it. */
bool status_path(const char *path);
void status_handle(struct ingest *ing, struct evhttp_request *req,
		   const char *path);

#endif
