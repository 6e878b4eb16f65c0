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
	/* A SIGHUP applies it to the running daemon; otherwise a changed
	 * value waits for a restart (and the reload says so). */
	bool runtime;
	/* A template: the only {placeholders} it may hold, space-separated
	 * ("{conversation_id}"); NULL for a plain value. */
	const char *placeholders;
};

#define CFG_RUNTIME true
#define CFG_RESTART false

/* A key = value pair kept in order (kafka.* passthrough, source.*, the
 * values a load saw). */
struct cfg_kv {
	char *key;
	char *value;
	/* Where the value came from: "FILE:LINE" or "env NAME"; NULL when
	 * set by code. */
	char *origin;
	struct cfg_kv *next;
};

/* Called for keys not in the table, with where the value came from (may
 * be NULL); false (with errstr) rejects the key. */
typedef bool (*cfg_extra_fn)(void *target, const char *key, const char *value,
			     const char *origin, char *errstr,
			     size_t errstr_size);

#define CFG_END                                                                \
	{                                                                      \
		NULL, CFG_STR, 0, NULL, 0, 0, NULL, NULL, NULL, false, NULL    \
	}

/* A key of a family the table cannot list one by one (source.NAME.kind):
 * what --list-keys prints for it. */
struct cfg_family_key {
	const char *key; /* with NAME standing for the name */
	const char *type;
	const char *def; /* NULL: none */
	bool runtime;
};

/* Applies defaults, then the file (path may be NULL), then the environment.
 * CFG_ENUM fields store the index of the value. A key set twice in the
 * file, a value with a quote that does not close, and a template with a
 * placeholder the setting does not know are refused with FILE:LINE. When
 * seen is not NULL, it receives every value the file and the environment
 * set, in order, with its origin (the caller frees it). */
bool cfg_load(const struct cfg_setting *table, void *target, const char *path,
	      cfg_extra_fn extra, struct cfg_kv **seen, char *errstr,
	      size_t errstr_size) __attribute__((warn_unused_result));
/* Parses one line's worth; used by cfg_load and the tests. */
bool cfg_set(const struct cfg_setting *table, void *target, const char *key,
	     const char *value, cfg_extra_fn extra, char *errstr,
	     size_t errstr_size) __attribute__((warn_unused_result));
void cfg_free(const struct cfg_setting *table, void *target);
/* Prints key = value for every setting, secrets in URLs masked; with seen
 * (from cfg_load), each line ends with the value's origin: "(FILE:LINE)",
 * "(env NAME)" or "(default)". */
void cfg_dump(const struct cfg_setting *table, const void *target,
	      const struct cfg_kv *seen, FILE *out);
/* Values that hold a password (URL user:password@, libpq password=) are
 * masked, and keys that name a secret hidden whole; each with its origin
 * when it has one. */
void cfg_kv_dump(const struct cfg_kv *kv, FILE *out);
/* One line per key: key, type, default, "runtime" or "restart",
 * tab-separated; then the families' keys. */
void cfg_list_keys(const struct cfg_setting *table,
		   const struct cfg_family_key *family, FILE *out);

/* Whether a key names a secret (password, secret, token, private key):
 * its value is never printed or logged. */
bool cfg_key_is_secret(const char *key);
/* The value as it may be shown: masked, or "(hidden)". Returns buf. */
const char *cfg_value_shown(const char *key, const char *value, char *buf,
			    size_t bufsz);
/* The setting's value rendered as text, as the file would write it. */
void cfg_value_text(const struct cfg_setting *s, const void *target, char *buf,
		    size_t bufsz);
const struct cfg_setting *cfg_find(const struct cfg_setting *table,
				   const char *key);
/* The origin of key's value in seen (the last one), or NULL: a default. */
const char *cfg_origin(const struct cfg_kv *seen, const char *key);

/* One changed key of a reload: old and new as they may be shown ("(unset)"
 * for a key one side lacks; both NULL for a secret, which only "changed"),
 * and whether it applies at run time. */
typedef void (*cfg_change_fn)(void *arg, const char *key, const char *old,
			      const char *new, bool runtime);
/* Compares two loads of the same table: every table key by its effective
 * value, then every other key (kafka.*, source.*) by what the files said;
 * family_runtime says which of those apply at run time. Calls fn per
 * changed key, in table order then file order; returns how many. */
int cfg_diff(const struct cfg_setting *table, const void *old_target,
	     const struct cfg_kv *old_seen, const void *new_target,
	     const struct cfg_kv *new_seen,
	     bool (*family_runtime)(const char *), cfg_change_fn fn, void *arg);

/* A reload's changes as both daemons report them: one log line per key
 * (cfg_reload_change is a cfg_change_fn), and the keys that wait for a
 * restart gathered for its warning. */
struct cfg_reload_report {
	char restart[2048];
	int n_restart;
};
void cfg_reload_change(void *report, const char *key, const char *old,
		       const char *new, bool runtime);

/* What a reload leaves running, as a seen list: the new file's entries for
 * keys that apply at run time, the old ones for those that wait for a
 * restart (so the next reload still reports them). */
struct cfg_kv *cfg_seen_merge(const struct cfg_setting *table,
			      const struct cfg_kv *old_seen,
			      const struct cfg_kv *new_seen,
			      bool (*family_runtime)(const char *));

void cfg_kv_append(struct cfg_kv **list, const char *key, const char *value,
		   const char *origin);
void cfg_kv_free(struct cfg_kv *list);
/* Appends key = the secret read from path (util_read_secret), unless path
 * is empty; refuses a list that already holds key, so the secret has one
 * source. */
bool cfg_kv_secret_file(struct cfg_kv **list, const char *key, const char *path,
			const char *path_key, char *errstr, size_t errstr_size)
    __attribute__((warn_unused_result));

#endif
