/* The rules a campaign message goes through, as pure functions: the run's
 * end time, the inbox, the lead's context, the template, the split. */
#include "campaign_rules.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"

const char *const msg_status_names[] = {"ready", "failed", "paused", "expired",
					NULL};

void rule_result_init(struct rule_result *r)
{
	memset(r, 0, sizeof(*r));
	buf_init(&r->text);
}

void rule_result_free(struct rule_result *r)
{
	buf_free(&r->text);
	free(r->part_off);
	free(r->part_len);
	memset(r, 0, sizeof(*r));
}

/* Looks a dotted path up: "vars." goes to the message's vars, anything
 * else to the context (and, when the context lacks it, to vars). */
static const cJSON *lookup(const cJSON *ctx, const cJSON *vars,
			   const char *path, size_t len)
{
	const cJSON *roots[2] = {ctx, vars};

	if (len >= 5 && memcmp(path, "vars.", 5) == 0) {
		roots[0] = vars;
		roots[1] = NULL;
		path += 5;
		len -= 5;
	}
	for (int r = 0; r < 2; r++) {
		const cJSON *node = roots[r];
		const char *p = path, *end = path + len;

		while (node && p < end) {
			const char *dot = memchr(p, '.', (size_t)(end - p));
			size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
			char name[256];

			if (n == 0 || n >= sizeof(name)) {
				node = NULL;
				break;
			}
			memcpy(name, p, n);
			name[n] = '\0';
			if (cJSON_IsArray(node)) {
				char *e;
				long i = strtol(name, &e, 10);

				node = *e ? NULL
					  : cJSON_GetArrayItem(node, (int)i);
			} else {
				node = cJSON_GetObjectItemCaseSensitive(node,
									name);
			}
			p += n + (dot ? 1 : 0);
		}
		if (node && !cJSON_IsNull(node))
			return node;
	}
	return NULL;
}

/* Integers beyond this are not exact in the double cJSON parsed them
 * into: 12345678901234567890 arrives as 12345678901234567168. */
#define EXACT_INT_LIMIT 9007199254740992.0 /* 2^53 */

/* A number as a message shows it: an integer in full (no exponent, no
 * ".0"), a fraction as cJSON prints it (the shortest text that reads back
 * as the same double). false for an integer past 2^53, whose digits as
 * sent cannot be known any more: it fails rather than render others. */
static bool render_number(const cJSON *v, struct buf *out)
{
	double d = v->valuedouble;
	char *s;

	if (!isfinite(d) || fabs(d) >= EXACT_INT_LIMIT)
		return false;
	if (floor(d) == d) {
		buf_put_int(out, (long long)d); /* -0 becomes 0 */
		return true;
	}
	s = cJSON_PrintUnformatted(v);
	if (!s)
		abort();
	buf_puts(out, s);
	cJSON_free(s);
	return true;
}

bool campaign_render(const char *tmpl, const cJSON *ctx, const cJSON *vars,
		     struct buf *out, char *error, size_t error_size)
{
	const char *p = tmpl, *open;

	buf_reset(out);
	buf_puts(out, "");
	while ((open = strstr(p, "{{")) != NULL) {
		const char *close = strstr(open + 2, "}}");
		const char *a = open + 2, *z;
		const cJSON *v;

		if (!close)
			break;
		z = close;
		while (a < z && (*a == ' ' || *a == '\t'))
			a++;
		while (z > a && (z[-1] == ' ' || z[-1] == '\t'))
			z--;
		buf_append(out, p, (size_t)(open - p));
		v = lookup(ctx, vars, a, (size_t)(z - a));
		if (cJSON_IsString(v)) {
			buf_puts(out, v->valuestring);
		} else if (cJSON_IsBool(v)) {
			buf_puts(out, cJSON_IsTrue(v) ? "true" : "false");
		} else if (cJSON_IsNumber(v)) {
			if (!render_number(v, out)) {
				snprintf(error, error_size,
					 "inexact_number:%.*s", (int)(z - a),
					 a);
				return false;
			}
		} else {
			snprintf(error, error_size, "missing_var:%.*s",
				 (int)(z - a), a);
			return false;
		}
		p = close + 2;
	}
	buf_puts(out, p);
	return true;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
	       c == '\v';
}

/* Code points in s[0..n). */
static size_t cps(const char *s, size_t n)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)s[i] & 0xC0) != 0x80;
	return c;
}

/* Byte length of the first max code points of s[0..n). */
static size_t cp_prefix(const char *s, size_t n, size_t max)
{
	size_t i = 0, c = 0;

	while (i < n) {
		size_t j = i + 1;

		while (j < n && ((unsigned char)s[j] & 0xC0) == 0x80)
			j++;
		if (c + 1 > max)
			break;
		c++;
		i = j;
	}
	return i;
}

static void add_part(struct rule_result *r, size_t off, size_t len)
{
	if (r->n_parts == r->cap_parts) {
		r->cap_parts = r->cap_parts ? r->cap_parts * 2 : 8;
		r->part_off =
		    xrealloc(r->part_off, r->cap_parts * sizeof(size_t));
		r->part_len =
		    xrealloc(r->part_len, r->cap_parts * sizeof(size_t));
	}
	r->part_off[r->n_parts] = off;
	r->part_len[r->n_parts] = len;
	r->n_parts++;
}

void campaign_split(struct rule_result *r, int max_chars)
{
	const char *s = r->text.data ? r->text.data : "";
	size_t n = r->text.len, i = 0, max = (size_t)max_chars;
	size_t ps = 0, pe = 0, pl = 0; /* the part being built */
	bool open = false;

	r->n_parts = 0;
	while (i < n) {
		size_t ws, we, wl, gap;

		while (i < n && is_space(s[i]))
			i++;
		if (i >= n)
			break;
		ws = i;
		while (i < n && !is_space(s[i]))
			i++;
		we = i;
		wl = cps(s + ws, we - ws);
		gap = open ? cps(s + pe, ws - pe) : 0;
		if (open && pl + gap + wl <= max) {
			pe = we;
			pl += gap + wl;
			continue;
		}
		if (open)
			add_part(r, ps, pe - ps);
		open = false;
		/* A word longer than a part is cut at code points. */
		while (wl > max) {
			size_t cut = cp_prefix(s + ws, we - ws, max);

			add_part(r, ws, cut);
			ws += cut;
			wl -= max;
		}
		if (wl > 0) {
			ps = ws;
			pe = we;
			pl = wl;
			open = true;
		}
	}
	if (open)
		add_part(r, ps, pe - ps);
}

bool campaign_precheck(const struct rule_input *in, struct rule_result *out)
{
	const cJSON *lead, *deleted;

	out->error[0] = '\0';
	out->n_parts = 0;
	buf_reset(&out->text);
	if (in->now_ms > in->end_time_ms) {
		out->status = MSG_EXPIRED;
		return false;
	}
	if (in->inbox != INBOX_CONNECTED) {
		out->status = MSG_PAUSED;
		snprintf(out->error, sizeof(out->error), "%s",
			 in->inbox == INBOX_MISSING ? "inbox_missing"
						    : "inbox_disconnected");
		return false;
	}
	out->status = MSG_FAILED;
	if (in->lead == LEAD_UNAVAILABLE) {
		snprintf(out->error, sizeof(out->error), "context_unavailable");
		return false;
	}
	if (in->lead == LEAD_INVALID) {
		snprintf(out->error, sizeof(out->error), "context_invalid");
		return false;
	}
	if (in->lead == LEAD_NOT_FOUND || !in->ctx) {
		snprintf(out->error, sizeof(out->error), "lead_not_found");
		return false;
	}
	lead = cJSON_GetObjectItemCaseSensitive(in->ctx, "lead");
	deleted = cJSON_GetObjectItemCaseSensitive(lead, "deleted_at");
	if (deleted && !cJSON_IsNull(deleted) &&
	    !(cJSON_IsBool(deleted) && cJSON_IsFalse(deleted))) {
		snprintf(out->error, sizeof(out->error), "lead_deleted");
		return false;
	}
	return true;
}

bool campaign_render_prompt(const struct rule_input *in, struct buf *system,
			    struct buf *user, struct rule_result *out)
{
	buf_reset(system);
	buf_reset(user);
	buf_puts(system, "");
	out->status = MSG_FAILED;
	if (in->prompt_system &&
	    !campaign_render(in->prompt_system, in->ctx, in->vars, system,
			     out->error, sizeof(out->error)))
		return false;
	return campaign_render(in->prompt_user, in->ctx, in->vars, user,
			       out->error, sizeof(out->error));
}

void campaign_evaluate(const struct rule_input *in, struct rule_result *out)
{
	if (!campaign_precheck(in, out))
		return;
	if (in->prompt_user) {
		/* The prompt renders (or the message fails missing_var, no
		 * call made), a model is known, and the model wrote it. */
		struct buf sys, user;
		bool ok;

		buf_init(&sys);
		buf_init(&user);
		ok = campaign_render_prompt(in, &sys, &user, out);
		buf_free(&sys);
		buf_free(&user);
		if (!ok)
			return;
		if (!in->has_model) {
			snprintf(out->error, sizeof(out->error), "no_model");
			return;
		}
		if (!in->composed) {
			snprintf(out->error, sizeof(out->error), "%s",
				 in->compose_error ? in->compose_error
						   : "compose_failed:none");
			return;
		}
		buf_puts(&out->text, in->composed);
	} else if (!campaign_render(in->template_text, in->ctx, in->vars,
				    &out->text, out->error,
				    sizeof(out->error))) {
		return;
	}
	campaign_split(out, in->split_max_chars);
	if (out->n_parts == 0) {
		snprintf(out->error, sizeof(out->error), "empty_message");
		return;
	}
	if (out->n_parts > (size_t)in->max_split_parts) {
		snprintf(out->error, sizeof(out->error), "too_many_parts");
		return;
	}
	out->status = MSG_READY;
}

void campaign_parts_copy(const struct rule_result *r, struct buf *b)
{
	char **v = xcalloc(r->n_parts + 1, sizeof(*v));
	struct buf arr;

	/* The parts are ranges of r->text: each is copied to end in a NUL,
	 * then the array literal is escaped for COPY as a whole. */
	for (size_t i = 0; i < r->n_parts; i++)
		v[i] = xstrndup(r->text.data + r->part_off[i], r->part_len[i]);
	buf_init(&arr);
	buf_pg_array(&arr, (const char *const *)v, r->n_parts);
	buf_copy_escape(b, arr.data);
	buf_free(&arr);
	for (size_t i = 0; i < r->n_parts; i++)
		free(v[i]);
	free(v);
}
