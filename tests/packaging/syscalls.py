#!/usr/bin/env python3
"""Checks that a service's SystemCallFilter= allows every system call the daemon makes.

    syscalls.py SERVICE_UNIT STRACE_LOG SECCOMP_DIR

The daemon needs the union of
  - what it did from exec until it was serving (STRACE_LOG, from strace -f of a real start:
    the supervisor's set-up, the worker's clone, mount, pivot_root, setresuid, Landlock, seccomp),
  - everything its own seccomp allowlists permit afterwards (SECCOMP_DIR/*.json: the worker's
    roles and the confined supervisor; under their default action kill nothing else can run).
The allowed set is the unit's SystemCallFilter= lines (an allow list, then ~deny lists, in
order, groups expanded with systemd-analyze syscall-filter). Prints what is missing; exit 1 if
anything is.
"""
import configparser
import glob
import json
import re
import subprocess
import sys


def expand(token, cache={}):
    if not token.startswith("@"):
        return {token}
    if token not in cache:
        out = subprocess.run(["systemd-analyze", "syscall-filter", token], check=True,
                             capture_output=True, text=True).stdout
        names = set()
        for line in out.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("@") and line == token:
                continue
            if line.startswith("@"):
                names |= expand(line)
            elif re.fullmatch(r"[a-z0-9_]+", line):
                names.add(line)
        cache[token] = names
    return cache[token]


def allowed(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    lines = []
    with open(unit, encoding="utf-8") as f:
        for raw in f:
            if raw.startswith("SystemCallFilter="):
                lines.append(raw.split("=", 1)[1].strip())
    allow = None
    for value in lines:
        deny = value.startswith("~")
        names = set()
        for tok in value.lstrip("~").split():
            names |= expand(tok)
        if deny:
            allow = (allow if allow is not None else expand("@known")) - names
        else:
            allow = (allow or set()) | names
    return allow


def main():
    unit, strace_log, seccomp_dir = sys.argv[1:4]
    allow = allowed(unit)
    if allow is None:
        print(f"{unit}: no SystemCallFilter=")
        return 1
    used = set()
    with open(strace_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"^\d+\s+([a-z0-9_]+)\(", line)
            if m:
                used.add(m.group(1))
    traced = set(used)
    for path in glob.glob(f"{seccomp_dir}/*.json"):
        with open(path, encoding="utf-8") as f:
            for role in json.load(f).values():
                if role.get("filter_action") == "allow":
                    used |= {rule["syscall"] for rule in role["filter"]}
    missing = sorted(used - allow)
    print(f"syscalls: {len(traced)} traced at start-up, {len(used)} with the seccomp "
          f"allowlists, {len(allow)} allowed by {unit.split('/')[-1]}")
    if missing:
        print("not allowed by SystemCallFilter=: " + " ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
