#!/usr/bin/env bash
# Install everything sluice needs to build, run and test on Debian 12:
#   - Debian packages (compilers, libraries, PostgreSQL, Redis, wrk, linters,
#     nginx-light for the benchmark baseline, stunnel4 for the TLS tunnel to
#     Redis (docs/security.md), debhelper and lintian for
#     `make deb`, systemd-analyze and man for the unit and man page checks,
#     prometheus for promtool (the metrics and alert-rule checks), a JDK and
#     Maven if missing);
#   - the Apache Kafka broker jars (deploy/kafka/fetch.sh, cached);
#   - a Python venv at $REPO/.venv with tests/requirements.txt.
#
# Idempotent and fast when everything is present: apt is only called (and
# `apt-get update` only run) when a package is missing, and the venv is only
# rebuilt when tests/requirements.txt or the Python interpreter changed.
#
# Usage: deploy/install-deps.sh
#   SLUICE_PYTHON=python3     interpreter for the venv (default: python3 on PATH)
#   SLUICE_SKIP_VENV=1        skip the venv step
#   SLUICE_SKIP_KAFKA=1       skip fetching the Kafka jars
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "install-deps.sh: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- apt ----
packages=(
    build-essential pkg-config
    librdkafka-dev libhiredis-dev libcjson-dev libevent-dev libssl-dev libpq-dev
    libmimalloc-dev
    postgresql redis-server
    wrk clang-format cppcheck nginx-light json-schema-test-suite clang
    stunnel4
    testssl.sh
    libclang-rt-14-dev
    debhelper dpkg-dev lintian systemd man-db groff-base
    prometheus
)
command -v java >/dev/null 2>&1 || packages+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
# javac builds the Camel route that bench/peers.py measures sluice against.
command -v javac >/dev/null 2>&1 || packages+=(default-jdk-headless)

python="${SLUICE_PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    packages+=(python3 python3-venv)
elif ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip).
    packages+=(python3-venv)
fi

# One dpkg-query for all: lines "ii |name" for installed packages.
declare -A have=()
while IFS='|' read -r status name; do
    [[ "$status" == "ii "* ]] && have["$name"]=1
done < <(dpkg-query -W -f='${db:Status-Abbrev}|${Package}\n' "${packages[@]}" 2>/dev/null || true)
missing=()
for p in "${packages[@]}"; do
    [[ -n "${have[$p]:-}" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "not root and sudo not found; install by hand: ${missing[*]}"
        sudo=(sudo)
    fi
    echo "install-deps.sh: installing ${missing[*]}" >&2
    log="$(mktemp)"
    # The project runs its own private PostgreSQL/Redis/Kafka (deploy/services.sh);
    # keep the packages' system services from being started by their postinst
    # (they would occupy 5432/6379/80), unless a policy is already in place.
    policy=/usr/sbin/policy-rc.d
    cleanup() {
        rm -f "$log"
        if [[ -n "${own_policy:-}" ]]; then "${sudo[@]}" rm -f "$policy"; fi
    }
    trap cleanup EXIT
    if [[ -z "${SLUICE_ALLOW_SERVICE_START:-}" && ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "apt-get update failed"
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "apt-get install failed for: ${missing[*]}"
    fi
    cleanup
    trap - EXIT
    command -v java >/dev/null 2>&1 || die "java still not found after installing default-jre-headless"
    command -v mvn >/dev/null 2>&1 || die "mvn still not found after installing maven"
fi

# ------------------------------------------------------------- kafka ----
if [[ -z "${SLUICE_SKIP_KAFKA:-}" ]]; then
    "$repo/deploy/kafka/fetch.sh" || die "fetching the Kafka jars failed"
fi

# --------------------------------------------------------------- venv ----
if [[ -z "${SLUICE_SKIP_VENV:-}" ]]; then
    req="$repo/tests/requirements.txt"
    [[ -f "$req" ]] || die "missing $req"
    venv="$repo/.venv"
    stamp="$venv/.sluice-requirements.stamp"
    pyver="$("$python" -c 'import sys; print(sys.version.split()[0], sys.base_prefix)')" \
        || die "$python does not run"
    want="$(sha256sum "$req" | cut -d' ' -f1) $pyver"
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c '' >/dev/null 2>&1 \
            || [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$want" ]]; then
        log="$(mktemp)"
        trap 'rm -f "$log"' EXIT
        # Rebuild from scratch when the interpreter changed or the venv is broken;
        # otherwise a requirements change is applied in place.
        if [[ -f "$stamp" && "$(cut -d' ' -f2- "$stamp")" != "$pyver" ]] \
                || ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
            rm -rf "$venv"
        fi
        if [[ ! -x "$venv/bin/python" ]]; then
            "$python" -m venv "$venv" >"$log" 2>&1 || { cat "$log" >&2; die "cannot create venv $venv"; }
        fi
        if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
                -r "$req" >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            die "pip install -r tests/requirements.txt failed"
        fi
        printf '%s\n' "$want" >"$stamp"
        rm -f "$log"
        trap - EXIT
    fi
fi
