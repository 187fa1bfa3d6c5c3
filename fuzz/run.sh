#!/usr/bin/env bash
# Coverage-guided fuzzing of the daemon's hostile-input parsers (libFuzzer through
# libfuzzer-sys, built by hand so that a stable toolchain is enough).
#
#   fuzz/run.sh --short            replay the checked-in inputs, then fuzz every target ~20 s
#                                  (the test suite's pass; VUS_FUZZ_SECONDS)
#   fuzz/run.sh --long SECONDS     every target SECONDS (the documented runs)
#   fuzz/run.sh ... --asan         nightly + AddressSanitizer (long runs; needs nightly)
#   fuzz/run.sh ... TARGET...      only these targets
#
# New corpus entries go to fuzz/corpus-run/TARGET (not checked in), crashes to
# fuzz/artifacts/TARGET/ (fuzz/artifacts-asan/ with --asan). Checked-in seeds
# (fuzz/corpus/TARGET) are read, never written.
# Exit status: 0 when every target ran clean (or the whole pass was skipped, which is printed
# as "SKIPPED: <reason>"), 1 when a target found a crash, a leak, a timeout or did not build.
#
# The layout is cargo-fuzz's too: `cargo +nightly fuzz run TARGET` works as usual.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${VUS_FUZZ_SECONDS:-20}
asan=0
replay=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --short) replay=1; shift ;;
        --long) seconds=$2; shift 2 ;;
        --asan) asan=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    targets=(virtio_request scsi_cdb vhost_user config iscsi_pdu iscsi_login management)
fi

skip() {
    echo "SKIPPED: $*"
    exit 0
}

# Without the fuzz crate's dependencies (libfuzzer-sys; an offline machine) nothing can run.
if ! cargo fetch >/dev/null 2>&1; then
    skip "cannot fetch the fuzz crate's dependencies (cargo fetch failed: offline?)"
fi

# The test suite's pass first replays every checked-in seed and regression input without
# instrumentation (any toolchain, so it runs even where fuzzing is skipped), sharing the
# main build's target directory.
if [ $replay = 1 ]; then
    echo "== replaying the fuzz corpora and regression inputs (cargo test in fuzz/)"
    cargo test --target-dir ../target -j"${VUS_FUZZ_JOBS:-2}" -- --test-threads=1
fi

host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p') || true
[ -n "$host" ] || skip "no rustc"
case "$host" in
    x86_64-*-linux-gnu|aarch64-*-linux-gnu) ;;
    *) skip "libFuzzer is only wired up for Linux (host $host)" ;;
esac
command -v c++ >/dev/null || skip "no C++ compiler (libfuzzer-sys builds libFuzzer from source)"

# The sanitizer-coverage instrumentation libFuzzer needs is plain LLVM passes: stable rustc
# accepts them. AddressSanitizer is -Z: nightly only.
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
toolchain=()
target_dir=target
out=artifacts
if [ $asan = 1 ]; then
    out=artifacts-asan
    rustup toolchain list 2>/dev/null | grep '^nightly' >/dev/null || skip "--asan needs a nightly toolchain"
    toolchain=(+nightly)
    flags+=" -Zsanitizer=address"
    target_dir=target/asan
fi

# Can this rustc instrument at all? (Not a build of ours: a failure here is the toolchain's.)
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
# Compiled to an object only: linking needs libFuzzer's runtime, which the real build brings.
echo 'pub fn f(x: u32) -> bool { x == 7 }' >"$probe/p.rs"
# shellcheck disable=SC2086
if ! rustc "${toolchain[@]}" $flags --crate-type lib --emit=obj -o "$probe/p.o" "$probe/p.rs" \
    2>"$probe/err"; then
    skip "rustc ($(rustc "${toolchain[@]}" --version)) cannot instrument: $(head -1 "$probe/err")"
fi

echo "== building fuzz targets (${toolchain[*]:-stable}, sanitizer-coverage$([ $asan = 1 ] && echo ' + ASan'))"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
# Build scripts and proc macros are built for the host without the flags: --target.
if ! RUSTFLAGS="$flags" cargo "${toolchain[@]}" build --release --target "$host" \
    --target-dir "$target_dir" -j"${VUS_FUZZ_JOBS:-2}" "${bins[@]}"; then
    echo "FAIL: the fuzz targets do not build"
    exit 1
fi

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "corpus-run/$t" "$out/$t"
    log="$out/$t/last-run.log"
    echo "== fuzzing $t for ${seconds}s"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: an input costing 2 GiB is
    # unbounded allocation; both count as findings.
    if "$target_dir/$host/release/$t" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/$t/" \
        "corpus-run/$t" "corpus/$t" >"$log" 2>&1; then
        result=ok
    else
        result=FOUND
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$done_line")
    echo "$t: $result, ${execs:-?} execs, cov ${cov:-?} edges, ft ${ft:-?} features, corpus ${corp:-?}"
    if [ $result != ok ]; then
        grep -E "ERROR|panicked|SUMMARY|Test unit written|==[0-9]+==" "$log" | head -20
        echo "(full log: fuzz/$log)"
    fi
done
exit $status
