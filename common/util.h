/* Small helpers both daemons share: clocks, ids, UTF-8, growable buffers. */
#ifndef SLUICE_UTIL_H
#define SLUICE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

#define SLUICE_VERSION "0.1.0"

int64_t util_now_ms(void);  /* wall clock, ms since the epoch */
int64_t util_mono_ms(void); /* monotonic, for durations */
double util_mono_s(void);

/* Appends ".key" (key not NULL) or "[index]" to the JSON path in
 * path[0..pathlen), cut to pathsz; returns the new length. No printf: it
 * runs for every node a validator walks. */
size_t util_path_append(char *path, size_t pathsz, size_t pathlen,
			const char *key, int index);

/* Random id: prefix then 32 hex digits; out must hold prefix + 33 bytes. */
void util_random_id(char *out, size_t outsz, const char *prefix);

/* Strict UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF). */
bool util_utf8_valid(const char *s, size_t len);

/* Reads a whole small file; NUL-terminated, caller frees. */
char *util_read_file(const char *path, size_t *len, char *errstr,
		     size_t errstr_size);

/* A secret kept in a file. A path with a '/' is used as it is; a bare
 * name is a systemd credential, looked up in $CREDENTIALS_DIRECTORY (and
 * refused when that is not set). The file must be a regular file that
 * group and others may not read or write, as ssh refuses a private key
 * (in $CREDENTIALS_DIRECTORY the group bits are systemd's ACL mask and
 * pass). Errors name the file, never its content. */

/* The checked file open for reading (O_CLOEXEC), or -1. */
int util_secret_open(const char *path, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
/* The secret's one line (trailing blanks and newline dropped). NUL-terminated,
 * caller frees (and should wipe). */
char *util_read_secret(const char *path, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

/* A growable byte buffer (used to build COPY data and replies). */
struct buf {
	char *data;
	size_t len;
	size_t cap;
};

void buf_init(struct buf *b);
void buf_reset(struct buf *b);
void buf_free(struct buf *b);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends v in decimal. */
void buf_put_int(struct buf *b, long long v);
/* Appends s escaped for PostgreSQL COPY's text format. */
void buf_copy_escape(struct buf *b, const char *s);

/* Appends a PostgreSQL array literal, {"a","b\\"c"}, for a text[] query
 * parameter: one round trip for any number of keys. */
void buf_pg_array(struct buf *b, const char *const *v, size_t n);

/* Checked allocation. Running out of memory is not a state a daemon can
 * serve through, so these say so and abort instead of every caller
 * checking (and some forgetting). */
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* ms as a timeval, for event_add() and evhttp timeouts. */
struct timeval util_ms_tv(int64_t ms);

/* Capped exponential back-off with jitter: each wait is drawn between half
 * and all of the current step, which then doubles up to max_ms. The jitter
 * keeps a fleet that lost the same dependency from retrying in step. */
struct backoff {
	int min_ms, max_ms, step_ms;
};
void backoff_init(struct backoff *b, int min_ms, int max_ms);
int backoff_next(struct backoff *b); /* the wait to use now */
void backoff_reset(struct backoff *b);
/* A number in [0, n), from a per-thread generator (not for secrets). */
uint32_t util_rand(uint32_t n);

#endif
