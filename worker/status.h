/* The operator's pause (POST /admin/pause, /admin/resume): set on the
 * endpoint's thread, read by each pipeline before it takes a batch. What
 * GET /status shows of the pipelines is metrics.c's (metrics_status). */
#ifndef SLUICE_STATUS_H
#define SLUICE_STATUS_H

#include <stdbool.h>

void status_set_paused(bool paused);
bool status_paused(void);

#endif
