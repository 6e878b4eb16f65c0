/* Validates a JSON document against a JSON Schema read from schemas/.
 * Supports the keywords sluice's schemas use: type, required, properties,
 * items, anyOf, enum, minLength, maxLength, minItems, maxItems. */
#ifndef SLUICE_SCHEMA_H
#define SLUICE_SCHEMA_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

struct schema;

struct schema *schema_load(const char *path, char *errstr, size_t errstr_size);
/* From a parsed schema (copied); NULL when it uses an unsupported
 * keyword or form. */
struct schema *schema_new(const cJSON *root, char *errstr, size_t errstr_size);
void schema_destroy(struct schema *s);
/* On failure path gets the JSON path of the offending value ("$.a[2].b")
 * and msg what is wrong with it. */
bool schema_validate(const struct schema *s, const cJSON *doc, char *path,
		     size_t pathsz, char *msg, size_t msgsz);

#endif
