# Helpers of test_packaging.py and test_systemd.py: `make install` of the
# build under test into a temporary prefix.

import subprocess

from harness import BUILD_DIR, REPO

MAKE_TIMEOUT = 300   # a stale build is rebuilt first; normally a relink


def make_vars():
    """Make variables that select the build under test ($SLUICE_BUILD_DIR):
    the sanitized build is SANITIZE=1 (its flags), any other BUILD=DIR."""
    if BUILD_DIR == (REPO / "build" / "asan").resolve():
        return ["SANITIZE=1"]
    return [f"BUILD={BUILD_DIR}"]


def make(*args, timeout=MAKE_TIMEOUT, of_build=True):
    """make ARGS in the tree; of_build: for the build under test (make deb
    is not: its variables would reach debian/rules' own make)."""
    r = subprocess.run(["make", "--no-print-directory", "-C", str(REPO),
                        *(make_vars() if of_build else []), *args],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (
        f"make {' '.join(args)} failed ({r.returncode}):\n"
        f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def make_install(prefix, destdir=None, *extra):
    args = ["install", f"PREFIX={prefix}", *extra]
    if destdir is not None:
        args.append(f"DESTDIR={destdir}")
    return make(*args)
