/* A replay's --from and --to: times, partition offsets, and what is
 * refused with a reason. */
#include <stdlib.h>
#include <string.h>

#include "../../worker/replay.h"
#include "check.h"

static const struct {
	const char *in;
	bool ok;
	bool is_time;
	long long time_ms; /* is_time */
	int n;		   /* offsets */
	int part0;
	long long off0;
	int part_last;
	long long off_last;
} cases[] = {
    {"2026-11-01T00:00:00Z", true, true, 1793491200000LL, 0, 0, 0, 0, 0},
    {"2026-11-01T05:30:00+05:30", true, true, 1793491200000LL, 0, 0, 0, 0, 0},
    {"1970-01-01T00:00:00.250Z", true, true, 250, 0, 0, 0, 0, 0},
    {"0:0", true, false, 0, 1, 0, 0, 0, 0},
    {"3:1200", true, false, 0, 1, 3, 1200, 3, 1200},
    {"0:5,1:7,5:9000000000", true, false, 0, 3, 0, 5, 5, 9000000000LL},
    {"2026-11-01T00:00:00", false, false, 0, 0, 0, 0, 0, 0}, /* no offset */
    {"2026-13-01T00:00:00Z", false, false, 0, 0, 0, 0, 0, 0},
    {"", false, false, 0, 0, 0, 0, 0, 0},
    {"3", false, false, 0, 0, 0, 0, 0, 0},
    {"3:", false, false, 0, 0, 0, 0, 0, 0},
    {":3", false, false, 0, 0, 0, 0, 0, 0},
    {"a:3", false, false, 0, 0, 0, 0, 0, 0},
    {"3:4,", false, false, 0, 0, 0, 0, 0, 0},
    {"3:4,,5:6", false, false, 0, 0, 0, 0, 0, 0},
    {"3:4x", false, false, 0, 0, 0, 0, 0, 0},
    {"3:4,3:5", false, false, 0, 0, 0, 0, 0, 0}, /* named twice */
    {"-1:4", false, false, 0, 0, 0, 0, 0, 0},
    {"0:-5", false, false, 0, 0, 0, 0, 0, 0},
    {"0:5,1:-5", false, false, 0, 0, 0, 0, 0, 0},
    {"99999999999:4", false, false, 0, 0, 0, 0, 0, 0},
};

/* --from and --to together: a range that runs backwards is refused. */
static const struct {
	const char *from, *to;
	bool ok;
	const char *why; /* in the reason when refused */
} ranges[] = {
    {"0:0", "0:50", true, NULL},
    {"0:50", "0:50", true, NULL}, /* empty, not backwards */
    {"0:100", "0:50", false, "before --from 0:100"},
    {"0:5,1:100", "0:9,1:99", false, "--to 1:99"},
    {"0:5,1:7", "1:9", true, NULL}, /* partition 0 to its end */
    {"0:5", "0:9,1:3", false, "partition 1"},
    {"2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", false, "later than"},
    {"2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", false, "later than"},
    {"2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", true, NULL},
    {"2026-01-01T00:00:00Z", "0:5", true, NULL}, /* judged on the topic */
};

static void check_ranges(void)
{
	for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
		struct replay_pos from, to;
		char err[256] = "";
		bool ok;

		if (!replay_pos_parse(ranges[i].from, &from, err,
				      sizeof(err)) ||
		    !replay_pos_parse(ranges[i].to, &to, err, sizeof(err))) {
			CHECK(false, "%s .. %s: %s", ranges[i].from,
			      ranges[i].to, err);
			continue;
		}
		ok = replay_range_check(&from, &to, err, sizeof(err));
		CHECK(ok == ranges[i].ok, "%s .. %s: got %d (%s)",
		      ranges[i].from, ranges[i].to, ok, err);
		if (!ok && ranges[i].why)
			CHECK(strstr(err, ranges[i].why) != NULL,
			      "%s .. %s: reason \"%s\"", ranges[i].from,
			      ranges[i].to, err);
	}
}

int main(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct replay_pos p;
		char err[256] = "";
		bool ok = replay_pos_parse(cases[i].in, &p, err, sizeof(err));

		CHECK(ok == cases[i].ok, "\"%s\": got %d (%s)", cases[i].in, ok,
		      err);
		if (!ok || !cases[i].ok) {
			CHECK(ok || err[0], "\"%s\": no reason given",
			      cases[i].in);
			continue;
		}
		CHECK(p.is_time == cases[i].is_time, "\"%s\": is_time",
		      cases[i].in);
		if (cases[i].is_time) {
			CHECK(p.time_ms == cases[i].time_ms,
			      "\"%s\": %lld ms, want %lld", cases[i].in,
			      (long long)p.time_ms, cases[i].time_ms);
			continue;
		}
		CHECK(p.n == cases[i].n, "\"%s\": %d partitions", cases[i].in,
		      p.n);
		if (p.n == cases[i].n && p.n > 0) {
			CHECK(p.part[0] == cases[i].part0 &&
				  p.offset[0] == cases[i].off0,
			      "\"%s\": first %d:%lld", cases[i].in,
			      (int)p.part[0], (long long)p.offset[0]);
			CHECK(p.part[p.n - 1] == cases[i].part_last &&
				  p.offset[p.n - 1] == cases[i].off_last,
			      "\"%s\": last %d:%lld", cases[i].in,
			      (int)p.part[p.n - 1],
			      (long long)p.offset[p.n - 1]);
		}
	}
	check_ranges();
	return check_done("test_replay");
}
