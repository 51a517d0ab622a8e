"""Whole-pipeline wall time and peak memory on a phantom of a chosen size.

    python benchmarks/bench_pipeline.py --shape 480 480 68 --voxel-size 0.5 0.5 2 \
        --echo-times 0.0054 0.0107 0.0160 0.0213 0.0266 0.0319 0.0368 -- [bids_qsm options]

Prints the phantom's generation time, the pipeline's wall time, each stage's time (from Nipype's
result files) and the peak resident memory of the largest process (the Linear plugin runs every
stage in one child process, so that peak is the peak of the heaviest stage).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nipype.utils.filemanip import loadpkl

STAGES = ("phase_units", "mask", "unwrap", "combine", "relaxometry", "background", "invert",
          "reference", "swi", "figures")  # fmt:skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 112, 80))
    parser.add_argument("--voxel-size", type=float, nargs=3, default=(2.0, 2.0, 2.0))
    parser.add_argument("--echo-times", type=float, nargs="+", default=None)
    parser.add_argument("--oversample", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("options", nargs=argparse.REMAINDER, help="bids_qsm options after --")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    phantom = [
        "bids_qsm-phantom",
        str(root / "bids"),
        "--shape",
        *map(str, args.shape),
        "--voxel-size",
        *map(str, args.voxel_size),
        "--oversample",
        str(args.oversample),
    ]
    if args.echo_times:
        phantom += ["--echo-times", *map(str, args.echo_times)]
    start = time.perf_counter()
    subprocess.run(phantom, check=True)
    print(f"phantom {'x'.join(map(str, args.shape))}: {time.perf_counter() - start:.1f} s")

    options = [o for o in args.options if o != "--"]
    command = ["bids_qsm", str(root / "bids"), str(root / "out"), "participant", "-w",
               str(root / "work"), "--skip-bids-validation", "--nipype-plugin", "Linear",
               *options]  # fmt:skip
    start = time.perf_counter()
    # wait4 gives this child's own peak; RUSAGE_CHILDREN would include the phantom's generator.
    _, status, usage = os.wait4(subprocess.Popen(command).pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    peak_gb = usage.ru_maxrss / 1024**2
    print(f"pipeline: exit {code}, {wall:.1f} s wall, peak memory {peak_gb:.2f} GB")
    for run in sorted((root / "work" / "bids_qsm_wf").glob("sub_*_wf/qsm_*_wf")):
        for stage in STAGES:
            # stage families are sub-workflows of the run: a node lies one folder down
            for result in sorted(run.glob(f"*_wf/{stage}/result_{stage}.pklz")):
                print(f"  {stage:12s} {loadpkl(result).runtime.duration:7.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
