"""Measure what bids_qsm's nodes and runs really use, against the `mem_gb` the scheduler is told.

    python scripts/measure_memory.py nodes WORK_DIR
        re-runs every finished computing node of a work directory alone in a fresh process and
        prints its peak resident memory (GB) beside the node's `mem_gb` estimate;
    python scripts/measure_memory.py run -- bids_qsm BIDS OUT participant ...
        runs a command and prints its wall time, the CPU time of it and all its descendants, and
        the peak of their summed resident memory (sampled every 0.1 s from /proc).

Linux only (ru_maxrss in kB, /proc). Used for the figures in docs/hpc.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import os, resource, sys, tempfile
from nipype.utils.filemanip import loadpkl
node = loadpkl(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cwd = tempfile.mkdtemp(dir=sys.argv[2])
os.chdir(cwd)
node.interface.run(cwd=cwd)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime, base / 1e6, usage.ru_maxrss / 1e6, node.mem_gb)
"""

# nodes that only move metadata or files: not worth a process each
_SKIP = ("inputnode", "outputnode", "warnings", "sidecars", "params", "split", "all_figures",
         "all_figure_keys")  # fmt:skip


def measure_nodes(work_dir):
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for pickle in sorted(Path(work_dir).rglob("_node.pklz")):
            folder = pickle.parent
            if folder.name in _SKIP or folder.name.startswith("ds_"):
                continue
            if not list(folder.glob("result_*.pklz")):
                continue
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, str(pickle), scratch],
                capture_output=True, text=True, check=False,
            )  # fmt:skip
            if done.returncode:
                print(f"{folder}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            cpu, base, peak, estimate = map(float, done.stdout.split()[-4:])
            name = str(folder.relative_to(work_dir))
            rows.append({"node": name, "cpu_s": cpu, "startup_gb": base, "peak_gb": peak,
                         "mem_gb": estimate})  # fmt:skip
    header = ("cpu_s", "startup", "peak", "mem_gb", "est/peak")
    print(f"{'node':64s} {header[0]:>6s}" + "".join(f" {h:>8s}" for h in header[1:]))
    for row in rows:
        ratio = row["mem_gb"] / row["peak_gb"]
        print(f"{row['node']:64s} {row['cpu_s']:6.1f} {row['startup_gb']:8.3f} "
              f"{row['peak_gb']:8.3f} {row['mem_gb']:8.3f} {ratio:8.2f}")  # fmt:skip
    return rows


def _tree_rss_kb(root):
    """Summed VmRSS (kB) of `root` and every process descending from it."""
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in family} - family
        family |= more
        grew = bool(more)
    total = 0
    for pid in family:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def measure_run(command):
    start = time.monotonic()
    process = subprocess.Popen(command)
    peak = 0
    while True:
        # wait4 reports the CPU time of the whole tree (descendants are reaped by their parents)
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _tree_rss_kb(process.pid))
        time.sleep(0.1)
    wall = time.monotonic() - start
    result = {"returncode": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "peak_tree_rss_gb": round(peak / 1e6, 3)}  # fmt:skip
    print(json.dumps(result))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    nodes = sub.add_parser("nodes")
    nodes.add_argument("work_dir", type=Path)
    run = sub.add_parser("run")
    run.add_argument("command", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    if opts.what == "nodes":
        measure_nodes(opts.work_dir)
    else:
        measure_run(opts.command[1:] if opts.command[:1] == ["--"] else opts.command)


if __name__ == "__main__":
    main()
