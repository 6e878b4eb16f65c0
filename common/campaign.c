/* Campaign batches: the one validation both daemons run, so a batch that
 * got a 202 from sluice-ingest is never refused by sluice-worker. */
#include "campaign.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct checker {
	struct campaign_error *errs;
	size_t max, n;
};

static void problem(struct checker *ck, int index, const char *path,
		    const char *msg)
{
	if (ck->n < ck->max) {
		struct campaign_error *e = &ck->errs[ck->n];

		e->index = index;
		snprintf(e->path, sizeof(e->path), "%s", path);
		snprintf(e->message, sizeof(e->message), "%s", msg);
	}
	ck->n++;
}

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/* The inverse of days_from_civil. */
static void civil_from_days(int64_t z, int *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = (int)(yoe + era * 400 + (*m <= 2));
}

static bool digits(const char *s, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return true;
}

/* The UTC days that ended in a positive leap second (23:59:60), from the
 * IERS list (Bulletin C); none has been inserted since 2016-12-31. */
static const struct {
	short y;
	char m, d;
} leap_days[] = {
    {1972, 6, 30},  {1972, 12, 31}, {1973, 12, 31}, {1974, 12, 31},
    {1975, 12, 31}, {1976, 12, 31}, {1977, 12, 31}, {1978, 12, 31},
    {1979, 12, 31}, {1981, 6, 30},  {1982, 6, 30},  {1983, 6, 30},
    {1985, 6, 30},  {1987, 12, 31}, {1989, 12, 31}, {1990, 12, 31},
    {1992, 6, 30},  {1993, 6, 30},  {1994, 6, 30},  {1995, 12, 31},
    {1997, 6, 30},  {1998, 12, 31}, {2005, 12, 31}, {2008, 12, 31},
    {2012, 6, 30},  {2015, 6, 30},  {2016, 12, 31},
};

static bool leap_day(int64_t utc_day)
{
	for (size_t i = 0; i < sizeof(leap_days) / sizeof(leap_days[0]); i++)
		if (days_from_civil(leap_days[i].y, leap_days[i].m,
				    leap_days[i].d) == utc_day)
			return true;
	return false;
}

#define US_PER_S 1000000LL
#define US_PER_DAY (86400LL * US_PER_S)

bool campaign_time_parse_us(const char *s, int64_t *us, const char **why)
{
	static const int mdays[] = {31, 28, 31, 30, 31, 30,
				    31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec, frac_us = 0, oh = 0, om = 0, sign = 0;
	int64_t t;
	const char *p, *dummy;
	bool leap;

	if (!why)
		why = &dummy;
	*why = "must be an RFC 3339 date-time with an offset, e.g. "
	       "2026-11-23T20:00:00+01:00";
	if (strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' ||
	    !digits(s + 5, 2, &mo) || s[7] != '-' || !digits(s + 8, 2, &d) ||
	    (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
	    !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) ||
	    s[16] != ':' || !digits(s + 17, 2, &sec))
		return false;
	p = s + 19;
	if (*p == '.') {
		int n = 0;

		/* Microseconds are kept; finer digits are cut, never rounded
		 * up, so the instant never moves past the one sent (nor into
		 * the next second, day or year). */
		for (p++; *p >= '0' && *p <= '9'; p++, n++)
			if (n < 6)
				frac_us = frac_us * 10 + (*p - '0');
		if (n == 0)
			return false;
		for (; n < 6; n++)
			frac_us *= 10;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p == '-' ? -1 : 1;
		if (!digits(p + 1, 2, &oh) || p[3] != ':' ||
		    !digits(p + 4, 2, &om) || oh > 23 || om > 59)
			return false;
		p += 6;
	} else {
		return false; /* no offset: the instant is unknown */
	}
	if (*p)
		return false;
	leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	if (mo < 1 || mo > 12 || d < 1 ||
	    d > mdays[mo - 1] + (mo == 2 && leap) || h > 23 || mi > 59 ||
	    sec > 60)
		return false;
	/* Whole seconds in UTC, all in integers: exact to the microsecond. */
	t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 +
	    (sec == 60 ? 59 : sec) - sign * (oh * 3600 + om * 60);
	if (sec == 60) {
		/* Only the leap seconds UTC really had: 23:59:60 in UTC (any
		 * offset) on a day of the IERS list. The leap second is kept
		 * as the last microsecond of its minute, so it still sorts
		 * after 23:59:59 and before the next day. */
		int64_t day = (t >= 0 ? t : t - 86399) / 86400;

		if (t - day * 86400 != 86399 || !leap_day(day)) {
			*why = "is a leap second (:60) that UTC never had";
			return false;
		}
		frac_us = (int)(US_PER_S - 1);
	}
	*us = t * US_PER_S + frac_us;
	if (*us < days_from_civil(1, 1, 1) * US_PER_DAY ||
	    *us >= days_from_civil(10000, 1, 1) * US_PER_DAY) {
		*why = "must fall within the years 0001 to 9999 in UTC";
		return false;
	}
	return true;
}

/* Milliseconds, rounded toward the past like the microseconds were. */
static int64_t floor_ms(int64_t us)
{
	return us >= 0 ? us / 1000 : -((-us + 999) / 1000);
}

bool campaign_time_parse(const char *s, int64_t *ms)
{
	int64_t us;

	if (!campaign_time_parse_us(s, &us, NULL))
		return false;
	*ms = floor_ms(us);
	return true;
}

void campaign_time_format(int64_t us, char out[CAMPAIGN_TIME_TEXT])
{
	int64_t day = (us >= 0 ? us : us - (US_PER_DAY - 1)) / US_PER_DAY;
	int64_t rest = us - day * US_PER_DAY;
	int64_t s = rest / US_PER_S;
	int y, m, d;

	civil_from_days(day, &y, &m, &d);
	snprintf(out, CAMPAIGN_TIME_TEXT, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
		 y, m, d, (int)(s / 3600), (int)(s / 60 % 60), (int)(s % 60),
		 (int)(rest % US_PER_S));
}

/* A text field: a non-empty valid UTF-8 string of at most max bytes. */
static const char *text_field(struct checker *ck, const cJSON *o,
			      const char *name, size_t max, bool required,
			      int index, const char *prefix)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	char path[96], msg[160];
	size_t n;

	snprintf(path, sizeof(path), "%s.%s", prefix, name);
	if (!v) {
		if (required)
			problem(ck, index, path, "is required");
		return NULL;
	}
	if (!cJSON_IsString(v)) {
		problem(ck, index, path, "must be a string");
		return NULL;
	}
	n = strlen(v->valuestring);
	if (n == 0) {
		problem(ck, index, path, "must not be empty");
		return NULL;
	}
	if (n > max || !util_utf8_valid(v->valuestring, n)) {
		snprintf(msg, sizeof(msg),
			 "must be valid UTF-8 of at most %zu bytes", max);
		problem(ck, index, path, msg);
		return NULL;
	}
	return v->valuestring;
}

/* An integer field within [lo, hi]; def when absent and not required. */
static bool int_field(struct checker *ck, const cJSON *o, const char *name,
		      long long lo, long long hi, bool required, long long def,
		      long long *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	char path[96], msg[160];

	snprintf(path, sizeof(path), "$.%s", name);
	*out = def;
	if (!v) {
		if (required)
			problem(ck, -1, path, "is required");
		return !required;
	}
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
	    floor(v->valuedouble) != v->valuedouble ||
	    v->valuedouble < (double)lo || v->valuedouble > (double)hi) {
		snprintf(msg, sizeof(msg),
			 "must be an integer from %lld to %lld", lo, hi);
		problem(ck, -1, path, msg);
		return false;
	}
	*out = (long long)v->valuedouble;
	return true;
}

/* An id: a non-empty string, or an integer kept as its decimal text. */
static const char *id_field(struct checker *ck, const cJSON *o,
			    const char *name, int index, char text[24])
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	char path[96];

	snprintf(path, sizeof(path), "$.messages[%d].%s", index, name);
	if (cJSON_IsNumber(v)) {
		if (!isfinite(v->valuedouble) ||
		    floor(v->valuedouble) != v->valuedouble ||
		    fabs(v->valuedouble) >= 9007199254740992.0) {
			problem(ck, index, path,
				"must be a string or an integer below 2^53");
			return NULL;
		}
		snprintf(text, 24, "%lld", (long long)v->valuedouble);
		return text;
	}
	snprintf(path, sizeof(path), "$.messages[%d]", index);
	return text_field(ck, o, name, CAMPAIGN_ID_MAX, true, index, path);
}

struct id_at {
	const char *id;
	int index;
};

/* By id, then by index, so the first of a repeated id comes first. */
static int cmp_id_at(const void *a, const void *b)
{
	const struct id_at *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	return c ? c : (x->index > y->index) - (x->index < y->index);
}

/* message_id is the outbox's key: a batch naming one twice would write one
 * row for two of the run's messages. The ids are compared as stored (an
 * integer as its decimal text), so 7 and "7" are the same id. Every later
 * copy is reported with the path of the first. */
static void check_unique(struct checker *ck, const struct campaign_batch *b)
{
	struct id_at *v = xcalloc(b->n_messages + 1, sizeof(*v));
	size_t n = 0;

	for (size_t i = 0; i < b->n_messages; i++)
		if (b->messages[i].message_id)
			v[n++] =
			    (struct id_at){b->messages[i].message_id, (int)i};
	qsort(v, n, sizeof(*v), cmp_id_at);
	for (size_t k = 1, first = 0; k < n; k++) {
		char path[96], msg[160];

		if (strcmp(v[k].id, v[first].id) != 0) {
			first = k;
			continue;
		}
		snprintf(path, sizeof(path), "$.messages[%d].message_id",
			 v[k].index);
		snprintf(msg, sizeof(msg),
			 "repeats $.messages[%d].message_id: message ids must "
			 "be unique within a batch",
			 v[first].index);
		problem(ck, v[k].index, path, msg);
	}
	free(v);
}

static void check_messages(struct checker *ck, const cJSON *doc,
			   size_t max_messages, struct campaign_batch *out)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(doc, "messages");
	const cJSON *item;
	char msg[160];
	int n, i = 0;

	if (!arr) {
		problem(ck, -1, "$.messages", "is required");
		return;
	}
	if (!cJSON_IsArray(arr)) {
		problem(ck, -1, "$.messages", "must be an array");
		return;
	}
	n = cJSON_GetArraySize(arr);
	if (n == 0 || (max_messages > 0 && (size_t)n > max_messages)) {
		if (max_messages > 0)
			snprintf(msg, sizeof(msg),
				 "must hold 1 to %zu messages (has %d)",
				 max_messages, n);
		else
			snprintf(msg, sizeof(msg), "must not be empty");
		problem(ck, -1, "$.messages", msg);
		return;
	}
	out->messages = xcalloc((size_t)n, sizeof(*out->messages));
	cJSON_ArrayForEach(item, arr)
	{
		struct campaign_message *m = &out->messages[i];
		const cJSON *vars;
		char path[96];

		if (!cJSON_IsObject(item)) {
			snprintf(path, sizeof(path), "$.messages[%d]", i);
			problem(ck, i, path, "must be an object");
			i++;
			continue;
		}
		m->message_id =
		    id_field(ck, item, "message_id", i, m->message_id_text);
		m->lead_id = id_field(ck, item, "lead_id", i, m->lead_id_text);
		vars = cJSON_GetObjectItemCaseSensitive(item, "vars");
		if (vars && !cJSON_IsNull(vars) && !cJSON_IsObject(vars)) {
			snprintf(path, sizeof(path), "$.messages[%d].vars", i);
			problem(ck, i, path, "must be an object");
		}
		m->vars = cJSON_IsObject(vars) ? vars : NULL;
		i++;
	}
	out->n_messages = (size_t)n;
	check_unique(ck, out);
}

/* A number field within [lo, hi], not required; false when absent. */
static bool num_field(struct checker *ck, const cJSON *o, const char *name,
		      double lo, double hi, double *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	char path[96], msg[160];

	snprintf(path, sizeof(path), "$.%s", name);
	if (!v)
		return false;
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
	    v->valuedouble < lo || v->valuedouble > hi) {
		snprintf(msg, sizeof(msg), "must be a number from %g to %g", lo,
			 hi);
		problem(ck, -1, path, msg);
		return false;
	}
	*out = v->valuedouble;
	return true;
}

/* The fields that tune a model's call: they mean nothing to a template. */
static const char *const model_fields[] = {"model", "max_tokens",
					   "temperature"};

/* {"system": "...", "user": "..."}: user required, nothing else allowed,
 * so a misspelt member is refused rather than silently not sent. */
static void check_prompt(struct checker *ck, const cJSON *prompt,
			 struct campaign_batch *out)
{
	const cJSON *m;

	if (!cJSON_IsObject(prompt)) {
		problem(ck, -1, "$.prompt", "must be an object");
		return;
	}
	cJSON_ArrayForEach(m, prompt)
	{
		char path[96];

		if (strcmp(m->string, "system") == 0 ||
		    strcmp(m->string, "user") == 0)
			continue;
		snprintf(path, sizeof(path), "$.prompt.%s", m->string);
		problem(ck, -1, path,
			"is not allowed: a prompt holds only system and user");
	}
	out->prompt_system = text_field(
	    ck, prompt, "system", CAMPAIGN_TEMPLATE_MAX, false, -1, "$.prompt");
	out->prompt_user = text_field(ck, prompt, "user", CAMPAIGN_TEMPLATE_MAX,
				      true, -1, "$.prompt");
}

/* A batch's text comes from its template (rendered) or from its prompt
 * (composed by a model): exactly one of the two. With neither, the
 * template is what is reported missing, as before prompts existed. */
static void check_text_source(struct checker *ck, const cJSON *doc,
			      struct campaign_batch *out)
{
	const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(doc, "prompt");
	long long v;

	if (!prompt) {
		out->template_text = text_field(
		    ck, doc, "template", CAMPAIGN_TEMPLATE_MAX, true, -1, "$");
		for (size_t i = 0;
		     i < sizeof(model_fields) / sizeof(model_fields[0]); i++) {
			char path[96];

			if (!cJSON_GetObjectItemCaseSensitive(doc,
							      model_fields[i]))
				continue;
			snprintf(path, sizeof(path), "$.%s", model_fields[i]);
			problem(ck, -1, path,
				"is allowed only with $.prompt: a template is "
				"not composed by a model");
		}
		return;
	}
	if (cJSON_GetObjectItemCaseSensitive(doc, "template"))
		problem(ck, -1, "$.prompt",
			"must not be sent with $.template: a batch is "
			"rendered from a template or composed from a prompt, "
			"not both");
	check_prompt(ck, prompt, out);
	out->model =
	    text_field(ck, doc, "model", CAMPAIGN_MODEL_MAX, false, -1, "$");
	if (int_field(ck, doc, "max_tokens", 1, CAMPAIGN_MAX_TOKENS_MAX, false,
		      0, &v))
		out->max_tokens = (int)v;
	out->has_temperature =
	    num_field(ck, doc, "temperature", 0.0, CAMPAIGN_TEMPERATURE_MAX,
		      &out->temperature);
}

bool campaign_parse(const cJSON *doc, size_t max_messages,
		    struct campaign_batch *out, struct campaign_error *errs,
		    size_t max_errs, size_t *n_errs)
{
	struct checker ck = {errs, max_errs, 0};
	long long v;

	memset(out, 0, sizeof(*out));
	if (!cJSON_IsObject(doc)) {
		problem(&ck, -1, "$", "must be an object");
		*n_errs = ck.n;
		return false;
	}
	out->run_id =
	    text_field(&ck, doc, "run_id", CAMPAIGN_ID_MAX, true, -1, "$");
	out->workspace_id = text_field(&ck, doc, "workspace_id",
				       CAMPAIGN_ID_MAX, true, -1, "$");
	out->inbox_id =
	    text_field(&ck, doc, "inbox_id", CAMPAIGN_ID_MAX, true, -1, "$");
	out->campaign_id = text_field(&ck, doc, "campaign_id", CAMPAIGN_ID_MAX,
				      false, -1, "$");
	out->end_time = text_field(&ck, doc, "end_time", 64, true, -1, "$");
	if (out->end_time) {
		const char *why;

		if (campaign_time_parse_us(out->end_time, &out->end_time_us,
					   &why))
			out->end_time_ms = floor_ms(out->end_time_us);
		else
			problem(&ck, -1, "$.end_time", why);
	}
	check_text_source(&ck, doc, out);
	if (int_field(&ck, doc, "run_total", 1, 1000000000, true, 0, &v))
		out->run_total = v;
	if (int_field(&ck, doc, "max_split_parts", 1, 1000, false,
		      CAMPAIGN_DEFAULT_MAX_PARTS, &v))
		out->max_split_parts = (int)v;
	if (int_field(&ck, doc, "split_max_chars", 1, 100000, false,
		      CAMPAIGN_DEFAULT_SPLIT_CHARS, &v))
		out->split_max_chars = (int)v;
	check_messages(&ck, doc, max_messages, out);
	*n_errs = ck.n;
	return ck.n == 0;
}

void campaign_batch_free(struct campaign_batch *b)
{
	free(b->messages);
	b->messages = NULL;
	b->n_messages = 0;
}

bool lead_update_parse(const cJSON *doc, const char **lead_id, char text[24],
		       char *path, size_t pathsz, char *msg, size_t msgsz)
{
	struct campaign_error err = {0};
	struct checker ck = {&err, 1, 0};
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, "lead_id");

	*lead_id = NULL;
	if (!cJSON_IsObject(doc)) {
		problem(&ck, -1, "$", "must be an object");
	} else if (cJSON_IsNumber(v)) {
		if (!isfinite(v->valuedouble) ||
		    floor(v->valuedouble) != v->valuedouble ||
		    fabs(v->valuedouble) >= 9007199254740992.0) {
			problem(&ck, -1, "$.lead_id",
				"must be a string or an integer below 2^53");
		} else {
			snprintf(text, 24, "%lld", (long long)v->valuedouble);
			*lead_id = text;
		}
	} else {
		*lead_id = text_field(&ck, doc, "lead_id", CAMPAIGN_ID_MAX,
				      true, -1, "$");
	}
	if (ck.n > 0) {
		snprintf(path, pathsz, "%s", err.path);
		snprintf(msg, msgsz, "%s", err.message);
		return false;
	}
	return true;
}

static bool campaign_check(const cJSON *doc, const struct kind_args *a,
			   struct kind_route *out, struct kind_error *errs,
			   size_t max_errs, size_t *n_errs)
{
	struct campaign_error *ce = xcalloc(max_errs, sizeof(*ce));
	struct campaign_batch b;
	bool ok = campaign_parse(doc, a->max_items, &b, ce, max_errs, n_errs);

	for (size_t i = 0; !ok && i < *n_errs && i < max_errs; i++) {
		errs[i].index = ce[i].index;
		snprintf(errs[i].path, sizeof(errs[i].path), "%s", ce[i].path);
		snprintf(errs[i].message, sizeof(errs[i].message), "%s",
			 ce[i].message);
	}
	if (ok && b.campaign_id && a->path_id &&
	    strcmp(b.campaign_id, a->path_id) != 0) {
		ok = kind_fail(errs, max_errs, n_errs, "$.campaign_id",
			       "differs from the campaign id in the path");
	} else if (ok) {
		out->key = b.run_id;
		out->event_type = CAMPAIGN_EVENT_TYPE;
	}
	campaign_batch_free(&b);
	free(ce);
	return ok;
}

static bool lead_updated_check(const cJSON *doc, const struct kind_args *a,
			       struct kind_route *out, struct kind_error *errs,
			       size_t max_errs, size_t *n_errs)
{
	struct kind_error e;

	(void)a;
	if (!lead_update_parse(doc, &out->key, out->key_text, e.path,
			       sizeof(e.path), e.message, sizeof(e.message)))
		return kind_fail(errs, max_errs, n_errs, e.path, e.message);
	out->event_type = kind_string(doc, "event_type");
	if (!out->event_type)
		out->event_type = kind_string(doc, "type");
	if (!out->event_type)
		out->event_type = LEAD_UPDATED_EVENT_TYPE;
	return true;
}

const struct kind campaign_kind = {
    .name = KIND_CAMPAIGN,
    .key_name = "runId",
    .own_path = true,
    .all_errors = true,
    .check = campaign_check,
};

const struct kind lead_updated_kind = {
    .name = KIND_LEAD_UPDATED,
    .key_name = "leadId",
    .check = lead_updated_check,
};
