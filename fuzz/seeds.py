#!/usr/bin/env python3
"""Writes the checked-in seed corpora (fuzz/corpus/TARGET/*) in each target's input format
(documented at the top of fuzz_targets/TARGET.rs). Run from anywhere: python3 fuzz/seeds.py"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- virtio_request: [flags][avail_idx][16 x u16 heads][16 x 16-byte descriptors][memory @0x400]
NEXT, WRITE, INDIRECT = 1, 2, 4
DATA = 0x400


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def req_header(cdb, target=0, lun=0):
    lunf = bytes([1, target, 0x40 | (lun >> 8) if lun > 255 else 0, lun & 0xFF, 0, 0, 0, 0])
    return lunf + struct.pack("<Q", 0x1122334455667788) + bytes([0, 0, 0]) + cdb.ljust(32, b"\0")


def ring(flags, heads, descs, mem):
    table = b"".join(descs).ljust(256, b"\0")
    avail = b"".join(struct.pack("<H", h) for h in heads).ljust(32, b"\0")
    return bytes([flags, len(heads)]) + avail + table + bytes(mem)


def memory(size=0x6000):
    return bytearray(size - DATA)


def put(mem, addr, data):
    mem[addr - DATA:addr - DATA + len(data)] = data


m = memory()
put(m, 0x400, req_header(bytes([0x12, 0, 0, 0, 96, 0])))
write("virtio_request", "inquiry", ring(0, [0], [
    desc(0x400, 51, NEXT, 1), desc(0x1000, 108, WRITE | NEXT, 2), desc(0x2000, 96, WRITE)], m))

m = memory(0x9000)
put(m, 0x400, req_header(bytes([0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0])))  # WRITE(10) LBA 1, 1 block
put(m, 0x3000, bytes(range(256)) * 2)
put(m, 0x500, req_header(bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0])))  # READ(10) LBA 1, 1 block
put(m, 0x600, req_header(bytes(6)))
write("virtio_request", "write_read_across_regions", ring(1, [6, 0, 3], [
    desc(0x400, 51, NEXT, 1), desc(0x3000, 512, NEXT, 2), desc(0x1000, 108, WRITE),
    desc(0x500, 51, NEXT, 4), desc(0x1100, 108, WRITE | NEXT, 5), desc(0x7F00, 512, WRITE),
    desc(0x600, 51, NEXT, 7), desc(0x1200, 108, WRITE)], m))

m = memory()
put(m, 0x400, req_header(bytes([0x25] + [0] * 9), lun=1))  # READ CAPACITY(10), null LUN
put(m, 0x5000, desc(0x400, 51, NEXT, 1) + desc(0x1000, 108, WRITE | NEXT, 2) + desc(0x2000, 8, WRITE))
write("virtio_request", "indirect", ring(0, [0], [desc(0x5000, 48, INDIRECT)], m))

m = memory()
put(m, 0x400, req_header(bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0])))  # REPORT LUNS
put(m, 0x440, req_header(bytes(6), target=1))  # TEST UNIT READY, read-only LUN
put(m, 0x480, req_header(bytes(6), target=5))  # no such target
write("virtio_request", "report_luns_tur_badtarget", ring(0, [0, 3, 5], [
    desc(0x400, 51, NEXT, 1), desc(0x1000, 108, WRITE | NEXT, 2), desc(0x2000, 64, WRITE),
    desc(0x440, 51, NEXT, 4), desc(0x1100, 108, WRITE), desc(0x480, 51, NEXT, 6),
    desc(0x1200, 108, WRITE)], m))

# ---- scsi_cdb: repeated [address][cdb_len][cdb][data_in_len u16][data_out_len u16][data_out]
def cmd(addr, cdb, din=0, dout=b""):
    return bytes([addr, len(cdb)]) + cdb + struct.pack("<HH", din, len(dout)) + dout


def be(n, v):
    return v.to_bytes(n, "big")


cdbs = {
    "inquiry": cmd(0, bytes([0x12, 0, 0, 0, 255, 0]), 255) + cmd(0, bytes([0x12, 1, 0x83, 0, 255, 0]), 255)
    + cmd(1, bytes([0x12, 1, 0xB0, 0, 255, 0]), 255) + cmd(2, bytes([0x12, 1, 0, 0, 255, 0]), 255),
    "capacity_mode": cmd(0, bytes([0x9E, 0x10]) + bytes(8) + be(4, 32) + bytes(2), 32)
    + cmd(2, bytes([0x5A, 0, 0x3F, 0, 0, 0, 0, 0x10, 0, 0]), 4096)
    + cmd(0, bytes([0x1A, 0, 0x08, 0, 255, 0]), 255),
    "write_read": cmd(0, bytes(6), 0) + cmd(0, bytes([0x2A, 0, 0, 0, 0, 4, 0, 0, 2, 0]), 0, bytes(range(256)) * 4)
    + cmd(0, bytes([0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0]), 1024)
    + cmd(1, bytes([0x88, 0]) + be(8, 100) + be(4, 2) + bytes(2), 8192)
    + cmd(2, bytes([0x8A, 0]) + be(8, 1) + be(4, 1) + bytes(2), 0, bytes(4096))
    + cmd(0, bytes([0x35] + [0] * 9)),
    "unmap_writesame": cmd(0, bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), 0,
                           be(2, 22) + be(2, 16) + bytes(4) + be(8, 8) + be(4, 16) + bytes(4))
    + cmd(0, bytes([0x93, 0x08]) + be(8, 32) + be(4, 8) + bytes(2), 0, bytes(512))
    + cmd(0, bytes([0x9E, 0x12]) + be(8, 0) + be(4, 64) + bytes(2), 64),
    "compare_write": cmd(0, bytes([0x89, 0]) + be(8, 2) + bytes(3) + bytes([1, 0, 0]), 0, bytes(1024)),
    "reservations": cmd(0, bytes([0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]), 0, bytes(8) + be(8, 0xABC) + bytes(8))
    + cmd(0, bytes([0x5F, 1, 0x03, 0, 0, 0, 0, 0, 24, 0]), 0, be(8, 0xABC) + bytes(16))
    + cmd(0, bytes([0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0]), 255)
    + cmd(0, bytes([0x5E, 1, 0, 0, 0, 0, 0, 0, 255, 0]), 255),
    "opcodes_sense_luns": cmd(0, bytes([0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]), 4096)
    + cmd(3, bytes([0x03, 0, 0, 0, 252, 0]), 252) + cmd(4, bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), 256)
    + cmd(0, bytes([0x1B, 0, 0, 0, 1, 0])) + cmd(0, bytes([0x2F, 0, 0, 0, 0, 0, 0, 0, 8, 0])),
    "mode_select": cmd(0, bytes([0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0]), 0,
                       bytes(8) + bytes([0x08, 0x12, 0x04]) + bytes(17)),
    # The CD-ROM at 1:1 (address 5) and the host changing its medium (address 6, one op byte).
    "cdrom": cmd(5, bytes(6)) + cmd(5, bytes([0x12, 0, 0, 0, 255, 0]), 255)
    + cmd(5, bytes([0x43, 0, 0, 0, 0, 0, 1, 0, 32, 0]), 32)
    + cmd(5, bytes([0x46, 0, 0, 0, 0, 0, 0, 1, 0, 0]), 256)
    + cmd(5, bytes([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0]), 8)
    + cmd(5, bytes([0xBE, 0, 0, 0, 0, 16, 0, 0, 1, 0x10, 0, 0]), 2048)
    + cmd(5, bytes([0xAC, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]), 24)
    + cmd(5, bytes([0x23, 0, 0, 0, 0, 0, 0, 0, 12, 0]), 12)
    + cmd(5, bytes([0x1E, 0, 0, 0, 1, 0])) + bytes([6, 2]) + cmd(5, bytes([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0]), 8)
    + cmd(5, bytes([0x1E, 0, 0, 0, 0, 0])) + bytes([6, 2]) + cmd(5, bytes(6)) + cmd(5, bytes(6))
    + cmd(5, bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 2, 0]), 4096) + bytes([6, 0x83])
    + cmd(5, bytes([0xBE, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 0, 0]), 2048)
    + cmd(5, bytes([0x1B, 0, 0, 0, 3, 0])) + bytes([6, 0]) + bytes([6, 1]) + cmd(5, bytes([0xBD] + [0] * 7 + [0, 8, 0, 0]), 8),
}
for name, data in cdbs.items():
    write("scsi_cdb", name, data)

# ---- vhost_user: [request][control][payload_len u16]{size}{flags}[fd bytes][payload]
def msg(req, payload=b"", fds=b"", reply=0, size=None, flags=None):
    control = len(fds) | (reply << 2)
    out = bytes([req])
    extra = b""
    if size is not None:
        control |= 0x40
        extra += struct.pack("<I", size)
    if flags is not None:
        control |= 0x80
        extra += struct.pack("<I", flags)
    return out + bytes([control]) + struct.pack("<H", len(payload)) + extra + fds + payload


UADDR = 0x7F0000000000
Q = 2  # first request queue


def inflight_msgs():
    """GET_INFLIGHT_FD (31) for 4 queues of 16, then SET_INFLIGHT_FD (32) of a one-page
    memfd (sealed, as the fuzz target makes every memfd): INFLIGHT_SHMFD must be acked."""
    shape = struct.pack("<QQHHxxxx", 0, 0, 4, 16)
    return (msg(31, shape, reply=2)
            + msg(32, struct.pack("<QQHHxxxx", 4096, 0, 4, 16), fds=bytes([1]), reply=2))


def handshake(mem_pages, region_size, ring=0, inflight=False):
    protocol = 0x1 | 0x8 | 0x200 | (0x1000 if inflight else 0)
    return (msg(1) + msg(3) + msg(15)
            + msg(16, struct.pack("<Q", protocol))
            + msg(2, struct.pack("<Q", (1 << 32) | (1 << 30)))
            + msg(17)
            + (inflight_msgs() if inflight else b"")
            + msg(5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, region_size, UADDR, 0),
                  fds=bytes([mem_pages]), reply=2)
            + msg(8, struct.pack("<II", Q, 16))
            + msg(9, struct.pack("<IIQQQQ", Q, 0, UADDR + ring, UADDR + ring + 0x200, UADDR + ring + 0x100, 0))
            + msg(10, struct.pack("<II", Q, 0))
            + msg(13, struct.pack("<Q", Q), fds=bytes([0x80]))
            + msg(12, struct.pack("<Q", Q), fds=bytes([0xC0]))
            + msg(18, struct.pack("<II", Q, 1))
            + msg(24, struct.pack("<III", 0, 36, 0) + bytes(36))
            + msg(11, struct.pack("<II", Q, 0)))


write("vhost_user", "handshake", handshake(16, 0x10000))
write("vhost_user", "mem_table_larger_than_file", handshake(1, 0x10000, ring=0x8000))
write("vhost_user", "inflight", handshake(16, 0x10000, inflight=True))
write("vhost_user", "lying_size", msg(1) + msg(5, bytes(40), size=0xFFFF) + msg(24, bytes(12), flags=0x5))

# ---- config: [mode: even --lun, odd TOML][text]
luns = [
    "disk.img", "0:1=disk.img,ro,serial=ABC,,DEF,wwn=0x5000000000000001",
    "3:16383=/dev/sdb,cache=none,block-size=4k,phys-block-size=16384,discard=off",
    "null://1G,size=512M,pr-file=x.pr,read-only=on", "1:2=a.img,block-size=512,size=2T",
]
for i, s in enumerate(luns):
    write("config", f"lun{i}", b"\0" + s.encode())
write("config", "toml", b"\1" + b'''socket-path = "/run/vus/vm1.sock"
num-queues = 4
queue-size = 128
log-level = "debug"
syslog = false
exit-on-disconnect = true
[[lun]]
target = 0
lun = 0
source = "disk0.img"
read-only = false
discard = true
cache = "writeback"
block-size = 512
serial = "DISK0"
wwn = "0x5000000000000001"
size = "1G"
[[lun]]
lun = 3
source = "null://4G"
phys-block-size = 4096
pr-file = "disk1.pr"
''')

# ---- iscsi_pdu: [flags][max_data u32][PDUs]; iscsi_login: [flags][the target's PDUs]
def text(*pairs):
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def pdu(opcode, flags, data=b"", rest=b""):
    bhs = bytearray(48)
    bhs[0] = opcode
    bhs[1] = flags
    bhs[5:8] = len(data).to_bytes(3, "big")
    bhs[8:8 + len(rest)] = rest
    return bytes(bhs) + data + bytes((4 - len(data) % 4) % 4)


ISID = bytes([0x80, 0x12, 0x34, 0x56, 0x78, 0x9A])


def login_resp(transit, csg, nsg, data, tsih=0, stat_sn=0, status=(0, 0)):
    rest = bytearray(40)  # bytes 8..47
    rest[0:6] = ISID
    rest[6:8] = tsih.to_bytes(2, "big")
    rest[8:12] = (0).to_bytes(4, "big")  # ITT 0
    rest[16:20] = stat_sn.to_bytes(4, "big")
    rest[20:24] = (1).to_bytes(4, "big")  # ExpCmdSN
    rest[24:28] = (1).to_bytes(4, "big")  # MaxCmdSN
    rest[28], rest[29] = status
    flags = (0x80 if transit else 0) | (csg << 2) | nsg
    b = pdu(0x23, flags, data, bytes(rest))
    return b[:2] + bytes([0, 0]) + b[4:]  # version max/active 0


OPERATIONAL = text(("HeaderDigest", "None"), ("DataDigest", "None"),
                   ("MaxRecvDataSegmentLength", "262144"), ("ImmediateData", "Yes"),
                   ("InitialR2T", "No"), ("MaxBurstLength", "1048576"),
                   ("FirstBurstLength", "262144"), ("MaxOutstandingR2T", "1"),
                   ("ErrorRecoveryLevel", "0"), ("DefaultTime2Wait", "2"),
                   ("DefaultTime2Retain", "0"), ("DataPDUInOrder", "Yes"),
                   ("DataSequenceInOrder", "Yes"), ("MaxConnections", "1"))
login_ok = (login_resp(True, 0, 1, text(("AuthMethod", "None"), ("TargetPortalGroupTag", "1")))
            + login_resp(True, 1, 3, OPERATIONAL, tsih=7, stat_sn=1))
write("iscsi_login", "no_auth", b"\0" + login_ok)
write("iscsi_login", "straight_to_operational", b"\0" + login_resp(True, 1, 3, OPERATIONAL, tsih=7))
write("iscsi_login", "chap", b"\2" + login_resp(False, 0, 0, text(("AuthMethod", "CHAP"))) + login_resp(
    False, 0, 0, text(("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x" + "ab" * 16)), stat_sn=1)
    + login_resp(True, 0, 1, b"", stat_sn=2) + login_resp(True, 1, 3, OPERATIONAL, tsih=7, stat_sn=3))
write("iscsi_login", "redirect", b"\0" + login_resp(True, 0, 1, text(("TargetAddress", "10.0.0.2:3260,1")), status=(1, 1)))
write("iscsi_login", "discovery", b"\1" + login_resp(True, 0, 1, text(("AuthMethod", "None")))
      + login_resp(True, 1, 3, text(("HeaderDigest", "None"), ("DataDigest", "None"),
                                    ("MaxRecvDataSegmentLength", "8192")), tsih=3, stat_sn=1))
max_data = struct.pack("<I", 262144)
write("iscsi_pdu", "nop_in_scsi_resp_reject", b"\0" + max_data + pdu(0x20, 0x80, b"ping")
      + pdu(0x21, 0x80, bytes([0, 0x18]) + bytes(18)) + pdu(0x3F, 0x80, bytes(48)))
write("iscsi_pdu", "login_and_text", b"\0" + max_data + login_ok
      + pdu(0x24, 0x80, text(("TargetName", "iqn.x:y"), ("TargetAddress", "1.2.3.4:3260,1"),
                             ("CHAP_C", "0b" + "QUJD"), ("MaxBurstLength", "0x100000"))))
write("iscsi_pdu", "data_in_r2t_async", b"\0" + max_data + pdu(0x25, 0x81, bytes(512))
      + pdu(0x31, 0x80) + pdu(0x32, 0x80, b"x" * 12))


# ---- management: repeated [chunk length][chunk] of a client's byte stream
def chunks(text):
    data = text.encode()
    out = b""
    while data:
        out += bytes([min(len(data), 200)]) + data[:200]
        data = data[200:]
    return out


mgmt = [
    '{"jsonrpc":"2.0","id":1,"method":"list"}\n',
    '{"jsonrpc":"2.0","id":2,"method":"add-lun","params":{"spec":"0:1=null://1M"}}\n'
    '{"jsonrpc":"2.0","id":3,"method":"resize","params":{"lun":"0:1"}}\n'
    '{"jsonrpc":"2.0","id":4,"method":"set-readonly","params":{"lun":"0:1","read-only":true}}\n'
    '{"jsonrpc":"2.0","id":5,"method":"stats","params":{"format":"prometheus"}}\n'
    '{"jsonrpc":"2.0","id":6,"method":"remove-lun","params":{"lun":"0:1"}}\n'
    '{"jsonrpc":"2.0","id":8,"method":"retry-held"}\n',
    '{"jsonrpc":"2.0","id":7,"method":"add-lun","params":{"spec":"/etc/passwd,pr-file=/x","fd":true}}\n'
    '{bad json\n[1]\n{"jsonrpc":"2.0","id":{},"method":"x"}\n',
    # A removable LUN's medium: eject (forwarded), a change by path (no --image-dir) and by a
    # descriptor that never came, then a fixed disk's (refused).
    '{"jsonrpc":"2.0","id":8,"method":"add-lun","params":{"spec":"0:2=null://1M,removable"}}\n'
    '{"jsonrpc":"2.0","id":9,"method":"eject","params":{"lun":"0:2","force":true}}\n'
    '{"jsonrpc":"2.0","id":10,"method":"change-medium","params":{"lun":"0:2","path":"/img/b.iso"}}\n'
    '{"jsonrpc":"2.0","id":11,"method":"change-medium","params":{"lun":"0:2","path":"b","fd":true}}\n'
    '{"jsonrpc":"2.0","id":12,"method":"eject","params":{"lun":"0:0"}}\n'
    '{"jsonrpc":"2.0","id":13,"method":"list"}\n',
]
for i, s in enumerate(mgmt):
    write("management", f"session{i}", chunks(s))
write("management", "oversized", bytes([255]) + b"x" * 255 + (bytes([255]) + b"y" * 255) * 300 + bytes([2]) + b"\n\n")
