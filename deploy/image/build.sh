#!/usr/bin/env bash
# Build the kube-lvs image with Debian's Docker engine and no registry:
#   1. start dockerd if none is running (no bridge, no iptables: builds and the
#      smoke run use --network=none, so nothing touches the host's networking);
#   2. make the base with debootstrap and `docker import`: minbase, python3, the
#      admin tools (iproute2, ipvsadm, kmod) and the Debian package of every
#      program the agent runs (agent/lvs_agent/tools.py: nft from nftables).
#      Cached by tag, the tag named by a hash of that package list (BASE=other:tag
#      to use your own base instead);
#   3. build pinned wheels on the host, then `docker build --network=none`;
#      skipped when the image already carries the hash of its inputs (this
#      folder, pyproject.toml, the Python sources, the base) as a label;
#   4. after a build, run the image's `lvs-operator --help` and `lvs-agent --help`.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${TAG:-kube-lvs:dev}
AGENT_PACKAGES=$(python3 -c 'import runpy; print(" ".join(runpy.run_path("agent/lvs_agent/tools.py")["packages"]()))')
PACKAGES="python3,python3-venv,iproute2,ipvsadm,kmod,ca-certificates${AGENT_PACKAGES:+,${AGENT_PACKAGES// /,}}"
OWN_BASE=kube-lvs-base:bookworm-$(echo "$PACKAGES" | sha256sum | cut -c1-12)
BASE=${BASE:-$OWN_BASE}
CACHE=${KUBE_LVS_CACHE:-$HOME/.cache/kube-lvs}
export DEBIAN_FRONTEND=noninteractive
step() { echo "== image: $*"; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  step "installing docker.io and debootstrap"
  apt-get update -qq && apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  step "starting dockerd (log: $CACHE/dockerd.log)"
  mkdir -p "$CACHE"
  nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$CACHE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  [ "$BASE" = "$OWN_BASE" ] || { echo "base image $BASE not found" >&2; exit 1; }
  step "debootstrap bookworm (minbase + $PACKAGES)"
  root=$(mktemp -d "$CACHE/rootfs.XXXX")
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debootstrap --variant=minbase --include="$PACKAGES" \
    bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$root"
fi

# What the image is made of: a change to any of these builds it anew.
inputs=$( { docker image inspect -f '{{.Id}}' "$BASE"
            git ls-files -co --exclude-standard -- pyproject.toml deploy/image \
              'api/*.py' 'agent/*.py' 'operator/*.py' 'lab/*.py' 'cluster/*.py' 'e2e/*.py' \
              | LC_ALL=C sort | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done; } \
          | sha256sum | cut -c1-32)
if [ "$(docker image inspect -f '{{index .Config.Labels "kube-lvs.inputs"}}' "$TAG" 2>/dev/null)" = "$inputs" ]; then
  step "$TAG is up to date (inputs $inputs)"
else
  step "wheels"
  rm -rf build/image/wheels && mkdir -p build/image/wheels
  python3 -m pip wheel -q --wheel-dir build/image/wheels -r deploy/image/requirements.lock
  python3 -m pip wheel -q --no-deps --wheel-dir build/image/wheels .

  step "docker build $TAG"
  docker build -q --network=none --build-arg "BASE=$BASE" --label "kube-lvs.inputs=$inputs" \
    -f deploy/image/Dockerfile -t "$TAG" . >/dev/null
  step "smoke: lvs-operator --help, lvs-agent --help"
  docker run --rm --network=none "$TAG" lvs-operator --help | head -3
  docker run --rm --network=none "$TAG" lvs-agent --help | head -3
fi
docker image ls "$TAG" --format '== image: {{.Repository}}:{{.Tag}} {{.Size}}'
