/* Transcript source events → conversation rows (COPY text) and message
 * rows (COPY binary). */
#ifndef SLUICE_TRANSCRIPT_H
#define SLUICE_TRANSCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/util.h"
#include "../../common/validate.h"
#include "handler.h"

#define TRANSCRIPT_ID_LEN 37 /* "gen-" + 32 hex + NUL */

/* Rows one batch accumulates: conversations in COPY's text format,
 * messages as COPY binary tuples (no header or trailer: pgsink frames each
 * COPY). */
struct transcript_rows {
	struct buf conversations; /* seq, id, source, event_type, status,
				     transcript, received_ms */
	struct buf messages;	  /* conversation_id, external_event_id,
				     position, role, content, created_at */
	size_t n_conversations;
	size_t n_messages;
};

void transcript_rows_init(struct transcript_rows *r);
void transcript_rows_reset(struct transcript_rows *r);
void transcript_rows_free(struct transcript_rows *r);

/* Appends the rows of one record. On false nothing was appended and errstr
 * says why the record can never succeed. *conversation_id gets a malloc'd
 * copy of the conversation id on success. */
bool transcript_handle(const char *value, size_t len, const char *source,
		       int64_t received_ms, int64_t seq,
		       struct transcript_rows *rows, char **conversation_id,
		       char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* The id of a transcript entry that came without one: the same conversation
 * and position always give the same id, so a replay never duplicates. */
void transcript_entry_id(const char *conversation_id, int position,
			 char out[TRANSCRIPT_ID_LEN]);

/* The conversation status an event type sets, or NULL to keep it. */
const char *transcript_status_for(const char *event_type);

extern const struct handler transcript_handler;

#endif
