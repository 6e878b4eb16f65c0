/* Validates a JSON document against a JSON Schema read from schemas/. */
#include "schema.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct schema {
	cJSON *root;
};

static const char *const known_keywords[] = {
    "$schema",	"$id",	    "title",	  "description",
    "type",	"required", "properties", "items",
    "anyOf",	"enum",	    "minLength",  "maxLength",
    "minItems", "maxItems", "examples",	  NULL};

/* A schema using a keyword this validator does not enforce would silently
 * accept too much: refuse it at load time instead. */
static bool schema_check_keywords(const cJSON *node, char *errstr,
				  size_t errstr_size)
{
	const cJSON *child;

	if (!cJSON_IsObject(node))
		return true;
	cJSON_ArrayForEach(child, node)
	{
		bool known = false;

		for (int i = 0; known_keywords[i]; i++)
			if (strcmp(child->string, known_keywords[i]) == 0)
				known = true;
		if (!known) {
			snprintf(errstr, errstr_size,
				 "unsupported schema keyword \"%s\"",
				 child->string);
			return false;
		}
		if (strcmp(child->string, "properties") == 0) {
			const cJSON *p;

			cJSON_ArrayForEach(p, child) if (
			    !schema_check_keywords(p, errstr,
						   errstr_size)) return false;
		} else if (strcmp(child->string, "items") == 0) {
			/* The tuple form (an array of schemas) is not
			 * enforced: refuse it rather than accept anything. */
			if (!cJSON_IsObject(child) && !cJSON_IsBool(child)) {
				snprintf(errstr, errstr_size,
					 "unsupported form of \"items\" (only "
					 "one schema for every item)");
				return false;
			}
			if (!schema_check_keywords(child, errstr, errstr_size))
				return false;
		} else if (strcmp(child->string, "anyOf") == 0) {
			const cJSON *p;

			cJSON_ArrayForEach(p, child) if (
			    !schema_check_keywords(p, errstr,
						   errstr_size)) return false;
		}
	}
	return true;
}

struct schema *schema_load(const char *path, char *errstr, size_t errstr_size)
{
	char err[256];
	char *text = util_read_file(path, NULL, err, sizeof(err));
	struct schema *s;
	cJSON *root;

	if (!text) {
		snprintf(errstr, errstr_size, "%s", err);
		return NULL;
	}
	root = cJSON_Parse(text);
	free(text);
	if (!root || !cJSON_IsObject(root)) {
		snprintf(errstr, errstr_size, "%s: not a JSON object", path);
		cJSON_Delete(root);
		return NULL;
	}
	if (!schema_check_keywords(root, err, sizeof(err))) {
		snprintf(errstr, errstr_size, "%s: %s", path, err);
		cJSON_Delete(root);
		return NULL;
	}
	s = xcalloc(1, sizeof(*s));
	s->root = root;
	return s;
}

struct schema *schema_new(const cJSON *root, char *errstr, size_t errstr_size)
{
	struct schema *s;

	if (!cJSON_IsObject(root) && !cJSON_IsBool(root)) {
		snprintf(errstr, errstr_size,
			 "a schema is an object or a "
			 "boolean");
		return NULL;
	}
	if (!schema_check_keywords(root, errstr, errstr_size))
		return NULL;
	s = xcalloc(1, sizeof(*s));
	s->root = cJSON_Duplicate(root, true);
	return s;
}

void schema_destroy(struct schema *s)
{
	if (!s)
		return;
	cJSON_Delete(s->root);
	free(s);
}

static size_t utf8_length(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xC0) != 0x80)
			n++;
	return n;
}

static bool type_matches(const char *type, const cJSON *v)
{
	if (strcmp(type, "object") == 0)
		return cJSON_IsObject(v);
	if (strcmp(type, "array") == 0)
		return cJSON_IsArray(v);
	if (strcmp(type, "string") == 0)
		return cJSON_IsString(v);
	if (strcmp(type, "boolean") == 0)
		return cJSON_IsBool(v);
	if (strcmp(type, "null") == 0)
		return cJSON_IsNull(v);
	if (strcmp(type, "number") == 0)
		return cJSON_IsNumber(v);
	if (strcmp(type, "integer") == 0)
		return cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
		       floor(v->valuedouble) == v->valuedouble;
	return false;
}

struct vctx {
	char *path;
	size_t pathsz;
	char *msg;
	size_t msgsz;
};

static bool validate_node(const cJSON *schema, const cJSON *v, struct vctx *c,
			  size_t pathlen);

static bool fail(struct vctx *c, size_t pathlen, const char *fmt,
		 const char *arg)
{
	c->path[pathlen < c->pathsz ? pathlen : c->pathsz - 1] = '\0';
	snprintf(c->msg, c->msgsz, fmt, arg);
	return false;
}

static size_t path_push(struct vctx *c, size_t pathlen, const char *key,
			int index)
{
	return util_path_append(c->path, c->pathsz, pathlen, key, index);
}

static bool validate_type(const cJSON *type, const cJSON *v, struct vctx *c,
			  size_t pathlen)
{
	const cJSON *t;

	if (cJSON_IsString(type)) {
		if (type_matches(type->valuestring, v))
			return true;
		return fail(c, pathlen, "must be of type %s",
			    type->valuestring);
	}
	cJSON_ArrayForEach(
	    t, type) if (cJSON_IsString(t) &&
			 type_matches(t->valuestring, v)) return true;
	return fail(c, pathlen, "has the wrong type%s", "");
}

/* The keywords validate_node() applies, found in one pass over the schema
 * object rather than one lookup (a scan of every key) each. */
struct keywords {
	const cJSON *type, *enum_, *minLength, *maxLength, *required,
	    *properties, *minItems, *maxItems, *items, *anyOf;
};

static void keywords_of(const cJSON *schema, struct keywords *k)
{
	const cJSON *kw;

	memset(k, 0, sizeof(*k));
	cJSON_ArrayForEach(kw, schema)
	{
		const char *n = kw->string;

		if (!n)
			continue;
		switch (n[0]) {
		case 't':
			if (strcmp(n, "type") == 0)
				k->type = k->type ? k->type : kw;
			break;
		case 'e':
			if (strcmp(n, "enum") == 0)
				k->enum_ = k->enum_ ? k->enum_ : kw;
			break;
		case 'm':
			if (strcmp(n, "minLength") == 0)
				k->minLength = k->minLength ? k->minLength : kw;
			else if (strcmp(n, "maxLength") == 0)
				k->maxLength = k->maxLength ? k->maxLength : kw;
			else if (strcmp(n, "minItems") == 0)
				k->minItems = k->minItems ? k->minItems : kw;
			else if (strcmp(n, "maxItems") == 0)
				k->maxItems = k->maxItems ? k->maxItems : kw;
			break;
		case 'r':
			if (strcmp(n, "required") == 0)
				k->required = k->required ? k->required : kw;
			break;
		case 'p':
			if (strcmp(n, "properties") == 0)
				k->properties =
				    k->properties ? k->properties : kw;
			break;
		case 'i':
			if (strcmp(n, "items") == 0)
				k->items = k->items ? k->items : kw;
			break;
		case 'a':
			if (strcmp(n, "anyOf") == 0)
				k->anyOf = k->anyOf ? k->anyOf : kw;
			break;
		default: break;
		}
	}
}

static bool validate_node(const cJSON *schema, const cJSON *v, struct vctx *c,
			  size_t pathlen)
{
	const cJSON *kw;
	struct keywords k;

	c->path[pathlen] = '\0';
	/* A boolean schema: true accepts anything, false nothing. */
	if (cJSON_IsBool(schema))
		return cJSON_IsTrue(schema) ||
		       fail(c, pathlen, "is not allowed here%s", "");
	keywords_of(schema, &k);
	kw = k.type;
	if (kw && !validate_type(kw, v, c, pathlen))
		return false;

	kw = k.enum_;
	if (kw) {
		const cJSON *e;
		bool found = false;

		cJSON_ArrayForEach(e, kw) if (cJSON_Compare(e, v, true)) found =
		    true;
		if (!found)
			return fail(c, pathlen,
				    "is not one of the allowed values%s", "");
	}

	if (cJSON_IsString(v)) {
		size_t len = utf8_length(v->valuestring);

		kw = k.minLength;
		if (kw && (double)len < kw->valuedouble)
			return fail(
			    c, pathlen,
			    len ? "is too short%s" : "must not be empty%s", "");
		kw = k.maxLength;
		if (kw && (double)len > kw->valuedouble)
			return fail(c, pathlen, "is too long%s", "");
	}

	if (cJSON_IsObject(v)) {
		const cJSON *props, *p;

		kw = k.required;
		cJSON_ArrayForEach(p, kw)
		{
			if (!cJSON_IsString(p))
				continue;
			if (!cJSON_GetObjectItemCaseSensitive(v,
							      p->valuestring)) {
				size_t l =
				    path_push(c, pathlen, p->valuestring, 0);

				return fail(c, l, "is required%s", "");
			}
		}
		props = k.properties;
		cJSON_ArrayForEach(p, props)
		{
			const cJSON *child =
			    cJSON_GetObjectItemCaseSensitive(v, p->string);

			if (child &&
			    !validate_node(p, child, c,
					   path_push(c, pathlen, p->string, 0)))
				return false;
		}
	}

	if (cJSON_IsArray(v)) {
		int n = cJSON_GetArraySize(v), i = 0;
		const cJSON *item;

		kw = k.minItems;
		if (kw && n < kw->valuedouble)
			return fail(c, pathlen, "has too few items%s", "");
		kw = k.maxItems;
		if (kw && n > kw->valuedouble)
			return fail(c, pathlen, "has too many items%s", "");
		kw = k.items;
		if (kw) {
			cJSON_ArrayForEach(item, v)
			{
				if (!validate_node(
					kw, item, c,
					path_push(c, pathlen, NULL, i)))
					return false;
				i++;
			}
		}
	}

	kw = k.anyOf;
	if (kw) {
		const cJSON *alt;
		char first_path[256] = "";
		char first_msg[256] = "";
		bool any = false;

		cJSON_ArrayForEach(alt, kw)
		{
			if (validate_node(alt, v, c, pathlen)) {
				any = true;
				break;
			}
			if (!first_msg[0]) {
				snprintf(first_path, sizeof(first_path), "%s",
					 c->path);
				snprintf(first_msg, sizeof(first_msg), "%s",
					 c->msg);
			}
		}
		if (!any) {
			snprintf(c->path, c->pathsz, "%s", first_path);
			snprintf(c->msg, c->msgsz, "%s", first_msg);
			return false;
		}
		c->path[pathlen] = '\0';
	}
	return true;
}

bool schema_validate(const struct schema *s, const cJSON *doc, char *path,
		     size_t pathsz, char *msg, size_t msgsz)
{
	struct vctx c = {path, pathsz, msg, msgsz};

	snprintf(path, pathsz, "$");
	msg[0] = '\0';
	return validate_node(s->root, doc, &c, 1);
}
