#!/usr/bin/env bash
# Cargo's runner for test binaries in CI (CARGO_TARGET_<triple>_RUNNER):
# runs the binary with libtest's per-test times (`--report-time`), which is
# an unstable option; RUSTC_BOOTSTRAP allows it for this run only — it is
# set here, for the test binary, never for cargo or rustc, so the build is
# the one `cargo test` makes without it. `.ci/run` reads the times for its
# table of the slowest tests.
set -euo pipefail
bin="$1"
shift
RUSTC_BOOTSTRAP=1 exec "$bin" "$@" -Z unstable-options --report-time
