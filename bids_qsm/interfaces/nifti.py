"""File plumbing shared by the interfaces: NIfTI in and out, grid geometry, stage parameters.

`load_input` reads a run's own images (the BIDS dataset's, not our intermediates) and refuses,
in one line naming the file, what no later stage could make sense of: an unreadable file,
stacked echoes or coil channels, a volume of NaN or infinities, a magnitude without signal, a
phase that is constant or outside every known scaling.
"""

import inspect
import logging
from contextlib import contextmanager
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_qsm.qsm.dipole import b0_direction, voxel_sizes

# Receive arrays have 8 to 64 (and more) channels; no MEGRE protocol has that many echoes.
_COIL_COUNTS = range(8, 129)
_MAX_ECHOES = 16
_MAX_NONFINITE = 0.5  # fraction of NaN/Inf voxels beyond which a volume is not data
_MAX_NEGATIVE = 0.05  # fraction of negative voxels a magnitude may show (interpolation ringing)
_RAD_LIMIT = 2 * np.pi + 1e-3  # radians come in [-pi, pi) or [0, 2 pi)
_MAX_STORED_PHASE = 65536.0  # vendors store phase in 12 or 16 bits at most
# Phase images, raw or in radians, follow their magnitude at |r| <= 0.41 on the project's data
# (the Siemens phantom scan, the in vivo crop, simulated heads); on the built-in phantom the
# second echo's magnitude follows the first's at r = 0.97.
_MAGNITUDE_LIKE_R = 0.9

logger = logging.getLogger(__name__)


class InputDataError(ValueError):
    """An input image that cannot be processed; ``str()`` is one line that names the file."""


def load_input(path, *, part, units="auto"):
    """(data, image) of one echo's input image, float32, checked.

    part: "mag", "phase", "real" or "imag"; units: the phase scaling that will be applied
    ("rad" refuses values beyond +-2 pi). Trailing singleton dimensions are dropped. A volume
    with a few NaN/Inf voxels is accepted (they are missing data: 0 in a magnitude, see
    `scale_phase` for the phase), one that is mostly NaN/Inf is not.
    Raises InputDataError with one line naming the file.
    """
    try:
        img = nb.load(path)
        complex_valued = img.get_data_dtype().kind == "c"
        data = None if complex_valued else np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel, gzip and zlib raise many kinds on damaged files
        raise InputDataError(f"{path}: cannot read NIfTI: {_one_line(err)}") from None
    if complex_valued:
        raise InputDataError(f"{path}: complex-valued image; give magnitude and phase separately")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(
            f"{path}: expected a 3-D image, found shape {data.shape}: {volumes_hint(data.shape)}"
        )
    check_volume(data, path=path, part=part, units=units)
    if part == "mag" and not np.isfinite(data).all():
        data = np.where(np.isfinite(data), data, np.float32(0))
    return data, img


def volumes_hint(shape):
    """What the volumes of an image of more than three dimensions probably are, and what to do."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3:
        return "a single slice or line; QSM needs a 3-D volume"
    volumes = int(np.prod(shape[3:]))
    if len(shape) > 4 or volumes in _COIL_COUNTS and volumes > _MAX_ECHOES:
        return (
            f"{volumes} volumes look like uncombined receive-coil channels; combine the coils "
            "first (the scanner's adaptive combine, or e.g. MCPC-3D-S for the phase) and write "
            "one 3-D image per echo"
        )
    return (
        f"{volumes} volumes stacked in one file (echoes?); write one 3-D image per echo, named "
        "echo-<n>, each with its own EchoTime"
    )


def check_volume(data, *, path, part, units="auto"):
    """Refuse (InputDataError, one line naming `path`) a volume that cannot be this part."""
    finite = np.isfinite(data)
    bad = data.size - int(np.count_nonzero(finite))
    if bad == data.size:
        raise InputDataError(f"{path}: every voxel is NaN or infinite")
    if bad > _MAX_NONFINITE * data.size:
        raise InputDataError(
            f"{path}: {100 * bad / data.size:.0f} % of the voxels are NaN or infinite"
        )
    values = data if bad == 0 else data[finite]
    vmin, vmax = float(values.min()), float(values.max())
    if bad and part == "mag":
        logger.warning("%s: %d NaN/infinite voxels taken as 0", path, bad)
    if vmin == vmax == 0:
        what = "no signal" if part in ("mag", "real", "imag") else "not a phase image"
        raise InputDataError(f"{path}: every voxel is 0 ({what})")
    if part == "mag":
        negative = int(np.count_nonzero(values < 0))
        if negative > _MAX_NEGATIVE * values.size:
            raise InputDataError(
                f"{path}: {100 * negative / values.size:.0f} % of the voxels are negative (down "
                f"to {vmin:.4g}): not a magnitude image; is it a phase or real part?"
            )
        if vmax <= 0:
            raise InputDataError(f"{path}: no positive voxel (no signal)")
    if part == "phase":
        if vmin == vmax:
            raise InputDataError(
                f"{path}: every voxel is {vmin:.6g}: a constant image is not a phase image"
            )
        if max(-vmin, vmax) > _MAX_STORED_PHASE:
            raise InputDataError(
                f"{path}: values span [{vmin:.6g}, {vmax:.6g}], beyond every known phase "
                "scaling (radians, degrees, 12- or 16-bit integers): not a phase image"
            )
        if units == "rad" and max(-vmin, vmax) > _RAD_LIMIT:
            raise InputDataError(
                f"{path}: values span [{vmin:.6g}, {vmax:.6g}], beyond any range of radians; "
                'if the phase is vendor-scaled, set its sidecar\'s Units to "arbitrary" (or '
                "pass --phase-units arbitrary)"
            )


def check_phase_is_not_magnitude(phase, magnitude, *, path, magnitude_path):
    """Refuse (InputDataError, one line naming `path`) a phase image whose stored values follow
    the magnitude image's (Pearson r above 0.9 over the voxels finite in both): a magnitude
    given as the phase, which every scaling would turn into a meaningless field."""
    # A regular sample of about a million voxels decides it as well as all of them, in a few MB.
    step = max(1, phase.size // 1_000_000)
    phase, magnitude = phase.ravel()[::step], magnitude.ravel()[::step]
    finite = np.isfinite(phase) & np.isfinite(magnitude)
    a, b = phase[finite].astype(np.float64), magnitude[finite].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    norm = np.sqrt(np.dot(a, a) * np.dot(b, b))
    r = float(np.dot(a, b) / norm) if norm > 0 else 0.0
    if r > _MAGNITUDE_LIKE_R:
        raise InputDataError(
            f"{path}: its values follow the magnitude image {Path(magnitude_path).name} "
            f"(correlation {r:.2f}): a magnitude image given as the phase (part-phase)?"
        )


def _one_line(err):
    text = " ".join(str(err).split())
    return text or type(err).__name__


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
