/* Ids: the prefix and 32 hex digits, distinct call after call, cut to the
 * buffer; UTF-8 validity; secret files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/util.h"
#include "check.h"

static int cmp(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

int main(void)
{
	enum { N = 50000, W = 40 };
	char(*ids)[W] = calloc(N, W);
	char small[8];
	int dups = 0, bad = 0;

	if (!ids)
		return 1;
	for (int i = 0; i < N; i++) {
		util_random_id(ids[i], W, "req_");
		if (strlen(ids[i]) != 4 + 32 ||
		    strncmp(ids[i], "req_", 4) != 0 ||
		    strspn(ids[i] + 4, "0123456789abcdef") != 32)
			bad++;
	}
	CHECK(bad == 0, "%d ids not req_ + 32 hex digits (e.g. %s)", bad,
	      ids[0]);
	qsort(ids, N, W, cmp);
	for (int i = 1; i < N; i++)
		dups += strcmp(ids[i - 1], ids[i]) == 0;
	CHECK(dups == 0, "%d repeated ids in %d", dups, N);
	util_random_id(small, sizeof(small), "wh_");
	CHECK(strlen(small) == sizeof(small) - 1 &&
		  strncmp(small, "wh_", 3) == 0,
	      "cut to the buffer: \"%s\"", small);
	util_random_id(small, sizeof(small), "longprefix_");
	CHECK(strcmp(small, "longpre") == 0,
	      "a prefix longer than the buffer: "
	      "\"%s\"",
	      small);

	{
		char p[16] = "$";
		size_t n = util_path_append(p, sizeof(p), 1, "entry", 0);

		n = util_path_append(p, sizeof(p), n, NULL, 12);
		n = util_path_append(p, sizeof(p), n, NULL, 0);
		CHECK_STR(p, "$.entry[12][0]", "path");
		CHECK(n == strlen(p), "length %zu", n);
		n = util_path_append(p, sizeof(p), n, "changes", 0);
		CHECK_STR(p, "$.entry[12][0].", "cut to the buffer");
		CHECK(n == sizeof(p) - 1 && strlen(p) == n, "cut length %zu",
		      n);
	}
	CHECK(util_utf8_valid("h\xc3\xa9llo", 6), "é is UTF-8");
	CHECK(!util_utf8_valid("\xc3", 1), "a cut sequence is not");
	CHECK(!util_utf8_valid("\xed\xa0\x80", 3), "a surrogate is not");
	CHECK(!util_utf8_valid("\xc0\xaf", 2), "an overlong form is not");
	{
		/* The PostgreSQL array literal, quotes and backslashes
		 * escaped. */
		static const struct {
			const char *v[3];
			size_t n;
			const char *want;
		} arrays[] = {
		    {{NULL}, 0, "{}"},
		    {{"a"}, 1, "{\"a\"}"},
		    {{"a", "b c", ""}, 3, "{\"a\",\"b c\",\"\"}"},
		    {{"q\"x", "b\\s"}, 2, "{\"q\\\"x\",\"b\\\\s\"}"},
		    {{"NULL", "{,}"}, 2, "{\"NULL\",\"{,}\"}"},
		};
		for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]);
		     i++) {
			struct buf b;

			buf_init(&b);
			buf_pg_array(&b, arrays[i].v, arrays[i].n);
			CHECK_STR(b.data, arrays[i].want, "pg array");
			buf_free(&b);
		}
	}
	{
		struct timeval tv = util_ms_tv(2500);

		CHECK(tv.tv_sec == 2 && tv.tv_usec == 500000, "2500 ms");
		tv = util_ms_tv(-5);
		CHECK(tv.tv_sec == 0 && tv.tv_usec == 0, "negative is 0");
	}
	{
		/* Back-off: each wait within [step/2, step], steps doubling
		 * to the cap, and reset back to the first. */
		struct backoff bo;
		int steps[] = {100, 200, 400, 800, 1000, 1000};
		bool spread = false;
		int first = -1;

		backoff_init(&bo, 100, 1000);
		for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
			int w = backoff_next(&bo);

			CHECK(w >= steps[i] / 2 && w <= steps[i],
			      "wait %zu: %d not in [%d, %d]", i, w,
			      steps[i] / 2, steps[i]);
		}
		backoff_reset(&bo);
		for (int i = 0; i < 50; i++) {
			int w = backoff_next(&bo);

			CHECK(w >= 50 && w <= 100, "after reset: %d", w);
			if (first < 0)
				first = w;
			else if (w != first)
				spread = true;
			backoff_reset(&bo);
		}
		CHECK(spread, "jitter: 50 first waits all %d", first);
	}
	{
		char *d = xstrndup("abcdef", 3);

		CHECK_STR(d, "abc", "xstrndup");
		free(d);
		d = xstrdup("");
		CHECK_STR(d, "", "xstrdup of empty");
		free(d);
	}
	{
		/* Secret files: one line, private, named in errors. */
		static const struct {
			const char *content;
			mode_t mode;
			const char *want; /* NULL: refused */
			const char *err;  /* in the refusal */
		} cases[] = {
		    {"s3cret\n", 0600, "s3cret", NULL},
		    {"s3cret\r\n", 0400, "s3cret", NULL},
		    {"s3cret", 0600, "s3cret", NULL},
		    {"s3cret \t\n", 0600, "s3cret", NULL},
		    {"s3cret\n", 0640, NULL, "too open"},
		    {"s3cret\n", 0604, NULL, "chmod 600"},
		    {"\n", 0600, NULL, "not one secret"},
		    {"a\nb\n", 0600, NULL, "not one secret"},
		};
		char path[] = "/tmp/sluice-test-secret-XXXXXX";
		char err[512];
		int fd = mkstemp(path);

		CHECK(fd >= 0, "mkstemp");
		for (size_t i = 0;
		     fd >= 0 && i < sizeof(cases) / sizeof(*cases); i++) {
			char *got;

			CHECK(ftruncate(fd, 0) == 0 &&
				  pwrite(fd, cases[i].content,
					 strlen(cases[i].content), 0) ==
				      (ssize_t)strlen(cases[i].content) &&
				  fchmod(fd, cases[i].mode) == 0,
			      "secret case %zu: write", i);
			err[0] = '\0';
			got = util_read_secret(path, err, sizeof(err));
			if (cases[i].want) {
				CHECK(got && strcmp(got, cases[i].want) == 0,
				      "secret case %zu: got %s (%s)", i,
				      got ? got : "NULL", err);
			} else {
				CHECK(!got && strstr(err, cases[i].err) &&
					  strstr(err, path) &&
					  !strstr(err, "s3cret"),
				      "secret case %zu: error \"%s\"", i, err);
			}
			free(got);
		}
		if (fd >= 0) {
			close(fd);
			unlink(path);
		}
		err[0] = '\0';
		CHECK(!util_read_secret("/nonexistent/secret", err,
					sizeof(err)) &&
			  strstr(err, "/nonexistent/secret"),
		      "missing file: \"%s\"", err);
	}
	{
		/* A bare name is a systemd credential: in
		 * $CREDENTIALS_DIRECTORY, whose group bits are systemd's ACL
		 * mask; refused when that is not set. */
		char dir[] = "/tmp/sluice-test-creds-XXXXXX", file[128];
		char err[512], *got;
		static const struct {
			mode_t mode;
			bool ok;
		} modes[] = {{0400, true}, {0440, true}, {0404, false}};

		CHECK(mkdtemp(dir) != NULL, "mkdtemp");
		snprintf(file, sizeof(file), "%s/tavus", dir);
		for (size_t i = 0; i < sizeof(modes) / sizeof(*modes); i++) {
			FILE *f = fopen(file, "w");

			CHECK(f && fputs("whsec_x\n", f) >= 0 &&
				  fclose(f) == 0 &&
				  chmod(file, modes[i].mode) == 0,
			      "credential write");
			unsetenv("CREDENTIALS_DIRECTORY");
			got = util_read_secret("tavus", err, sizeof(err));
			CHECK(
			    !got && strstr(err, "tavus") &&
				strstr(err, "CREDENTIALS_DIRECTORY is not set"),
			    "bare name, no directory: \"%s\"", err);
			free(got);
			setenv("CREDENTIALS_DIRECTORY", dir, 1);
			got = util_read_secret("tavus", err, sizeof(err));
			if (modes[i].ok)
				CHECK(got && strcmp(got, "whsec_x") == 0,
				      "credential %04o: %s",
				      (unsigned)modes[i].mode, got ? got : err);
			else
				CHECK(!got && strstr(err, file) &&
					  strstr(err, "too open"),
				      "credential %04o: \"%s\"",
				      (unsigned)modes[i].mode, err);
			free(got);
			/* Outside the directory, 0440 is too open. */
			got = util_read_secret(file, err, sizeof(err));
			CHECK(!got == (modes[i].mode != 0400),
			      "by path %04o: %s", (unsigned)modes[i].mode, err);
			free(got);
			unlink(file);
		}
		unsetenv("CREDENTIALS_DIRECTORY");
		rmdir(dir);
	}
	free(ids);
	return check_done("test_util");
}
