/* Small helpers both daemons share: clocks, ids, UTF-8, growable buffers. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t util_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double util_mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 128 random bits drawn once per process, to which each id adds one: ids
 * are unique across processes and restarts (as unlikely to meet as two
 * random ones), and cost a few instructions instead of a call into the
 * DRBG on every request. They are names, not secrets. */
static uint64_t id_base_hi, id_base_lo;
static _Atomic uint64_t id_counter;
static pthread_once_t id_once = PTHREAD_ONCE_INIT;

static void id_seed(void)
{
	unsigned char raw[16];

	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		/* The DRBG failing is not worth losing a request over. */
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		srand((unsigned)(ts.tv_nsec ^ ts.tv_sec ^ getpid()));
		for (size_t i = 0; i < sizeof(raw); i++)
			raw[i] = (unsigned char)rand();
	}
	for (int i = 0; i < 8; i++) {
		id_base_hi = id_base_hi << 8 | raw[i];
		id_base_lo = id_base_lo << 8 | raw[8 + i];
	}
}

void util_random_id(char *out, size_t outsz, const char *prefix)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t n = atomic_fetch_add(&id_counter, 1) + 1;
	uint64_t lo, hi;
	size_t len = strlen(prefix), k = 0;

	pthread_once(&id_once, id_seed);
	lo = id_base_lo + n;
	hi = id_base_hi + (lo < n); /* carry */
	if (outsz == 0)
		return;
	if (len > outsz - 1)
		len = outsz - 1;
	memcpy(out, prefix, len);
	for (int i = 60; i >= 0 && len + k + 1 < outsz; i -= 4)
		out[len + k++] = hex[(hi >> i) & 15];
	for (int i = 60; i >= 0 && len + k + 1 < outsz; i -= 4)
		out[len + k++] = hex[(lo >> i) & 15];
	out[len + k] = '\0';
}

size_t util_path_append(char *path, size_t pathsz, size_t pathlen,
			const char *key, int index)
{
	char num[16];
	size_t n, room;
	const char *add;

	if (pathlen + 1 >= pathsz)
		return pathlen;
	room = pathsz - 1 - pathlen;
	if (key) {
		path[pathlen++] = '.';
		room--;
		add = key;
		n = strlen(key);
	} else {
		int k = (int)sizeof(num);
		unsigned u = index < 0 ? 0 : (unsigned)index;

		num[--k] = ']';
		do
			num[--k] = (char)('0' + u % 10);
		while ((u /= 10) && k > 1);
		num[--k] = '[';
		add = num + k;
		n = sizeof(num) - (size_t)k;
	}
	if (n > room)
		n = room;
	memcpy(path + pathlen, add, n);
	pathlen += n;
	path[pathlen] = '\0';
	return pathlen;
}

bool util_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		size_t n;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			n = 1;
			cp = c & 0x1F;
		} else if ((c & 0xF0) == 0xE0) {
			n = 2;
			cp = c & 0x0F;
		} else if ((c & 0xF8) == 0xF0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (i + n >= len)
			return false; /* truncated sequence */
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) ||
		    (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += n + 1;
	}
	return true;
}

char *util_read_file(const char *path, size_t *len, char *errstr,
		     size_t errstr_size)
{
	FILE *f = fopen(path, "rb");
	char *data = NULL;
	long size;

	if (!f) {
		snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET) != 0) {
		snprintf(errstr, errstr_size, "%s: cannot size file", path);
		goto fail;
	}
	data = malloc((size_t)size + 1);
	if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) {
		snprintf(errstr, errstr_size, "%s: read failed", path);
		goto fail;
	}
	data[size] = '\0';
	if (len)
		*len = (size_t)size;
	fclose(f);
	return data;
fail:
	free(data);
	fclose(f);
	return NULL;
}

/* Where a secret named by a setting lives. A name with no '/' is a
 * systemd credential (LoadCredential=): the service manager puts it in
 * $CREDENTIALS_DIRECTORY, a directory only the service can read. */
static bool secret_where(const char *path, char *out, size_t outsz,
			 bool *credential, char *errstr, size_t errstr_size)
{
	const char *dir;

	*credential = false;
	if (!path[0]) {
		snprintf(errstr, errstr_size, "no file named");
		return false;
	}
	if (strchr(path, '/')) {
		if ((size_t)snprintf(out, outsz, "%s", path) >= outsz)
			goto too_long;
		return true;
	}
	dir = getenv("CREDENTIALS_DIRECTORY");
	if (!dir || !dir[0]) {
		snprintf(
		    errstr, errstr_size,
		    "%s: a bare name is a systemd credential, but CREDENTIALS_DIRECTORY is not set (give a path with a '/', or LoadCredential=%s:... in the unit)",
		    path, path);
		return false;
	}
	if (strcmp(path, ".") == 0 || strcmp(path, "..") == 0) {
		snprintf(errstr, errstr_size, "%s: not a credential name",
			 path);
		return false;
	}
	*credential = true;
	if ((size_t)snprintf(out, outsz, "%s/%s", dir, path) < outsz)
		return true;
too_long:
	snprintf(errstr, errstr_size, "%.64s...: path too long", path);
	return false;
}

static bool secret_mode_ok(const char *path, int fd, bool credential,
			   char *errstr, size_t errstr_size)
{
	struct stat st;
	/* systemd grants the service a credential through an ACL where the
	 * file system has them, which shows as the group bits (the ACL
	 * mask) on a root-owned 0440 file: in the service's private
	 * credentials directory those bits give no group anything. */
	mode_t open_bits = credential ? S_IRWXO : (S_IRWXG | S_IRWXO);

	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(errstr, errstr_size, "%s: not a regular file", path);
		return false;
	}
	if (st.st_mode & open_bits) {
		snprintf(
		    errstr, errstr_size,
		    "%s: permissions %04o are too open: a secret file must not be accessible by group or others (chmod 600 it)",
		    path, (unsigned)(st.st_mode & 07777));
		return false;
	}
	return true;
}

int util_secret_open(const char *path, char *errstr, size_t errstr_size)
{
	char where[PATH_MAX];
	bool credential;
	int fd;

	if (!secret_where(path, where, sizeof(where), &credential, errstr,
			  errstr_size))
		return -1;
	fd = open(where, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(errstr, errstr_size, "%s: %s", where, strerror(errno));
		return -1;
	}
	/* The descriptor's mode, so the file checked is the file read. */
	if (!secret_mode_ok(where, fd, credential, errstr, errstr_size)) {
		close(fd);
		return -1;
	}
	return fd;
}

char *util_read_secret(const char *path, char *errstr, size_t errstr_size)
{
	int fd = util_secret_open(path, errstr, errstr_size);
	char *data = NULL;
	struct stat st;
	ssize_t n;
	size_t len;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) != 0) {
		snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (st.st_size > 4096) {
		snprintf(errstr, errstr_size,
			 "%s: %lld bytes, too long for a secret", path,
			 (long long)st.st_size);
		goto fail;
	}
	data = xmalloc((size_t)st.st_size + 1);
	n = read(fd, data, (size_t)st.st_size);
	if (n < 0 || n != st.st_size) {
		snprintf(errstr, errstr_size, "%s: read failed", path);
		goto fail;
	}
	len = (size_t)n;
	/* An editor's final newline, and blanks after the secret, are not
	 * part of it. */
	while (len > 0 && strchr(" \t\r\n", data[len - 1]))
		len--;
	data[len] = '\0';
	if (len == 0 || memchr(data, '\n', len) || memchr(data, '\0', len)) {
		snprintf(errstr, errstr_size, "%s: not one secret on one line",
			 path);
		goto fail;
	}
	close(fd);
	return data;
fail:
	if (data) {
		memset(data, 0, (size_t)st.st_size + 1);
		free(data);
	}
	close(fd);
	return NULL;
}

void buf_init(struct buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

void buf_free(struct buf *b)
{
	free(b->data);
	buf_init(b);
}

static void buf_reserve(struct buf *b, size_t extra)
{
	size_t need = b->len + extra + 1;
	size_t cap = b->cap ? b->cap : 256;

	if (need <= b->cap)
		return;
	while (cap < need)
		cap *= 2;
	b->data = xrealloc(b->data, cap);
	b->cap = cap;
}

void buf_append(struct buf *b, const void *data, size_t len)
{
	buf_reserve(b, len);
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
}

void buf_puts(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	/* One pass when it fits in what is free (most appends are short),
	 * a second once the room is made. */
	buf_reserve(b, 64);
	va_start(ap, fmt);
	n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->data[b->len] = '\0';
		return;
	}
	if ((size_t)n >= b->cap - b->len) {
		buf_reserve(b, (size_t)n);
		va_start(ap, fmt);
		vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	b->len += (size_t)n;
}

void buf_put_int(struct buf *b, long long v)
{
	char num[24];
	int k = (int)sizeof(num);
	unsigned long long u =
	    v < 0 ? 0 - (unsigned long long)v : (unsigned long long)v;

	do
		num[--k] = (char)('0' + u % 10);
	while ((u /= 10) != 0);
	if (v < 0)
		num[--k] = '-';
	buf_append(b, num + k, sizeof(num) - (size_t)k);
}

void buf_copy_escape(struct buf *b, const char *s)
{
	const char *run = s;

	for (; *s; s++) {
		const char *esc = NULL;

		switch (*s) {
		case '\\': esc = "\\\\"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		default: continue;
		}
		buf_append(b, run, (size_t)(s - run));
		buf_append(b, esc, 2);
		run = s + 1;
	}
	buf_append(b, run, (size_t)(s - run));
}

void buf_pg_array(struct buf *b, const char *const *v, size_t n)
{
	buf_puts(b, "{");
	for (size_t i = 0; i < n; i++) {
		const char *run = v[i];

		buf_puts(b, i ? ",\"" : "\"");
		for (const char *s = v[i]; *s; s++) {
			if (*s != '"' && *s != '\\')
				continue;
			buf_append(b, run, (size_t)(s - run));
			buf_append(b, "\\", 1);
			run = s;
		}
		buf_puts(b, run);
		buf_puts(b, "\"");
	}
	buf_puts(b, "}");
}

static void out_of_memory(size_t size)
{
	fprintf(stderr, "sluice: out of memory (%zu bytes)\n", size);
	abort();
}

void *xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);

	if (!p)
		out_of_memory(size);
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		out_of_memory(n * size);
	return p;
}

void *xrealloc(void *p, size_t size)
{
	void *q = realloc(p, size ? size : 1);

	if (!q)
		out_of_memory(size);
	return q;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		out_of_memory(strlen(s) + 1);
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);

	if (!p)
		out_of_memory(n + 1);
	return p;
}

struct timeval util_ms_tv(int64_t ms)
{
	struct timeval tv;

	if (ms < 0)
		ms = 0;
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	return tv;
}

uint32_t util_rand(uint32_t n)
{
	/* xorshift32, seeded once per thread from the clock and the thread's
	 * address: jitter needs spread across processes, not secrecy. */
	static _Thread_local uint32_t state;
	uint32_t x;

	if (n == 0)
		return 0;
	if (state == 0) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		state = (uint32_t)ts.tv_nsec ^ (uint32_t)getpid() ^
			(uint32_t)(uintptr_t)&state;
		if (state == 0)
			state = 2463534242u;
	}
	x = state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	state = x;
	return x % n;
}

void backoff_init(struct backoff *b, int min_ms, int max_ms)
{
	b->min_ms = min_ms > 0 ? min_ms : 1;
	b->max_ms = max_ms > b->min_ms ? max_ms : b->min_ms;
	b->step_ms = b->min_ms;
}

int backoff_next(struct backoff *b)
{
	int step = b->step_ms;
	int wait = step / 2 + (int)util_rand((uint32_t)(step - step / 2) + 1);

	b->step_ms = step > b->max_ms / 2 ? b->max_ms : step * 2;
	return wait > 0 ? wait : 1;
}

void backoff_reset(struct backoff *b)
{
	b->step_ms = b->min_ms;
}
