#!/usr/bin/env bash
# Idempotent host setup for the e2e tests.
#
#  * installs the Debian packages the harness needs (only if missing);
#  * by default also provides a second, newer QEMU from <codename>-backports,
#    extracted side by side under /opt/qemu-backports (the system QEMU stays
#    untouched), reachable through the wrapper /opt/qemu-backports/bin/qemu-system-x86_64.
#
# Usage: setup.sh [--backports|--no-backports]
#   E2E_QEMU_BACKPORTS=0 disables the backports QEMU (default 1).
#
# Output (stdout, one line per QEMU, for machines to parse):
#   E2E-QEMU <name> <path-to-qemu-system-x86_64> <version>
#   E2E-QEMU-UNAVAILABLE <name> <reason>
# Everything else goes to stderr.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

want_backports="${E2E_QEMU_BACKPORTS:-1}"
for arg in "$@"; do
    case "$arg" in
        --backports) want_backports=1 ;;
        --no-backports) want_backports=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $arg" ;;
    esac
done

BP_PREFIX="${E2E_QEMU_BACKPORTS_DIR:-/opt/qemu-backports}"
# fio and valgrind: benches/ (the guest bench's fio, the host bench's reference; callgrind profiles).
# qemu-block-extra: libiscsi driver, the iSCSI benchmark row (benches/guest.sh --iscsi).
# iproute2: ss -K, how the soak cuts its iSCSI LUN's connection (tests/e2e/soak.sh iscsi-cut).
PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs cpio kmod util-linux gzip sg3-utils python3-fusepy tgt python3-seccomp genisoimage eject isolinux syslinux-common
    qemu-block-extra fio valgrind iproute2)

SUDO=""
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null; then SUDO="sudo -n"; fi
fi

is_installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        e2e_log "apt-get update"
        $SUDO apt-get update -qq >&2 || e2e_die "apt-get update failed"
        APT_UPDATED=1
    fi
}

apt_install() {
    apt_update_once
    e2e_log "apt-get install -y $*"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
        || e2e_die "apt-get install $* failed"
}

install_base() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do is_installed "$p" || missing+=("$p"); done
    if [[ ${#missing[@]} -gt 0 ]]; then
        apt_install "${missing[@]}"
    else
        e2e_log "all base packages present"
    fi
}

qemu_version() { "$1" --version 2>/dev/null | sed -n '1s/^QEMU emulator version \([^ ]*\).*/\1/p'; }

# Print "E2E-QEMU name path version" if the binary runs and has vhost-user-scsi-pci.
report_qemu() {
    local name="$1" bin="$2" ver
    ver="$(qemu_version "$bin" || true)"
    if [[ -z "$ver" ]]; then
        echo "E2E-QEMU-UNAVAILABLE $name $bin does not run"; return 1
    fi
    # Ask for this one device only: "-device help" loads every QOM module and
    # the backports build aborts on the system QEMU's (mismatched) modules.
    # (grep without -q: under pipefail an early exit can kill the writer with SIGPIPE.)
    if ! "$bin" -machine none -device vhost-user-scsi-pci,help 2>/dev/null | grep 'num_queues' >/dev/null; then
        echo "E2E-QEMU-UNAVAILABLE $name $bin ($ver) lacks vhost-user-scsi-pci"; return 1
    fi
    echo "E2E-QEMU $name $bin $ver"
}

# --- backports QEMU ---------------------------------------------------------

# Write /etc/apt/sources.list.d/<codename>-backports.sources using the URIs and
# Signed-By of the machine's main Debian source (deb822 debian.sources).
ensure_backports_source() {
    local codename="$1" f="/etc/apt/sources.list.d/$1-backports.sources"
    local main="/etc/apt/sources.list.d/debian.sources"
    local uris="http://deb.debian.org/debian" key="/usr/share/keyrings/debian-archive-keyring.gpg"
    if [[ -f "$main" ]]; then
        # First stanza whose Suites contains "<codename>" (not -security).
        local parsed
        parsed="$(awk -v c="$codename" '
            BEGIN { RS=""; FS="\n" }
            {
                u=""; k=""; s="";
                for (i=1;i<=NF;i++) {
                    if ($i ~ /^URIs:/)      { u=$i; sub(/^URIs:[ \t]*/,"",u) }
                    if ($i ~ /^Signed-By:/) { k=$i; sub(/^Signed-By:[ \t]*/,"",k) }
                    if ($i ~ /^Suites:/)    { s=" " $i " " }
                }
                if (s ~ (" " c " ") && u != "") { print u "\t" k; exit }
            }' "$main")"
        if [[ -n "$parsed" ]]; then
            uris="${parsed%%$'\t'*}"
            [[ -n "${parsed#*$'\t'}" ]] && key="${parsed#*$'\t'}"
        fi
    fi
    local want
    want="$(printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: %s\n' "$uris" "$codename" "$key")"
    if [[ ! -f "$f" ]] || [[ "$(cat "$f")" != "$want" ]]; then
        e2e_log "writing $f"
        printf '%s\n' "$want" | $SUDO tee "$f" >/dev/null
        APT_UPDATED=0 # need a fresh index that includes backports
    fi
}

# Newest version of package $1 available from suite $2 ("" if none).
candidate_from_suite() {
    apt-cache madison "$1" 2>/dev/null | awk -F'|' -v s="$2" '$3 ~ s {gsub(/ /,"",$2); print $2}' \
        | sort -V | tail -n1
}

# Install (from the normal suites) the shared libraries the extracted debs need.
install_lib_deps() {
    local deps=() d p
    for d in "$@"; do
        # Depends: "libfoo (>= 1), libbar | libbaz, qemu-system-common (= ...)"
        while IFS= read -r p; do
            [[ "$p" =~ ^(lib|zlib) ]] && ! is_installed "$p" && deps+=("$p")
        done < <(dpkg-deb -f "$d" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//; s/[[:space:]]//g')
    done
    if [[ ${#deps[@]} -gt 0 ]]; then apt_install "${deps[@]}"; fi
}

install_backports() {
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [[ -n "$codename" ]] || { echo "E2E-QEMU-UNAVAILABLE backports cannot determine Debian codename"; return 1; }
    local wrapper="$BP_PREFIX/bin/qemu-system-x86_64"

    ensure_backports_source "$codename"
    local ver sbver
    ver="$(candidate_from_suite qemu-system-x86 "$codename-backports")"
    if [[ -z "$ver" ]]; then
        apt_update_once
        ver="$(candidate_from_suite qemu-system-x86 "$codename-backports")"
    fi
    [[ -n "$ver" ]] || { echo "E2E-QEMU-UNAVAILABLE backports no qemu-system-x86 in $codename-backports"; return 1; }

    local root="$BP_PREFIX/root-${ver//[:~+]/_}"
    if [[ -x "$wrapper" && -f "$root/.complete" ]] && [[ "$(readlink "$BP_PREFIX/root")" == "$root" ]]; then
        e2e_log "backports QEMU $ver already extracted in $root"
    else
        e2e_log "extracting backports QEMU $ver into $root"
        local tmp
        tmp="$(mktemp -d)"
        # apt-get download drops privileges to _apt; make the dir writable for it.
        chmod 0777 "$tmp"
        # The x86 binary needs data (option ROMs, keymaps) and common (modules)
        # of the same version, and a newer SeaBIOS than bookworm's (Depends:
        # seabios >> 1.16.3). Take SeaBIOS from the same suite if it has one.
        local pkgs=("qemu-system-x86=$ver" "qemu-system-data=$ver" "qemu-system-common=$ver")
        sbver="$(candidate_from_suite seabios "$codename-backports")"
        [[ -n "$sbver" ]] && pkgs+=("seabios=$sbver")
        # A stale package index gives 404s: refresh it once and retry.
        if ! (cd "$tmp" && apt-get download -qq "${pkgs[@]}" >&2); then
            apt_update_once
            (cd "$tmp" && apt-get download -qq "${pkgs[@]}" >&2) \
                || { rm -rf "$tmp"; echo "E2E-QEMU-UNAVAILABLE backports apt-get download failed"; return 1; }
        fi
        install_lib_deps "$tmp"/qemu-system-x86_*.deb "$tmp"/qemu-system-common_*.deb
        $SUDO rm -rf "$root"
        $SUDO mkdir -p "$root"
        local deb
        for deb in "$tmp"/*.deb; do $SUDO dpkg-deb -x "$deb" "$root"; done
        rm -rf "$tmp"
        if ldd "$root/usr/bin/qemu-system-x86_64" | grep 'not found' >/dev/null; then
            ldd "$root/usr/bin/qemu-system-x86_64" | grep 'not found' >&2
            echo "E2E-QEMU-UNAVAILABLE backports missing shared libraries"; return 1
        fi
        $SUDO touch "$root/.complete"
        $SUDO mkdir -p "$BP_PREFIX/bin"
        $SUDO ln -sfn "$root" "$BP_PREFIX/root"
        # Wrapper: firmware search path = extracted data first (-L may be
        # repeated), then QEMU's built-in defaults (system seabios/ipxe).
        # QEMU_MODULE_DIR keeps it from loading the system QEMU's modules.
        $SUDO tee "$wrapper" >/dev/null <<EOF
#!/bin/sh
# Generated by tests/e2e/setup.sh: QEMU $ver from $codename-backports.
R="$BP_PREFIX/root"
QEMU_MODULE_DIR="\$R/usr/lib/x86_64-linux-gnu/qemu"
export QEMU_MODULE_DIR
exec "\$R/usr/bin/qemu-system-x86_64" -L "\$R/usr/share/qemu" -L "\$R/usr/share/seabios" "\$@"
EOF
        $SUDO chmod 0755 "$wrapper"
        # Remove older extracted versions.
        local old
        for old in "$BP_PREFIX"/root-*; do
            [[ "$old" == "$root" ]] || $SUDO rm -rf "$old"
        done
    fi
    report_qemu backports "$wrapper"
}

main() {
    install_base
    report_qemu system "$(command -v qemu-system-x86_64 || echo /usr/bin/qemu-system-x86_64)" || true
    if [[ "$want_backports" == 1 ]]; then
        install_backports || true
    else
        echo "E2E-QEMU-UNAVAILABLE backports disabled (E2E_QEMU_BACKPORTS=0)"
    fi
    e2e_log "kernel: $(e2e_kernel)"
}

# One setup at a time (parallel cargo tests share apt and /opt).
e2e_locked /tmp/vus-e2e-setup.lock main
