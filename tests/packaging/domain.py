#!/usr/bin/env python3
"""Turns a domain XML block of docs/libvirt.md into a test domain.

    domain.py DOC MARKER NAME SOCKET KERNEL INITRD CMDLINE SERIAL_LOG

Takes the ```xml block that follows `<!-- libvirt-test: MARKER -->` in DOC verbatim and changes
only what a test machine needs: the name, TCG instead of KVM (nested KVM hangs here), the
socket path, direct kernel boot instead of <boot dev='hd'/>, the serial console into a file,
and power-off/reboot/crash all ending the domain. Everything the page documents about the
device, shared memory and ACPI is used as written.
"""
import re
import sys
import xml.etree.ElementTree as ET

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DOC_SOCKET = "/run/vhost-user-scsi/vm1.sock"


def block(doc, marker):
    text = open(doc, encoding="utf-8").read()
    m = re.search(r"<!-- libvirt-test: " + re.escape(marker) + r" -->\s*```xml\n(.*?)```", text, re.S)
    if not m:
        sys.exit(f"domain.py: no xml block after marker {marker} in {doc}")
    return m.group(1)


def main():
    doc, marker, name, sock, kernel, initrd, cmdline, serial = sys.argv[1:9]
    xml = block(doc, marker)
    if DOC_SOCKET not in xml:
        sys.exit(f"domain.py: block {marker} does not use {DOC_SOCKET}")
    xml = xml.replace(DOC_SOCKET, sock)
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.fromstring(xml)
    dom.set("type", "qemu")
    dom.find("name").text = name
    os_el = dom.find("os")
    for boot in os_el.findall("boot"):
        os_el.remove(boot)
    for tag, value in (("kernel", kernel), ("initrd", initrd), ("cmdline", cmdline)):
        ET.SubElement(os_el, tag).text = value
    for tag in ("on_poweroff", "on_reboot", "on_crash"):
        for el in dom.findall(tag):
            dom.remove(el)
    # Domain element order matters to libvirt's schema: these come after <features>.
    idx = list(dom).index(dom.find("devices"))
    for i, tag in enumerate(("on_poweroff", "on_reboot", "on_crash")):
        el = ET.Element(tag)
        el.text = "destroy"
        dom.insert(idx + i, el)
    devices = dom.find("devices")
    for console in devices.findall("console"):
        devices.remove(console)
    serial_el = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial_el, "source", path=serial)
    ET.SubElement(serial_el, "target", port="0")
    print(ET.tostring(dom, encoding="unicode"))


if __name__ == "__main__":
    main()
