#!/usr/bin/env bash
# The supported-version matrix: the PostgreSQL end-to-end core (migrations,
# locks, snapshot and restore fidelity with privileges, extensions and
# materialized views, the COPY binary load, continuous capture, restore points and restore
# to a time, cross-version restores, pg_dump checks) run
# against PostgreSQL 14, 16, 17 and 18, one after another, reusing the test
# binaries already built. PostgreSQL 15 (Debian's) runs the whole suite
# through the README's test command.
#
#   scripts/pg-matrix.sh            every version
#   scripts/pg-matrix.sh 17 18      only these
#
# Each version gets its own services (VALERO_PG_VERSION, state in
# .services-pgN; .ci/run starts them while it builds), stopped afterwards;
# the time each took is printed, its output kept in $VALERO_CI_LOGS.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=(14 16 17 18)

# The tests whose subject is PostgreSQL (modules of the one test binary,
# tests/it); MongoDB-only tests are skipped.
core=(migrate_postgres:: restore:: restore_dependencies:: rehearse:: capture:: restore_points:: pg_versions:: masking_leaks::)
skip=(--skip mongodb)

# The core's tests wait on servers far more than they compute: four at a
# time finish in about 3/4 of the time two take on this 2-core machine.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"

summary=()
for v in "${versions[@]}"; do
  started=$SECONDS
  echo "=== PostgreSQL $v ===" >&2
  status=0
  tests=("${core[@]}")
  # PostgreSQL 14 has no schema publications: capture is refused there
  # (tests/it/pg_versions.rs checks that), so its capture and restore point
  # tests do not apply.
  [[ "$v" == 14 ]] && tests=(migrate_postgres:: restore:: restore_dependencies:: rehearse:: pg_versions:: masking_leaks::rules)
  log="${VALERO_CI_LOGS:-/tmp}/suite-$v.log"
  VALERO_PG_VERSION="$v" scripts/services.sh run cargo test --locked --test it -- "${tests[@]}" "${skip[@]}" 2>&1 |
    tee "$log" || status=$?
  VALERO_PG_VERSION="$v" scripts/services.sh stop || true
  summary+=("PostgreSQL $v: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - started)) s")
  if [[ $status != 0 ]]; then
    printf '%s\n' "${summary[@]}" >&2
    exit "$status"
  fi
done
printf '%s\n' "${summary[@]}" >&2
