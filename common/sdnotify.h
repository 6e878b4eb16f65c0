/* systemd notification protocol (READY=1, STOPPING=1, WATCHDOG=1, STATUS=). */
#ifndef SLUICE_SDNOTIFY_H
#define SLUICE_SDNOTIFY_H

#include <stdint.h>

/* No-op when NOTIFY_SOCKET is unset. */
void sdnotify(const char *state);
void sdnotify_status(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
/* Half of WATCHDOG_USEC in ms, or 0 when no watchdog is asked for. */
int64_t sdnotify_watchdog_interval_ms(void);

#endif
