#!/bin/bash
# kube-lvs benchmarks (issue 7, parts 1-5; issue 17, part 6).
#
#   bash bench/run.sh [--smoke] [--operator-sizes N,..] [--e2e-services M,..] [--e2e-changes C]
#                     [--e2e-floor-sample K]
#                     [--parts 1-3,4,5,6] [lvs_bench.kernel options...]
#   bash bench/run.sh --parts 1-3 --lvsctl-only [--smoke]   (table 1b alone: lvsctl.{json,md,txt})
#
# Parts 1-3: boots the lab VM (real IPVS kernel under qemu), runs
# `python -m lvs_bench.kernel` in it. Parts 4-5: `python -m lvs_bench.host` on the
# host (part 4: control plane + operator only; part 5: the whole system, booting
# the VM again), merged into the same report. Part 6: director failover, kube-lvs
# vs keepalived (`python -m lvs_bench.failover` in a VM of its own; a report of
# its own). Prints the tables and copies the results to bench/results/:
#   latest.{json,md,txt}   full run (default sizes 1k, 10k, 100k dests)
#   latest.*.png           its plots (lvs_bench.plots: time versus size, latency CDF)
#   smoke.{json,md,txt}    --smoke (20 and 40 dests: checks the harness, not speed)
#   runs/<date>.json       every full run, kept
#   failover.{json,md,txt} part 6 (failover-smoke.* with --smoke)
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
    # Options of the host parts (4-5) are taken out; the rest go to lvs_bench.kernel.
    kargs=() hargs=() smoke=0 parts="1-3,4,5,6"
    while [ $# -gt 0 ]; do
        case "$1" in
            --operator-sizes|--e2e-services|--e2e-changes|--e2e-floor-sample) hargs+=("$1" "$2"); name=custom; shift 2; continue ;;
            --operator-sizes=*|--e2e-services=*|--e2e-changes=*|--e2e-floor-sample=*) hargs+=("$1"); name=custom ;;
            --parts) parts=$2; shift 2; continue ;;
            --parts=*) parts=${1#--parts=} ;;
            --smoke) name=smoke; smoke=1; timeout=${BENCH_TIMEOUT:-900}; kargs+=("$1") ;;
            --sizes|--sizes=*) kargs+=("$1"); [ "$1" = --sizes ] && { kargs+=("$2"); shift; } ;;
            -h|--help) "$PY" -c 'import sys; sys.path.insert(0, "bench"); from lvs_bench.kernel import main; main(["--help"])' || true
                       exec "$PY" -c 'import sys; sys.path.insert(0, "bench"); from lvs_bench.host import main; main(["--help"])' ;;
            *) kargs+=("$1") ;;
        esac
        shift
    done
    for a in "${kargs[@]}"; do case "$a" in --sizes|--sizes=*) [ "$smoke" = 1 ] || name=custom ;; esac; done
    # Table 1b alone (lvsctl vs ipvsadm, processes) gets a report of its own.
    for a in "${kargs[@]}"; do [ "$a" = --lvsctl-only ] && { name=lvsctl; [ "$smoke" = 1 ] && name=lvsctl-smoke; }; done
    set -- "${kargs[@]}"
    [ "$smoke" = 1 ] && hargs+=(--smoke)
    hparts=""
    for p in 4 5; do [[ ",$parts," == *",$p,"* ]] && hparts="${hparts:+$hparts,}$p"; done

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

    # in_vm RESULTS_DIR MODULE ARGS...: python -m MODULE in the lab VM, with the
    # environment the machine block of every report records.
    in_vm() {
        local results=$1
        shift
        "$PY" -m lvs_lab run --timeout "$timeout" --mem "${BENCH_VM_MEM:-3072}" --results "$results" \
            --env "PYTHONPATH=$ROOT/bench" --env "BENCH_HOST_CPU=$host_cpu" --env "BENCH_HOST_KERNEL=$(uname -r)" \
            --env "BENCH_HOST_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)" --env "BENCH_COMMIT=$commit" \
            -- "$PY" -m "$@"
    }

    rc=0
    if [[ ",$parts," == *",1-3,"* ]]; then
    log "booting the lab VM (timeout ${timeout}s): lvs_bench.kernel $*"
    set +e
    in_vm "$job" lvs_bench.kernel --name "$name" "$@"
    rc=$?
    set -e
    log "host load average at the end of parts 1-3: $(cut -d' ' -f1-3 /proc/loadavg)"
    fi

    # Parts 4-5 on the host, merged into the report of parts 1-3 (this run's, or
    # with --parts 4,5 alone the last one in bench/results/).
    if [ -n "$hparts" ]; then
        mkdir -p "$job/bench"
        if [ ! -f "$job/bench/$name.json" ] && [ -f "$ROOT/bench/results/$name.json" ]; then
            cp "$ROOT/bench/results/$name.json" "$job/bench/$name.json"
        fi
        log "parts $hparts on the host: lvs_bench.host ${hargs[*]}"
        set +e
        PYTHONPATH="$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m lvs_bench.host --parts "$hparts" \
            --merge "$job/bench/$name.json" --out "$job/bench" --name "$name" "${hargs[@]}"
        hrc=$?
        set -e
        [ "$hrc" = 0 ] || rc=$hrc
        log "host load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    fi

    # Part 6: director failover, kube-lvs vs keepalived, in a VM of its own.
    fname=failover
    [ "$smoke" = 1 ] && fname=failover-smoke
    if [[ ",$parts," == *",6,"* ]]; then
        fargs=()
        [ "$smoke" = 1 ] && fargs+=(--smoke)
        log "part 6 (failover) in the lab VM (timeout ${timeout}s): lvs_bench.failover ${fargs[*]}"
        set +e
        in_vm "$job/failover" lvs_bench.failover --name "$fname" "${fargs[@]}"
        frc=$?
        set -e
        [ "$frc" = 0 ] || rc=$frc
    fi

    mkdir -p "$ROOT/bench/results"
    copied=0 fcopied=0
    for ext in json md txt; do
        f="$job/bench/$name.$ext"
        if [ -f "$f" ]; then
            cp "$f" "$ROOT/bench/results/$name.$ext"
            copied=1
        fi
        f="$job/failover/bench/$fname.$ext"
        if [ -f "$f" ]; then
            cp "$f" "$ROOT/bench/results/$fname.$ext"
            fcopied=1
        fi
    done
    [ "$fcopied" = 1 ] && log "part 6 results: bench/results/$fname.{json,md,txt}"
    if [ "$copied" = 1 ] && [ "$name" = latest ]; then
        mkdir -p "$ROOT/bench/results/runs"
        cp "$job/bench/latest.json" "$ROOT/bench/results/runs/$(date -u +%Y%m%d-%H%M%S).json"
    fi
    if [ "$copied" = 1 ] && [ -f "$ROOT/bench/results/$name.json" ]; then
        # The pictures beside the tables (matplotlib: pip install -e '.[bench]').
        PYTHONPATH="$ROOT/bench" "$PY" -m lvs_bench.plots "$ROOT/bench/results/$name.json" >&2 \
            || log "no plots: matplotlib missing? (pip install -e '.[bench]')"
    fi
    if [ "$copied" = 1 ]; then
        log "results: bench/results/$name.{json,md,txt} and $name.*.png (exit $rc)"
    elif [ "$fcopied" = 1 ] && [[ ",$parts," != *",1-3,"* ]] && [ -z "$hparts" ]; then
        log "exit $rc"
    else
        log "no results came back (exit $rc); VM console tail:"
        tail -n 40 "$job/console.log" "$job/failover/console.log" 2>/dev/null >&2 || true
        [ "$rc" = 0 ] && rc=1
    fi
    exit "$rc"
}

main "$@"
exit $?
