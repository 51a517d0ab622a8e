"""Report figures: orthogonal views and axial slices of 3-D maps, written as SVG (or PNG).

Every function takes numpy arrays in the NIfTI voxel order (X, Y, Z), the voxel size (mm) and
an output path whose suffix (`.svg` or `.png`) picks the format, and returns a `FigureFile`
with the path and the display range of the colour bar (None where there is none).

Orientation: slices are shown as stored, scaled to millimetres (anisotropic voxels keep their
true aspect): the axial view has the first voxel axis left to right and the second bottom to
top, the coronal view the first and the third, the sagittal view the second and the third. For
a grid in RAS+ order (NIfTI's canonical one) this is the neurological convention: the
subject's right on the right, anterior and superior up. Views cut through the mask's centroid
and are cropped to its bounding box.

SVGs embed the images as PNG at the data's own resolution and draw the text as paths, so a
page that shows them needs no fonts, scripts or network; the files stay well under 1 MB for
brain-sized grids. Metadata carry no date and ids are salted, so reruns give identical files.
"""

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure

_RC = {"svg.fonttype": "path", "svg.hashsalt": "bids_qsm", "font.size": 8}
_MARGIN = 3  # voxels kept around the mask's bounding box


def _styled(plot):
    """Draw and save under the report's matplotlib settings, without touching the global ones."""

    @functools.wraps(plot)
    def styled(*args, **kwargs):
        with rc_context(_RC):
            return plot(*args, **kwargs)

    return styled


class FigureFile(NamedTuple):
    """A written figure and the range (vmin, vmax) of its colour bar, None without one."""

    path: Path
    vmin: float | None = None
    vmax: float | None = None


@_styled
def plot_mask_outline(magnitude, mask, out, *, voxel_size):
    """Magnitude (any units; the first echo of a 4-D one) in grey with the mask's outline."""
    magnitude = np.asarray(magnitude, dtype=np.float32)
    if magnitude.ndim == 4:
        magnitude = magnitude[..., 0]
    mask = np.asarray(mask, dtype=bool)
    vmax = _percentile(magnitude[mask] if mask.any() else magnitude, 99.5)
    views = _Views(magnitude.shape, voxel_size, mask)
    fig, axes = _figure(1, 3, views.widths, views.heights)
    for ax, (plane, extent), (outline, _) in zip(
        axes[0], views.planes(magnitude), views.planes(mask.astype(np.float32)), strict=True
    ):
        ax.imshow(plane, cmap="gray", vmin=0.0, vmax=vmax, extent=extent, **_IMSHOW)
        ax.contour(outline, levels=[0.5], colors="#e8412c", linewidths=0.8, extent=extent)
    _titles(axes[0], views.names)
    return FigureFile(_save(fig, out))


@_styled
def plot_map(
    data,
    out,
    *,
    voxel_size,
    mask=None,
    vmin=None,
    vmax=None,
    cmap="gray",
    label="",
    symmetric=False,
):
    """Orthogonal views of a map with a colour bar labelled `label` (say "field (Hz)").

    Voxels outside `mask` are black; `vmin`/`vmax` default to the 1st and 99th percentiles of
    the map inside the mask (of its non-zero voxels without one), or with `symmetric` to
    -/+ the 99th percentile of its magnitude, which keeps zero at a diverging map's centre.
    """
    data = np.asarray(data, dtype=np.float32)
    mask = data != 0 if mask is None else np.asarray(mask, dtype=bool)
    values = data[mask] if mask.any() else data.ravel()
    if symmetric and vmin is None and vmax is None:
        limit = _percentile(np.abs(values), 99.0) or 1.0
        vmin, vmax = -limit, limit
    vmin = _percentile(values, 1.0) if vmin is None else float(vmin)
    vmax = _percentile(values, 99.0) if vmax is None else float(vmax)
    if vmax <= vmin:
        vmax = vmin + 1.0
    shown = np.where(mask, data, np.nan)
    views = _Views(data.shape, voxel_size, mask)
    fig, axes = _figure(1, 3, views.widths, views.heights)
    colormap = colormaps[cmap].with_extremes(bad="black")
    for ax, (plane, extent) in zip(axes[0], views.planes(shown), strict=True):
        image = ax.imshow(plane, cmap=colormap, vmin=vmin, vmax=vmax, extent=extent, **_IMSHOW)
    _titles(axes[0], views.names)
    _colorbar(fig, image, axes[0], label, vmin, vmax)
    return FigureFile(_save(fig, out), vmin, vmax)


@_styled
def plot_chimap(chi, out, *, voxel_size, mask, limit_ppm=None):
    """Susceptibility (ppm) in grey on a symmetric scale [-limit, +limit] with a colour bar.

    `limit_ppm` defaults to the 99th percentile of |chi| inside the mask (0.1 ppm if that is
    zero), so that paramagnetic tissue is bright and diamagnetic dark around a grey zero.
    """
    chi = np.asarray(chi, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if limit_ppm is None:
        limit_ppm = (_percentile(np.abs(chi[mask]), 99.0) if mask.any() else 0.0) or 0.1
    limit = float(limit_ppm)
    return plot_map(
        chi, out, voxel_size=voxel_size, mask=mask, vmin=-limit, vmax=limit, label="χ (ppm)"
    )


@_styled
def plot_swi(swi, minip, out, *, voxel_size, mask=None, axis=2, n_slices=4):
    """SWI (top row) and its minimum intensity projection (bottom row) at the same slices.

    Slices are cut across `axis` (the projection's axis), evenly through the middle of the
    mask's extent (of the SWI's non-zero voxels without a mask); both rows share one grey
    scale, 0 to the 99th percentile of the SWI inside the mask.
    """
    swi = np.asarray(swi, dtype=np.float32)
    minip = np.asarray(minip, dtype=np.float32)
    mask = swi != 0 if mask is None else np.asarray(mask, dtype=bool)
    vmax = _percentile(swi[mask] if mask.any() else swi, 99.0) or 1.0
    views = _Views(swi.shape, voxel_size, mask)
    positions = views.slice_positions(axis, n_slices)
    fig, axes = _figure(2, len(positions), *views.slab_size(axis, len(positions)))
    for row, (volume, name) in enumerate(((swi, "SWI"), (minip, "minIP"))):
        for ax, index in zip(axes[row], positions, strict=True):
            plane, extent = views.cut(volume, axis, index)
            ax.imshow(plane, cmap="gray", vmin=0.0, vmax=vmax, extent=extent, **_IMSHOW)
            ax.set_title(f"{name}, slice {index}")
    return FigureFile(_save(fig, out), 0.0, vmax)


_IMSHOW = {"origin": "lower", "interpolation": "none"}


class _Views:
    """Slices of a volume through the mask's centroid, cropped to the mask's bounding box."""

    names = ("sagittal", "coronal", "axial")

    def __init__(self, shape, voxel_size, mask):
        self.voxel_size = np.asarray(voxel_size, dtype=float)
        shape = np.asarray(shape[:3])
        if mask.any():
            where = np.argwhere(mask)
            self.lo = np.maximum(where.min(0) - _MARGIN, 0)
            self.hi = np.minimum(where.max(0) + 1 + _MARGIN, shape)
            self.center = np.round(where.mean(0)).astype(int)
        else:
            self.lo, self.hi, self.center = np.zeros(3, int), shape, shape // 2
        self.extent_mm = (self.hi - self.lo) * self.voxel_size
        width, height = (1, 0, 0), (2, 2, 1)
        self.widths = [self.extent_mm[a] for a in width]
        self.heights = [self.extent_mm[a] for a in height]

    def cut(self, volume, axis, index):
        """The plane `index` across `axis`, transposed for `origin="lower"`, and its extent."""
        crop = tuple(slice(lo, hi) for lo, hi in zip(self.lo, self.hi, strict=True))
        plane = np.take(volume[crop], index - self.lo[axis], axis=axis)
        first, second = (a for a in range(3) if a != axis)
        extent = (0.0, self.extent_mm[first], 0.0, self.extent_mm[second])
        return plane.T, extent

    def planes(self, volume):
        return [self.cut(volume, axis, self.center[axis]) for axis in range(3)]

    def slice_positions(self, axis, count):
        span = self.hi[axis] - self.lo[axis]
        fractions = np.linspace(0.25, 0.75, count) if count > 1 else [0.5]
        return [int(self.lo[axis] + round(f * (span - 1))) for f in fractions]

    def slab_size(self, axis, count):
        first, second = (a for a in range(3) if a != axis)
        return [self.extent_mm[first]] * count, [self.extent_mm[second]] * count


def _figure(rows, columns, widths, heights, inches=9.0):
    """A figure whose panels have their physical aspect; returns (figure, axes[rows][cols])."""
    panel_height = inches * max(heights) / sum(widths)
    fig = Figure(figsize=(inches, rows * (panel_height + 0.35) + 0.1), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _titles(axes, names):
    for ax, name in zip(axes, names, strict=True):
        ax.set_title(name)


def _colorbar(fig, image, axes, label, vmin, vmax):
    bar = fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02)
    ticks = [vmin, (vmin + vmax) / 2.0, vmax]
    bar.set_ticks(ticks, labels=[_number(t) for t in ticks])
    bar.set_label(label)


def _number(value):
    """Tick label: three significant digits, ASCII minus, and exactly 0 for the centre of 0."""
    return "0" if abs(value) < 1e-12 else f"{value:.3g}"


def _percentile(values, q):
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else 0.0


def _save(fig, out):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Date": None} if out.suffix.lower() == ".svg" else None
    fig.savefig(out, dpi=150, facecolor="white", metadata=metadata)
    return out
