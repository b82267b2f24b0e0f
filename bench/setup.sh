#!/bin/bash
# Install the peers the benchmarks compare against: keepalived and ipvsadm
# (Debian packages). Idempotent and non-interactive; needs root on Debian.
# The lab VM chroots into the host root, so packages installed here are the
# ones the guest runs.
set -euo pipefail
log() { printf '[bench/setup] %s\n' "$*" >&2; }
export DEBIAN_FRONTEND=noninteractive
need=()
command -v keepalived >/dev/null 2>&1 || need+=(keepalived)
command -v ipvsadm-restore >/dev/null 2>&1 || need+=(ipvsadm)
if [ ${#need[@]} -eq 0 ]; then
    log "present: $(dpkg-query -W -f='${Package} ${Version}  ' keepalived ipvsadm 2>/dev/null)"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "ERROR: need root to apt-get install ${need[*]}"; exit 1; }
log "apt-get install ${need[*]}"
if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# The package's service must not run on the host: the benchmark starts its own
# keepalived inside a throwaway network namespace in the lab VM.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now keepalived >/dev/null 2>&1 || true
fi
log "installed: $(dpkg-query -W -f='${Package} ${Version} ' keepalived ipvsadm 2>/dev/null)"
