#!/usr/bin/env bash
# A throwaway certificate authority for the local secure stack and the
# tests: never for production.
#
# Usage: deploy/testca.sh DIR NAME [SAN ...]
#   Makes DIR/ca.crt and DIR/ca.key once (valid ten years: a local stack
#   outlives a test run), then DIR/NAME.crt and DIR/NAME.key: a server
#   certificate for the SANs given (default: DNS:localhost IP:127.0.0.1),
#   signed by that CA. Keys are 0600.
#   Prints nothing on success.
set -euo pipefail

die() { echo "testca.sh: error: $*" >&2; exit 1; }
[[ $# -ge 2 ]] || die "usage: testca.sh DIR NAME [SAN ...]"
dir="$1" name="$2"
shift 2
sans=("$@")
[[ ${#sans[@]} -gt 0 ]] || sans=(DNS:localhost IP:127.0.0.1)
command -v openssl >/dev/null || die "openssl not found"
mkdir -p "$dir"
umask 077

if [[ ! -s "$dir/ca.crt" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
        -subj "/CN=sluice test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null \
        || die "cannot make the CA in $dir"
fi
san="$(IFS=,; echo "${sans[*]}")"
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null \
    || die "cannot make the key of $name"
openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 3650 -sha256 \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san") \
    -out "$dir/$name.crt" 2>/dev/null \
    || die "cannot sign the certificate of $name"
rm -f "$dir/$name.csr"
chmod 0644 "$dir/ca.crt" "$dir/$name.crt"
