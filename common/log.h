/* Logging: one event a line to stderr, text or JSON, level checked first. */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdbool.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Atomic: a SIGHUP changes it on one thread while the worker's pipeline
 * threads check it before every line. */
extern _Atomic int log_level_current;

void log_setup(const char *prog, int level, bool json);
/* Takes effect at once in every thread. */
void log_set_level(int level);
/* ctx may be NULL; otherwise it prefixes the line ("req=..." or "t/p@o"). */
void log_write(int level, const char *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* NULL-terminated, indexed by enum log_level / by json-ness: the values
 * the log_level and log_format settings accept. */
extern const char *const log_level_names[];
extern const char *const log_format_names[];

#define log_at(lvl, ctx, ...)                                                  \
	do {                                                                   \
		if ((lvl) >= log_level_current)                                \
			log_write((lvl), (ctx), __VA_ARGS__);                  \
	} while (0)

#define log_debug(...) log_at(LOG_DEBUG, NULL, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, NULL, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARN, NULL, __VA_ARGS__)
#define log_error(...) log_at(LOG_ERROR, NULL, __VA_ARGS__)
#define log_ctx_debug(ctx, ...) log_at(LOG_DEBUG, (ctx), __VA_ARGS__)
#define log_ctx_info(ctx, ...) log_at(LOG_INFO, (ctx), __VA_ARGS__)
#define log_ctx_warn(ctx, ...) log_at(LOG_WARN, (ctx), __VA_ARGS__)
#define log_ctx_error(ctx, ...) log_at(LOG_ERROR, (ctx), __VA_ARGS__)

#endif
