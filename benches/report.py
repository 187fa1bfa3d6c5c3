#!/usr/bin/env python3
"""Turns DIR/results.jsonl (written by benches/run.sh) into DIR/results.md and DIR/results.svg.

Standard library only. Each of our rows is paired with its reference (fio on the same file; in
the guest, QEMU's built-in virtio-scsi with cache=none,aio=native for ours with cache=none, QEMU's
cache=writeback for ours on the page cache, ours on the page cache for vhost-device-scsi) and the
ratio is shown; null-LUN rows are compared with the 1,000,000 IOPS target. The guest's matched
O_DIRECT rows also get the headline table: ours against both QEMU aio= modes.
"""
import json
import os
import sys

REFS = {
    "file-uring-randread-qd32": "fio-randread-qd32",
    "file-threads-randread-qd32": "fio-randread-qd32",
    "file-sync-randread-qd32": "fio-randread-qd32",
    "file-uring-randread-qd1": "fio-randread-qd1",
    "file-uring-randread-qd1-event": "fio-randread-qd1",
    "file-uring-randread-qd1-event-nopoll": "fio-randread-qd1",
    "file-uring-randwrite-qd32": "fio-randwrite-qd32",
    "file-uring-read-1m-qd8": "fio-read-1m-qd8",
    "file-uring-randread-qd32-q2": "fio-randread-qd32-j2",
    "file-cached-randwrite-qd1": "fio-cached-randwrite-qd1",
}
NULL_TARGET = 1_000_000


# Guest rows: (our prefix, its reference's prefix), most specific first.
GUEST_REFS = [
    ("guest-vus-pc-", "guest-qemu-pc-"),
    ("guest-vus-", "guest-qemu-native-"),
    ("guest-qemu-uring-", "guest-qemu-native-"),
    ("guest-vds-", "guest-vus-pc-"),
]
GUEST_ROWS = ["randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd1", "randwrite-4k-qd32",
              "read-1m-qd8", "write-1m-qd8"]


def reference(label, by_label):
    if label in REFS:
        return by_label.get(REFS[label]), REFS[label]
    for prefix, ref_prefix in GUEST_REFS:
        if label.startswith(prefix):
            ref = ref_prefix + label[len(prefix):]
            return by_label.get(ref), ref
    return None, None


def cell(r):
    """IOPS with the spread of the runs, or why there is none."""
    if r is None:
        return "—"
    if r.get("errors"):
        return "I/O errors"
    spread = f" ({r['iops_min']:,}–{r['iops_max']:,})" if r.get("reps", 1) > 1 else ""
    return f"{r['iops']:,}{spread}"


def ratio(a, b):
    if not a or not b or a.get("errors") or b.get("errors") or not b.get("iops"):
        return "—"
    return f"**{a['iops'] / b['iops']:.2f}×**"


def headline(by_label):
    """Ours (cache=none) against QEMU's built-in device, cache=none with each aio= mode."""
    if not any(f"guest-vus-{row}" in by_label for row in GUEST_ROWS):
        return []
    out = ["## Guest, matched O_DIRECT: ours cache=none vs QEMU virtio-scsi-pci + scsi-hd cache=none",
           "", "IOPS: median of the runs (spread); irq/IO: the guest's virtio interrupts per I/O; "
           "req/IO: disk requests per fio I/O (above 1: the guest split it).", "",
           "| row | ours | irq/IO | req/IO | QEMU aio=native | irq/IO | req/IO | ratio | QEMU aio=io_uring | irq/IO | req/IO | ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in GUEST_ROWS:
        ours = by_label.get(f"guest-vus-{row}")
        native = by_label.get(f"guest-qemu-native-{row}")
        uring = by_label.get(f"guest-qemu-uring-{row}")
        def per_io(r, key):
            return "—" if not r or r.get(key) is None else f"{r[key]:.2f}"
        cols = lambda r: f"{cell(r)} | {per_io(r, 'irq_per_io')} | {per_io(r, 'req_per_io')}"
        out.append(f"| {row} | {cols(ours)} | {cols(native)} | {ratio(ours, native)} | "
                   f"{cols(uring)} | {ratio(ours, uring)} |")
    return out + [""]


def main(out):
    rows = []
    with open(os.path.join(out, "results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    by_label = {r["label"]: r for r in rows}
    machine = open(os.path.join(out, "machine.txt")).read() if os.path.exists(
        os.path.join(out, "machine.txt")) else ""
    md = ["# Benchmark results", "", "```", machine.strip(), "```", "",
          *headline(by_label),
          "## Every row", "",
          "| run | rw | bs | QD | queues/jobs | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | vs | ratio |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    bars = []
    for r in rows:
        ref, ref_label = reference(r["label"], by_label)
        vs, ratio = "", ""
        if r.get("errors"):
            vs, ratio = "I/O errors", "n/a"
        elif ref and ref.get("iops"):
            vs, ratio = ref_label, f"{r['iops'] / ref['iops']:.2f}×"
        elif r["label"].startswith("null-") and "qd128" in r["label"]:
            vs, ratio = "target 1M IOPS", f"{r['iops'] / NULL_TARGET:.2f}×"
        spread = (f" ({r['iops_min']:,.0f}–{r['iops_max']:,.0f}, {r['reps']} runs)"
                  if r.get("reps", 1) > 1 else "")
        md.append(f"| {r['label']} | {r['rw']} | {r['bs']} | {r['qd']} | {r['queues']} | "
                  f"{r['iops']:,.0f}{spread} | {r['mbps']:.1f} | {r['p50_us']} | {r['p99_us']} | "
                  f"{r['p999_us']} | {vs} | {ratio} |")
        bars.append((r["label"], r["iops"], r["label"].startswith(("fio-", "guest-qemu-"))))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    # Horizontal bar chart of IOPS (log-free, each bar labelled with its value).
    width, left, bar_h, gap = 900, 260, 18, 6
    height = 40 + len(bars) * (bar_h + gap)
    top = max([b[1] for b in bars] + [1])
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14">IOPS per run (grey: reference — fio / QEMU built-in)</text>']
    for i, (label, iops, is_ref) in enumerate(bars):
        y = 35 + i * (bar_h + gap)
        w = (width - left - 120) * iops / top
        color = "#999999" if is_ref else "#2b6cb0"
        svg.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{label}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        svg.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{iops:,.0f}</text>')
    svg.append("</svg>")
    with open(os.path.join(out, "results.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
