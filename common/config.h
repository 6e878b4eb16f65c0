/* Config files: one table of settings per daemon, `key = value` lines,
 * environment overrides for the connection points. */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum cfg_type { CFG_STR, CFG_INT, CFG_ENUM };

struct cfg_setting {
	const char *key;
	enum cfg_type type;
	size_t offset;		   /* of a char * or int field in the target */
	const char *def;	   /* default, as text; NULL for none */
	long min, max;		   /* CFG_INT bounds */
	const char *const *values; /* CFG_ENUM: NULL-terminated names */
	const char *env;	   /* environment variable that overrides it */
	const char *help;
};

/* A key = value pair kept in order (kafka.* passthrough, source.*). */
struct cfg_kv {
	char *key;
	char *value;
	struct cfg_kv *next;
};

/* Called for keys not in the table; false (with errstr) rejects the key. */
typedef bool (*cfg_extra_fn)(void *target, const char *key, const char *value,
			     char *errstr, size_t errstr_size);

#define CFG_END                                                                \
	{                                                                      \
		NULL, CFG_STR, 0, NULL, 0, 0, NULL, NULL, NULL                 \
	}

/* Applies defaults, then the file (path may be NULL), then the environment.
 * CFG_ENUM fields store the index of the value. */
bool cfg_load(const struct cfg_setting *table, void *target, const char *path,
	      cfg_extra_fn extra, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));
/* Parses one line's worth; used by cfg_load and the tests. */
bool cfg_set(const struct cfg_setting *table, void *target, const char *key,
	     const char *value, cfg_extra_fn extra, char *errstr,
	     size_t errstr_size) __attribute__((warn_unused_result));
void cfg_free(const struct cfg_setting *table, void *target);
/* Prints key = value for every setting, secrets in URLs masked. */
void cfg_dump(const struct cfg_setting *table, const void *target, FILE *out);
/* Values that hold a password (URL user:password@, libpq password=) are
 * masked. */
void cfg_kv_dump(const struct cfg_kv *kv, FILE *out);
void cfg_list_keys(const struct cfg_setting *table, FILE *out);

void cfg_kv_append(struct cfg_kv **list, const char *key, const char *value);
void cfg_kv_free(struct cfg_kv *list);
/* Appends key = the secret read from path (util_read_secret), unless path
 * is empty; refuses a list that already holds key, so the secret has one
 * source. */
bool cfg_kv_secret_file(struct cfg_kv **list, const char *key, const char *path,
			const char *path_key, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

#endif
