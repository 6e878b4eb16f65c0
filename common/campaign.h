/* Campaign batches: the one validation both daemons run, so a batch that
 * got a 202 from sluice-ingest is never refused by sluice-worker. */
#ifndef SLUICE_CAMPAIGN_H
#define SLUICE_CAMPAIGN_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kinds.h"

#define CAMPAIGN_EVENT_TYPE "campaign.batch"
#define LEAD_UPDATED_EVENT_TYPE "lead.updated" /* when the body has none */
#define CAMPAIGN_ID_MAX 256		       /* bytes, for every id */
#define CAMPAIGN_TEMPLATE_MAX 65536 /* bytes, also each prompt text */
#define CAMPAIGN_MODEL_MAX 256	    /* bytes */
#define CAMPAIGN_MAX_TOKENS_MAX 8192
#define CAMPAIGN_TEMPERATURE_MAX 2.0
#define CAMPAIGN_DEFAULT_MAX_PARTS 10
#define CAMPAIGN_DEFAULT_SPLIT_CHARS 1600

struct campaign_message {
	const char *message_id; /* points into the doc or into the text below */
	const char *lead_id;
	const cJSON *vars;	  /* an object, or NULL */
	char message_id_text[24]; /* an integer id as decimal text */
	char lead_id_text[24];
};

/* A parsed batch; its strings point into the cJSON document it came from,
 * which must outlive it. */
struct campaign_batch {
	const char *run_id;
	const char *workspace_id;
	const char *inbox_id;
	const char *end_time;	   /* as sent */
	int64_t end_time_us;	   /* the instant, µs since the epoch, exact */
	int64_t end_time_ms;	   /* the same, rounded toward the past */
	const char *campaign_id;   /* from the body, NULL when absent */
	const char *template_text; /* NULL for a prompt batch */
	/* A batch is rendered from template_text or composed by a model from
	 * the prompt, never both: exactly one of template_text and
	 * prompt_user is set. The prompt's texts hold the same {{path}}
	 * placeholders as a template. */
	const char *prompt_system; /* NULL when absent */
	const char *prompt_user;   /* NULL: no prompt (template batch) */
	const char *model;	   /* NULL when absent */
	int max_tokens;		   /* 0 when absent */
	double temperature;
	bool has_temperature;
	long long run_total;
	int max_split_parts;
	int split_max_chars;
	size_t n_messages;
	struct campaign_message *messages; /* malloc'd */
};

/* One problem with a batch: index is the message's, -1 at the top level. */
struct campaign_error {
	int index;
	char path[96];
	char message[160];
};

/* Parses and checks doc. max_messages 0 = no limit (the worker: the front
 * door's limit may have been higher when the batch was accepted). Fills up
 * to max_errs problems; true when there is none. */
bool campaign_parse(const cJSON *doc, size_t max_messages,
		    struct campaign_batch *out, struct campaign_error *errs,
		    size_t max_errs, size_t *n_errs)
    __attribute__((warn_unused_result));
void campaign_batch_free(struct campaign_batch *b);

/* RFC 3339 date-time with a mandatory offset ("Z" or "+hh:mm"), as µs
 * since the epoch. Refused: an instant outside 0001-01-01T00:00:00Z ..
 * 9999-12-31T23:59:59.999999Z, and a leap second (:60) other than the
 * real ones (23:59:60 UTC on a day of the IERS list), which is kept as
 * 23:59:59.999999. Digits finer than a microsecond are cut (rounded
 * toward the past). On false, *why (if why is not NULL) says what is
 * wrong, as a JSON-path message. */
bool campaign_time_parse_us(const char *s, int64_t *us, const char **why)
    __attribute__((warn_unused_result));

/* The same, in ms since the epoch (rounded toward the past). */
bool campaign_time_parse(const char *s, int64_t *ms)
    __attribute__((warn_unused_result));

/* An instant from campaign_time_parse_us as RFC 3339 in UTC with six
 * fractional digits ("0001-01-01T00:00:00.000000Z"): PostgreSQL reads it
 * into a timestamptz exactly. */
#define CAMPAIGN_TIME_TEXT 64
void campaign_time_format(int64_t us, char out[CAMPAIGN_TIME_TEXT]);

/* A lead_updated event: {"lead_id": "..."} (a string or an integer). */
bool lead_update_parse(const cJSON *doc, const char **lead_id, char text[24],
		       char *path, size_t pathsz, char *msg, size_t msgsz)
    __attribute__((warn_unused_result));

/* Their rows in the kinds table. A campaign batch is keyed by its run and
 * checked whole (every bad item in one answer), with the campaign id of its
 * path; a lead update by its lead. */
extern const struct kind campaign_kind, lead_updated_kind;

#endif
