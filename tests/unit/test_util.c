/* Ids: the prefix and 32 hex digits, distinct call after call, cut to the
 * buffer; UTF-8 validity. */
#include <stdlib.h>
#include <string.h>

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
	free(ids);
	return check_done("test_util");
}
