/* The checks both daemons run on a record's body, so nothing that got a
 * 202 from sluice-ingest is refused by sluice-worker: the JSON itself (no
 * NUL, no duplicate key) and the transcript kind's fields, in bytes. */
#ifndef SLUICE_VALIDATE_H
#define SLUICE_VALIDATE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "kinds.h"

#define TRANSCRIPT_EVENT_READY "application.transcription_ready"
#define TRANSCRIPT_CONVERSATION_MAX 256 /* bytes */
#define TRANSCRIPT_EVENT_TYPE_MAX 128
#define TRANSCRIPT_ROLE_MAX 64
#define TRANSCRIPT_ID_MAX 256
#define TRANSCRIPT_CONTENT_MAX (1 << 24)
#define TRANSCRIPT_INT_ID_LIMIT 1e15 /* |id| below this, exact in a double */

/* text[0..len) parsed as one JSON value with nothing but white space
 * after it (cJSON alone stops at the end of the value and ignores the
 * rest); NULL when it is not, with *bad_at (when not NULL) the byte where
 * it went wrong. */
cJSON *json_parse_whole(const char *text, size_t len, long *bad_at);

/* A body cJSON parsed from text[0..len): refuses what cJSON would let
 * through silently, a \u0000 escape (C strings would cut the text there)
 * and an object with the same key twice (cJSON keeps both, readers take
 * the first, the raw body goes downstream). */
bool json_check(const char *text, size_t len, const cJSON *doc, char *path,
		size_t pathsz, char *msg, size_t msgsz)
    __attribute__((warn_unused_result));

/* The transcript kind's fields as the worker stores them. */
bool transcript_validate(const cJSON *doc, char *path, size_t pathsz, char *msg,
			 size_t msgsz) __attribute__((warn_unused_result));

/* Its row in the kinds table: keyed by conversation_id. */
extern const struct kind transcript_kind;

#endif
