#!/usr/bin/python3
"""A FUSE file system that fails chosen byte ranges of one file: a real source of EIO for tests.

Usage: faultfs.py BACKING_FILE MOUNTPOINT [--direct-io] [--delay-ms=N]

The mount point shows one file, `disk.img`, whose bytes are BACKING_FILE's. Reads and writes
that touch a range listed in the control file `MOUNTPOINT/.faults` fail with EIO (a read of a
FUSE request wholly or partly inside a bad range fails as a whole, the way a disk fails a
request that covers a bad sector). Write `START LENGTH` lines (bytes, decimal) to `.faults` to
set the bad ranges; an empty write clears them. With --direct-io the kernel bypasses its page
cache for the file (every guest read reaches this process), as `-o direct_io` does.
With --delay-ms=N every read and write of the image takes at least N ms (slow storage: I/O
stays in flight long enough for a test to catch it there; requests still run in parallel).
Runs in the foreground until unmounted (`fusermount3 -u MOUNTPOINT` or `umount`).
"""
import errno
import os
import stat
import sys
import threading
import time

from fusepy import FUSE, FuseOSError, Operations

IMAGE = "/disk.img"
CONTROL = "/.faults"


class FaultFs(Operations):
    def __init__(self, backing, delay=0.0):
        self.fd = os.open(backing, os.O_RDWR)
        self.delay = delay
        self.bad = []
        self.guard = threading.Lock()

    def _overlaps(self, offset, size):
        with self.guard:
            return any(offset < s + n and s < offset + size for s, n in self.bad)

    def getattr(self, path, fh=None):
        now = 0
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_size=0,
                        st_atime=now, st_mtime=now, st_ctime=now)
        if path == IMAGE:
            st = os.fstat(self.fd)
            return dict(st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=st.st_size,
                        st_blocks=st.st_blocks, st_atime=now, st_mtime=now, st_ctime=now)
        if path == CONTROL:
            return dict(st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=0,
                        st_atime=now, st_mtime=now, st_ctime=now)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", IMAGE[1:], CONTROL[1:]]

    def open(self, path, flags):
        if path not in (IMAGE, CONTROL):
            raise FuseOSError(errno.ENOENT)
        return 0

    def truncate(self, path, length, fh=None):
        if path == CONTROL:
            return 0
        raise FuseOSError(errno.EPERM)

    def read(self, path, size, offset, fh):
        if path != IMAGE:
            return b""
        if self.delay:
            time.sleep(self.delay)
        if self._overlaps(offset, size):
            raise FuseOSError(errno.EIO)
        return os.pread(self.fd, size, offset)

    def write(self, path, data, offset, fh):
        if path == CONTROL:
            ranges = []
            for line in data.decode().splitlines():
                if line.strip():
                    start, length = line.split()
                    ranges.append((int(start), int(length)))
            with self.guard:
                self.bad = ranges
            return len(data)
        if self.delay:
            time.sleep(self.delay)
        if self._overlaps(offset, len(data)):
            raise FuseOSError(errno.EIO)
        return os.pwrite(self.fd, data, offset)

    def fsync(self, path, datasync, fh):
        if path == IMAGE:
            os.fdatasync(self.fd)
        return 0

    def flush(self, path, fh):
        return 0


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    options = dict(foreground=True, nothreads=False, allow_other=True)
    if "--direct-io" in sys.argv:
        options["direct_io"] = True
    delay = 0.0
    for a in sys.argv[1:]:
        if a.startswith("--delay-ms="):
            delay = int(a.split("=", 1)[1]) / 1000.0
    FUSE(FaultFs(args[0], delay), args[1], **options)


if __name__ == "__main__":
    main()
