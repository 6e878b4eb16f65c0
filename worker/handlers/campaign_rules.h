/* The rules a campaign message goes through, as pure functions: the run's
 * end time, the inbox, the lead's context, the template, the split. */
#ifndef SLUICE_CAMPAIGN_RULES_H
#define SLUICE_CAMPAIGN_RULES_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/util.h"

enum msg_status { MSG_READY = 0, MSG_FAILED, MSG_PAUSED, MSG_EXPIRED };

extern const char *const msg_status_names[]; /* "ready", ... */

enum inbox_state { INBOX_MISSING = 0, INBOX_DISCONNECTED, INBOX_CONNECTED };

enum lead_ctx {
	LEAD_FOUND = 0,
	LEAD_NOT_FOUND,
	LEAD_UNAVAILABLE,
	LEAD_INVALID
};

struct rule_input {
	int64_t now_ms;
	int64_t end_time_ms;
	enum inbox_state inbox;
	enum lead_ctx lead;
	const cJSON *ctx;  /* the lead's context object when LEAD_FOUND */
	const cJSON *vars; /* the message's vars, or NULL */
	const char *template_text; /* NULL when the model writes it */
	/* A batch with a prompt: its messages, the model's outcome. */
	const char *prompt_system; /* NULL: none */
	const char *prompt_user;   /* NULL: a template batch */
	bool has_model;		   /* a model was named or found */
	const char *composed;	   /* the model's text; NULL: none */
	const char *compose_error; /* why there is none ("compose_...") */
	int max_split_parts;
	int split_max_chars;
};

struct rule_result {
	enum msg_status status;
	char error[300]; /* "" unless failed/paused */
	struct buf text; /* the rendered text */
	size_t n_parts;
	size_t *part_off, *part_len; /* byte ranges of text */
	size_t cap_parts;
};

void rule_result_init(struct rule_result *r);
void rule_result_free(struct rule_result *r);

/* Applies the rules in order; one message's outcome only. */
void campaign_evaluate(const struct rule_input *in, struct rule_result *out);

/* The rules before the text (end time, inbox, lead): true when the
 * message gets as far as its text, i.e. a prompt would be sent. */
bool campaign_precheck(const struct rule_input *in, struct rule_result *out);

/* Renders the prompt's system (into system, "" for none) and user
 * messages; false with out->error "missing_var:<path>" as for a
 * template. */
bool campaign_render_prompt(const struct rule_input *in, struct buf *system,
			    struct buf *user, struct rule_result *out);

/* Renders {{path}} placeholders from ctx (and vars as "vars"). false with
 * the first placeholder that cannot be rendered, as the message's error:
 * "missing_var:<path>" (absent, null, an object or an array) or
 * "inexact_number:<path>" (an integer of magnitude 2^53 or more). */
bool campaign_render(const char *tmpl, const cJSON *ctx, const cJSON *vars,
		     struct buf *out, char *error, size_t error_size);

/* Splits r->text at whitespace into parts of at most max_chars code
 * points (a longer word is cut). */
void campaign_split(struct rule_result *r, int max_chars);

/* Appends the parts as a PostgreSQL text[] literal, escaped for COPY. */
void campaign_parts_copy(const struct rule_result *r, struct buf *b);

#endif
