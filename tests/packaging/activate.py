#!/usr/bin/env python3
"""Emulates a systemd .socket unit for one instance, then execs the service's command.

    activate.py [--runtime-dir DIR] SOCKET_UNIT INSTANCE -- COMMAND [ARG...]

Reads ListenStream=, SocketUser=, SocketGroup=, SocketMode= and DirectoryMode= from the
[Socket] section of SOCKET_UNIT (with %i replaced by INSTANCE), creates the listening unix
socket the way systemd does (directory with DirectoryMode, socket owned by SocketUser:SocketGroup
with SocketMode), and execs COMMAND with it as fd 3 and LISTEN_FDS=1, LISTEN_PID=<its pid>,
LISTEN_FDNAMES=<unit name> - what systemd passes to the service on socket activation.

--runtime-dir DIR replaces the directory of ListenStream= (/run/vhost-user-scsi), so tests do
not touch the host's /run. systemd-socket-activate (from the systemd package) does the fd
passing too, but not the ownership and mode the unit asks for, which is what QEMU's access
depends on.
"""
import configparser
import grp
import os
import pwd
import socket
import sys


def main() -> int:
    args = sys.argv[1:]
    runtime_dir = None
    if args[:1] == ["--runtime-dir"]:
        runtime_dir, args = args[1], args[2:]
    if len(args) < 4 or args[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    unit, instance, command = args[0], args[1], args[3:]

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    with open(unit, encoding="utf-8") as f:
        parser.read_file(f)
    sock = parser["Socket"]

    def get(key, default=None):
        value = sock.get(key, default)
        return value.replace("%i", instance) if value is not None else None

    path = get("ListenStream")
    if not path or not path.startswith("/"):
        print(f"activate.py: {unit}: ListenStream= is not a unix socket path", file=sys.stderr)
        return 2
    if runtime_dir is not None:
        path = os.path.join(runtime_dir, os.path.basename(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=int(get("DirectoryMode", "0755"), 8), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(socket.SOMAXCONN)
    uid = pwd.getpwnam(get("SocketUser", "root")).pw_uid
    gid = grp.getgrnam(get("SocketGroup", "root")).gr_gid
    os.chown(path, uid, gid)
    os.chmod(path, int(get("SocketMode", "0666"), 8))

    if s.fileno() != 3:
        os.dup2(s.fileno(), 3)
        s.close()
    # Python opens sockets close-on-exec, and dup2 onto the same number changes nothing.
    os.set_inheritable(3, True)
    env = dict(os.environ)
    env["LISTEN_FDS"] = "1"
    env["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid
    env["LISTEN_FDNAMES"] = os.path.basename(unit).replace("@.", f"@{instance}.")
    os.execvpe(command[0], command, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
