/* Pieces of the Prometheus text exposition both daemons share, and the
 * process_* figures from /proc/self. */
#include "prom.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The Makefile passes the commit it was built from; a build outside a git
 * checkout (a source tarball) has none, and says none. */
#ifndef SLUICE_COMMIT
#define SLUICE_COMMIT ""
#endif

void prom_family(struct buf *out, const char *name, const char *type,
		 const char *help)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void prom_counter(struct buf *out, const char *name, const char *help,
		  unsigned long long v)
{
	prom_family(out, name, "counter", help);
	buf_printf(out, "%s %llu\n", name, v);
}

void prom_gauge(struct buf *out, const char *name, const char *help,
		long long v)
{
	prom_family(out, name, "gauge", help);
	buf_printf(out, "%s %lld\n", name, v);
}

void prom_gauge_s(struct buf *out, const char *name, const char *help, double v)
{
	prom_family(out, name, "gauge", help);
	buf_printf(out, "%s %.3f\n", name, v);
}

void prom_label(struct buf *out, const char *s)
{
	for (; *s; s++) {
		if (*s == '\n') {
			buf_puts(out, "\\n");
			continue;
		}
		if (*s == '"' || *s == '\\')
			buf_append(out, "\\", 1);
		buf_append(out, s, 1);
	}
}

void prom_build_info(struct buf *out, const char *prefix)
{
	char name[96];

	snprintf(name, sizeof(name), "%s_build_info", prefix);
	prom_family(out, name, "gauge",
		    "Always 1; the labels say which build is running.");
	buf_printf(out, "%s{version=\"", name);
	prom_label(out, SLUICE_VERSION);
	if (SLUICE_COMMIT[0]) {
		buf_puts(out, "\",commit=\"");
		prom_label(out, SLUICE_COMMIT);
	}
	buf_puts(out, "\"} 1\n");
}

/* The boot time (/proc/stat's btime) never changes while the process
 * lives: read once. */
static pthread_once_t btime_once = PTHREAD_ONCE_INIT;
static long long btime = -1;

static void read_btime(void)
{
	FILE *f = fopen("/proc/stat", "r");
	char line[256];

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "btime %lld", &btime) == 1)
			break;
	if (f)
		fclose(f);
}

/* /proc/self/stat's fields from the state on (field 3): the command name
 * before it is in parentheses and may hold spaces, so the split starts
 * after its last ')'. */
static int stat_fields(unsigned long long *v, int n)
{
	char text[1024];
	FILE *f = fopen("/proc/self/stat", "r");
	size_t len = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
	char *p, *end;
	int i;

	if (f)
		fclose(f);
	text[len] = '\0';
	p = strrchr(text, ')');
	if (!p)
		return 0;
	p += 2;		      /* ") " */
	p += strcspn(p, " "); /* the state, a letter */
	for (i = 0; i < n; i++) {
		v[i] = strtoull(p, &end, 10);
		if (end == p)
			break;
		p = end;
	}
	return i;
}

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

void prom_process(struct buf *out)
{
	/* Fields 4 to 24 of /proc/self/stat: v[i] is field i + 4. */
	unsigned long long v[21];
	long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	struct rlimit rl;
	int fds = open_fds();

	pthread_once(&btime_once, read_btime);
	if (tck > 0 && stat_fields(v, 21) == 21) {
		prom_family(out, "process_cpu_seconds_total", "counter",
			    "User and system CPU time spent, in seconds.");
		buf_printf(out, "process_cpu_seconds_total %.2f\n",
			   (double)(v[10] + v[11]) / (double)tck);
		prom_gauge(out, "process_virtual_memory_bytes",
			   "Virtual memory size in bytes.", (long long)v[19]);
		prom_gauge(out, "process_resident_memory_bytes",
			   "Resident memory size in bytes.",
			   (long long)v[20] * page);
		if (btime >= 0)
			prom_gauge_s(out, "process_start_time_seconds",
				     "Start time of the process since the "
				     "Unix epoch, in seconds.",
				     (double)btime +
					 (double)v[18] / (double)tck);
	}
	if (fds >= 0)
		prom_gauge(out, "process_open_fds", "Open file descriptors.",
			   fds);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		prom_gauge(out, "process_max_fds",
			   "The limit on open file descriptors.",
			   (long long)rl.rlim_cur);
}
