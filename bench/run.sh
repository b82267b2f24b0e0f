#!/bin/bash
# kube-lvs kernel benchmarks (issue 7, parts 1-3; 4-5 reported as not yet measured).
#
#   bash bench/run.sh [--smoke] [lvs_bench.kernel options...]
#
# Boots the lab VM (real IPVS kernel under qemu), runs `python -m lvs_bench.kernel`
# in it, prints the tables and copies the results to bench/results/:
#   latest.{json,md,txt}   full run (default sizes 1k, 10k, 100k dests)
#   smoke.{json,md,txt}    --smoke (20 and 40 dests: checks the harness, not speed)
#   runs/<date>.json       every full run, kept
# Needs root (apt-get for the peers, qemu). Exit code: the harness's (1 if any
# figure failed its sanity check).
set -euo pipefail

# Everything runs inside main(): bash parses a function whole before running it, so
# editing this file while a run is under way cannot derail that run.
main() {
    ROOT=$(cd "$(dirname "$0")/.." && pwd)
    cd "$ROOT"
    PY=${PYTHON:-$ROOT/.venv/bin/python}
    log() { printf '[bench/run] %s\n' "$*" >&2; }

    name=latest timeout=${BENCH_TIMEOUT:-3000}
    for a in "$@"; do
        case "$a" in
            --smoke) name=smoke; timeout=${BENCH_TIMEOUT:-900} ;;
            --sizes|--sizes=*) [ "$name" = smoke ] || name=custom ;;
            -h|--help) exec "$PY" -c 'import sys; sys.path.insert(0, "bench"); from lvs_bench.kernel import main; main(["--help"])' ;;
        esac
    done

    bash "$ROOT/bench/setup.sh"
    "$PY" -m lvs_lab info >/dev/null 2>&1 || bash "$ROOT/lab/setup.sh"

    job=$(mktemp -d /tmp/kube-lvs-bench-job.XXXXXX)
    trap 'rm -rf "$job"' EXIT
    host_cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
    host_cpu="$host_cpu ($(nproc) CPUs, shared)"
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    # Uncommitted or untracked changes to the code under test make the commit alone ambiguous.
    [ -z "$(git -C "$ROOT" status --porcelain -- agent api bench 2>/dev/null | grep -v ' bench/results/')" ] \
        || commit="$commit+uncommitted"

    log "booting the lab VM (timeout ${timeout}s): lvs_bench.kernel $*"
    set +e
    "$PY" -m lvs_lab run --timeout "$timeout" --mem "${BENCH_VM_MEM:-3072}" --results "$job" \
        --env "PYTHONPATH=$ROOT/bench" \
        --env "BENCH_HOST_CPU=$host_cpu" \
        --env "BENCH_HOST_KERNEL=$(uname -r)" \
        --env "BENCH_HOST_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)" \
        --env "BENCH_COMMIT=$commit" \
        -- "$PY" -m lvs_bench.kernel --name "$name" "$@"
    rc=$?
    set -e
    log "host load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

    mkdir -p "$ROOT/bench/results"
    copied=0
    for ext in json md txt; do
        f="$job/bench/$name.$ext"
        if [ -f "$f" ]; then
            cp "$f" "$ROOT/bench/results/$name.$ext"
            copied=1
        fi
    done
    if [ "$copied" = 1 ] && [ "$name" = latest ]; then
        mkdir -p "$ROOT/bench/results/runs"
        cp "$job/bench/latest.json" "$ROOT/bench/results/runs/$(date -u +%Y%m%d-%H%M%S).json"
    fi
    if [ "$copied" = 1 ]; then
        log "results: bench/results/$name.{json,md,txt} (exit $rc)"
    else
        log "no results came back (exit $rc); VM console tail:"
        tail -n 40 "$job/console.log" 2>/dev/null >&2 || true
        [ "$rc" = 0 ] && rc=1
    fi
    exit "$rc"
}

main "$@"
exit $?
