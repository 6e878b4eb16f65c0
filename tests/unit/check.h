/* A minimal table-driven test harness: CHECK records, check_done reports
 * "N passed, N failed" and sets the exit status. */
#ifndef SLUICE_CHECK_H
#define SLUICE_CHECK_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                       \
	do {                                                                   \
		if (cond) {                                                    \
			check_passed++;                                        \
		} else {                                                       \
			check_failed++;                                        \
			fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__,       \
				__LINE__, #cond);                              \
			fprintf(stderr, __VA_ARGS__);                          \
			fputc('\n', stderr);                                   \
		}                                                              \
	} while (0)

static inline bool check_streq(const char *got, const char *want)
{
	return got && strcmp(got, want) == 0;
}

#define CHECK_STR(got, want, name)                                             \
	CHECK(check_streq((got), (want)), "%s: got \"%s\" want \"%s\"",        \
	      (name), check_streq((got), (got)) ? (got) : "(null)", (want))

static inline int check_done(const char *suite)
{
	printf("%s: %d passed, %d failed\n", suite, check_passed, check_failed);
	return check_failed ? 1 : 0;
}

#endif
