/* Mode "replay": re-applies a range of the topic under a group of its own,
 * through the same handlers and the same one-transaction-per-batch as the
 * consumer group, for backfills. */
#ifndef SLUICE_REPLAY_H
#define SLUICE_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"

#define REPLAY_MAX_POSITIONS 256

/* Where a replay starts or stops: an instant (every partition, by record
 * timestamp) or explicit offsets of some partitions. */
struct replay_pos {
	bool is_time;
	int64_t time_ms;
	int n;
	int32_t part[REPLAY_MAX_POSITIONS];
	int64_t offset[REPLAY_MAX_POSITIONS];
};

/* "2026-11-01T00:00:00Z" (RFC 3339, offset required) or
 * "PARTITION:OFFSET[,PARTITION:OFFSET...]". */
bool replay_pos_parse(const char *s, struct replay_pos *out, char *errstr,
		      size_t errstr_size) __attribute__((warn_unused_result));

/* Refuses a range that runs backwards (--to before --from, by time or on a
 * partition both name) or whose --to names a partition --from does not.
 * Ranges mixing a time and offsets are checked once the topic is read. */
bool replay_range_check(const struct replay_pos *from,
			const struct replay_pos *to, char *errstr,
			size_t errstr_size) __attribute__((warn_unused_result));

struct replay_opts {
	struct replay_pos from;
	struct replay_pos to;
	bool has_to;
	bool dry_run;
	double rate; /* records per second, 0 for no limit */
};

/* Runs the replay to its end (or until *env->stopping); env and b are built
 * like the consumer's, with the replay's group. Returns the exit status:
 * 0 done, 1 failed, 2 a range the topic refuses (a partition it does not
 * have, or an end before the start), 130 stopped before the end. */
int replay_run(struct batch_env *env, struct batch *b,
	       const struct replay_opts *o);

#endif
