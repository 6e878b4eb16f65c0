# sluice: a durable webhook and job pipeline. `make run` and `make test` are
# the two commands a newcomer needs; see README.md.

CC      ?= cc
PKGS    := rdkafka libpq hiredis libcjson libevent libevent_openssl openssl
CFLAGS  ?= -O2 -g
# The JSON Schemas' directory compiled in as schema_dir's default: the
# source tree's for the binaries in $(BUILD); `make install` relinks
# sluice-ingest with $(PREFIX)/share/sluice/schemas instead.
SCHEMA_DIR ?= $(CURDIR)/schemas
CFLAGS  += -DSCHEMA_DIR=\"$(SCHEMA_DIR)\"
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -MMD -MP
CFLAGS  += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread

BUILD   ?= build
ifeq ($(SANITIZE),1)
BUILD   := build/asan
CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
# sluice-ingest allocates and frees evhttp's requests, headers and buffers
# for every webhook; with glibc's malloc that was a fifth of its CPU.
# mimalloc (Debian's libmimalloc) replaces malloc for the whole process:
# about +20% webhooks/s in alternated runs against a warm broker. Not
# under the sanitizers, which bring their own allocator.
INGEST_MALLOC := -Wl,--push-state,--no-as-needed -lmimalloc -Wl,--pop-state
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

COMMON_SRC := common/log.c common/config.c common/util.c common/kafka.c \
              common/sdnotify.c common/schema.c common/campaign.c common/chat.c \
              common/validate.c common/kinds.c common/admin.c common/access.c \
              common/prom.c
INGEST_SRC := ingest/main.c ingest/settings.c ingest/http.c ingest/gate.c \
              ingest/step.c ingest/pending.c ingest/reply.c ingest/metrics.c \
              ingest/publish.c ingest/status.c \
              ingest/verify.c ingest/conn.c ingest/tls.c
WORKER_SRC := worker/main.c worker/settings.c worker/consume.c worker/pipeline.c \
              worker/batch.c worker/pgsink.c worker/cache.c worker/redisconn.c \
              worker/dlq.c \
              worker/replay.c worker/replay_pos.c worker/redrive.c \
              worker/owed.c worker/httpc.c worker/dlqtool.c worker/dsn.c \
              worker/verify.c \
              worker/contexts.c worker/composer.c worker/handlers/handler.c \
              worker/handlers/transcript.c worker/handlers/campaign.c \
              worker/handlers/campaign_rules.c worker/handlers/chat.c
WORKER_SRC += worker/httpd.c worker/metrics.c worker/status.c

INGEST_OBJ := $(addprefix $(BUILD)/,$(COMMON_SRC:.c=.o) $(INGEST_SRC:.c=.o))
WORKER_OBJ := $(addprefix $(BUILD)/,$(COMMON_SRC:.c=.o) $(WORKER_SRC:.c=.o))

UNIT_TESTS := test_config test_transcript test_extract test_verify test_schema test_cache \
              test_campaign test_validate test_schema_suite test_publish \
              test_chat test_replay test_util test_dsn test_admin test_prom
UNIT_BINS  := $(addprefix $(BUILD)/tests/,$(UNIT_TESTS))

.PHONY: all asan deps run run-secure stop test test-unit test-system test-asan format \
        lint bench clean fuzz fuzz-smoke install deb check-man

all: $(BUILD)/sluice-ingest $(BUILD)/sluice-worker

$(BUILD)/sluice-ingest: $(INGEST_OBJ)
	@echo "  LD  $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(INGEST_MALLOC) $(LDLIBS)

$(BUILD)/sluice-worker: $(WORKER_OBJ)
	@echo "  LD  $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC  $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

# The commit a build comes from, for the build_info metric (none outside a
# git checkout). prom.o depends on a stamp rewritten only when the commit
# changes, so a new commit rebuilds that one object and its label never
# goes stale.
SLUICE_COMMIT ?= $(shell git -C $(CURDIR) rev-parse --short=12 HEAD 2>/dev/null)
$(BUILD)/common/prom.o: CFLAGS += -DSLUICE_COMMIT=\"$(SLUICE_COMMIT)\"
$(BUILD)/common/prom.o: $(BUILD)/commit.stamp
$(BUILD)/commit.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo '$(SLUICE_COMMIT)' | cmp -s - $@ || echo '$(SLUICE_COMMIT)' >$@

# Unit tests link only the modules under test.
$(BUILD)/tests/test_config: $(BUILD)/tests/unit/test_config.o $(BUILD)/common/config.o \
	$(BUILD)/common/log.o $(BUILD)/common/util.o
$(BUILD)/tests/test_transcript: $(BUILD)/tests/unit/test_transcript.o \
	$(BUILD)/worker/handlers/transcript.o $(BUILD)/worker/pgsink.o \
	$(BUILD)/worker/cache.o $(BUILD)/worker/redisconn.o $(BUILD)/common/util.o \
	$(BUILD)/common/log.o \
	$(BUILD)/common/validate.o
# The kinds table and every kind's checks it names.
KINDS_OBJ := $(addprefix $(BUILD)/common/,kinds.o campaign.o chat.o validate.o)
$(BUILD)/tests/test_extract: $(BUILD)/tests/unit/test_extract.o $(KINDS_OBJ) \
	$(BUILD)/common/util.o
$(BUILD)/tests/test_verify: $(BUILD)/tests/unit/test_verify.o $(BUILD)/ingest/verify.o
$(BUILD)/tests/test_schema: $(BUILD)/tests/unit/test_schema.o $(BUILD)/common/schema.o \
	$(BUILD)/common/util.o
$(BUILD)/tests/test_cache: $(BUILD)/tests/unit/test_cache.o $(BUILD)/worker/cache.o \
	$(BUILD)/worker/redisconn.o \
	$(BUILD)/common/log.o $(BUILD)/common/util.o
$(BUILD)/tests/test_campaign: $(BUILD)/tests/unit/test_campaign.o \
	$(BUILD)/common/campaign.o $(BUILD)/worker/handlers/campaign_rules.o \
	$(BUILD)/common/util.o
$(BUILD)/tests/test_validate: $(BUILD)/tests/unit/test_validate.o \
	$(BUILD)/common/validate.o $(BUILD)/common/util.o
$(BUILD)/tests/test_schema_suite: $(BUILD)/tests/unit/test_schema_suite.o \
	$(BUILD)/common/schema.o $(BUILD)/common/util.o
$(BUILD)/tests/test_publish: $(BUILD)/tests/unit/test_publish.o \
	$(BUILD)/ingest/publish.o $(BUILD)/ingest/settings.o $(KINDS_OBJ) \
	$(BUILD)/common/kafka.o $(BUILD)/common/config.o $(BUILD)/common/schema.o \
	$(BUILD)/common/log.o $(BUILD)/common/util.o $(BUILD)/common/access.o
$(BUILD)/tests/test_chat: $(BUILD)/tests/unit/test_chat.o \
	$(BUILD)/common/chat.o $(BUILD)/common/util.o
$(BUILD)/tests/test_util: $(BUILD)/tests/unit/test_util.o $(BUILD)/common/util.o
$(BUILD)/tests/test_admin: $(BUILD)/tests/unit/test_admin.o \
	$(BUILD)/common/admin.o $(BUILD)/common/access.o \
	$(BUILD)/common/config.o $(BUILD)/common/log.o $(BUILD)/common/util.o
$(BUILD)/tests/test_prom: $(BUILD)/tests/unit/test_prom.o $(BUILD)/common/prom.o \
	$(BUILD)/common/util.o
$(BUILD)/tests/test_replay: $(BUILD)/tests/unit/test_replay.o \
	$(BUILD)/worker/replay_pos.o $(BUILD)/common/campaign.o \
	$(BUILD)/common/validate.o $(BUILD)/common/util.o
$(BUILD)/tests/test_dsn: $(BUILD)/tests/unit/test_dsn.o $(BUILD)/worker/dsn.o \
	$(BUILD)/worker/redisconn.o $(BUILD)/common/log.o $(BUILD)/common/util.o
$(UNIT_BINS):
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

asan:
	$(Q)$(MAKE) --no-print-directory SANITIZE=1 all $(addprefix build/asan/tests/,$(UNIT_TESTS))

deps:
	$(Q)deploy/install-deps.sh

# Installs what is missing, builds, starts the local stack under .run/ and
# shows the pipeline working.
run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)deploy/run.sh

# The same stack secured (docs/security.md): TLS on every hop, each
# daemon under its own least-privilege identity.
run-secure: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)deploy/run-secure.sh

stop:
	$(Q)deploy/run.sh stop
	$(Q)deploy/run-secure.sh stop

test-unit: $(UNIT_BINS)
	$(Q)for t in $(UNIT_BINS); do $$t || exit 1; done

# The whole suite: unit tests, the config/docs check, then the system tests
# twice: against the normal build and against the sanitized one.
test: deps
	$(Q)$(MAKE) --no-print-directory all test-unit
	$(Q)$(MAKE) --no-print-directory asan
	$(Q)for t in $(addprefix build/asan/tests/,$(UNIT_TESTS)); do $$t || exit 1; done
	$(Q)tests/check_config_docs.sh $(BUILD)
	$(Q)tests/check_man.sh $(BUILD)
	$(Q)$(MAKE) --no-print-directory fuzz-smoke
	$(Q)SLUICE_BUILD_DIR=$(CURDIR)/build .venv/bin/python -m pytest -q tests/system
	$(Q)SLUICE_BUILD_DIR=$(CURDIR)/build/asan .venv/bin/python -m pytest -q tests/system

# libFuzzer over request handling (tests/fuzz/fuzz_http.c): whatever a
# client sends, through libevent's parser and every handler, under ASan and
# UBSan. fuzz-smoke (in make test) replays the checked-in corpus and mutates
# briefly; make fuzz runs for FUZZ_SECONDS, new finds in build/fuzz/corpus.
FUZZ_CC      ?= $(shell command -v clang || command -v clang-14 || echo clang)
FUZZ_SECONDS ?= 600
FUZZ_FLAGS   := -g -O1 -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
                -DSCHEMA_DIR=\"$(CURDIR)/schemas\" -std=c11 -D_GNU_SOURCE \
                -Wall -Wextra -Werror \
                $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_SRC     := tests/fuzz/fuzz_http.c $(COMMON_SRC) \
                $(filter-out ingest/main.c,$(INGEST_SRC))

build/fuzz/fuzz_http: $(FUZZ_SRC) $(wildcard common/*.h ingest/*.h)
	@mkdir -p $(dir $@)
	@echo "  FUZZ $@"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(FUZZ_SRC) $(LDLIBS)

# New finds go to the first corpus directory: a scratch one, so the
# checked-in corpus only changes when someone copies finds into it.
fuzz-smoke: build/fuzz/fuzz_http
	$(Q)rm -rf build/fuzz/smoke-corpus && mkdir -p build/fuzz/smoke-corpus
	$(Q)build/fuzz/fuzz_http -max_total_time=30 -runs=20000 \
		-rss_limit_mb=1024 -artifact_prefix=build/fuzz/ \
		build/fuzz/smoke-corpus tests/fuzz/corpus 2>build/fuzz/smoke.log \
		|| { tail -50 build/fuzz/smoke.log; exit 1; }
	$(Q)grep -E "Done [0-9]+ runs" build/fuzz/smoke.log

fuzz: build/fuzz/fuzz_http
	$(Q)mkdir -p build/fuzz/corpus
	$(Q)build/fuzz/fuzz_http -max_total_time=$(FUZZ_SECONDS) \
		-rss_limit_mb=2048 -artifact_prefix=build/fuzz/ \
		build/fuzz/corpus tests/fuzz/corpus

format:
	$(Q)clang-format -i $(COMMON_SRC) $(INGEST_SRC) $(WORKER_SRC) \
		$(wildcard common/*.h ingest/*.h worker/*.h worker/handlers/*.h tests/unit/*.c tests/unit/*.h)

lint:
	$(Q)cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
		--std=c11 --inline-suppr --suppress=missingIncludeSystem \
		-I common common ingest worker

$(BUILD)/loadgen: bench/loadgen.c
	@echo "  LD  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/kproduce: bench/kproduce.c
	@echo "  LD  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/evhttp202: bench/evhttp202.c
	@echo "  LD  $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

bench: all $(BUILD)/loadgen $(BUILD)/kproduce $(BUILD)/evhttp202
	$(Q)bench/run.sh

# ------------------------------------------------------------ install ----
# `make install [PREFIX=/usr/local] [DESTDIR=]`: both binaries, their man
# pages, the schemas and migrations, sluice-roles and sluice-migrate, the
# systemd units, the
# sysusers.d entry for the `sluice` user and example configurations.
# SCHEMA_DIR is compiled into ingest/settings.o only, so the installed
# sluice-ingest is that one object built again with the installed path and
# relinked (in $(BUILD)/install/, always, since PREFIX may differ between
# runs); sluice-worker is installed as built.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
DATADIR     ?= $(PREFIX)/share/sluice
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/sluice
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
SYSCONFDIR  ?= /etc
INSTALL     ?= install
INST        := $(BUILD)/install
INST_SCHEMA_DIR := $(DATADIR)/schemas

$(INST)/ingest/settings.o: ingest/settings.c FORCE
	@mkdir -p $(dir $@)
	@echo "  CC  $< (schema_dir $(INST_SCHEMA_DIR))"
	$(Q)$(CC) $(CFLAGS) -USCHEMA_DIR -DSCHEMA_DIR=\"$(INST_SCHEMA_DIR)\" -c -o $@ $<

$(INST)/sluice-ingest: $(filter-out $(BUILD)/ingest/settings.o,$(INGEST_OBJ)) \
		$(INST)/ingest/settings.o
	@echo "  LD  $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(INGEST_MALLOC) $(LDLIBS)

# The units name their binaries by path and /etc/sluice by default.
UNIT_SED := -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/etc/sluice|$(SYSCONFDIR)/sluice|g'

install: $(INST)/sluice-ingest $(BUILD)/sluice-worker
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(INST_SCHEMA_DIR)/migrations $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR)/examples \
		$(DESTDIR)$(DOCDIR)/prometheus
	$(INSTALL) -m 755 $(INST)/sluice-ingest $(BUILD)/sluice-worker $(DESTDIR)$(BINDIR)/
	$(INSTALL) -m 755 deploy/migrate.sh $(DESTDIR)$(BINDIR)/sluice-migrate
	$(INSTALL) -m 755 deploy/roles.sh $(DESTDIR)$(BINDIR)/sluice-roles
	$(INSTALL) -m 644 docs/man/sluice-ingest.1 docs/man/sluice-worker.1 \
		docs/man/sluice-migrate.1 docs/man/sluice-roles.1 $(DESTDIR)$(MANDIR)/man1/
	$(INSTALL) -m 644 schemas/*.schema.json $(DESTDIR)$(INST_SCHEMA_DIR)/
	$(INSTALL) -m 644 schemas/migrations/*.sql $(DESTDIR)$(INST_SCHEMA_DIR)/migrations/
	for u in sluice-ingest.service sluice-worker@.service; do \
		sed $(UNIT_SED) deploy/systemd/$$u >$(DESTDIR)$(UNITDIR)/$$u && \
		chmod 644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	$(INSTALL) -m 644 deploy/systemd/sluice.sysusers $(DESTDIR)$(SYSUSERSDIR)/sluice.conf
	$(INSTALL) -m 644 deploy/examples/* $(DESTDIR)$(DOCDIR)/examples/
	$(INSTALL) -m 644 deploy/prometheus/* $(DESTDIR)$(DOCDIR)/prometheus/

# `make deb`: a binary .deb through debhelper (debian/), built in
# build/deb/ (kept between runs, so a second `make deb` only relinks) and
# written to build/deb/pkg/.
deb:
	$(Q)dpkg-checkbuilddeps
	$(Q)rm -f debian/debhelper-build-stamp
	$(Q)SLUICE_DEB_DIR=$(CURDIR)/build/deb/pkg debian/rules binary

check-man: all
	$(Q)tests/check_man.sh $(BUILD)

FORCE:

clean:
	rm -rf build
	rm -rf debian/.debhelper debian/sluice debian/sluice-dbgsym debian/files \
		debian/*.substvars debian/debhelper-build-stamp

-include $(shell find build -name '*.d' 2>/dev/null)
