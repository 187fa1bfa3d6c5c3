#!/usr/bin/env bash
# Builds the Debian source and binary packages of the working tree.
#
#   packaging/build-deb.sh [OUTDIR]        (default OUTDIR: target/deb)
#
# The debian/ directory lives in packaging/debian (the repository root stays a plain Cargo
# project). This script copies the tracked and untracked-but-not-ignored files of the working
# tree into OUTDIR/vhost-user-scsi-VERSION/, copies packaging/debian there as debian/, and runs
# dpkg-buildpackage (source + binary, unsigned). Results: OUTDIR/vhost-user-scsi_VERSION_ARCH.deb,
# the .dsc/.tar.xz, .buildinfo and .changes.
#
# Toolchain: Debian 12's rustc (1.63) is older than the crate's rust-version (1.80). When the
# rustc on PATH is not a Debian package (rustup), the build profile pkg.vhost-user-scsi.rustup
# drops the cargo/rustc build dependencies so dpkg-checkbuilddeps still checks the rest.
# CARGO_TARGET_DIR defaults to the repository's target/, so that crates built for earlier
# release builds are reused (the vhost-user-scsi crate itself is rebuilt: its path differs).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$repo/target/deb}")"
version="$(dpkg-parsechangelog -l "$repo/packaging/debian/changelog" -S Version)"
tree="$out/vhost-user-scsi-$version"

rm -rf "$tree"
mkdir -p "$tree"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | grep -zv '^packaging/debian/' \
    | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
    | tar --null -T - -cf -) | tar -C "$tree" -xf -
cp -a "$repo/packaging/debian" "$tree/debian"
# Directories get the working tree's mtimes too (tar made them now): build.rs watches the
# seccomp/ directory, and a new mtime there would make every rebuild a full crate rebuild.
(cd "$tree" && find . -mindepth 1 -type d -not -path './debian*' -print0) \
    | while IFS= read -r -d '' d; do [[ -d "$repo/$d" ]] && touch -r "$repo/$d" "$tree/$d"; done

profiles=()
rustc_path="$(command -v rustc || true)"
if [[ -z "$rustc_path" ]] || ! dpkg -S "$(realpath "$rustc_path")" >/dev/null 2>&1; then
    profiles=(-Ppkg.vhost-user-scsi.rustup)
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
jobs="${VUS_BUILD_JOBS:-2}"
cd "$tree"
DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-parallel=$jobs}" \
    dpkg-buildpackage -us -uc "${profiles[@]}"
ls -1 "$out"/*.deb
