/* The composer: campaign messages written by a language model behind an
 * OpenAI-compatible endpoint (POST {base_url}/chat/completions), a service
 * beside the lead-context service on the same event_base and the same
 * HTTP client. Calls run as a sliding window of at most
 * composer.concurrency; the window and a pacing rate adapt to the
 * provider (a 429 pauses new calls for its Retry-After and lowers both,
 * successes raise them again), and composer.rate caps the rate. Failures
 * are sorted by whose fault they are: the message's (400, a refusal), the
 * call's (timeouts, connection errors, 5xx, 429: retried with back-off,
 * then the message fails), or the account's (401, 402, 403: nothing
 * fails, the composer holds every call and probes with back-off until the
 * key or the credit is fixed).
 *
 * A batch's jobs are keyed (the message id): asking again for a key
 * already composed or in flight in the same batch costs nothing, so a
 * batch attempted again after a database error makes no new call. */
#ifndef SLUICE_COMPOSER_H
#define SLUICE_COMPOSER_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "settings.h"

struct composer;
struct httpc;

struct compose_req {
	const char *model;
	const char *system; /* NULL: no system message */
	const char *user;
	int max_tokens; /* 0: not sent */
	double temperature;
	bool has_temperature;
};

enum compose_state {
	COMPOSE_PENDING = 0,
	COMPOSE_OK,	 /* text is the model's answer */
	COMPOSE_FAILED,	 /* error: "compose_failed:<status or reason>" */
	COMPOSE_REFUSED, /* error: "compose_refused" */
};

struct compose_result {
	enum compose_state state;
	const char *text;
	const char *model; /* as the provider reports it ("" unknown) */
	long prompt_tokens, completion_tokens; /* -1: not reported */
	int64_t ms; /* from the first attempt to the answer */
	const char *error;
};

/* Per batch, for the batch's log line. */
struct composer_stats {
	size_t wanted;	 /* jobs asked for */
	size_t composed; /* answered with text */
	size_t failed;	 /* failed or refused */
	size_t calls;	 /* HTTP calls made, retries and probes included */
	size_t tokens;	 /* prompt + completion */
	int peak_inflight;
	int64_t held_ms;
	int64_t first_ms, last_ms; /* monotonic: first call, last answer */
};

struct composer *composer_new(struct event_base *base, struct httpc *http,
			      const struct worker_config *cfg, char *errstr,
			      size_t errstr_size);
void composer_destroy(struct composer *c);
/* composer.base_url is set. */
bool composer_configured(const struct composer *c);

/* Forgets the previous batch: its results, and any call still running
 * (cancelled, its answer ignored). */
void composer_reset(struct composer *c);
/* Asks for key's composition in this batch; the request is copied. Asking
 * again for a key known in this batch does nothing. */
void composer_want(struct composer *c, const char *key,
		   const struct compose_req *req);
/* Every job asked for in this batch has an outcome. */
bool composer_done(const struct composer *c);
/* A dry run (replay --dry-run): no call is made, every message asked for
 * fails "not_composed:dry_run" at once. */
void composer_set_dry_run(struct composer *c, bool on);
/* Stops starting calls (a stop request): what runs is cancelled. */
void composer_stop(struct composer *c);
/* key's outcome in this batch; NULL if never asked. Valid until the next
 * composer_reset(). */
const struct compose_result *composer_get(const struct composer *c,
					  const char *key);
const struct composer_stats *composer_stats(const struct composer *c);

/* Held because of the account (401/402/403): why says so. */
bool composer_held(const struct composer *c, char *why, size_t why_size);
/* The cumulative figures for /metrics. */
void composer_figures(const struct composer *c, struct metrics_composer *f);

#endif
