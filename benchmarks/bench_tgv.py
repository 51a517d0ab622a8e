"""TGV-QSM speed and memory against the memory-bandwidth bound of this machine.

Usage: python benchmarks/bench_tgv.py [--iterations 1000] [--shape 192 224 160]

A brain-sized ellipsoid mask in a 1 mm grid (default 192x224x160), a smooth random local
field; runs the primal-dual iterations on the mask's bounding box and prints the time per
iteration, the extrapolation to 1000 iterations, the peak resident memory (ru_maxrss), and the
bound: the bytes the fused iteration must move (over the rows the mask reaches) divided by the
bandwidth of a streaming triad (a = b + s c, numba, all threads) measured in the same run.
"""

import argparse
import os
import resource
import time

import numpy as np
from numba import njit, prange

from bids_qsm.qsm import tgv as T

# Bytes per swept voxel and iteration: the fused sweep reads each array once, chi, chi_, phi,
# phi_, w(3), w_(3), eta, p(3), q(6) and Lap phi0 (20 float32) and the label byte, and writes all
# of them but Lap phi0 in place (18 float32, no read for ownership: the lines were just read). It
# sweeps the part of each row of the box that the mask reaches (`tgv._row_bounds`). The two slabs
# per thread that wait for the second pass are ignored (under 2 % of a 1 mm brain box).
BYTES_PER_VOXEL = 4 * (20 + 18) + 1


@njit(parallel=True, fastmath=True, cache=True)
def _triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


def bandwidth_gbs(n=48_000_000, repeats=5):
    """Triad bandwidth (GB/s), counting 3 streams + the write's read for ownership; median."""
    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    _triad(a, b, c, np.float32(0.5))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _triad(a, b, c, np.float32(0.5))
        times.append(time.perf_counter() - start)
    return 4 * 4 * n / np.median(times) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 224, 160))
    args = parser.parse_args(argv)
    shape, h = tuple(args.shape), (1.0, 1.0, 1.0)

    x, y, z = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    semi = (0.37 * shape[0], 0.4 * shape[1], 0.4 * shape[2])  # brain-like ellipsoid
    mask = (x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2 < 1.0
    rng = np.random.default_rng(0)
    lap = (rng.standard_normal(shape) * 0.01).astype(np.float32)

    # Compile once on a small problem so that timing covers the iterations only.
    small = np.zeros((12, 12, 12), bool)
    small[3:9, 3:9, 3:9] = True
    T.solve_in_mask(lap[:12, :12, :12], small, voxel_size=h, b0_dir=(0, 0, 1), alpha1=1e-3,
                    alpha0=3e-3, iterations=2)  # fmt: skip

    box = [int(np.ptp(np.nonzero(mask)[a])) + 1 for a in range(3)]
    voxels = int(np.prod([n + 6 for n in box]))  # + 2 zero voxels and the ghost layer per side
    rows = T._row_bounds(mask)
    swept = int(np.sum(rows[1] - rows[0]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    T.solve_in_mask(lap, mask, voxel_size=h, b0_dir=(0, 0, 1), alpha1=1e-3, alpha0=3e-3,
                    iterations=args.iterations)  # fmt: skip
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_iter = seconds / args.iterations
    gbs = bandwidth_gbs()
    bound = swept * BYTES_PER_VOXEL / (gbs * 1e9)

    print(f"grid {shape}, mask bounding box {tuple(box)} ({voxels / 1e6:.2f} M voxels with pad, "
          f"{swept / 1e6:.2f} M swept)")  # fmt: skip
    print(f"threads {os.environ.get('NUMBA_NUM_THREADS', os.cpu_count())}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{args.iterations} iterations: {seconds:.1f} s, {per_iter * 1e3:.1f} ms/iteration, "
          f"{per_iter * 1000:.1f} s per 1000 iterations")  # fmt: skip
    print(f"peak RSS {peak_mb:.0f} MB (before the solve {before / 1024:.0f} MB); "
          f"{(peak_mb - before / 1024) * 2**20 / voxels:.0f} bytes per box voxel")  # fmt: skip
    print(f"triad bandwidth {gbs:.1f} GB/s; one iteration moves {BYTES_PER_VOXEL} B/swept voxel")
    print(f"bound {bound * 1e3:.1f} ms/iteration; measured/bound = {per_iter / bound:.2f}")


if __name__ == "__main__":
    main()
