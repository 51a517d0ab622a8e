"""Field-map stages on a whole-head-sized synthetic scan: wall time and peak memory per stage.

192 x 224 x 160 voxels at 1 mm, seven echoes (TE 4..28 ms), an ellipsoidal brain with
sphere sources, an air-like sphere below it, shim terms, a receive-phase offset and complex
noise (SNR 50 at TE 0). Stages: scale_phase, mask, unwrap, combine and R2*, each method of
each stage. The numba kernels are compiled (or loaded from the cache) on a small volume first,
so the times are the steady state a pipeline sees after its first run.

    NUMBA_NUM_THREADS=2 python benchmarks/bench_fieldmap.py [--threads 2]

Peak memory is the process's maximum resident set size (resource.getrusage), which only grows:
the column is the peak reached by the end of that stage. Target: total (default methods)
within 20 s on 2 cores and below 4 GB.
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

SHAPE = (192, 224, 160)
TE = np.arange(1, 8) * 4e-3


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _sphere_ppm(x, y, z, center, radius, chi):
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    r2 = np.maximum(dx**2 + dy**2 + dz**2, 1e-6)
    return np.where(r2 <= radius**2, 0, chi / 3 * (radius**2 / r2) ** 1.5 * (3 * dz**2 / r2 - 1))


def synthetic_scan(shape=SHAPE, te=TE, snr=50.0, seed=0):
    """(magnitude, wrapped phase) float32 (X, Y, Z, N), brain, true field (Hz), offset (rad)."""
    x, y, z = np.meshgrid(
        *[np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape], indexing="ij", sparse=True
    )
    s = min(shape) / 160
    brain = (x / (70 * s)) ** 2 + (y / (85 * s)) ** 2 + (z / (60 * s)) ** 2 <= 1
    ppm = (
        _sphere_ppm(x, y, z, (0, 30 * s, -95 * s), 25 * s, 9.4)
        + _sphere_ppm(x, y, z, (-20 * s, 10 * s, 0), 6 * s, 0.3)
        + _sphere_ppm(x, y, z, (25 * s, -15 * s, 10 * s), 5 * s, -0.2)
    )
    field = (ppm * 127.7 + 1.5 * x - 1.0 * z + 0.004 * (x**2 - y**2)).astype(np.float32)
    offset = (1.2 * np.sin(x / 60) + np.cos(y / 80)).astype(np.float32)
    density = np.where(brain, 1.0 + 0.1 * np.cos(x / 9), 0.0).astype(np.float32)
    r2star = np.float32(25.0)
    rng = np.random.default_rng(seed)
    mag = np.empty((*shape, te.size), np.float32)
    phase = np.empty((*shape, te.size), np.float32)
    for n, t in enumerate(te):
        signal = density * np.exp(-r2star * t) * np.exp(1j * (offset + 2 * np.pi * field * t))
        noise = rng.standard_normal((2, *shape), dtype=np.float32) / snr
        signal = signal.astype(np.complex64) + (noise[0] + 1j * noise[1])
        mag[..., n] = np.abs(signal)
        phase[..., n] = np.angle(signal)
    return mag, phase, brain, np.broadcast_to(field, shape), offset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="numba threads (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="grid scale (1 = 192x224x160)")
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba

    numba.set_num_threads(args.threads)

    from bids_qsm.qsm.combine import COMBINERS
    from bids_qsm.qsm.mask import MASKS
    from bids_qsm.qsm.phase import scale_phase
    from bids_qsm.qsm.relaxometry import RELAXOMETRY
    from bids_qsm.qsm.unwrap import UNWRAPPERS

    # Compile or load every kernel on a small volume first.
    mag, phase, brain, _, _ = synthetic_scan((32, 32, 24))
    for unwrap in UNWRAPPERS.values():
        u = unwrap(phase, magnitude=mag, mask=brain, te=TE)
    for combine in COMBINERS.values():
        combine(u, magnitude=mag, mask=brain, te=TE)
    for r2 in RELAXOMETRY.values():
        r2(mag, te=TE, mask=brain)
    MASKS["phase-quality"](mag, voxel_size=(1, 1, 1), phase=phase, te=TE)

    shape = tuple(int(round(n * args.scale)) for n in SHAPE)
    t0 = time.perf_counter()
    mag, phase, brain, field, offset = synthetic_scan(shape)
    print(
        f"grid {shape} x {TE.size} echoes, {brain.sum() / 1e6:.2f} M brain voxels; simulated in "
        f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores; numba threads {args.threads}"
    )
    vs = (1.0, 1.0, 1.0)
    rows = []

    def stage(name, func, default=False):
        start = time.perf_counter()
        result = func()
        rows.append((name, time.perf_counter() - start, _peak_gb(), default))
        return result

    phase = stage("scale_phase (rad)", lambda: scale_phase(phase, units="rad"), True)
    masks = {}
    for key, method in MASKS.items():
        masks[key] = stage(
            f"mask {key}",
            lambda m=method: m(mag, voxel_size=vs, phase=phase, te=TE),
            key == "otsu",
        )
    mask = masks["otsu"]
    unwrapped = {}
    for key, method in UNWRAPPERS.items():
        unwrapped[key] = stage(
            f"unwrap {key}",
            lambda m=method: m(phase, magnitude=mag, mask=mask, te=TE, voxel_size=vs),
            key == next(iter(UNWRAPPERS)),
        )
    fields = {}
    default_unwrapped = unwrapped[next(iter(UNWRAPPERS))]
    for key, method in COMBINERS.items():
        fields[key] = stage(
            f"combine {key}",
            lambda m=method: m(default_unwrapped, magnitude=mag, mask=mask, te=TE),
            key == "linear",
        )
    for key, method in RELAXOMETRY.items():
        stage(
            f"R2* {key}", lambda m=method: m(mag, te=TE, mask=mask), key == next(iter(RELAXOMETRY))
        )

    print(f"{'stage':<24}{'wall s':>8}{'peak GB':>9}")
    for name, seconds, peak, default in rows:
        print(f"{name:<24}{seconds:8.2f}{peak:9.2f}{'  *' if default else ''}")
    total = sum(seconds for _, seconds, _, default in rows if default)
    print(f"{'total (defaults *)':<24}{total:8.2f}{_peak_gb():9.2f}")

    # Accuracy on the way: residual wraps and field error inside the mask.
    inside = mask & brain
    for key, u in unwrapped.items():
        wraps = []
        for n, t in enumerate(TE):
            err = (u[..., n] - offset - 2 * np.pi * field * t)[inside]
            wraps.append(np.count_nonzero(np.round((err - np.median(err)) / (2 * np.pi))))
        print(f"unwrap {key}: voxels with a residual 2 pi error per echo {[int(w) for w in wraps]}")
    for key, (field_hz, noise_hz) in fields.items():
        diff = (field_hz - field)[inside]
        diff -= np.median(diff)
        print(
            f"field {key}: RMS error {np.sqrt(np.mean(diff**2)):.2f} Hz, "
            f"reported noise RMS {np.sqrt(np.mean(noise_hz[inside] ** 2)):.2f} Hz, "
            f"|error| > 100 Hz in {np.count_nonzero(np.abs(diff) > 100)} voxels"
        )
    covered = (mask & brain).sum() / brain.sum()
    print(f"mask otsu: covers {covered:.1%} of the brain, {(mask & ~brain).sum()} voxels outside")
    return 0


if __name__ == "__main__":
    sys.exit(main())
