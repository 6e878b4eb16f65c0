/* What both daemons' status and admin routes share: who may call them
 * (loopback, or a bearer token read from admin_token_file), the body of
 * PUT /admin/log-level, and the effective configuration as JSON with its
 * secrets masked. Knows nothing of either daemon. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

/* The token in path, trailing whitespace cut; false (errstr) when the
 * file cannot be read or holds nothing. The caller frees *token. */
bool admin_token_load(const char *path, char **token, char *errstr,
		      size_t errstr_size) __attribute__((warn_unused_result));

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
bool admin_peer_loopback(const struct sockaddr *sa);

/* NULL when the caller may use an admin route, else the error code of
 * the 401: "admin_token_invalid" (an Authorization header that does not
 * carry the token: refused from any address) or "admin_token_required"
 * (no header, not loopback). token NULL: only loopback may. The compare
 * runs in constant time over SHA-256 digests, so neither the token's
 * bytes nor its length show in the timing. */
const char *admin_authorize(const struct sockaddr *peer,
			    const char *authorization, const char *token);

/* A log level from "debug|info|warn|error" or {"level": "..."} (blanks
 * around either allowed); -1 when neither. */
int admin_parse_level(const char *body, size_t len);

/* Every setting of table in target, plus the kv pass-through, as
 * {"key": {"value": ..., "runtime": bool}}: numbers as numbers, secrets
 * masked as --check-config masks them; "runtime" is the table's flag
 * (a reload applies the key), false for the pass-through. */
cJSON *admin_config_json(const struct cfg_setting *table, const void *target,
			 const struct cfg_kv *kv);

#endif
