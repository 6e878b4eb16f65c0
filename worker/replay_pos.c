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
	/* An RFC 3339 time always has a '-' in its date; offsets never do. */
	if (strchr(s, '-') || strchr(s, 'T')) {
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
		if (end == p || *end != ':' || errno || part < 0 ||
		    part > INT32_MAX)
			goto bad;
		p = end + 1;
		off = strtoll(p, &end, 10);
		if (end == p || errno || off < 0 || (*end && *end != ','))
			goto bad;
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
