/* Parsing a replay's --from and --to. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/campaign.h"
#include "replay.h"

bool replay_pos_parse(const char *s, struct replay_pos *out, char *errstr,
		      size_t errstr_size)
{
	const char *p = s;

	memset(out, 0, sizeof(*out));
	if (!s || !*s) {
		snprintf(errstr, errstr_size, "empty position");
		return false;
	}
	/* Offsets start "PARTITION:"; an RFC 3339 time starts with its
	 * year and a '-'. */
	p += strspn(p, "-0123456789");
	if (*p != ':') {
		out->is_time = true;
		if (!campaign_time_parse(s, &out->time_ms)) {
			snprintf(errstr, errstr_size,
				 "\"%s\" is not an RFC 3339 time with an "
				 "offset (2026-11-01T00:00:00Z)",
				 s);
			return false;
		}
		return true;
	}
	p = s;
	while (*p) {
		char *end;
		long part;
		long long off;

		if (out->n == REPLAY_MAX_POSITIONS) {
			snprintf(errstr, errstr_size,
				 "more than %d partitions named",
				 REPLAY_MAX_POSITIONS);
			return false;
		}
		errno = 0;
		part = strtol(p, &end, 10);
		if (end == p || *end != ':' || errno || part > INT32_MAX)
			goto bad;
		if (part < 0) {
			snprintf(errstr, errstr_size,
				 "partition %ld is negative", part);
			return false;
		}
		p = end + 1;
		off = strtoll(p, &end, 10);
		if (end == p || errno || (*end && *end != ','))
			goto bad;
		if (off < 0) {
			snprintf(errstr, errstr_size,
				 "offset %lld of partition %ld is negative",
				 off, part);
			return false;
		}
		for (int i = 0; i < out->n; i++)
			if (out->part[i] == (int32_t)part) {
				snprintf(errstr, errstr_size,
					 "partition %ld named twice", part);
				return false;
			}
		out->part[out->n] = (int32_t)part;
		out->offset[out->n] = off;
		out->n++;
		p = *end ? end + 1 : end;
		if (*end && !*p)
			goto bad;
	}
	return true;
bad:
	snprintf(errstr, errstr_size,
		 "\"%s\" is neither an RFC 3339 time nor "
		 "PARTITION:OFFSET[,PARTITION:OFFSET...]",
		 s);
	return false;
}

static int pos_find(const struct replay_pos *p, int32_t part)
{
	for (int i = 0; i < p->n; i++)
		if (p->part[i] == part)
			return i;
	return -1;
}

bool replay_range_check(const struct replay_pos *from,
			const struct replay_pos *to, char *errstr,
			size_t errstr_size)
{
	if (from->is_time && to->is_time && to->time_ms <= from->time_ms) {
		snprintf(errstr, errstr_size, "--to must be later than --from");
		return false;
	}
	if (from->is_time || to->is_time)
		return true; /* checked against the topic once it is read */
	for (int i = 0; i < to->n; i++) {
		int k = pos_find(from, to->part[i]);

		/* a partition --from does not name is not replayed at all */
		if (k < 0) {
			snprintf(errstr, errstr_size,
				 "--to names partition %d, which --from does "
				 "not",
				 (int)to->part[i]);
			return false;
		}
		if (to->offset[i] < from->offset[k]) {
			snprintf(errstr, errstr_size,
				 "--to %d:%lld is before --from %d:%lld",
				 (int)to->part[i], (long long)to->offset[i],
				 (int)from->part[k],
				 (long long)from->offset[k]);
			return false;
		}
	}
	return true;
}
