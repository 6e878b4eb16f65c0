# Packaging: `make install` honours PREFIX and DESTDIR and lays out what an
# installed sluice needs (binaries that find their schemas, man pages,
# migrations with sluice-migrate, units, examples); `make deb` builds a
# package with the right runtime dependencies that lintian passes.

import os
import re
import shutil
import subprocess
import uuid

import psycopg
from psycopg.conninfo import make_conninfo
import pytest

from harness import BUILD_DIR, REPO
from pkg_util import make, make_install

BINARIES = ("sluice-ingest", "sluice-worker", "sluice-migrate",
            "sluice-roles")
UNITS = ("sluice-ingest.service", "sluice-worker@.service")
# The shared libraries the daemons link, as Debian 12 packages them.
RUNTIME_PACKAGES = ("librdkafka1", "libpq5", "libhiredis0.14", "libcjson1",
                    "libevent-2.1-7", "libssl3", "libmimalloc2.0")
LINTIAN_TIMEOUT = 180

INGEST_CONF = """listen = 127.0.0.1:1
source.tavus.kind = transcript
source.tavus.signature = none
"""


def expected_files(root):
    """Every path an installation under `root` (DESTDIR + PREFIX) holds."""
    files = [f"bin/{b}" for b in BINARIES]
    files += [f"share/man/man1/{b}.1" for b in BINARIES]
    files += [f"share/sluice/schemas/{p.name}"
              for p in (REPO / "schemas").glob("*.schema.json")]
    files += [f"share/sluice/schemas/migrations/{p.name}"
              for p in (REPO / "schemas" / "migrations").glob("*.sql")]
    files += [f"lib/systemd/system/{u}" for u in UNITS]
    files += ["lib/sysusers.d/sluice.conf"]
    files += [f"share/doc/sluice/examples/{p.name}"
              for p in (REPO / "deploy" / "examples").iterdir()]
    files += [f"share/doc/sluice/prometheus/{p.name}"
              for p in (REPO / "deploy" / "prometheus").iterdir()]
    return [root / f for f in files]


def test_install_prefix_finds_its_schemas(tmp_path):
    prefix = tmp_path / "prefix"
    make_install(prefix)
    missing = [str(p) for p in expected_files(prefix) if not p.is_file()]
    assert not missing, f"make install PREFIX={prefix} left out {missing}"
    for b in BINARIES:
        assert os.access(prefix / "bin" / b, os.X_OK), f"{b} not executable"

    # Run from elsewhere, with no schema_dir: the installed binary reads
    # the installed schemas (the build's binary would name the tree's).
    conf = tmp_path / "ingest.conf"
    conf.write_text(INGEST_CONF)
    r = subprocess.run([str(prefix / "bin" / "sluice-ingest"), "-c", str(conf),
                        "--check-config"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"schema_dir = {prefix}/share/sluice/schemas" in r.stdout, r.stdout

    for u in UNITS:
        text = (prefix / "lib/systemd/system" / u).read_text()
        execs = re.findall(r"^ExecStart=(\S+)", text, re.M)
        assert execs == [str(prefix / "bin" / u.split("@")[0].split(".")[0])], \
            f"{u}: ExecStart {execs}"

    # The man pages render without a warning from the installed tree.
    for b in BINARIES:
        page = prefix / "share/man/man1" / f"{b}.1"
        r = subprocess.run(["man", "-l", "--warnings=w", str(page)],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "MANWIDTH": "80",
                                "LC_ALL": "C.UTF-8"})
        assert r.returncode == 0 and not r.stderr, (b, r.stderr)
        assert b in r.stdout and "SYNOPSIS" in r.stdout


def test_install_destdir_stages_for_prefix(tmp_path):
    stage = tmp_path / "stage"
    make_install("/opt/sluice", stage)
    root = stage / "opt" / "sluice"
    missing = [str(p) for p in expected_files(root) if not p.is_file()]
    assert not missing, f"make install DESTDIR= left out {missing}"
    assert not (tmp_path / "opt").exists()
    unit = (root / "lib/systemd/system/sluice-ingest.service").read_text()
    assert "ExecStart=/opt/sluice/bin/sluice-ingest -c /etc/sluice/ingest.conf" \
        in unit
    # Staged, the binary looks for its schemas where they will be.
    conf = tmp_path / "ingest.conf"
    conf.write_text(INGEST_CONF)
    r = subprocess.run([str(root / "bin" / "sluice-ingest"), "-c", str(conf),
                        "--check-config"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert "/opt/sluice/share/sluice/schemas/transcript.schema.json" in r.stderr


def test_installed_migrate_applies_installed_migrations(tmp_path, services):
    prefix = tmp_path / "prefix"
    make_install(prefix)
    migrate = prefix / "bin" / "sluice-migrate"
    r = subprocess.run([str(migrate), "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "usage: sluice-migrate DSN" in r.stdout

    # A database of its own on the test PostgreSQL, dropped afterwards.
    name = f"sluice_pkg_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(services.pg_dsn, autocommit=True)
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        dsn = make_conninfo(services.pg_dsn, dbname=name)
        env = {k: v for k, v in os.environ.items()
               if k != "SLUICE_MIGRATIONS_DIR"}
        for _ in range(2):   # the second run applies nothing
            r = subprocess.run([str(migrate), dsn], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
        with psycopg.connect(dsn) as c:
            applied = sorted(row[0] for row in c.execute(
                "SELECT name FROM sluice_schema_migrations"))
            tables = c.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_name IN ('messages', 'sluice_offsets')"
            ).fetchone()[0]
        assert applied == sorted(p.name for p in
                                 (REPO / "schemas/migrations").glob("*.sql"))
        assert tables == 2
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.skipif(BUILD_DIR.name == "asan",
                    reason="the package is built with Debian's flags in "
                    "build/deb whatever the build under test; the plain "
                    "pass checks it")
def test_deb_builds_and_passes_lintian(tmp_path):
    if not shutil.which("lintian") or not shutil.which("dh"):
        pytest.fail("lintian and debhelper are needed: run deploy/install-deps.sh")
    make("deb", of_build=False)
    deb = REPO / "build/deb/pkg/sluice_0.1.0_amd64.deb"
    assert deb.is_file(), f"make deb wrote no {deb}"

    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"],
                            capture_output=True, text=True, check=True).stdout
    depends = {d.strip().split()[0] for d in fields.replace("|", ",").split(",")}
    assert set(RUNTIME_PACKAGES) <= depends, f"Depends: {fields}"

    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True,
                              text=True, check=True).stdout
    for path in ("./usr/bin/sluice-ingest", "./usr/bin/sluice-worker",
                 "./usr/bin/sluice-migrate", "./usr/bin/sluice-roles",
                 "./usr/share/man/man1/sluice-roles.1.gz",
                 "./usr/share/sluice/schemas/migrations/006_grants.sql",
                 "./lib/systemd/system/sluice-ingest.service",
                 "./lib/systemd/system/sluice-worker@.service",
                 "./usr/lib/sysusers.d/sluice.conf",
                 "./usr/share/man/man1/sluice-ingest.1.gz",
                 "./usr/share/man/man1/sluice-worker.1.gz",
                 "./usr/share/sluice/schemas/transcript.schema.json",
                 "./usr/share/sluice/schemas/migrations/001_init.sql",
                 "./usr/share/doc/sluice/examples/worker.conf",
                 "./usr/share/doc/sluice/prometheus/grafana-sluice.json"):
        assert re.search(rf"\s{re.escape(path)}$", contents, re.M), \
            f"{path} not in the package:\n{contents}"

    # The packaged binary runs and reads /usr/share/sluice/schemas.
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    conf = tmp_path / "ingest.conf"
    conf.write_text(INGEST_CONF)
    r = subprocess.run([str(root / "usr/bin/sluice-ingest"), "-c", str(conf),
                        "--check-config"], capture_output=True, text=True,
                       timeout=30)
    if not os.path.exists("/usr/share/sluice/schemas/transcript.schema.json"):
        assert "/usr/share/sluice/schemas/transcript.schema.json" in r.stderr, \
            r.stderr
    unit = (root / "lib/systemd/system/sluice-worker@.service").read_text()
    assert "ExecStart=/usr/bin/sluice-worker " in unit

    r = subprocess.run(["lintian", "--fail-on", "error", str(deb)],
                       capture_output=True, text=True, timeout=LINTIAN_TIMEOUT)
    assert r.returncode == 0, f"lintian:\n{r.stdout}\n{r.stderr}"
    assert not re.search(r"^E: ", r.stdout, re.M), r.stdout
