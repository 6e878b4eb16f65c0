/* The exposition pieces both daemons share: family headers, label
 * escaping, build_info, and process_* figures that describe this very
 * process. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "../../common/prom.h"
#include "check.h"

/* The value of the first sample line "name value" in text, or -1. */
static double sample(const char *text, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = text; p && *p;
	     p = strchr(p, '\n'), p = p ? p + 1 : p)
		if (strncmp(p, name, n) == 0 && p[n] == ' ')
			return atof(p + n + 1);
	return -1;
}

int main(void)
{
	static const struct {
		const char *in, *want;
	} labels[] = {
	    {"plain", "plain"},
	    {"a\"b", "a\\\"b"},
	    {"back\\slash", "back\\\\slash"},
	    {"two\nlines", "two\\nlines"},
	    {"", ""},
	};
	struct buf b;
	struct timeval now;

	for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++) {
		buf_init(&b);
		buf_puts(&b, "");
		prom_label(&b, labels[i].in);
		CHECK_STR(b.data, labels[i].want, labels[i].in);
		buf_free(&b);
	}

	buf_init(&b);
	prom_counter(&b, "x_total", "Things.", 42);
	CHECK_STR(b.data,
		  "# HELP x_total Things.\n# TYPE x_total counter\n"
		  "x_total 42\n",
		  "counter");
	buf_reset(&b);
	prom_gauge_s(&b, "x_seconds", "A time.", 1.5);
	CHECK_STR(b.data,
		  "# HELP x_seconds A time.\n# TYPE x_seconds gauge\n"
		  "x_seconds 1.500\n",
		  "gauge in seconds");
	buf_reset(&b);
	prom_build_info(&b, "sluice_test");
	CHECK(strstr(b.data, "# TYPE sluice_test_build_info gauge\n") &&
		  strstr(b.data,
			 "sluice_test_build_info{version=\"" SLUICE_VERSION
			 "\"") &&
		  strstr(b.data, "} 1\n"),
	      "build_info: %s", b.data);
	buf_free(&b);

	buf_init(&b);
	prom_process(&b);
	gettimeofday(&now, NULL);
	{
		double start = sample(b.data, "process_start_time_seconds");
		double rss = sample(b.data, "process_resident_memory_bytes");
		double fds = sample(b.data, "process_open_fds");
		double max = sample(b.data, "process_max_fds");
		double cpu = sample(b.data, "process_cpu_seconds_total");

		/* This test started moments ago (the clock tick is 10 ms,
		 * btime a whole second). */
		CHECK(start > (double)now.tv_sec - 60 &&
			  start <= (double)now.tv_sec + 1,
		      "start time %.3f, now %ld", start, (long)now.tv_sec);
		CHECK(rss > 100000 && rss < 1e9, "rss %.0f", rss);
		/* stdin, stdout and stderr at least; not /proc's own. */
		CHECK(fds >= 3 && fds < 1000, "open fds %.0f", fds);
		CHECK(max >= fds, "max fds %.0f", max);
		CHECK(cpu >= 0 && cpu < 60, "cpu %.2f", cpu);
		CHECK(strstr(b.data, "# HELP process_cpu_seconds_total ") &&
			  strstr(b.data,
				 "# TYPE process_cpu_seconds_total counter\n"),
		      "%s", b.data);
	}
	buf_free(&b);
	return check_done("prom");
}
