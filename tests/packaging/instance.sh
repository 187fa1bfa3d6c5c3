# Sourced by tests/packaging.sh and tests/packaging/libvirt.sh: one instance of the installed
# package, set up the way an administrator would, inside a throwaway root.
#
#   packaged_instance ROOT WORK NAME
#
# writes WORK/etc/NAME.toml (the packaged example configuration with its sources moved to
# temporary 64 MiB images under WORK/images, both writable for the guest workload) and sets:
#   unit, socket_unit   the installed template units
#   cmd                 (array) the unit's ExecStart= with %i = NAME, paths mapped into ROOT
#   caps_set            the unit's CapabilityBoundingSet= in setpriv's --bounding-set syntax
packaged_instance() {
    local root="$1" work="$2" name="$3"
    mkdir -p "$work/etc" "$work/run" "$work/images"
    sed -e "s#/var/lib/libvirt/images/#$work/images/#; s#/var/lib/vhost-user-scsi/#$work/images/#" \
        -e '/^read-only = true/d' \
        "$root/usr/share/doc/vhost-user-scsi/examples/example.toml" >"$work/etc/$name.toml"
    truncate -s 64M "$work/images/vm1-root.img" "$work/images/vm1-data.img"
    unit="$root/lib/systemd/system/vhost-user-scsi@.service"
    socket_unit="$root/lib/systemd/system/vhost-user-scsi@.socket"
    read -r -a cmd <<<"$(sed -n 's/^ExecStart=//p' "$unit" | sed \
        -e "s#%i#$name#g" -e "s#/etc/vhost-user-scsi/#$work/etc/#g" -e "s#^/usr/libexec/#$root/usr/libexec/#")"
    caps_set="$(sed -n 's/^CapabilityBoundingSet=//p' "$unit" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')"
}
