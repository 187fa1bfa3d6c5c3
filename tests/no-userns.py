#!/usr/bin/python3
"""Runs a command on a host "without user namespaces": a seccomp filter (Debian's
python3-seccomp, libseccomp's bindings) refuses clone(CLONE_NEWUSER) and
unshare(CLONE_NEWUSER) with EPERM, what the kernel answers when user namespaces are disabled,
and clone3 with ENOSYS (its flags are in memory where a filter cannot see them; callers fall
back to clone). Everything else is allowed. The filter is inherited across exec and fork.

Usage: /usr/bin/python3 tests/no-userns.py COMMAND [ARGS...]
"""

import errno
import os
import sys

import seccomp

CLONE_NEWUSER = 0x10000000


def main():
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for call in ("clone", "unshare"):
        f.add_rule(
            seccomp.ERRNO(errno.EPERM),
            call,
            seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER),
        )
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    f.load()
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
