#!/usr/bin/env bash
# The whole test suite, as the README documents it and CI runs it:
#   1. install what the tests need (Debian packages, Rust components) when missing,
#   2. formatting and lint gates,
#   3. unit tests, integration tests over the real socket, end-to-end tests with real QEMU guests.
# Long runs (benchmarks, the long soak, long fuzzing) are not part of this script; their short
# passes are.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies (only what is missing)"
bash tests/e2e/setup.sh
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep "^${component}" >/dev/null; then
        rustup component add "$component"
    fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
# --all-features: also the packaging-time generator (feature gen-docs, packaging/gen-docs.rs).
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== cargo test"
# Benchmarks are built (clippy --all-targets compiles them) but not run: they have their
# own command (benches/run.sh).
cargo test --workspace --lib --bins --tests -- --test-threads="${VUS_TEST_THREADS:-2}"

# The default I/O engine is io-uring; the front-end tests run again on the other engines.
for aio in threads sync; do
    echo "== cargo test --test frontend (--aio=$aio)"
    VUS_TEST_AIO=$aio cargo test --test frontend -- --test-threads="${VUS_TEST_THREADS:-2}"
done
# Busy polling (completions reach a polling io_uring thread only when it enters the kernel)
# and batched submission take other paths through the queue thread.
echo "== cargo test --test frontend (--poll-us 50 --submit-batch 8)"
VUS_TEST_DAEMON_ARGS="--poll-us 50 --submit-batch 8" \
    cargo test --test frontend -- --test-threads="${VUS_TEST_THREADS:-2}"
# Registered guest memory (READ_FIXED/WRITE_FIXED). One test at a time: every worker's
# registrations count against the same account's RLIMIT_MEMLOCK (8 MiB by default).
echo "== cargo test --test frontend (--register-buffers)"
VUS_TEST_DAEMON_ARGS="--register-buffers" cargo test --test frontend -- --test-threads=1
# The soak, one round of every fault (EIO, ENOSPC under enospc=hold, guest reset, worker and
# QEMU killed, iSCSI target restarted and connection cut) under a guest's fio verify loop: about
# 4-5 minutes (docs/reliability.md, "Soak").
echo "== tests/e2e/soak.sh --short"
bash tests/e2e/soak.sh --short
bash fuzz/run.sh --short  # replays the fuzz corpora, then ~20 s of fuzzing per target (SKIPPED without the toolchain support)

# The Debian package (release build), its units and policies, the packaged daemon serving a
# guest, and libvirt with the documented domain XML (about 3 minutes with a warm target/,
# 6-7 on a fresh machine). VUS_PACKAGING=0 skips it.
if [[ "${VUS_PACKAGING:-1}" == 0 ]]; then
    echo "== tests/packaging.sh: SKIPPED (VUS_PACKAGING=0)"
else
    echo "== tests/packaging.sh"
    bash tests/packaging.sh
fi
