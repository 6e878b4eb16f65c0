#!/usr/bin/env bash
# Fetch the Apache Kafka broker jars (as resolved by deploy/kafka/pom.xml from
# Maven Central) into a local cache:
#
#   ${SLUICE_CACHE:-$HOME/.cache/sluice}/kafka-<version>/libs
#
# The copy is atomic: jars are downloaded into a temporary directory that is
# renamed into place once complete, and a .complete stamp (holding a hash of
# the pom) marks a finished cache, so later runs are instant.
#
# Usage: deploy/kafka/fetch.sh [--print-dir]
#   --print-dir   print the libs directory on stdout (after fetching if needed)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/pom.xml"

die() { echo "kafka/fetch.sh: error: $*" >&2; exit 1; }

print_dir=0
for arg in "$@"; do
    case "$arg" in
        --print-dir) print_dir=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $arg (usage: fetch.sh [--print-dir])" ;;
    esac
done

[[ -f "$pom" ]] || die "missing $pom"
version="$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$pom" | head -n1)"
[[ -n "$version" ]] || die "cannot read <kafka.version> from $pom"

cache_root="${SLUICE_CACHE:-${HOME:?HOME is not set}/.cache/sluice}"
base="$cache_root/kafka-$version"
libs="$base/libs"
stamp="$libs/.complete"
want="$(sha256sum "$pom" | cut -d' ' -f1)"

is_complete() { [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]]; }

if ! is_complete; then
    mkdir -p "$base" || die "cannot create cache directory $base"
    # Serialize concurrent fetches of the same cache.
    exec 9>"$base/.lock"
    flock 9 || die "cannot lock $base/.lock"
    if ! is_complete; then
        command -v mvn >/dev/null 2>&1 || die "mvn not found (run deploy/install-deps.sh)"
        tmp="$(mktemp -d "$base/libs.tmp.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        mvnlog="$tmp.mvn.log"
        if ! mvn -q -B -f "$pom" dependency:copy-dependencies \
                -DoutputDirectory="$tmp" -DincludeScope=runtime >"$mvnlog" 2>&1; then
            tail -n 40 "$mvnlog" >&2 || true
            rm -f "$mvnlog"
            die "maven could not fetch the Kafka $version jars (log above)"
        fi
        rm -f "$mvnlog"
        compgen -G "$tmp/kafka_2.13-$version.jar" >/dev/null \
            || die "maven finished but kafka_2.13-$version.jar is missing"
        printf '%s\n' "$want" >"$tmp/.complete"
        rm -rf "$libs"
        mv -T "$tmp" "$libs" || die "cannot move jars into $libs"
        trap - EXIT
    fi
    exec 9>&-
fi

if [[ "$print_dir" == 1 ]]; then
    printf '%s\n' "$libs"
fi
