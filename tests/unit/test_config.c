/* Config parsing: types, bounds, enums, env overrides, unknown keys; the
 * file's own errors (duplicates, quotes, placeholders), origins, and the
 * diff a reload logs. */
#include <stddef.h>
#include <stdlib.h>

#include "../../common/config.h"
#include "check.h"

struct conf {
	char *name;
	int count;
	int mode;
	char *extra_seen;
	char *keys; /* a template */
};

static const char *const modes[] = {"off", "on", NULL};

static const struct cfg_setting table[] = {
    {"name", CFG_STR, offsetof(struct conf, name), "dflt", 0, 0, NULL,
     "TEST_SLUICE_NAME", "", CFG_RESTART, NULL},
    {"count", CFG_INT, offsetof(struct conf, count), "5", 1, 10, NULL, NULL, "",
     CFG_RESTART, NULL},
    {"mode", CFG_ENUM, offsetof(struct conf, mode), "off", 0, 0, modes, NULL,
     "", CFG_RUNTIME, NULL},
    {"keys", CFG_STR, offsetof(struct conf, keys), "m:{id}:*", 0, 0, NULL, NULL,
     "", CFG_RUNTIME, "{id} {page}"},
    CFG_END};

static bool extra(void *target, const char *key, const char *value,
		  const char *origin, char *errstr, size_t errstr_size)
{
	struct conf *c = target;

	(void)origin;
	if (strncmp(key, "kafka.", 6) != 0 && strncmp(key, "source.", 7) != 0) {
		snprintf(errstr, errstr_size, "unknown setting \"%s\"", key);
		return false;
	}
	free(c->extra_seen);
	c->extra_seen = strdup(value);
	return true;
}

static const struct {
	const char *key, *value;
	bool ok;
	const char *err_has;
} set_cases[] = {
    {"name", "hello", true, NULL},
    {"count", "10", true, NULL},
    {"count", "11", false, "outside 1..10"},
    {"count", "0", false, "outside"},
    {"count", "3x", false, "not an integer"},
    {"count", "", false, "not an integer"},
    {"mode", "on", true, NULL},
    {"mode", "maybe", false, "not one of off on"},
    {"kafka.linger.ms", "3", true, NULL},
    {"nosuch", "1", false, "unknown setting \"nosuch\""},
};

static const char *write_file(const char *text)
{
	static char path[64];
	int fd;

	snprintf(path, sizeof(path), "/tmp/sluice-test-config-XXXXXX");
	fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");

	fputs(text, f);
	fclose(f);
	return path;
}

/* The file's own mistakes, each refused with FILE:LINE. */
static const struct {
	const char *text;
	const char *err_has;
} bad_files[] = {
    {"name = a\ncount = 2\nname = b\n",
     ":3: duplicate key \"name\" (first set at "},
    {"kafka.linger.ms = 1\nkafka.linger.ms = 2\n",
     ":2: duplicate key \"kafka.linger.ms\""},
    {"name = \"abc\n", ":1: unterminated quote: \"abc"},
    {"name = \"\n", ":1: unterminated quote"},
    {"name = abc\"\n", ":1: value ends with a quote it never opened"},
    {"name = \"a\"b\"\n", ":1: a quote inside a quoted value"},
    {"keys = m:{conv_id}:*\n",
     ":1: keys: unknown placeholder {conv_id} (known: {id} {page})"},
    {"keys = m:{id:*\n", ":1: keys: \"{\" without \"}\""},
    {"keys = m:{id}:{}\n", "unknown placeholder {}"},
};

static void file_errors(void)
{
	struct conf c = {0};
	char err[512];

	for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++) {
		const char *path = write_file(bad_files[i].text);

		err[0] = '\0';
		CHECK(!cfg_load(table, &c, path, extra, NULL, err, sizeof(err)),
		      "bad file %zu accepted", i);
		CHECK(strstr(err, path) && strstr(err, bad_files[i].err_has),
		      "bad file %zu: \"%s\" lacks \"%s\"", i, err,
		      bad_files[i].err_has);
		cfg_free(table, &c);
		free(c.extra_seen);
		memset(&c, 0, sizeof(c));
		remove(path);
	}
	/* Known placeholders, several, and quoted spaces are fine. */
	{
		const char *path = write_file(
		    "keys = \"a:{id}:{page}, b:{id}\"\nname = \" x \"\n");

		CHECK(cfg_load(table, &c, path, extra, NULL, err, sizeof(err)),
		      "%s", err);
		CHECK_STR(c.keys, "a:{id}:{page}, b:{id}", "template");
		CHECK_STR(c.name, " x ", "quoted spaces kept");
		cfg_free(table, &c);
		remove(path);
	}
	/* An environment override does not hide a duplicate in the file. */
	{
		const char *path = write_file("name = a\nname = b\n");

		setenv("TEST_SLUICE_NAME", "from env", 1);
		CHECK(!cfg_load(table, &c, path, extra, NULL, err, sizeof(err)),
		      "duplicate hidden by the environment");
		CHECK(strstr(err, ":2: duplicate key \"name\"") != NULL, "%s",
		      err);
		unsetenv("TEST_SLUICE_NAME");
		cfg_free(table, &c);
		remove(path);
	}
}

static char *dump_text(const struct conf *c, const struct cfg_kv *seen)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	cfg_dump(table, c, seen, out);
	cfg_kv_dump(seen, out);
	fclose(out);
	return text;
}

/* Each value says where it came from; a secret never shows. */
static void origins(void)
{
	struct conf c = {0};
	struct cfg_kv *seen = NULL;
	char err[512], line[600], *text;
	const char *path = write_file(
	    "# c\ncount = 7\nkafka.sasl.password = hunter2\nname = x\n");

	setenv("TEST_SLUICE_NAME", "from env", 1);
	CHECK(cfg_load(table, &c, path, extra, &seen, err, sizeof(err)), "%s",
	      err);
	unsetenv("TEST_SLUICE_NAME");
	text = dump_text(&c, seen);
	CHECK(strstr(text, "name = from env  (env TEST_SLUICE_NAME)\n") != NULL,
	      "env origin:\n%s", text);
	snprintf(line, sizeof(line), "count = 7  (%s:2)\n", path);
	CHECK(strstr(text, line) != NULL, "file origin:\n%s", text);
	CHECK(strstr(text, "mode = off  (default)\n") != NULL,
	      "default origin:\n%s", text);
	snprintf(line, sizeof(line), "kafka.sasl.password = (hidden)  (%s:3)\n",
		 path);
	CHECK(strstr(text, line) != NULL, "secret's line:\n%s", text);
	CHECK(strstr(text, "hunter2") == NULL, "secret printed:\n%s", text);
	free(text);
	cfg_kv_free(seen);
	cfg_free(table, &c);
	free(c.extra_seen);
	remove(path);

	CHECK(cfg_key_is_secret("source.a.secret"), "secret");
	CHECK(cfg_key_is_secret("source.a.verify_token"), "token");
	CHECK(cfg_key_is_secret("kafka.ssl.key.pem"), "pem");
	CHECK(!cfg_key_is_secret("source.a.secret_file"), "a path is shown");
	CHECK(!cfg_key_is_secret("composer.api_key_file"), "a path is shown");
	CHECK(!cfg_key_is_secret("kafka.ssl.key.location"), "a path is shown");
	CHECK(!cfg_key_is_secret("topic"), "plain");
}

struct changes {
	char text[2048];
};

static void change_cb(void *arg, const char *key, const char *old,
		      const char *new, bool runtime)
{
	struct changes *ch = arg;
	size_t n = strlen(ch->text);

	snprintf(ch->text + n, sizeof(ch->text) - n, "%s: %s -> %s [%s]\n", key,
		 old ? old : "(changed)", new ? new : "(changed)",
		 runtime ? "runtime" : "restart");
}

static bool family_runtime(const char *key)
{
	return strncmp(key, "source.", 7) == 0;
}

/* A reload names each changed key once, secrets without their values, and
 * what it keeps running is what the next reload compares against. */
static void reload_diff(void)
{
	struct conf a = {0}, b = {0};
	struct cfg_kv *sa = NULL, *sb = NULL, *merged;
	struct changes ch = {.text = ""};
	char err[512];
	const char *pa =
	    write_file("count = 2\nmode = off\nkafka.x = 1\n"
		       "source.s.secret = old\nsource.s.rate = 1/s\n");
	const char *pb;
	int n;

	CHECK(cfg_load(table, &a, pa, extra, &sa, err, sizeof(err)), "%s", err);
	remove(pa);
	pb = write_file("count = 3\nmode = on\nkafka.x = 2\nkafka.y = 1\n"
			"source.s.secret = new\n");
	CHECK(cfg_load(table, &b, pb, extra, &sb, err, sizeof(err)), "%s", err);
	remove(pb);
	n = cfg_diff(table, &a, sa, &b, sb, family_runtime, change_cb, &ch);
	CHECK(n == 6, "%d changes:\n%s", n, ch.text);
	CHECK(strstr(ch.text, "count: 2 -> 3 [restart]\n") != NULL, "%s",
	      ch.text);
	CHECK(strstr(ch.text, "mode: off -> on [runtime]\n") != NULL, "%s",
	      ch.text);
	CHECK(strstr(ch.text, "kafka.x: 1 -> 2 [restart]\n") != NULL, "%s",
	      ch.text);
	CHECK(strstr(ch.text, "kafka.y: (unset) -> 1 [restart]\n") != NULL,
	      "%s", ch.text);
	CHECK(strstr(ch.text, "source.s.rate: 1/s -> (unset) [runtime]\n") !=
		  NULL,
	      "%s", ch.text);
	CHECK(strstr(ch.text,
		     "source.s.secret: (changed) -> (changed) [runtime]\n") !=
		  NULL,
	      "%s", ch.text);
	CHECK(strstr(ch.text, "old") == NULL && strstr(ch.text, "new") == NULL,
	      "a secret's value in the diff:\n%s", ch.text);
	/* A password inside a URL that alone changed is only "changed". */
	{
		struct conf u = {0}, v = {0};
		struct changes uch = {.text = ""};

		u.name = strdup("redis://u:pw1@h:1/0");
		v.name = strdup("redis://u:pw2@h:1/0");
		u.keys = v.keys = (char *)"k";
		CHECK(cfg_diff(table, &u, NULL, &v, NULL, NULL, change_cb,
			       &uch) == 1,
		      "%s", uch.text);
		CHECK_STR(uch.text, "name: (changed) -> (changed) [restart]\n",
			  "url password diff");
		free(u.name);
		free(v.name);
	}

	/* Kept running: the old kafka.x, the new sources. */
	merged = cfg_seen_merge(table, sa, sb, family_runtime);
	CHECK_STR(cfg_origin(merged, "kafka.x") ? "set" : NULL, "set",
		  "kafka.x kept");
	{
		const struct cfg_kv *kv;
		const char *x = NULL, *secret = NULL, *y = NULL, *mode = NULL;

		for (kv = merged; kv; kv = kv->next) {
			if (strcmp(kv->key, "kafka.x") == 0)
				x = kv->value;
			if (strcmp(kv->key, "kafka.y") == 0)
				y = kv->value;
			if (strcmp(kv->key, "source.s.secret") == 0)
				secret = kv->value;
			if (strcmp(kv->key, "mode") == 0)
				mode = kv->value;
		}
		CHECK_STR(x, "1",
			  "restart-only kafka.x keeps its running value");
		CHECK(y == NULL, "kafka.y not running yet");
		CHECK_STR(secret, "new", "a source applies at once");
		CHECK_STR(mode, "on", "a runtime key applies at once");
	}
	cfg_kv_free(merged);
	cfg_kv_free(sa);
	cfg_kv_free(sb);
	cfg_free(table, &a);
	cfg_free(table, &b);
	free(a.extra_seen);
	free(b.extra_seen);
}

int main(void)
{
	struct conf c = {0};
	char err[256];

	CHECK(cfg_load(table, &c, NULL, extra, NULL, err, sizeof(err)), "%s",
	      err);
	CHECK_STR(c.name, "dflt", "default name");
	CHECK(c.count == 5 && c.mode == 0, "defaults %d %d", c.count, c.mode);

	for (size_t i = 0; i < sizeof(set_cases) / sizeof(set_cases[0]); i++) {
		bool ok;

		err[0] = '\0';
		ok = cfg_set(table, &c, set_cases[i].key, set_cases[i].value,
			     extra, err, sizeof(err));
		CHECK(ok == set_cases[i].ok, "case %zu (%s=%s): %s", i,
		      set_cases[i].key, set_cases[i].value, err);
		if (set_cases[i].err_has)
			CHECK(strstr(err, set_cases[i].err_has) != NULL,
			      "case %zu error \"%s\" lacks \"%s\"", i, err,
			      set_cases[i].err_has);
	}
	CHECK_STR(c.extra_seen, "3", "kafka passthrough");
	cfg_free(table, &c);
	free(c.extra_seen);
	memset(&c, 0, sizeof(c));

	/* A file: comments, blanks, quotes, spaces; then env wins. */
	{
		const char *path = write_file(
		    "# comment\n\n  name = \"from file\"  \ncount=7\n"
		    "; also a comment\nmode = on\n");

		setenv("TEST_SLUICE_NAME", "from env", 1);
		CHECK(cfg_load(table, &c, path, extra, NULL, err, sizeof(err)),
		      "%s", err);
		CHECK_STR(c.name, "from env", "env override");
		CHECK(c.count == 7 && c.mode == 1, "file values %d %d", c.count,
		      c.mode);
		unsetenv("TEST_SLUICE_NAME");
		cfg_free(table, &c);
		remove(path);
	}
	/* Errors name the file and line. */
	{
		const char *path = write_file("name = x\nthis line is bad\n");

		CHECK(!cfg_load(table, &c, path, extra, NULL, err, sizeof(err)),
		      "bad line accepted");
		CHECK(strstr(err, ":2: expected key = value") != NULL, "%s",
		      err);
		cfg_free(table, &c);
		remove(path);
	}
	CHECK(!cfg_load(table, &c, "/nonexistent/sluice.conf", extra, NULL, err,
			sizeof(err)),
	      "missing file accepted");
	cfg_free(table, &c);
	/* --check-config output never shows a password. */
	{
		static const struct {
			const char *value, *want;
		} masks[] = {
		    {"redis://bob:s3cret@h:1/0",
		     "name = redis://bob:***@h:1/0\n"},
		    {"postgresql://u:pw@h/db",
		     "name = postgresql://u:***@h/db\n"},
		    {"host=h password=pw",
		     "name = (hidden: holds a password)\n"},
		    {"redis://h:6379/0", "name = redis://h:6379/0\n"},
		};
		for (size_t i = 0; i < sizeof(masks) / sizeof(masks[0]); i++) {
			char *text = NULL;
			size_t len = 0;
			FILE *out = open_memstream(&text, &len);

			memset(&c, 0, sizeof(c));
			c.name = strdup(masks[i].value);
			cfg_dump(table, &c, NULL, out);
			fclose(out);
			CHECK(strncmp(text, masks[i].want,
				      strlen(masks[i].want)) == 0,
			      "dump of %s: %s", masks[i].value, text);
			free(text);
			free(c.name);
		}
	}
	file_errors();
	origins();
	reload_diff();
	return check_done("test_config");
}
