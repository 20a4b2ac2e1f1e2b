#!/usr/bin/env bash
# Runs each cargo-fuzz target of tests/fuzz for a bounded time (CI: tests/run-all.sh runs it
# with 20 s per target) and prints, per target, the inputs executed and the crashes found.
# Exits non-zero if any target crashed, hung or ran out of memory; the input is saved under
# build/fuzz/artifacts/<target>/ (README.md says how to turn it into a regression test).
# Installs what is missing on a fresh Debian machine: a C++ compiler (libFuzzer is C++, via
# images/host-deps.sh) and cargo-fuzz (cargo install, cached in ~/.cargo/bin).
#
# Usage: tests/fuzz/run.sh [SECONDS [TARGET...]]      (default: 20 s, every target)
#   APERTURE_FUZZ_SANITIZER=none   build without AddressSanitizer (default: address)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
fuzz_dir="$repo/tests/fuzz"
out="$repo/build/fuzz"
seconds=${1:-20}
shift || true
cargo_fuzz_version=0.13.2

say() { printf 'fuzz: %s\n' "$*"; }

case "$seconds" in
    '' | *[!0-9]*) say "SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in "$fuzz_dir"/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    say "no C++ compiler: installing the host packages (images/host-deps.sh)"
    bash images/host-deps.sh
fi

# rustup's toolchain (stable is fine: RUSTC_BOOTSTRAP below unlocks the -Z flags cargo-fuzz
# passes). Debian's /usr/bin/rustc has no sanitizer runtimes, so make sure it is not picked.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustup >/dev/null 2>&1; then
    say "needs rustup's cargo (https://rustup.rs); none in PATH or ~/.cargo/bin" >&2
    exit 1
fi
unset RUSTC RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_TARGET_DIR

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    say "installing cargo-fuzz $cargo_fuzz_version (cargo install, a few minutes, once)"
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

host=$(rustc -vV | sed -n 's/^host: //p')
sanitizer=${APERTURE_FUZZ_SANITIZER:-address}
if [ "$sanitizer" = address ] &&
    ! ls "$(rustc --print sysroot)/lib/rustlib/$host/lib/"*asan* >/dev/null 2>&1; then
    say "this toolchain ships no AddressSanitizer runtime: fuzzing without a sanitizer"
    sanitizer=none
fi

# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable compiler use them.
fuzz() {
    local command=$1
    shift
    RUSTC_BOOTSTRAP=1 cargo fuzz "$command" --fuzz-dir "$fuzz_dir" --target-dir "$out/target" \
        --sanitizer "$sanitizer" "$@"
}

say "building ${targets[*]} (sanitizer: $sanitizer)"
build_start=$(date +%s)
for t in "${targets[@]}"; do
    fuzz build "$t"
done
say "built in $(($(date +%s) - build_start)) s"

failed=0
summary=()
for t in "${targets[@]}"; do
    corpus="$out/corpus/$t"
    artifacts="$out/artifacts/$t"
    log="$out/logs/$t.log"
    mkdir -p "$corpus" "$artifacts" "$out/logs"
    seeds=()
    if [ -d "$fuzz_dir/seeds/$t" ]; then seeds=("$fuzz_dir/seeds/$t"); fi
    # libFuzzer replays the whole corpus before it fuzzes, whatever the time limit: keep a
    # corpus that grew across runs small by merging it down to the inputs that add coverage.
    if [ "$(find "$corpus" -type f | wc -l)" -gt 1000 ]; then
        say "minimizing the $t corpus"
        rm -rf "$corpus.min" && mkdir -p "$corpus.min"
        "$out/target/$host/release/$t" -merge=1 "$corpus.min" "$corpus" >"$log" 2>&1 &&
            rm -rf "$corpus" && mv "$corpus.min" "$corpus" || rm -rf "$corpus.min"
    fi
    before=$(find "$artifacts" -type f | wc -l)
    touch "$log.start"
    say "running $t for $seconds s"
    status=0
    # New inputs go to the first corpus directory (build/, not the committed seeds).
    fuzz run "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    found=$(($(find "$artifacts" -type f | wc -l) - before))
    line="$t: ${runs:-?} executions, $found crashes"
    if [ "$status" -ne 0 ] || [ "$found" -ne 0 ]; then
        failed=1
        line="$line (exit status $status; log $log)"
        say "$t FAILED:"
        grep -m 1 -A 6 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" >&2 ||
            tail -n 30 "$log" >&2 || true
        find "$artifacts" -type f -newer "$log.start" -printf 'fuzz: saved input %p\n' >&2 || true
    fi
    summary+=("$line")
done

say "summary ($seconds s per target):"
for line in "${summary[@]}"; do say "  $line"; done
if [ "$failed" -ne 0 ]; then
    say "a target crashed: reproduce with tests/fuzz/run.sh's build, e.g." \
        "build/fuzz/target/$host/release/<target> <saved input>; see tests/fuzz/README.md" >&2
    exit 1
fi
