/* Logging: one event a line to stderr, text or JSON, level checked first. */
#include "log.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

_Atomic int log_level_current = LOG_INFO;
static const char *log_prog = "sluice";
static bool log_json;

const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};
const char *const log_format_names[] = {"text", "json", NULL};

void log_setup(const char *prog, int level, bool json)
{
	log_prog = prog;
	log_level_current = level;
	log_json = json;
}

void log_set_level(int level)
{
	log_level_current = level;
}

void log_write(int level, const char *ctx, const char *fmt, ...)
{
	char msg[2048];
	char ts[96];
	struct timeval tv;
	struct tm tm;
	va_list ap;

	if (level < LOG_DEBUG || level > LOG_ERROR)
		level = LOG_ERROR;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000));

	if (log_json) {
		cJSON *o = cJSON_CreateObject();
		char *line;

		cJSON_AddStringToObject(o, "ts", ts);
		cJSON_AddStringToObject(o, "level", log_level_names[level]);
		cJSON_AddStringToObject(o, "prog", log_prog);
		if (ctx)
			cJSON_AddStringToObject(o, "ctx", ctx);
		cJSON_AddStringToObject(o, "msg", msg);
		line = cJSON_PrintUnformatted(o);
		if (line)
			fprintf(stderr, "%s\n", line);
		cJSON_free(line);
		cJSON_Delete(o);
		return;
	}
	/* Keep one event on one line whatever the message holds. */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	if (ctx)
		fprintf(stderr, "%s %s %s: [%s] %s\n", ts, log_prog,
			log_level_names[level], ctx, msg);
	else
		fprintf(stderr, "%s %s %s: %s\n", ts, log_prog,
			log_level_names[level], msg);
}
