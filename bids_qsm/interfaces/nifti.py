"""File plumbing shared by the interfaces: NIfTI in and out, grid geometry, stage parameters."""

import inspect
import logging
from contextlib import contextmanager
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_qsm.qsm.dipole import b0_direction, voxel_sizes


def load(path, dtype=np.float32):
    """(data, image) of a NIfTI file; data cast to `dtype`, scaling applied."""
    img = nb.load(path)
    return np.asarray(img.dataobj, dtype=dtype), img


def load_mask(path):
    """A mask file as a boolean array."""
    return np.asarray(nb.load(path).dataobj) > 0


def save_like(ref, data, cwd, name, dtype=np.float32):
    """Write `data` on the grid of image `ref` to `cwd/name.nii`; returns the path.

    Uncompressed: these are the work directory's intermediates, and gzip would take about 20 s
    to save 7 % of a clinical 4-D float32 series; the derivatives sinks compress the outputs.
    """
    data = np.asarray(data, dtype=dtype)
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    img = nb.Nifti1Image(data, ref.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    out = Path(cwd) / f"{name}.nii"
    img.to_filename(out)
    return str(out)


def geometry(img):
    """Voxel size (mm) and B0 direction (unit vector in voxel axes) of an image's grid."""
    return {
        "voxel_size": tuple(float(v) for v in voxel_sizes(img.affine)),
        "b0_dir": tuple(float(v) for v in b0_direction(img.affine)),
    }


def stage_parameters(func, overrides=None, *, given=()):
    """Every keyword-only parameter of a stage function with the value it will run with.

    `given` names the arguments the interface fills from the data (geometry, echo times), which
    are not settings. The result goes into the output's sidecar, so that the map can be
    reproduced from it.
    """
    overrides = dict(overrides or {})
    params = {}
    for name, param in inspect.signature(func).parameters.items():
        if param.kind is not param.KEYWORD_ONLY or name in given:
            continue
        if name in overrides:
            params[name] = overrides.pop(name)
        elif param.default is not param.empty:
            params[name] = param.default
    if overrides:
        raise ValueError(f"{func.__name__} has no parameter(s) {', '.join(sorted(overrides))}")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def run_stage(func, *args, data, params, nthreads=1):
    """Call a stage function; returns (its result, the settings it ran with, its warnings).

    `data` holds what the interface knows about the run (geometry, echo times, magnitude...);
    each is passed only if `func` takes it, and none of it counts as a setting. `params` are the
    user's settings, checked against the function's signature.
    """
    accepted = inspect.signature(func).parameters
    settings = stage_parameters(func, params, given=tuple(data))
    kwargs = {k: v for k, v in data.items() if k in accepted}
    with thread_limit(nthreads), captured_warnings() as warnings:
        result = func(*args, **kwargs, **settings)
    return result, settings, warnings


@contextmanager
def captured_warnings():
    """Collect the warnings our library logs meanwhile, so that sidecars and reports show them."""
    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    library = logging.getLogger("bids_qsm")
    library.addHandler(handler)
    try:
        yield messages
    finally:
        library.removeHandler(handler)


@contextmanager
def thread_limit(nthreads):
    """Run numba kernels on at most `nthreads` threads (the node's share of the cores)."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(nthreads), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)
