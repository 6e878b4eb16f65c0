/* Config files: one table of settings per daemon, `key = value` lines,
 * environment overrides for the connection points. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const struct cfg_setting *cfg_find(const struct cfg_setting *table,
					  const char *key)
{
	for (const struct cfg_setting *s = table; s->key; s++)
		if (strcmp(s->key, key) == 0)
			return s;
	return NULL;
}

static bool cfg_apply(const struct cfg_setting *s, void *target,
		      const char *value, char *errstr, size_t errstr_size)
{
	char *field = (char *)target + s->offset;

	switch (s->type) {
	case CFG_STR: {
		char **p = (char **)(void *)field;

		free(*p);
		*p = xstrdup(value);
		return true;
	}
	case CFG_INT: {
		char *end;
		long v;

		errno = 0;
		v = strtol(value, &end, 10);
		if (errno || end == value || *end != '\0') {
			snprintf(errstr, errstr_size,
				 "%s: \"%s\" is not an integer", s->key, value);
			return false;
		}
		if (v < s->min || v > s->max) {
			snprintf(errstr, errstr_size,
				 "%s: %ld is outside %ld..%ld", s->key, v,
				 s->min, s->max);
			return false;
		}
		*(int *)(void *)field = (int)v;
		return true;
	}
	case CFG_ENUM:
		for (int i = 0; s->values[i]; i++) {
			if (strcmp(s->values[i], value) == 0) {
				*(int *)(void *)field = i;
				return true;
			}
		}
		snprintf(errstr, errstr_size, "%s: \"%s\" is not one of",
			 s->key, value);
		for (int i = 0; s->values[i]; i++) {
			size_t n = strlen(errstr);

			snprintf(errstr + n, errstr_size - n, " %s",
				 s->values[i]);
		}
		return false;
	}
	return false;
}

bool cfg_set(const struct cfg_setting *table, void *target, const char *key,
	     const char *value, cfg_extra_fn extra, char *errstr,
	     size_t errstr_size)
{
	const struct cfg_setting *s = cfg_find(table, key);

	if (s)
		return cfg_apply(s, target, value, errstr, errstr_size);
	if (extra)
		return extra(target, key, value, errstr, errstr_size);
	snprintf(errstr, errstr_size, "unknown setting \"%s\"", key);
	return false;
}

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

static bool cfg_parse_file(const struct cfg_setting *table, void *target,
			   const char *path, cfg_extra_fn extra, char *errstr,
			   size_t errstr_size)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	char err[512];
	int lineno = 0;
	bool ok = true;

	if (!f) {
		snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
		return false;
	}
	while (ok && fgets(line, sizeof(line), f)) {
		char *key, *value, *eq;
		size_t vlen;

		lineno++;
		key = trim(line);
		if (*key == '\0' || *key == '#' || *key == ';')
			continue;
		eq = strchr(key, '=');
		if (!eq) {
			snprintf(errstr, errstr_size,
				 "%s:%d: expected key = value", path, lineno);
			ok = false;
			break;
		}
		*eq = '\0';
		key = trim(key);
		value = trim(eq + 1);
		vlen = strlen(value);
		if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
			value[vlen - 1] = '\0';
			value++;
		}
		if (!cfg_set(table, target, key, value, extra, err,
			     sizeof(err))) {
			snprintf(errstr, errstr_size, "%s:%d: %s", path, lineno,
				 err);
			ok = false;
		}
	}
	fclose(f);
	return ok;
}

bool cfg_load(const struct cfg_setting *table, void *target, const char *path,
	      cfg_extra_fn extra, char *errstr, size_t errstr_size)
{
	for (const struct cfg_setting *s = table; s->key; s++)
		if (s->def &&
		    !cfg_apply(s, target, s->def, errstr, errstr_size))
			return false;
	if (path &&
	    !cfg_parse_file(table, target, path, extra, errstr, errstr_size))
		return false;
	for (const struct cfg_setting *s = table; s->key; s++) {
		const char *v = s->env ? getenv(s->env) : NULL;
		char err[512];

		if (v && *v && !cfg_apply(s, target, v, err, sizeof(err))) {
			snprintf(errstr, errstr_size, "environment %s: %s",
				 s->env, err);
			return false;
		}
	}
	return true;
}

void cfg_free(const struct cfg_setting *table, void *target)
{
	for (const struct cfg_setting *s = table; s->key; s++) {
		if (s->type == CFG_STR) {
			char **p =
			    (char **)(void *)((char *)target + s->offset);

			free(*p);
			*p = NULL;
		}
	}
}

/* "scheme://user:secret@host" → "scheme://user:***@host"; a libpq
 * keyword string with password= is hidden whole. */
static void print_masked(FILE *out, const char *key, const char *v)
{
	const char *scheme = strstr(v, "://");
	const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
	const char *colon = NULL;

	if (strstr(v, "password=")) {
		fprintf(out, "%s = (hidden: holds a password)\n", key);
		return;
	}
	if (at)
		colon = memchr(scheme + 3, ':', (size_t)(at - scheme - 3));
	if (colon)
		fprintf(out, "%s = %.*s:***%s\n", key, (int)(colon - v), v, at);
	else
		fprintf(out, "%s = %s\n", key, v);
}

void cfg_dump(const struct cfg_setting *table, const void *target, FILE *out)
{
	for (const struct cfg_setting *s = table; s->key; s++) {
		const char *field = (const char *)target + s->offset;

		switch (s->type) {
		case CFG_STR: {
			const char *v = *(char *const *)(const void *)field;

			print_masked(out, s->key, v ? v : "");
			break;
		}
		case CFG_INT:
			fprintf(out, "%s = %d\n", s->key,
				*(const int *)(const void *)field);
			break;
		case CFG_ENUM:
			fprintf(out, "%s = %s\n", s->key,
				s->values[*(const int *)(const void *)field]);
			break;
		}
	}
}

void cfg_list_keys(const struct cfg_setting *table, FILE *out)
{
	for (const struct cfg_setting *s = table; s->key; s++)
		fprintf(out, "%s\n", s->key);
}

void cfg_kv_append(struct cfg_kv **list, const char *key, const char *value)
{
	struct cfg_kv *kv = xcalloc(1, sizeof(*kv));

	kv->key = xstrdup(key);
	kv->value = xstrdup(value);
	while (*list)
		list = &(*list)->next;
	*list = kv;
}

bool cfg_kv_secret_file(struct cfg_kv **list, const char *key, const char *path,
			const char *path_key, char *errstr, size_t errstr_size)
{
	char err[512];
	char *secret;

	if (!path || !path[0])
		return true;
	for (const struct cfg_kv *kv = *list; kv; kv = kv->next)
		if (strcmp(kv->key, key) == 0) {
			snprintf(errstr, errstr_size,
				 "%s and %s both set: keep one", key, path_key);
			return false;
		}
	secret = util_read_secret(path, err, sizeof(err));
	if (!secret) {
		snprintf(errstr, errstr_size, "%s: %s", path_key, err);
		return false;
	}
	cfg_kv_append(list, key, secret);
	memset(secret, 0, strlen(secret));
	free(secret);
	return true;
}

void cfg_kv_free(struct cfg_kv *list)
{
	while (list) {
		struct cfg_kv *next = list->next;

		free(list->key);
		free(list->value);
		free(list);
		list = next;
	}
}

void cfg_kv_dump(const struct cfg_kv *kv, FILE *out)
{
	for (; kv; kv = kv->next) {
		bool secret =
		    strstr(kv->key, "password") || strstr(kv->key, "secret");

		if (secret)
			fprintf(out, "%s = (hidden)\n", kv->key);
		else
			print_masked(out, kv->key, kv->value);
	}
}
