/* Pieces of the Prometheus text exposition both daemons' /metrics share:
 * a family's HELP and TYPE lines, label values escaped, the build_info
 * gauge and the standard process_* figures read from /proc/self. */
#ifndef SLUICE_PROM_H
#define SLUICE_PROM_H

#include "util.h"

/* "# HELP name help" and "# TYPE name type" (counter, gauge, histogram):
 * every family starts with both, and its samples follow at once. */
void prom_family(struct buf *out, const char *name, const char *type,
		 const char *help);
/* A family of one unlabelled sample. */
void prom_counter(struct buf *out, const char *name, const char *help,
		  unsigned long long v);
void prom_gauge(struct buf *out, const char *name, const char *help,
		long long v);
/* A gauge in seconds (a duration or a Unix timestamp). */
void prom_gauge_s(struct buf *out, const char *name, const char *help,
		  double v);
/* s as a label value: backslash, double quote and newline escaped. */
void prom_label(struct buf *out, const char *s);
/* prefix_build_info{version="...",commit="..."} 1, the commit only when
 * the build knew it. */
void prom_build_info(struct buf *out, const char *prefix);
/* process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds and
 * process_start_time_seconds, as the Prometheus client libraries name
 * them; a figure /proc does not give is left out rather than made up. */
void prom_process(struct buf *out);

#endif
