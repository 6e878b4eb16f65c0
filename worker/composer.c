/* The composer: a batch's messages written by a model behind an
 * OpenAI-compatible endpoint, as a sliding window of calls that adapts to
 * the provider's limits. See composer.h. */
#include "composer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "httpc.h"

/* A fresh composer starts this many calls at once and adds one per
 * answer (doubling each round trip) up to composer.concurrency: a
 * provider with a low limit is not hit by a full window at once. */
#define SLOW_START 8
/* After a 429 the pacing rate starts a little under what the provider
 * was seen to serve and grows this much per second without one. */
#define RATE_CUT 0.92
#define RATE_GROWTH 0.015
/* ... and the window shrinks to this share: the pacing does most of the
 * work, a window halved would starve a provider that allows more calls
 * at once than the pace needs. */
#define WINDOW_CUT 0.7
/* Successes remembered to measure the rate the provider serves. */
#define RECENT 128
#define RECENT_MS 3000

enum job_state { J_QUEUED = 0, J_RUNNING, J_WAITING, J_DONE };

struct job {
	struct composer *c;
	char *key;
	char *body;
	size_t body_len;
	enum job_state st;
	int attempts; /* calls that failed in a way that counts */
	struct backoff bo;
	int64_t first_ms; /* first call (monotonic) */
	int64_t call_ms;  /* the running call's start */
	unsigned cut_epoch;
	struct httpc_call *call;
	struct event *retry;
	struct compose_result res;
	char *text, *model, *error;
	struct job *qnext; /* the queue */
	struct job *hnext; /* the batch's table */
};

struct composer {
	struct event_base *base;
	struct httpc *http;
	const struct worker_config *cfg;
	char *url;
	struct httpc_header *headers;
	size_t n_headers;
	char *auth; /* "Bearer <key>"; never logged */
	bool stopped;
	bool dry_run;
	/* the batch's jobs: a chained table by key, and the queue */
	struct job **table;
	size_t table_size, n_jobs, n_done;
	struct job *q_head, *q_tail;
	int inflight;
	/* adapting to the provider */
	double window;
	bool slow_start;
	unsigned cut_epoch;
	int64_t pause_until;
	struct backoff pause_bo;
	double rate; /* calls/s the pacing allows; 0 = none */
	int64_t rate_grown_ms;
	double next_send_ms;
	int64_t ok_ms[RECENT];
	int n_ok;
	struct event *wake;
	/* the account (401/402/403) */
	bool held;
	bool probing;
	int64_t held_since;
	int64_t last_warn_ms; /* call failures: one warning per interval */
	int unlogged;
	struct backoff hold_bo;
	char held_why[160];
	struct composer_stats st;
	struct metrics_composer fig;
};

static void pump(struct composer *c);

/* FNV-1a over the key: the batch's table, nothing more. */
static size_t key_hash(const char *s)
{
	size_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static struct job *job_find(const struct composer *c, const char *key)
{
	if (c->table_size == 0)
		return NULL;
	for (struct job *j = c->table[key_hash(key) % c->table_size]; j;
	     j = j->hnext)
		if (strcmp(j->key, key) == 0)
			return j;
	return NULL;
}

static void table_grow(struct composer *c)
{
	size_t n = c->table_size ? c->table_size * 2 : 256;
	struct job **t = xcalloc(n, sizeof(*t));

	for (size_t i = 0; i < c->table_size; i++) {
		struct job *j = c->table[i], *next;

		for (; j; j = next) {
			size_t h = key_hash(j->key) % n;

			next = j->hnext;
			j->hnext = t[h];
			t[h] = j;
		}
	}
	free(c->table);
	c->table = t;
	c->table_size = n;
}

static void queue_push(struct composer *c, struct job *j, bool front)
{
	j->st = J_QUEUED;
	j->qnext = NULL;
	if (!c->q_head) {
		c->q_head = c->q_tail = j;
	} else if (front) {
		j->qnext = c->q_head;
		c->q_head = j;
	} else {
		c->q_tail->qnext = j;
		c->q_tail = j;
	}
}

static struct job *queue_pop(struct composer *c)
{
	struct job *j = c->q_head;

	if (j) {
		c->q_head = j->qnext;
		if (!c->q_head)
			c->q_tail = NULL;
		j->qnext = NULL;
	}
	return j;
}

static void fig_tokens(struct composer *c, const char *model, long prompt,
		       long completion)
{
	struct metrics_composer *f = &c->fig;
	int i;

	for (i = 0; i < f->n_models; i++)
		if (strcmp(f->tokens[i].model, model) == 0)
			break;
	if (i == f->n_models) {
		/* The last slot is kept for "other": models past the first
		 * METRICS_MODELS - 1 add up there, so a provider that names
		 * models freely cannot grow the labels without bound. */
		const char *name =
		    f->n_models >= METRICS_MODELS - 1 ? "other" : model;

		for (i = 0; i < f->n_models; i++)
			if (strcmp(f->tokens[i].model, name) == 0)
				break;
		if (i == f->n_models) {
			f->n_models++;
			snprintf(f->tokens[i].model, sizeof(f->tokens[i].model),
				 "%s", name);
		}
	}
	if (prompt > 0)
		f->tokens[i].prompt += (unsigned long long)prompt;
	if (completion > 0)
		f->tokens[i].completion += (unsigned long long)completion;
}

static void fig_latency(struct composer *c, int64_t ms)
{
	struct metrics_composer *f = &c->fig;
	double s = (double)ms / 1000.0;
	int i = 0;

	while (i < METRICS_COMPOSE_BUCKETS && s > metrics_compose_le[i])
		i++;
	f->le[i]++;
	f->lat_count++;
	f->lat_sum_s += s;
}

static void job_finish(struct job *j, enum compose_state st, const char *error)
{
	struct composer *c = j->c;

	j->st = J_DONE;
	j->res.state = st;
	/* -1: no call was made (stored as NULL) */
	j->res.ms = j->first_ms ? util_mono_ms() - j->first_ms : -1;
	if (error) {
		free(j->error);
		j->error = xstrdup(error);
		j->res.error = j->error;
	}
	c->n_done++;
	if (st == COMPOSE_OK) {
		c->st.composed++;
		c->fig.composed++;
	} else {
		c->st.failed++;
		c->fig.failed++;
	}
	c->st.last_ms = util_mono_ms();
	/* The body carried the lead's data: not kept past its use. */
	free(j->body);
	j->body = NULL;
}

static void handle_retry(evutil_socket_t fd, short what, void *arg)
{
	struct job *j = arg;

	(void)fd;
	(void)what;
	queue_push(j->c, j, true);
	pump(j->c);
}

/* A failure that may pass: again after the job's back-off, or the
 * message fails once composer.retries are spent. */
static void job_retry(struct job *j, const char *reason, int delay_ms)
{
	struct composer *c = j->c;
	char error[96];

	if (++j->attempts > c->cfg->composer_retries) {
		snprintf(error, sizeof(error), "compose_failed:%s", reason);
		job_finish(j, COMPOSE_FAILED, error);
		return;
	}
	if (delay_ms <= 0) {
		queue_push(c, j, true);
		return;
	}
	if (!j->retry)
		j->retry = evtimer_new(c->base, handle_retry, j);
	if (!j->retry)
		abort();
	j->st = J_WAITING;
	{
		struct timeval tv = util_ms_tv(delay_ms);

		evtimer_add(j->retry, &tv);
	}
}

/* The rate the provider served lately: successes in the last seconds. */
static double served_rate(const struct composer *c, int64_t now)
{
	int n = 0;
	int64_t oldest = now;
	int have = c->n_ok < RECENT ? c->n_ok : RECENT;

	for (int i = 0; i < have; i++) {
		int64_t t = c->ok_ms[i];

		if (now - t <= RECENT_MS) {
			n++;
			if (t < oldest)
				oldest = t;
		}
	}
	if (n < 2)
		return 0;
	return (double)n * 1000.0 /
	       (double)(now - oldest > 500 ? now - oldest : 500);
}

/* A 429: new calls wait for Retry-After (or the back-off), the window
 * shrinks and the pacing rate starts under what the provider served. Only
 * the first 429 of the calls started before a cut acts: the others
 * answer for the same excess. */
static void rate_limited(struct composer *c, struct job *j,
			 const char *retry_after)
{
	int64_t now = util_mono_ms();
	int wait_ms = 0;

	if (retry_after) {
		char *end;
		double s = strtod(retry_after, &end);

		if (end != retry_after && s >= 0 && s < 3600)
			wait_ms = (int)(s * 1000.0);
	}
	if (wait_ms <= 0)
		wait_ms = backoff_next(&c->pause_bo);
	if (now + wait_ms > c->pause_until)
		c->pause_until = now + wait_ms;
	if (j->cut_epoch == c->cut_epoch) {
		double served = served_rate(c, now);

		c->cut_epoch++;
		c->slow_start = false;
		c->window =
		    c->window * WINDOW_CUT < 1 ? 1 : c->window * WINDOW_CUT;
		if (served > 0 && (c->rate == 0 || served * RATE_CUT < c->rate))
			c->rate = served * RATE_CUT;
		else if (c->rate > 0)
			c->rate *= RATE_CUT;
		c->rate_grown_ms = now;
		log_debug(
		    "composer: 429 (window %.1f, rate %.2f/s, pause %d ms)",
		    c->window, c->rate, wait_ms);
	}
}

static void answered(struct composer *c, int64_t now)
{
	c->ok_ms[c->n_ok++ % RECENT] = now;
	if (c->n_ok >= 2 * RECENT)
		c->n_ok -= RECENT; /* keeps the index cycling, all valid */
	backoff_reset(&c->pause_bo);
	if (c->window < c->cfg->composer_concurrency) {
		c->window += c->slow_start ? 1.0 : 1.0 / c->window;
		if (c->window > c->cfg->composer_concurrency)
			c->window = c->cfg->composer_concurrency;
	}
	if (c->rate > 0) {
		c->rate *= 1.0 + RATE_GROWTH *
				     (double)(now - c->rate_grown_ms) / 1000.0;
		c->rate_grown_ms = now;
		if (c->rate > 10000)
			c->rate = 0; /* far above anything seen: no pacing */
	}
}

static void unhold(struct composer *c, int64_t now)
{
	if (!c->held)
		return;
	log_info("composer: the endpoint answers again after %lld s held (%s)",
		 (long long)((now - c->held_since) / 1000), c->held_why);
	c->fig.held_ms += now - c->held_since;
	c->st.held_ms += now - c->held_since;
	c->held = false;
	c->pause_until = 0;
	c->fig.held = false;
	c->held_why[0] = '\0';
	backoff_reset(&c->hold_bo);
}

/* 401, 402, 403: the key or the credit, no message's fault. The job
 * goes back to the queue uncounted and every call waits; one probe
 * after the back-off tells when it is fixed. */
static void hold(struct composer *c, struct job *j, int status,
		 const char *body, bool probe)
{
	int64_t now = util_mono_ms();
	/* The wait grows with each probe refused, not with each call of the
	 * window that was in flight when the first refusal came. */
	bool first = !c->held;
	int wait_ms = first || probe ? backoff_next(&c->hold_bo)
				     : (int)(c->pause_until - now);
	char msg[120] = "";
	cJSON *doc = body ? cJSON_Parse(body) : NULL;
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(
	    cJSON_GetObjectItemCaseSensitive(doc, "error"), "message");

	/* The provider's own words, cut and kept printable: they name the
	 * account's problem ("Insufficient credits"), never the prompt. */
	if (cJSON_IsString(m)) {
		size_t k = 0;

		for (const char *s = m->valuestring; *s && k + 1 < sizeof(msg);
		     s++)
			msg[k++] = (*s >= 0x20 && *s < 0x7f) ? *s : ' ';
		msg[k] = '\0';
	}
	cJSON_Delete(doc);
	if (!c->held) {
		c->held = true;
		c->held_since = now;
	}
	snprintf(c->held_why, sizeof(c->held_why), "%d %s%s%s", status,
		 status == 401	 ? "unauthorized"
		 : status == 402 ? "payment required"
				 : "forbidden",
		 msg[0] ? ": " : "", msg);
	c->fig.held = true;
	snprintf(c->fig.held_why, sizeof(c->fig.held_why), "%s", c->held_why);
	if (first || probe)
		log_warn(
		    "composer held: the endpoint answered %s; nothing fails, the batch waits; next try in %d ms",
		    c->held_why, wait_ms);
	if (now + wait_ms > c->pause_until)
		c->pause_until = now + wait_ms;
	queue_push(c, j, true);
}

/* A usage figure as reported: an integer 0..INT32_MAX (the column is an
 * integer), else -1, "not reported": a provider's nonsense never fails
 * the batch's write. */
static long token_count(const cJSON *v)
{
	double d;

	if (!cJSON_IsNumber(v))
		return -1;
	d = v->valuedouble;
	if (!(d >= 0 && d <= 2147483647.0) || d != (double)(long)d)
		return -1;
	return (long)d;
}

/* The answer of a 200: the text, or why there is none. */
static void parse_answer(struct job *j, const struct httpc_resp *r)
{
	struct composer *c = j->c;
	cJSON *doc = cJSON_ParseWithLength(r->body, r->len);
	const cJSON *choices, *choice, *msg, *content, *finish, *usage, *model;

	choices = cJSON_GetObjectItemCaseSensitive(doc, "choices");
	choice = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
	msg = cJSON_GetObjectItemCaseSensitive(choice, "message");
	content = cJSON_GetObjectItemCaseSensitive(msg, "content");
	finish = cJSON_GetObjectItemCaseSensitive(choice, "finish_reason");
	if (!doc || !cJSON_IsObject(choice) || !cJSON_IsObject(msg) ||
	    (content && !cJSON_IsString(content) && !cJSON_IsNull(content))) {
		c->fig.calls[MC_BAD_ANSWER]++;
		cJSON_Delete(doc);
		job_retry(j, "bad_answer", backoff_next(&j->bo));
		return;
	}
	model = cJSON_GetObjectItemCaseSensitive(doc, "model");
	usage = cJSON_GetObjectItemCaseSensitive(doc, "usage");
	free(j->model);
	j->model = xstrdup(cJSON_IsString(model) ? model->valuestring : "");
	j->res.model = j->model;
	if (cJSON_IsObject(usage)) {
		const cJSON *pt =
		    cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
		const cJSON *ct = cJSON_GetObjectItemCaseSensitive(
		    usage, "completion_tokens");

		j->res.prompt_tokens = token_count(pt);
		j->res.completion_tokens = token_count(ct);
		fig_tokens(c, j->model[0] ? j->model : "unknown",
			   j->res.prompt_tokens, j->res.completion_tokens);
		c->st.tokens +=
		    (size_t)(j->res.prompt_tokens > 0 ? j->res.prompt_tokens
						      : 0) +
		    (size_t)(j->res.completion_tokens > 0
				 ? j->res.completion_tokens
				 : 0);
	}
	if (!cJSON_IsString(content) || !content->valuestring[0] ||
	    (cJSON_IsString(finish) &&
	     strcmp(finish->valuestring, "content_filter") == 0)) {
		c->fig.calls[MC_REFUSED]++;
		cJSON_Delete(doc);
		job_finish(j, COMPOSE_REFUSED, "compose_refused");
		return;
	}
	c->fig.calls[MC_OK]++;
	free(j->text);
	j->text = xstrdup(content->valuestring);
	j->res.text = j->text;
	cJSON_Delete(doc);
	log_debug("composer: %zu bytes composed for %zu bytes of request",
		  strlen(j->text), j->body_len);
	job_finish(j, COMPOSE_OK, NULL);
}

/* A call that got no answer (a timeout, a refused connection, a
 * certificate the worker does not trust): the reason names the endpoint's
 * problem, never the prompt. At most one warning per LOG_EVERY_MS, with
 * how many more failed meanwhile, so an endpoint that is down does not
 * flood the log; the rest go to debug. */
#define LOG_EVERY_MS 10000
static void call_failed(struct composer *c, const char *why, int64_t now)
{
	if (c->last_warn_ms && now - c->last_warn_ms < LOG_EVERY_MS) {
		c->unlogged++;
		log_debug("composer: call to %s failed: %s", c->url, why);
		return;
	}
	if (c->unlogged)
		log_warn(
		    "composer: call to %s failed: %s (and %d more since the last warning)",
		    c->url, why, c->unlogged);
	else
		log_warn("composer: call to %s failed: %s; retried", c->url,
			 why);
	c->last_warn_ms = now;
	c->unlogged = 0;
}

static void call_done(void *arg, const struct httpc_resp *r)
{
	struct job *j = arg;
	struct composer *c = j->c;
	int64_t now = util_mono_ms();
	char reason[32];

	bool probe = c->held && c->probing;

	j->call = NULL;
	c->inflight--;
	c->fig.inflight = c->inflight;
	/* The one probe of a hold has answered, whatever the answer: the
	 * next one may go once its wait is over. */
	c->probing = false;
	if (r->status == 0) {
		bool timeout = r->error && strcmp(r->error, "timeout") == 0;

		c->fig.calls[timeout ? MC_TIMEOUT : MC_CONNECT]++;
		call_failed(c, r->error ? r->error : "no answer", now);
		job_retry(j, timeout ? "timeout" : "connect",
			  backoff_next(&j->bo));
	} else if (r->status == 429) {
		c->fig.calls[MC_RATE_LIMITED]++;
		rate_limited(c, j, httpc_resp_header(r, "Retry-After"));
		job_retry(j, "429", 0);
	} else if (r->status == 401 || r->status == 402 || r->status == 403) {
		c->fig.calls[MC_ACCOUNT]++;
		hold(c, j, r->status, r->body, probe);
	} else {
		unhold(c, now);
		fig_latency(c, now - j->call_ms);
		if (r->status >= 200 && r->status < 300) {
			answered(c, now);
			parse_answer(j, r);
		} else if (r->status >= 500 || r->status == 408) {
			c->fig.calls[MC_SERVER_ERROR]++;
			snprintf(reason, sizeof(reason), "%d", r->status);
			job_retry(j, reason, backoff_next(&j->bo));
		} else {
			/* 400 (the context is too long, a bad parameter)
			 * and the like: the same request fails again. */
			c->fig.calls[MC_BAD_REQUEST]++;
			snprintf(reason, sizeof(reason), "compose_failed:%d",
				 r->status);
			job_finish(j, COMPOSE_FAILED, reason);
		}
	}
	pump(c);
}

static bool call_start(struct composer *c, struct job *j)
{
	char err[256];
	int64_t now = util_mono_ms();

	if (!j->first_ms)
		j->first_ms = now;
	if (!c->st.first_ms)
		c->st.first_ms = now;
	j->call_ms = now;
	j->cut_epoch = c->cut_epoch;
	j->st = J_RUNNING;
	c->st.calls++;
	j->call =
	    httpc_request(c->http, "POST", c->url, c->headers, c->n_headers,
			  j->body, j->body_len, c->cfg->composer_timeout_ms,
			  call_done, j, err, sizeof(err));
	if (!j->call) {
		c->probing = false;
		log_warn("composer: cannot call %s: %s", c->url, err);
		c->fig.calls[MC_CONNECT]++;
		job_retry(j, "connect", backoff_next(&j->bo));
		return false;
	}
	c->inflight++;
	c->fig.inflight = c->inflight;
	if (c->inflight > c->st.peak_inflight)
		c->st.peak_inflight = c->inflight;
	return true;
}

static void handle_wake(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pump(arg);
}

static void wake_at(struct composer *c, int64_t at)
{
	struct timeval tv = util_ms_tv(at - util_mono_ms() + 1);

	evtimer_add(c->wake, &tv);
}

/* Starts what the window, the pause, the pacing and the hold allow. */
static void pump(struct composer *c)
{
	double cap_rate =
	    c->cfg->composer_rate > 0 ? c->cfg->composer_rate / 60.0 : 0;
	double rate = c->rate;

	if (cap_rate > 0 && (rate == 0 || cap_rate < rate))
		rate = cap_rate;
	while (c->q_head && !c->stopped) {
		int64_t now = util_mono_ms();

		if (now < c->pause_until) {
			wake_at(c, c->pause_until);
			return;
		}
		if (c->held && (c->probing || c->inflight > 0))
			return; /* one probe at a time */
		if (c->inflight >= (int)c->window)
			return;
		if (rate > 0 && (double)now < c->next_send_ms) {
			wake_at(c, (int64_t)ceil(c->next_send_ms));
			return;
		}
		if (rate > 0)
			c->next_send_ms =
			    ((double)now > c->next_send_ms ? (double)now
							   : c->next_send_ms) +
			    1000.0 / rate;
		if (c->held)
			c->probing = true;
		call_start(c, queue_pop(c));
	}
}

/* composer.headers: "Name: value; Name: value". */
static bool parse_headers(struct composer *c, const char *spec, char *errstr,
			  size_t errstr_size)
{
	char *copy = xstrdup(spec), *save = NULL;

	for (char *tok = strtok_r(copy, ";", &save); tok;
	     tok = strtok_r(NULL, ";", &save)) {
		char *colon = strchr(tok, ':');
		char *name = tok, *value, *end;

		while (*name == ' ' || *name == '\t')
			name++;
		if (!*name)
			continue;
		if (!colon || colon == name) {
			snprintf(errstr, errstr_size,
				 "composer.headers: \"%s\" is not "
				 "\"Name: value\"",
				 name);
			free(copy);
			return false;
		}
		*colon = '\0';
		for (end = colon; end > name && (end[-1] == ' ');)
			*--end = '\0';
		value = colon + 1;
		while (*value == ' ' || *value == '\t')
			value++;
		for (end = value + strlen(value);
		     end > value && (end[-1] == ' ' || end[-1] == '\t');)
			*--end = '\0';
		if (strcspn(name, " \t\r\n") != strlen(name) ||
		    strpbrk(value, "\r\n")) {
			snprintf(errstr, errstr_size,
				 "composer.headers: bad header \"%s\"", name);
			free(copy);
			return false;
		}
		c->headers = xrealloc(c->headers,
				      (c->n_headers + 1) * sizeof(*c->headers));
		c->headers[c->n_headers].name = xstrdup(name);
		c->headers[c->n_headers].value = xstrdup(value);
		c->n_headers++;
	}
	free(copy);
	return true;
}

static void add_header(struct composer *c, const char *name, const char *value)
{
	c->headers =
	    xrealloc(c->headers, (c->n_headers + 1) * sizeof(*c->headers));
	c->headers[c->n_headers].name = xstrdup(name);
	c->headers[c->n_headers].value = xstrdup(value);
	c->n_headers++;
}

struct composer *composer_new(struct event_base *base, struct httpc *http,
			      const struct worker_config *cfg, char *errstr,
			      size_t errstr_size)
{
	struct composer *c = xcalloc(1, sizeof(*c));
	const char *u = cfg->composer_base_url;
	size_t n = strlen(u);

	c->base = base;
	c->http = http;
	c->cfg = cfg;
	c->window = cfg->composer_concurrency < SLOW_START
			? cfg->composer_concurrency
			: SLOW_START;
	c->slow_start = true;
	c->fig.present = n > 0;
	c->fig.window = c->window;
	/* A 429 without Retry-After: new calls wait 50-100 ms at first (the
	 * pacing does the rest), doubling while the 429s go on. */
	backoff_init(&c->pause_bo, 100, 30000);
	backoff_init(&c->hold_bo, 1000,
		     cfg->retry_backoff_max_ms > 1000
			 ? cfg->retry_backoff_max_ms
			 : 1000);
	c->wake = evtimer_new(base, handle_wake, c);
	if (!c->wake)
		abort();
	while (n > 0 && u[n - 1] == '/')
		n--;
	if (n > 0) {
		struct buf b;

		if (strncmp(u, "http://", 7) != 0 &&
		    strncmp(u, "https://", 8) != 0) {
			snprintf(errstr, errstr_size,
				 "composer.base_url must be an http:// or "
				 "https:// URL");
			composer_destroy(c);
			return NULL;
		}
		buf_init(&b);
		buf_append(&b, u, n);
		buf_puts(&b, "/chat/completions");
		c->url = b.data;
		add_header(c, "Content-Type", "application/json");
		add_header(c, "Accept", "application/json");
		if (cfg->composer_api_key_file[0]) {
			char err[512];
			char *key = util_read_secret(cfg->composer_api_key_file,
						     err, sizeof(err));

			if (!key) {
				snprintf(errstr, errstr_size,
					 "composer.api_key_file %s", err);
				composer_destroy(c);
				return NULL;
			}
			buf_init(&b);
			buf_puts(&b, "Bearer ");
			buf_puts(&b, key);
			memset(key, 0, strlen(key));
			free(key);
			c->auth = b.data;
			add_header(c, "Authorization", c->auth);
		}
		if (!parse_headers(c, cfg->composer_headers, errstr,
				   errstr_size)) {
			composer_destroy(c);
			return NULL;
		}
	}
	return c;
}

static void job_free(struct job *j)
{
	if (j->call)
		httpc_cancel(j->call);
	if (j->retry)
		event_free(j->retry);
	free(j->key);
	free(j->body);
	free(j->text);
	free(j->model);
	free(j->error);
	free(j);
}

void composer_reset(struct composer *c)
{
	for (size_t i = 0; i < c->table_size; i++) {
		struct job *j = c->table[i], *next;

		for (; j; j = next) {
			next = j->hnext;
			if (j->call)
				c->inflight--;
			job_free(j);
		}
		c->table[i] = NULL;
	}
	c->fig.inflight = c->inflight;
	c->q_head = c->q_tail = NULL;
	c->n_jobs = c->n_done = 0;
	c->probing = false;
	c->stopped = false;
	memset(&c->st, 0, sizeof(c->st));
}

void composer_destroy(struct composer *c)
{
	if (!c)
		return;
	composer_reset(c);
	free(c->table);
	if (c->wake)
		event_free(c->wake);
	for (size_t i = 0; i < c->n_headers; i++) {
		free((char *)c->headers[i].name);
		free((char *)c->headers[i].value);
	}
	free(c->headers);
	if (c->auth) {
		/* The key leaves no copy in freed memory. */
		memset(c->auth, 0, strlen(c->auth));
		free(c->auth);
	}
	free(c->url);
	free(c);
}

bool composer_configured(const struct composer *c)
{
	return c && c->url != NULL;
}

static char *request_body(const struct compose_req *req, size_t *len)
{
	cJSON *o = cJSON_CreateObject(), *msgs, *m;
	char *s;

	cJSON_AddStringToObject(o, "model", req->model);
	msgs = cJSON_AddArrayToObject(o, "messages");
	if (req->system && req->system[0]) {
		m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "role", "system");
		cJSON_AddStringToObject(m, "content", req->system);
		cJSON_AddItemToArray(msgs, m);
	}
	m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "role", "user");
	cJSON_AddStringToObject(m, "content", req->user);
	cJSON_AddItemToArray(msgs, m);
	if (req->max_tokens > 0)
		cJSON_AddNumberToObject(o, "max_tokens", req->max_tokens);
	if (req->has_temperature)
		cJSON_AddNumberToObject(o, "temperature", req->temperature);
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s)
		abort();
	*len = strlen(s);
	return s;
}

void composer_want(struct composer *c, const char *key,
		   const struct compose_req *req)
{
	struct job *j;
	size_t h;

	if (job_find(c, key))
		return;
	if (c->n_jobs + 1 > c->table_size)
		table_grow(c);
	j = xcalloc(1, sizeof(*j));
	j->c = c;
	j->key = xstrdup(key);
	j->res.prompt_tokens = j->res.completion_tokens = -1;
	j->res.model = "";
	backoff_init(&j->bo, c->cfg->retry_backoff_min_ms,
		     c->cfg->retry_backoff_max_ms);
	h = key_hash(key) % c->table_size;
	j->hnext = c->table[h];
	c->table[h] = j;
	c->n_jobs++;
	c->st.wanted++;
	if (!c->url) {
		job_finish(j, COMPOSE_FAILED, "compose_failed:not_configured");
		return;
	}
	if (c->dry_run) {
		job_finish(j, COMPOSE_FAILED, "not_composed:dry_run");
		return;
	}
	j->body = request_body(req, &j->body_len);
	queue_push(c, j, false);
	pump(c);
}

bool composer_done(const struct composer *c)
{
	return c->n_done == c->n_jobs;
}

void composer_set_dry_run(struct composer *c, bool on)
{
	c->dry_run = on;
}

void composer_stop(struct composer *c)
{
	c->stopped = true;
	c->probing = false;
	for (size_t i = 0; i < c->table_size; i++)
		for (struct job *j = c->table[i]; j; j = j->hnext)
			if (j->call) {
				httpc_cancel(j->call);
				j->call = NULL;
				c->inflight--;
			}
	c->fig.inflight = c->inflight;
}

const struct compose_result *composer_get(const struct composer *c,
					  const char *key)
{
	const struct job *j = job_find(c, key);

	return j ? &j->res : NULL;
}

const struct composer_stats *composer_stats(const struct composer *c)
{
	return &c->st;
}

bool composer_held(const struct composer *c, char *why, size_t why_size)
{
	if (c->held)
		snprintf(why, why_size, "%s", c->held_why);
	return c->held;
}

void composer_figures(const struct composer *c, struct metrics_composer *f)
{
	*f = c->fig;
	f->window = c->window;
	f->inflight = c->inflight;
	if (c->held)
		f->held_ms += util_mono_ms() - c->held_since;
}
