/* Config files: one table of settings per daemon, `key = value` lines,
 * environment overrides for the connection points. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

const struct cfg_setting *cfg_find(const struct cfg_setting *table,
				   const char *key)
{
	for (const struct cfg_setting *s = table; s->key; s++)
		if (strcmp(s->key, key) == 0)
			return s;
	return NULL;
}

/* A template may hold only the placeholders its setting fills in: an
 * unknown one ({conv_id}) would never be replaced, and the keys it names
 * would never be removed. */
static bool placeholders_ok(const struct cfg_setting *s, const char *value,
			    char *errstr, size_t errstr_size)
{
	for (const char *p = strchr(value, '{'); p; p = strchr(p + 1, '{')) {
		const char *end = strchr(p, '}');
		const char *known = s->placeholders;
		size_t len;
		bool ok = false;

		if (!end) {
			snprintf(errstr, errstr_size,
				 "%s: \"{\" without \"}\" in \"%s\"", s->key,
				 value);
			return false;
		}
		len = (size_t)(end - p) + 1;
		while (*known && !ok) {
			size_t n = strcspn(known, " ");

			ok = n == len && strncmp(known, p, len) == 0;
			known += n;
			known += strspn(known, " ");
		}
		if (!ok) {
			snprintf(errstr, errstr_size,
				 "%s: unknown placeholder %.*s (known: %s)",
				 s->key, (int)len, p, s->placeholders);
			return false;
		}
		p = end;
	}
	return true;
}

static bool cfg_apply(const struct cfg_setting *s, void *target,
		      const char *value, char *errstr, size_t errstr_size)
{
	char *field = (char *)target + s->offset;

	switch (s->type) {
	case CFG_STR: {
		char **p = (char **)(void *)field;

		if (s->placeholders &&
		    !placeholders_ok(s, value, errstr, errstr_size))
			return false;
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

static bool cfg_set_at(const struct cfg_setting *table, void *target,
		       const char *key, const char *value, const char *origin,
		       cfg_extra_fn extra, char *errstr, size_t errstr_size)
{
	const struct cfg_setting *s = cfg_find(table, key);

	if (s)
		return cfg_apply(s, target, value, errstr, errstr_size);
	if (extra)
		return extra(target, key, value, origin, errstr, errstr_size);
	snprintf(errstr, errstr_size, "unknown setting \"%s\"", key);
	return false;
}

bool cfg_set(const struct cfg_setting *table, void *target, const char *key,
	     const char *value, cfg_extra_fn extra, char *errstr,
	     size_t errstr_size)
{
	return cfg_set_at(table, target, key, value, NULL, extra, errstr,
			  errstr_size);
}

/* A value is quoted whole ("a b") or not at all: a quote that does not
 * close ("abc), closes early ("a"b") or only closes (abc") is a typo that
 * would otherwise become part of the value. */
static bool unquote(char **value, char *errstr, size_t errstr_size)
{
	char *v = *value;
	size_t len = strlen(v);

	if (v[0] != '"') {
		if (len > 0 && v[len - 1] == '"') {
			snprintf(errstr, errstr_size,
				 "value ends with a quote it never opened: %s",
				 v);
			return false;
		}
		return true;
	}
	if (len < 2 || v[len - 1] != '"') {
		snprintf(errstr, errstr_size, "unterminated quote: %s", v);
		return false;
	}
	v[len - 1] = '\0';
	v++;
	if (strchr(v, '"')) {
		snprintf(errstr, errstr_size,
			 "a quote inside a quoted value: \"%s\"", v);
		return false;
	}
	*value = v;
	return true;
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
			   const char *path, cfg_extra_fn extra,
			   struct cfg_kv **seen, char *errstr,
			   size_t errstr_size)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	char err[512];
	char origin[4200];
	int lineno = 0;
	bool ok = true;

	if (!f) {
		snprintf(errstr, errstr_size, "%s: %s", path, strerror(errno));
		return false;
	}
	while (ok && fgets(line, sizeof(line), f)) {
		char *key, *value, *eq;
		const char *first;

		lineno++;
		snprintf(origin, sizeof(origin), "%s:%d", path, lineno);
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
		/* The file alone decides: an environment override applied
		 * later must not hide that the file says two things. */
		first = cfg_origin(*seen, key);
		if (first) {
			snprintf(errstr, errstr_size,
				 "%s: duplicate key \"%s\" (first set at %s)",
				 origin, key, first);
			ok = false;
			break;
		}
		if (!unquote(&value, err, sizeof(err)) ||
		    !cfg_set_at(table, target, key, value, origin, extra, err,
				sizeof(err))) {
			snprintf(errstr, errstr_size, "%s: %s", origin, err);
			ok = false;
			break;
		}
		cfg_kv_append(seen, key, value, origin);
	}
	fclose(f);
	return ok;
}

bool cfg_load(const struct cfg_setting *table, void *target, const char *path,
	      cfg_extra_fn extra, struct cfg_kv **seen, char *errstr,
	      size_t errstr_size)
{
	struct cfg_kv *mine = NULL;
	bool ok = false;

	if (!seen)
		seen = &mine;
	for (const struct cfg_setting *s = table; s->key; s++)
		if (s->def &&
		    !cfg_apply(s, target, s->def, errstr, errstr_size))
			goto fail;
	if (path && !cfg_parse_file(table, target, path, extra, seen, errstr,
				    errstr_size))
		goto fail;
	for (const struct cfg_setting *s = table; s->key; s++) {
		const char *v = s->env ? getenv(s->env) : NULL;
		char err[512], origin[128];

		if (!v || !*v)
			continue;
		if (!cfg_apply(s, target, v, err, sizeof(err))) {
			snprintf(errstr, errstr_size, "environment %s: %s",
				 s->env, err);
			goto fail;
		}
		snprintf(origin, sizeof(origin), "env %s", s->env);
		cfg_kv_append(seen, s->key, v, origin);
	}
	ok = true;
fail:
	cfg_kv_free(mine);
	return ok;
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

bool cfg_key_is_secret(const char *key)
{
	static const char *const words[] = {"password", "secret",  "token",
					    "key.pem",	"api_key", NULL};

	/* A file holding a secret may be named: its path is no secret. */
	if (strstr(key, "_file") || strstr(key, ".location"))
		return false;
	for (int i = 0; words[i]; i++)
		if (strstr(key, words[i]))
			return true;
	return false;
}

/* "scheme://user:secret@host" → "scheme://user:***@host"; a libpq
 * keyword string with password= is hidden whole. */
const char *cfg_value_shown(const char *key, const char *v, char *buf,
			    size_t bufsz)
{
	const char *scheme = strstr(v, "://");
	const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
	const char *colon = NULL;

	if (cfg_key_is_secret(key)) {
		snprintf(buf, bufsz, "(hidden)");
		return buf;
	}
	if (strstr(v, "password=")) {
		snprintf(buf, bufsz, "(hidden: holds a password)");
		return buf;
	}
	if (at)
		colon = memchr(scheme + 3, ':', (size_t)(at - scheme - 3));
	if (colon)
		snprintf(buf, bufsz, "%.*s:***%s", (int)(colon - v), v, at);
	else
		snprintf(buf, bufsz, "%s", v);
	return buf;
}

void cfg_value_text(const struct cfg_setting *s, const void *target, char *buf,
		    size_t bufsz)
{
	const char *field = (const char *)target + s->offset;

	switch (s->type) {
	case CFG_STR: {
		const char *v = *(char *const *)(const void *)field;

		snprintf(buf, bufsz, "%s", v ? v : "");
		break;
	}
	case CFG_INT:
		snprintf(buf, bufsz, "%d", *(const int *)(const void *)field);
		break;
	case CFG_ENUM:
		snprintf(buf, bufsz, "%s",
			 s->values[*(const int *)(const void *)field]);
		break;
	}
}

const char *cfg_origin(const struct cfg_kv *seen, const char *key)
{
	const char *origin = NULL;

	for (; seen; seen = seen->next)
		if (strcmp(seen->key, key) == 0)
			origin = seen->origin;
	return origin;
}

void cfg_dump(const struct cfg_setting *table, const void *target,
	      const struct cfg_kv *seen, FILE *out)
{
	for (const struct cfg_setting *s = table; s->key; s++) {
		char text[4096], shown[4096];
		const char *origin = cfg_origin(seen, s->key);

		cfg_value_text(s, target, text, sizeof(text));
		cfg_value_shown(s->key, text, shown, sizeof(shown));
		if (!seen)
			fprintf(out, "%s = %s\n", s->key, shown);
		else
			fprintf(out, "%s = %s  (%s)\n", s->key, shown,
				origin ? origin : "default");
	}
}

static const char *type_name(const struct cfg_setting *s, char *buf,
			     size_t bufsz)
{
	switch (s->type) {
	case CFG_STR: return s->placeholders ? "template" : "string";
	case CFG_INT:
		snprintf(buf, bufsz, "int %ld..%ld", s->min, s->max);
		break;
	case CFG_ENUM:
		buf[0] = '\0';
		for (int i = 0; s->values[i]; i++) {
			size_t n = strlen(buf);

			snprintf(buf + n, bufsz - n, "%s%s", i ? "/" : "",
				 s->values[i]);
		}
		break;
	}
	return buf;
}

void cfg_list_keys(const struct cfg_setting *table,
		   const struct cfg_family_key *family, FILE *out)
{
	char type[256];

	for (const struct cfg_setting *s = table; s->key; s++)
		fprintf(out, "%s\t%s\t%s\t%s\n", s->key,
			type_name(s, type, sizeof(type)),
			s->def && s->def[0] ? s->def : "-",
			s->runtime ? "runtime" : "restart");
	for (; family && family->key; family++)
		fprintf(out, "%s\t%s\t%s\t%s\n", family->key, family->type,
			family->def ? family->def : "-",
			family->runtime ? "runtime" : "restart");
}

/* The last value seen gave the key, or NULL. */
static const char *seen_value(const struct cfg_kv *seen, const char *key)
{
	const char *v = NULL;

	for (; seen; seen = seen->next)
		if (strcmp(seen->key, key) == 0)
			v = seen->value;
	return v;
}

static int diff_one(const char *key, const char *old, const char *new,
		    bool runtime, cfg_change_fn fn, void *arg)
{
	char a[4096], b[4096];

	if (strcmp(old ? old : "", new ? new : "") == 0 &&
	    (old == NULL) == (new == NULL))
		return 0;
	snprintf(a, sizeof(a), "(unset)");
	snprintf(b, sizeof(b), "(unset)");
	if (old)
		cfg_value_shown(key, old, a, sizeof(a));
	if (new)
		cfg_value_shown(key, new, b, sizeof(b));
	/* A secret, or a password inside a URL that alone changed: that it
	 * changed is all a log may say. */
	if (cfg_key_is_secret(key) || strcmp(a, b) == 0)
		fn(arg, key, NULL, NULL, runtime);
	else
		fn(arg, key, a, b, runtime);
	return 1;
}

int cfg_diff(const struct cfg_setting *table, const void *old_target,
	     const struct cfg_kv *old_seen, const void *new_target,
	     const struct cfg_kv *new_seen,
	     bool (*family_runtime)(const char *), cfg_change_fn fn, void *arg)
{
	int n = 0;

	for (const struct cfg_setting *s = table; s->key; s++) {
		char a[4096], b[4096];

		cfg_value_text(s, old_target, a, sizeof(a));
		cfg_value_text(s, new_target, b, sizeof(b));
		n += diff_one(s->key, a, b, s->runtime, fn, arg);
	}
	/* Keys outside the table exist only as the file wrote them: those
	 * changed or gone, then those new. */
	for (const struct cfg_kv *kv = old_seen; kv; kv = kv->next)
		if (!cfg_find(table, kv->key))
			n += diff_one(
			    kv->key, kv->value, seen_value(new_seen, kv->key),
			    family_runtime && family_runtime(kv->key), fn, arg);
	for (const struct cfg_kv *kv = new_seen; kv; kv = kv->next)
		if (!cfg_find(table, kv->key) && !seen_value(old_seen, kv->key))
			n += diff_one(kv->key, NULL, kv->value,
				      family_runtime && family_runtime(kv->key),
				      fn, arg);
	return n;
}

static bool key_runtime(const struct cfg_setting *table, const char *key,
			bool (*family_runtime)(const char *))
{
	const struct cfg_setting *s = cfg_find(table, key);

	if (s)
		return s->runtime;
	return family_runtime && family_runtime(key);
}

struct cfg_kv *cfg_seen_merge(const struct cfg_setting *table,
			      const struct cfg_kv *old_seen,
			      const struct cfg_kv *new_seen,
			      bool (*family_runtime)(const char *))
{
	struct cfg_kv *out = NULL;

	for (; old_seen; old_seen = old_seen->next)
		if (!key_runtime(table, old_seen->key, family_runtime))
			cfg_kv_append(&out, old_seen->key, old_seen->value,
				      old_seen->origin);
	for (; new_seen; new_seen = new_seen->next)
		if (key_runtime(table, new_seen->key, family_runtime))
			cfg_kv_append(&out, new_seen->key, new_seen->value,
				      new_seen->origin);
	return out;
}

void cfg_kv_append(struct cfg_kv **list, const char *key, const char *value,
		   const char *origin)
{
	struct cfg_kv *kv = xcalloc(1, sizeof(*kv));

	kv->key = xstrdup(key);
	kv->value = xstrdup(value);
	kv->origin = origin ? xstrdup(origin) : NULL;
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
	cfg_kv_append(list, key, secret, path_key);
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
		free(list->origin);
		free(list);
		list = next;
	}
}

void cfg_kv_dump(const struct cfg_kv *kv, FILE *out)
{
	for (; kv; kv = kv->next) {
		char shown[4096];

		cfg_value_shown(kv->key, kv->value, shown, sizeof(shown));
		if (kv->origin)
			fprintf(out, "%s = %s  (%s)\n", kv->key, shown,
				kv->origin);
		else
			fprintf(out, "%s = %s\n", kv->key, shown);
	}
}

void cfg_reload_change(void *report, const char *key, const char *old,
		       const char *new, bool runtime)
{
	struct cfg_reload_report *r = report;
	size_t n = strlen(r->restart);

	if (old)
		log_info("reload: %s: %s -> %s", key, old, new);
	else
		log_info("reload: %s: (changed)", key);
	if (runtime)
		return;
	snprintf(r->restart + n, sizeof(r->restart) - n, "%s%s",
		 r->n_restart ? ", " : "", key);
	r->n_restart++;
}
