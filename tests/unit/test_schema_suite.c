/* The official JSON-Schema-Test-Suite (Debian's json-schema-test-suite)
 * for every keyword common/schema.c claims: a group whose schema uses
 * anything else is skipped (the validator refuses such a schema at load),
 * every other case must agree with the suite. */
#include <stdio.h>
#include <stdlib.h>

#include "../../common/schema.h"
#include "../../common/util.h"
#include "check.h"

static const char *const drafts[] = {"draft4", "draft6", "draft7"};
static const char *const keywords[] = {
    "type", "required",	 "properties", "items",	   "anyOf",
    "enum", "minLength", "maxLength",  "minItems", "maxItems"};

int main(void)
{
	const char *dir = getenv("SLUICE_SCHEMA_SUITE");
	int cases = 0, groups_skipped = 0;

	if (!dir)
		dir = "/usr/share/json-schema-test-suite/tests";
	for (size_t d = 0; d < sizeof(drafts) / sizeof(drafts[0]); d++) {
		for (size_t k = 0; k < sizeof(keywords) / sizeof(keywords[0]);
		     k++) {
			char path[512], err[256];
			char *text;
			cJSON *root, *group;

			snprintf(path, sizeof(path), "%s/%s/%s.json", dir,
				 drafts[d], keywords[k]);
			text = util_read_file(path, NULL, err, sizeof(err));
			if (!text && d == 0 && k == 4)
				continue; /* draft4 has its anyOf elsewhere */
			CHECK(text != NULL,
			      "%s (install json-schema-test-suite)", err);
			if (!text)
				continue;
			root = cJSON_Parse(text);
			free(text);
			CHECK(cJSON_IsArray(root), "%s: not a test file", path);
			cJSON_ArrayForEach(group, root)
			{
				const cJSON *schema =
				    cJSON_GetObjectItem(group, "schema");
				const cJSON *desc =
				    cJSON_GetObjectItem(group, "description");
				const cJSON *t;
				struct schema *s =
				    schema_new(schema, err, sizeof(err));

				if (!s) {
					groups_skipped++;
					continue;
				}
				cJSON_ArrayForEach(
				    t, cJSON_GetObjectItem(group, "tests"))
				{
					char p[256], msg[256];
					bool want = cJSON_IsTrue(
					    cJSON_GetObjectItem(t, "valid"));
					bool got = schema_validate(
					    s, cJSON_GetObjectItem(t, "data"),
					    p, sizeof(p), msg, sizeof(msg));

					cases++;
					CHECK(got == want, "%s/%s: %s: %s",
					      drafts[d], keywords[k],
					      desc->valuestring,
					      cJSON_GetObjectItem(t,
								  "description")
						  ->valuestring);
				}
				schema_destroy(s);
			}
			cJSON_Delete(root);
		}
	}
	printf("json-schema-test-suite: %d cases run, %d groups skipped "
	       "(unsupported keywords)\n",
	       cases, groups_skipped);
	CHECK(cases > 300, "only %d cases ran", cases);
	return check_done("test_schema_suite");
}
