/* A pipeline: one consumer group's consumer, batch, PostgreSQL session,
 * Redis connections, lead-context service and dead-letter producer, on an
 * event_base of its own. The worker runs one per kind, each on a thread
 * of its own, so a kind stuck on its dependency (a hung lead source, a
 * slow model) never delays another kind's records. */
#ifndef SLUICE_PIPELINE_H
#define SLUICE_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "settings.h"

struct pipeline;

struct pipeline_spec {
	const char *name;    /* a kind, or "all" */
	const char *group;   /* its consumer group and offsets' key */
	const char *topic;   /* what it reads; NULL: the configured topic */
	uint32_t kinds;	     /* batch_env.kinds */
	bool owns_unknown;   /* batch_env.owns_unknown */
	bool gather_fetches; /* worker_config.gather_fetches */
	bool consumer; /* join the group (consume); replay brings its own */
	/* batch_env.record_clock (replay): set before the handlers are made,
	 * since they keep a copy of it */
	bool record_clock;
	/* The stop flag, shared by every pipeline: set by a signal, or by a
	 * pipeline whose consumer failed for good. */
	volatile int *stopping;
};

/* Builds every object of the pipeline on a new event_base (nothing runs
 * yet); cfg outlives it. NULL = errstr. */
struct pipeline *pipeline_new(const struct worker_config *cfg,
			      const struct pipeline_spec *spec, char *errstr,
			      size_t errstr_size);
/* Runs the consume loop on a thread of its own until the stop flag. */
bool pipeline_start(struct pipeline *p, char *errstr, size_t errstr_size);
/* The thread ended (its batch finished, its consumer closed). */
bool pipeline_done(const struct pipeline *p);
/* When its loop last turned (monotonic ms): the watchdog's evidence. */
int64_t pipeline_beat(const struct pipeline *p);
/* Waits for the thread; 0, or 1 when its consumer failed for good. */
int pipeline_join(struct pipeline *p);
void pipeline_destroy(struct pipeline *p);

/* For a mode that drives the batch itself (replay), on the caller's
 * thread. */
struct batch_env *pipeline_env(struct pipeline *p);
struct batch *pipeline_batch(struct pipeline *p);
struct pgsink *pipeline_pgsink(struct pipeline *p);
const char *pipeline_name(const struct pipeline *p);

#endif
