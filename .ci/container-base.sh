#!/usr/bin/env bash
# Make, on this machine, the base image the Dockerfile's FROM names (python:3.11-slim), for the
# container test (tests/system/test_container.py). No container registry is reachable here, so the
# base is a minimal Debian root from Debian's packages, made to provide what the Dockerfile asks
# of python:3.11-slim: Python 3.11 as `python` on PATH with venv, `useradd`, a CA bundle. The
# bundle is this machine's own, so pip inside the build trusts what the host's pip trusts.
#
#   bash .ci/container-base.sh          # needs root, podman and debootstrap (see .ci/run)
#
# Idempotent: an image made by this recipe (same script, same host CA bundle) is kept, so a second
# run costs a second; a python:3.11-slim that this script did not make (the real one) is left as
# it is. The root is made in a temporary folder and removed; nothing is written to the work tree.
set -euo pipefail

IMAGE="docker.io/library/python:3.11-slim"
SUITE="bookworm"                      # Debian 12: python3 is 3.11, as in python:3.11-slim
MIRROR="${RECEIVER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
LABEL="io.metastudio-receiver.base-recipe"

recipe="$(cat "$0" "$CA_BUNDLE" | sha256sum | cut -c1-16)"
previous=""
if podman image exists "$IMAGE"; then
    made="$(podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$IMAGE")"
    if [ "$made" = "$recipe" ]; then
        echo "container-base: $IMAGE is up to date (recipe $recipe)"
        exit 0
    elif [ -z "$made" ] || [ "$made" = "<no value>" ]; then
        echo "container-base: $IMAGE exists and was not made here; using it as it is"
        exit 0
    fi
    previous="$(podman image inspect --format '{{.Id}}' "$IMAGE")"  # an older recipe's
fi

work="$(mktemp -d /var/tmp/receiver-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
start=$SECONDS
# python-is-python3: `python` (the Dockerfile runs `python -m venv`); passwd: `useradd`.
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
cp "$CA_BUNDLE" "$root$CA_BUNDLE"
# Slim as the -slim images are: no package lists or downloaded packages, no docs, man pages or
# translations (copyright files stay).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/usr/share/doc-base
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete

tar --numeric-owner -C "$root" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL $LABEL=$recipe" \
    - "$IMAGE" >/dev/null
if [ -n "$previous" ]; then
    podman image rm "$previous" >/dev/null 2>&1 || true  # kept while an image still uses it
fi
size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
echo "container-base: made $IMAGE (recipe $recipe, $((size / 1000000)) MB) in $((SECONDS - start)) s"
