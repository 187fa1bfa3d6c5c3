#!/usr/bin/env bash
# Packaging tests: the Debian package, its systemd units, the policies and the RPM spec, checked
# with the real tools, and the packaged daemon serving a real QEMU guest.
#
#   bash tests/packaging.sh [--no-libvirt]
#
# Steps (each prints its time; a step that cannot run prints SKIPPED with the reason):
#   deps        install what is missing (debhelper, dh-apparmor, lintian, rpm, apparmor,
#               checkpolicy, semodule-utils, selinux-policy-dev, strace, QEMU and the e2e kernel)
#   deb         packaging/build-deb.sh: source + binary package, release build
#   contents    every file the package must install is in the .deb, nothing under /usr/local
#   lintian     no E: tags (pedantic; W:/I: are printed and listed in docs/packaging.md)
#   extract     dpkg -x into a throwaway root; the package's postinst (configure) creates the
#               vhost-user-scsi account; the sysusers.d file creates it in an empty root too
#   descriptor  the vhost-user JSON has exactly description/type/binary, type = the packaged
#               binary's --print-capabilities type, binary = the installed path; --version
#               matches Cargo.toml and debian/changelog; every option of --help is in the man
#               page and the bash/zsh/fish completions
#   units       systemd-analyze verify (no output at all) and security --offline: exposure
#   syscalls    strace of a real start of the packaged daemon: every syscall it made, and every
#               one its seccomp allowlists allow later, is allowed by the unit's SystemCallFilter=
#   serve       the unit's ExecStart= (from the installed unit, %i = e2e) with the example config
#               (sources pointed at temporary images), socket made as the .socket unit says
#               (root:kvm 0660, LISTEN_FDS), under the unit's CapabilityBoundingSet= and
#               NoNewPrivileges=; a TCG guest formats, writes and reads back both LUNs; SIGTERM
#               ends the daemon with status 0
#   apparmor    apparmor_parser -Q -K on the profile and on a QEMU profile including the snippet
#   selinux     the module builds (checkmodule + semodule_package via the refpolicy devel Makefile)
#   rpm         rpmspec -P parses the spec; rpmbuild -bb builds both RPMs (Fedora-only scriptlet
#               macros stubbed): Provides, contents, the -selinux module, SocketGroup=qemu
#   libvirt     tests/packaging/libvirt.sh (virtlogd + libvirtd, virsh create of docs/libvirt.md's
#               XML, the guest writes and reads back data); --no-libvirt skips it
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
source tests/e2e/lib.sh

run_libvirt=1
for arg in "$@"; do
    case "$arg" in
        --no-libvirt) run_libvirt=0 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [[ $EUID -ne 0 ]]; then
    # apt, the postinst (adduser), the socket's chown and the worker's uid switch need root.
    echo "== packaging: SKIPPED (needs root)"
    exit 0
fi

work="$(mktemp -d /tmp/vus-packaging.XXXXXX)"
daemon_pid=""   # what we started (the daemon, or strace around it)
signal_pid=""   # the daemon itself
cleanup() {
    local p
    for p in $signal_pid $daemon_pid; do
        kill "$p" 2>/dev/null || true
    done
    [[ -z "$daemon_pid" ]] || wait "$daemon_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "packaging: FAIL: $*" >&2; exit 1; }
skipped() { echo "== $step: SKIPPED ($*)"; }
step_start() { step="$1"; t0=$(date +%s); echo "== $step"; }
step_end() { echo "== $step: ok ($(( $(date +%s) - t0 )) s)"; }
is_installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

step_start deps
missing=()
for p in debhelper dh-apparmor dpkg-dev fakeroot lintian rpm apparmor checkpolicy semodule-utils \
    selinux-policy-dev strace python3 util-linux jq cpio bzip2; do
    is_installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
E2E_QEMU_BACKPORTS=0 bash tests/e2e/setup.sh >/dev/null
# The socket unit's group (Debian's udev/systemd create it; a minimal container may lack it).
getent group kvm >/dev/null || groupadd --system kvm
step_end

# ---------------------------------------------------------------------------------------------
step_start deb
version="$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)"
arch="$(dpkg --print-architecture)"
# Stable paths under target/: cargo then reuses its build of the crate between runs.
out="$repo/target/packaging/deb"
packaging/build-deb.sh "$out" >"$work/build.log" 2>&1 || { tail -50 "$work/build.log"; fail "build-deb.sh"; }
deb="$out/vhost-user-scsi_${version}_${arch}.deb"
[[ -f "$deb" ]] || fail "no $deb"
ls -l "$out"/*.deb "$out"/*.dsc
step_end

# ---------------------------------------------------------------------------------------------
step_start contents
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#' >"$work/contents"
cat "$work/contents"
for f in /usr/libexec/vhost-user-scsi \
    /usr/share/qemu/vhost-user/50-vhost-user-scsi.json \
    /usr/share/man/man8/vhost-user-scsi.8.gz \
    /usr/share/bash-completion/completions/vhost-user-scsi \
    /usr/share/zsh/vendor-completions/_vhost-user-scsi \
    /usr/share/fish/vendor_completions.d/vhost-user-scsi.fish \
    /lib/systemd/system/vhost-user-scsi@.service \
    /lib/systemd/system/vhost-user-scsi@.socket \
    /usr/lib/sysusers.d/vhost-user-scsi.conf \
    /etc/apparmor.d/usr.libexec.vhost-user-scsi \
    /etc/apparmor.d/abstractions/libvirt-qemu.d/vhost-user-scsi \
    /usr/share/doc/vhost-user-scsi/examples/example.toml \
    /usr/share/doc/vhost-user-scsi/libvirt.md \
    /etc/vhost-user-scsi/; do
    grep -qxF "$f" "$work/contents" || fail "$f is not in the package"
done
for f in seccomp/x86_64/*.json seccomp/aarch64/*.json; do
    grep -qxF "/usr/share/vhost-user-scsi/$f" "$work/contents" || fail "$f is not in the package"
done
grep -qxF /usr/share/doc/vhost-user-scsi/LICENSE.dependencies "$work/contents" || fail "no LICENSE.dependencies"
! grep -q '^/usr/local' "$work/contents" || fail "files under /usr/local"
[[ "$(dpkg-deb -f "$deb" Section)" == otherosfs ]] || fail "Section is not otherosfs"
dpkg-deb -f "$deb" Depends | grep adduser >/dev/null || fail "no Depends on adduser"
step_end

# ---------------------------------------------------------------------------------------------
step_start lintian
# --pedantic to list everything; lintian refuses nothing as root, it just warns about it.
lintian --pedantic --display-info --display-experimental "$out/vhost-user-scsi_${version}_${arch}.changes" \
    2>/dev/null | tee "$work/lintian" || true
if grep -q '^E:' "$work/lintian"; then fail "lintian errors"; fi
echo "lintian: $(grep -c '^W:' "$work/lintian" || true) warnings, $(grep -c '^[IPX]:' "$work/lintian" || true) info/pedantic/experimental"
step_end

# ---------------------------------------------------------------------------------------------
step_start extract
root="$work/root"
dpkg -x "$deb" "$root"
dpkg-deb -e "$deb" "$work/control"
# The real maintainer script, on this host: creates the system account (idempotent) and
# /var/lib/vhost-user-scsi; the AppArmor reload part finds no profile on the host and is a no-op.
sh -e "$work/control/postinst" configure
id vhost-user-scsi
[[ "$(getent passwd vhost-user-scsi | cut -d: -f7)" =~ nologin|false ]] || fail "vhost-user-scsi has a login shell"
# The sysusers.d file is what image builders use: it creates the account in an empty root.
mkdir -p "$work/sysroot/etc"
systemd-sysusers --root="$work/sysroot" "$root/usr/lib/sysusers.d/vhost-user-scsi.conf"
grep -q '^vhost-user-scsi:' "$work/sysroot/etc/passwd" || fail "systemd-sysusers did not create the account"
step_end

# ---------------------------------------------------------------------------------------------
step_start descriptor
bin="$root/usr/libexec/vhost-user-scsi"
desc="$root/usr/share/qemu/vhost-user/50-vhost-user-scsi.json"
caps="$("$bin" --print-capabilities)"
echo "$caps"
jq -e 'keys == ["binary", "description", "type"]' "$desc" >/dev/null \
    || fail "descriptor must have exactly description, type, binary (QEMU's vhost-user.json schema)"
jq -e '.description | type == "string" and length > 0' "$desc" >/dev/null || fail "no description"
[[ "$(jq -r .type "$desc")" == "$(jq -r .type <<<"$caps")" ]] || fail "descriptor type != --print-capabilities type"
[[ "$(jq -r .type "$desc")" == scsi ]] || fail "type is not scsi"
dbin="$(jq -r .binary "$desc")"
[[ "$dbin" == /usr/libexec/vhost-user-scsi && -x "$root$dbin" ]] || fail "binary $dbin is not the installed daemon"
# The binary follows the conventions the descriptor promises: --print-capabilities with other
# options still prints and exits 0.
"$bin" --print-capabilities --socket-path /nonexistent/x >/dev/null || fail "--print-capabilities with other options"
cargo_version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
[[ "$("$bin" --version)" == "vhost-user-scsi $cargo_version" ]] || fail "--version: $("$bin" --version)"
[[ "${version%%-*}" == "$cargo_version" ]] || fail "debian/changelog $version != Cargo.toml $cargo_version"
zcat "$root/usr/share/man/man8/vhost-user-scsi.8.gz" >"$work/man"
grep -q '^\.TH vhost-user-scsi 8' "$work/man" || fail "man page title"
grep -q "vhost-user-scsi $cargo_version" "$work/man" || fail "man page version"
opts="$("$bin" --help | grep -oE '^  +(-[a-zA-Z], )?--[a-z-]+' | grep -oE -- '--[a-z-]+' | sort -u)"
[[ $(wc -l <<<"$opts") -ge 20 ]] || fail "--help lists only $(wc -l <<<"$opts") options"
for o in $opts; do
    # roff escapes dashes: \-\-socket\-path
    grep -qF -- "$(sed 's/-/\\-/g' <<<"$o")" "$work/man" || fail "man page lacks $o"
    grep -qF -- "$o" "$root/usr/share/bash-completion/completions/vhost-user-scsi" || fail "bash completion lacks $o"
    grep -qF -- "${o#--}" "$root/usr/share/fish/vendor_completions.d/vhost-user-scsi.fish" || fail "fish completion lacks $o"
    grep -qF -- "$o" "$root/usr/share/zsh/vendor-completions/_vhost-user-scsi" || fail "zsh completion lacks $o"
done
for f in $(jq -r '.features[]' <<<"$caps"); do
    grep -qxF "$f" "$work/man" || fail "man page CAPABILITIES lacks feature $f"
done
bash -n "$root/usr/share/bash-completion/completions/vhost-user-scsi" || fail "bash completion syntax"
# The shipped seccomp files are exactly what the packaged binary embeds (its
# --print-seccomp-policy prints the source it was compiled from).
for f in "$root/usr/share/vhost-user-scsi/seccomp/$(uname -m)"/*.json; do
    role="$(basename "$f" .json)"
    "$bin" --print-seccomp-policy "$role" | grep '^#' | tail -n +2 | sed 's/^# \{0,1\}//' \
        | diff -q - "$f" >/dev/null || fail "shipped $role.json differs from the binary's policy"
done
# The crates linked in, with their licences.
grep -q '^vhost-user-backend v[0-9.]* Apache-2.0' "$root/usr/share/doc/vhost-user-scsi/LICENSE.dependencies" \
    || fail "LICENSE.dependencies does not list vhost-user-backend"
echo "$(wc -l <<<"$opts") options of --help found in the man page and the three completions"
step_end

# ---------------------------------------------------------------------------------------------
step_start units
# systemd-analyze needs the targets the units refer to inside --root.
for d in /lib/systemd/system /usr/lib/systemd/system; do
    [[ -d "$d" ]] || continue
    mkdir -p "$root$d"
    cp -an "$d"/*.target "$d"/*.slice "$root$d"/ 2>/dev/null || true
done
MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" \
    vhost-user-scsi@e2e.socket vhost-user-scsi@e2e.service >"$work/verify" 2>&1 \
    || { cat "$work/verify"; fail "systemd-analyze verify"; }
[[ ! -s "$work/verify" ]] || { cat "$work/verify"; fail "systemd-analyze verify printed warnings"; }
systemd-analyze security --offline=true --root="$root" vhost-user-scsi@e2e.service >"$work/security" 2>&1 || true
exposure="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$work/security")"
[[ -n "$exposure" ]] || { cat "$work/security"; fail "no exposure level"; }
echo "systemd-analyze security exposure: $exposure (docs/packaging.md records the value)"
awk -v e="$exposure" 'BEGIN { exit !(e <= 3.5) }' || { cat "$work/security"; fail "exposure $exposure above 3.5"; }
step_end

# ---------------------------------------------------------------------------------------------
# The instance "e2e" (tests/packaging/instance.sh): the packaged example configuration with
# its sources moved to temporary images, the unit's ExecStart= mapped into the root.
source tests/packaging/instance.sh
packaged_instance "$root" "$work" e2e
echo "ExecStart: ${cmd[*]}"
grep -qx 'NoNewPrivileges=yes' "$unit" || fail "unit lost NoNewPrivileges=yes"
# The socket as the .socket unit makes it (systemd, full root: it may chown), then the service's
# command under its CapabilityBoundingSet= and NoNewPrivileges= as systemd applies them.
# exec keeps the pid all the way, so LISTEN_PID names the daemon.
start_daemon() { # start_daemon LOG [wrapper...]
    local log="$1"; shift
    "$@" tests/packaging/activate.py --runtime-dir "$work/run" "$socket_unit" e2e -- \
        setpriv --bounding-set="-all,$caps_set" --inh-caps=-all --no-new-privs -- \
        "${cmd[@]}" >"$log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do
        if grep -q 'supervisor confined' "$log"; then
            # Under a wrapper (strace) the daemon is the wrapper's child.
            signal_pid="$daemon_pid"
            [[ $# -eq 0 ]] || signal_pid="$(pgrep -o -P "$daemon_pid")"
            return 0
        fi
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$log"; fail "daemon exited"; }
        sleep 0.1
    done
    cat "$log"; fail "daemon not serving after 10 s"
}
stop_daemon() { # stop_daemon: SIGTERM, expect exit 0
    kill -TERM "$signal_pid"
    local rc=0
    wait "$daemon_pid" || rc=$?
    daemon_pid=""
    signal_pid=""
    [[ $rc -eq 0 ]] || fail "daemon exited $rc after SIGTERM"
}

step_start syscalls
if ! strace -f -qq -o /dev/null true 2>/dev/null; then
    skipped "strace cannot trace here (ptrace refused)"
else
    start_daemon "$work/strace-daemon.log" strace -f -qq -o "$work/strace.out"
    stop_daemon
    # strace followed the clone into the worker (its pivot_root is in the trace).
    grep -qE '^[0-9]+ +pivot_root\(' "$work/strace.out" || fail "the trace does not reach the worker"
    tests/packaging/syscalls.py "$unit" "$work/strace.out" "$root/usr/share/vhost-user-scsi/seccomp/$(uname -m)" \
        || fail "SystemCallFilter= misses system calls the daemon makes"
    step_end
fi

# ---------------------------------------------------------------------------------------------
step_start serve
rm -f "$work/images/vm1-root.pr"
start_daemon "$work/daemon.log"
sock="$work/run/e2e.sock"
stat -c '%U:%G %a %F' "$sock"
[[ "$(stat -c '%U:%G %a' "$sock")" == "root:kvm 660" ]] || fail "socket is not root:kvm 0660"
# 0660 root:kvm means something: a process outside group kvm is refused (EACCES), one in it
# gets in. (The system python: the test runner's may live in root's home.)
chmod 0755 "$work"
connect_as() { # connect_as GROUP: exit 0 connected, 13 EACCES, else 1
    setpriv --reuid=nobody --regid="$1" --clear-groups -- /usr/bin/python3 -c '
import socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1])
except PermissionError:
    sys.exit(13)' "$sock"
}
rc=0; connect_as nogroup || rc=$?
[[ $rc -eq 13 ]] || fail "a process outside group kvm: expected EACCES, got exit $rc"
connect_as kvm || fail "a process in group kvm could not connect"
grep -q 'listening on the inherited socket' "$work/daemon.log" || fail "daemon did not use the activated socket"
grep -q 'worker jailed: sandbox=namespace.*, uid=[0-9]* .*seccomp=Kill' "$work/daemon.log" \
    || { cat "$work/daemon.log"; fail "worker not jailed as documented"; }
bash tests/e2e/run-guest.sh --socket "$sock" --phase 1 --timeout 150 \
    || { cat "$work/daemon.log"; fail "guest on the packaged daemon"; }
stop_daemon
grep -q 'killed by SIGSYS' "$work/daemon.log" && { cat "$work/daemon.log"; fail "seccomp kill"; }
step_end

# ---------------------------------------------------------------------------------------------
step_start apparmor
apparmor_parser -Q -K -I /etc/apparmor.d "$root/etc/apparmor.d/usr.libexec.vhost-user-scsi"
mkdir -p "$work/aa/abstractions/libvirt-qemu.d"
cp "$root/etc/apparmor.d/abstractions/libvirt-qemu.d/vhost-user-scsi" "$work/aa/abstractions/libvirt-qemu.d/"
cat >"$work/aa/qemu-profile" <<'AA'
abi <abi/3.0>,
include <tunables/global>
profile libvirt-test-vm {
  include <abstractions/libvirt-qemu>
  include <abstractions/libvirt-qemu.d/vhost-user-scsi>
}
AA
if [[ -f /etc/apparmor.d/abstractions/libvirt-qemu ]]; then
    apparmor_parser -Q -K -I "$work/aa" -I /etc/apparmor.d "$work/aa/qemu-profile"
else
    echo "(abstractions/libvirt-qemu not installed: snippet checked inside a bare profile)"
    sed -i 's#include <abstractions/libvirt-qemu>#include <abstractions/base>#' "$work/aa/qemu-profile"
    apparmor_parser -Q -K -I "$work/aa" -I /etc/apparmor.d "$work/aa/qemu-profile"
fi
step_end

step_start selinux
mkdir -p "$work/selinux"
cp policy/selinux/vhost_user_scsi.{te,fc,if} "$work/selinux/"
make -C "$work/selinux" -f /usr/share/selinux/devel/Makefile vhost_user_scsi.pp >"$work/selinux.log" 2>&1 \
    || { cat "$work/selinux.log"; fail "SELinux module does not build"; }
[[ -s "$work/selinux/vhost_user_scsi.pp" ]] || fail "no vhost_user_scsi.pp"
# The file contexts name the paths the package installs.
for p in /usr/libexec/vhost-user-scsi /etc/vhost-user-scsi /run/vhost-user-scsi /var/lib/vhost-user-scsi; do
    grep -q "^${p//./\\.}" policy/selinux/vhost_user_scsi.fc || fail "vhost_user_scsi.fc lacks $p"
done
ls -l "$work/selinux/vhost_user_scsi.pp"
step_end

step_start rpm
rpmspec -P packaging/rpm/vhost-user-scsi.spec >"$work/spec" 2>"$work/spec.err" \
    || { cat "$work/spec.err"; fail "rpmspec -P"; }
grep -q '^Provides: *vhostuser-backend(scsi)' "$work/spec" || fail "spec lacks Provides: vhostuser-backend(scsi)"
grep -q "^Version: *$cargo_version" "$work/spec" || fail "spec Version is not $cargo_version"
echo "rpmspec -P: $(wc -l <"$work/spec") lines, packages: $(rpmspec -q --qf '%{NAME} ' packaging/rpm/vhost-user-scsi.spec 2>/dev/null)"
# A real rpmbuild of both packages from a source tarball of the working tree. Debian has rpm
# but not Fedora's macro packages: the scriptlet macros of systemd-rpm-macros and
# selinux-policy-devel are stubbed with `true` (their expansion is Fedora's business), build
# requirements are not checked (--nodeps), debuginfo is off, and the doc directory is named as
# Fedora's redhat-rpm-config names it (_docdir_fmt %{NAME}, not NAME-VERSION). What this
# checks is %prep, %build, %install, %check and %files, and the packages' metadata and contents.
top="$repo/target/packaging/rpmbuild"
rm -rf "$top"
mkdir -p "$top/SOURCES"
# The tarball holds the files and their directories, like git archive.
git ls-files -z --cached --others --exclude-standard | python3 -c '
import os, sys
paths = [p for p in sys.stdin.read().split("\0") if p and os.path.exists(p)]
dirs = {os.path.dirname(p) for p in paths}
for d in list(dirs):
    while d:
        dirs.add(d)
        d = os.path.dirname(d)
sys.stdout.write("".join(x + "\0" for x in sorted(dirs - {""}) + paths))' \
    | tar --null --no-recursion -T - --transform "s,^,vhost-user-scsi-$cargo_version/," \
        -czf "$top/SOURCES/vhost-user-scsi-$cargo_version.tar.gz"
stubs=()
for m in sysusers_create_compat systemd_post systemd_preun systemd_postun_with_restart \
    selinux_relabel_pre selinux_relabel_post selinux_modules_install selinux_modules_uninstall; do
    stubs+=(--define "$m true")
done
rpm_defs=(--nodeps --define "_topdir $top" --define 'debug_package %{nil}'
    --define '_docdir_fmt %%{NAME}' "${stubs[@]}")
# %prep from the tarball; then %build/%install/%check/%files in the tree the .deb was built in
# (--build-in-place): the same source path lets cargo reuse that release build instead of
# compiling the crate again (the root package's binary has no per-path hash).
rpmbuild -bp "${rpm_defs[@]}" packaging/rpm/vhost-user-scsi.spec >"$work/rpmprep.log" 2>&1 \
    || { tail -20 "$work/rpmprep.log"; fail "rpmbuild -bp"; }
[[ -f "$top/BUILD/vhost-user-scsi-$cargo_version/Cargo.lock" ]] || fail "%prep did not unpack the sources"
(cd "$out/vhost-user-scsi-$version" && CARGO_TARGET_DIR="$repo/target" \
    rpmbuild -bb --build-in-place "${rpm_defs[@]}" "$repo/packaging/rpm/vhost-user-scsi.spec") \
    >"$work/rpmbuild.log" 2>&1 || { tail -40 "$work/rpmbuild.log"; fail "rpmbuild"; }
rpm_main="$(ls "$top"/RPMS/*/vhost-user-scsi-"$cargo_version"-*.rpm)"
rpm_se="$(ls "$top"/RPMS/noarch/vhost-user-scsi-selinux-*.rpm)"
rpm -qp --provides "$rpm_main" | grep -xF 'vhostuser-backend(scsi)' >/dev/null || fail "RPM does not provide vhostuser-backend(scsi)"
rpm -qlp "$rpm_main" >"$work/rpm-contents"
for f in /usr/libexec/vhost-user-scsi /usr/share/qemu/vhost-user/50-vhost-user-scsi.json \
    /usr/share/man/man8/vhost-user-scsi.8.gz /usr/lib/systemd/system/vhost-user-scsi@.service \
    /usr/lib/systemd/system/vhost-user-scsi@.socket /usr/lib/sysusers.d/vhost-user-scsi.conf \
    /usr/share/doc/vhost-user-scsi/examples/example.toml /usr/share/vhost-user-scsi/seccomp/x86_64/worker-main.json; do
    # rpm on Debian may or may not compress man pages.
    grep -qxE "${f%.gz}(\.gz)?" "$work/rpm-contents" || fail "$f is not in the RPM"
done
rpm -qlp "$rpm_se" | grep -x /usr/share/selinux/packages/targeted/vhost_user_scsi.pp.bz2 >/dev/null \
    || fail "the -selinux RPM lacks the module"
mkdir -p "$work/rpmroot"
(cd "$work/rpmroot" && rpm2cpio "$rpm_main" | cpio -idm --quiet)
grep -qx 'SocketGroup=qemu' "$work/rpmroot/usr/lib/systemd/system/vhost-user-scsi@.socket" \
    || fail "the RPM's socket unit is not for group qemu"
"$work/rpmroot/usr/libexec/vhost-user-scsi" --print-capabilities | jq -e '.type == "scsi"' >/dev/null \
    || fail "the RPM's binary"
ls -l "$rpm_main" "$rpm_se"
step_end

# ---------------------------------------------------------------------------------------------
if [[ $run_libvirt -eq 1 ]]; then
    step_start libvirt
    bash tests/packaging/libvirt.sh --root "$root"
    step_end
else
    step=libvirt; skipped "--no-libvirt"
fi
echo "== packaging: all steps passed"
