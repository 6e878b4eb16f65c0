/* Key templates: placeholders, patterns, glob escaping of ids. */
#include <stdlib.h>

#include "../../worker/cache.h"
#include "check.h"

static const struct {
	const char *tmpl, *id, *want;
	bool pattern;
} cases[] = {
    {"messages:{conversation_id}:*", "c1", "messages:c1:*", true},
    {"conversation:{conversation_id}", "c1", "conversation:c1", false},
    {"conversation:{conversation_id}", "a*b", "conversation:a*b", false},
    {"messages:{conversation_id}:*", "a*b?[c]\\",
     "messages:a\\*b\\?\\[c\\]\\\\:*", true},
    {"x:{conversation_id}:{conversation_id}", "q", "x:q:q", false},
    {"static-key", "q", "static-key", false},
};

int main(void)
{
	char err[128];
	struct cache *c;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool pattern = !cases[i].pattern;
		char *got = cache_expand(cases[i].tmpl, cases[i].id, &pattern);

		CHECK_STR(got, cases[i].want, cases[i].tmpl);
		CHECK(pattern == cases[i].pattern, "case %zu pattern flag", i);
		free(got);
	}
	c = cache_new("redis://127.0.0.1:1/0", 50, "a:{conversation_id}", err,
		      sizeof(err));
	CHECK(c != NULL, "%s", err);
	CHECK(cache_new("http://x", 50, "a", err, sizeof(err)) == NULL,
	      "non-redis url accepted");
	/* Nothing listens on port 1: the ids are kept for later. */
	{
		char *ids[] = {(char *)"c1", (char *)"c2"};

		CHECK(cache_invalidate(c, ids, 2) == -1,
		      "invalidate succeeded");
		CHECK(cache_pending(c) == 2, "pending %zu", cache_pending(c));
	}
	cache_destroy(c);
	return check_done("test_cache");
}
