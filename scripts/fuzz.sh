#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/, a separate package so the main build is untouched) and runs
# each for FUZZ_SECONDS (default 60). Usage: scripts/fuzz.sh [target ...]  (default: all targets)
#
# The committed seeds (Fuzz/corpus/<target>/) are read, never written: what libFuzzer learns goes to
# Fuzz/.build/corpus/<target>/ and survives between runs. A crash leaves its input in
# Fuzz/.build/artifacts/<target>/ and makes this script fail; reproduce it with
#   Fuzz/.build/release/<target> <input file>
set -euo pipefail
cd "$(dirname "$0")/../Fuzz"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-1}
SWIFT=${SWIFT:-swift}
ALL_TARGETS=(FuzzJSON FuzzPlugin FuzzCNIArgs FuzzResult FuzzRange FuzzBridgeConfig FuzzPTPConfig)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")

# Coverage instrumentation and Address Sanitizer on every module; lld keeps the link quiet;
# -enable-testing lets FuzzRange reach host-local's internal config type.
$SWIFT build -c release -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld -Xswiftc -enable-testing 2>&1 \
    | grep -v "Cannot export local symbol" || true
test "${PIPESTATUS[0]}" -eq 0

# libFuzzer forks workers (each logging to fuzz-<n>.log) only when asked for more than one job.
parallel=()
if [ "$JOBS" -gt 1 ]; then parallel=(-jobs="$JOBS" -workers="$JOBS"); fi

status=0
for target in "${TARGETS[@]}"; do
    work=.build/corpus/$target
    artifacts=.build/artifacts/$target
    mkdir -p "$work" "$artifacts" "corpus/$target"
    echo "== $target: ${SECONDS_PER_TARGET}s"
    log=.build/$target.log
    if ! .build/release/"$target" -max_total_time="$SECONDS_PER_TARGET" -dict=json.dict -timeout=10 \
        -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 "${parallel[@]}" \
        -artifact_prefix="$artifacts/" "$work" "corpus/$target" >"$log" 2>&1; then
        status=1
        echo "!! $target found a failure; input(s) in $artifacts:"
        ls -l "$artifacts"
        grep -m5 -E "Fatal error|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY" "$log" || tail -20 "$log"
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|^Done [0-9]+ runs" "$log" || true
    grep -oE "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*" "$log" | tail -1 || true
done
exit $status
