"""Report figures of the clinical read-outs: foci and lesion rims on the Chimap beside the SWI,
and the vein mask as a projection. Arrays in the NIfTI voxel order, as in `figures`."""

import numpy as np
from matplotlib.figure import Figure

from bids_qsm.reports.figures import FigureFile, _percentile, _save, _styled

_IMSHOW = {"origin": "lower", "interpolation": "none"}
_COLOURS = {"paramagnetic": "#e8412c", "diamagnetic": "#2c7be8", "rim": "#f2c200",
            "norim": "#3cb44b"}  # fmt: skip


def _slices_of(mask, marks, n_slices):
    """Axial slices (z) through the centres of the marked findings, at most `n_slices` spread
    over them; without findings, evenly through the mask."""
    from scipy import ndimage as ndi

    pieces, n = ndi.label(marks)
    if n:
        centres = sorted(
            {int(round(c[2])) for c in ndi.center_of_mass(marks, pieces, range(1, n + 1))}
        )
        if len(centres) > n_slices:
            centres = [centres[int(i)] for i in np.linspace(0, len(centres) - 1, n_slices)]
        return centres
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    return [int(z) for z in np.linspace(zs[0], zs[-1], n_slices + 2)[1:-1]] if zs.size else []


@_styled
def plot_findings(chi, swi, mask, out, *, voxel_size, foci=None, lesions=None, rims=None,
                  n_slices=4):  # fmt: skip
    """Axial slices through the findings: the Chimap (top, symmetric grey scale) with foci
    outlined (red paramagnetic, blue diamagnetic) and lesions (yellow with a rim, green without
    or not judged), and the SWI (bottom) at the same slices.

    foci: int dseg (1 paramagnetic, 2 diamagnetic) or None; lesions: int labels or None; rims:
    {lesion index: True/False/None}.
    """
    chi, mask = np.asarray(chi, np.float32), np.asarray(mask, bool)
    foci = np.zeros(chi.shape, np.int16) if foci is None else np.asarray(foci)
    lesions = np.zeros(chi.shape, np.int16) if lesions is None else np.asarray(lesions)
    rims = rims or {}
    marks = (foci > 0) | (lesions > 0)
    slices = _slices_of(mask, marks, n_slices) or [chi.shape[2] // 2]
    limit = _percentile(np.abs(chi[mask]), 99.0) or 0.1
    swi_max = _percentile(np.asarray(swi)[mask], 99.0) or 1.0
    voxel = np.asarray(voxel_size, float)
    extent = (0, chi.shape[0] * voxel[0], 0, chi.shape[1] * voxel[1])
    fig = Figure(figsize=(2.2 * len(slices), 4.6), layout="constrained")
    axes = fig.subplots(2, len(slices), squeeze=False)
    rim_mask = np.isin(lesions, [i for i, r in rims.items() if r])
    plain_mask = (lesions > 0) & ~rim_mask
    for column, z in enumerate(slices):
        top, bottom = axes[0][column], axes[1][column]
        top.imshow(np.where(mask[..., z], chi[..., z], 0).T, cmap="gray", vmin=-limit,
                   vmax=limit, extent=extent, **_IMSHOW)  # fmt: skip
        outlines = (
            (foci[..., z] == 1, "paramagnetic"),
            (foci[..., z] == 2, "diamagnetic"),
            (rim_mask[..., z], "rim"),
            (plain_mask[..., z], "norim"),
        )
        for region, colour in outlines:
            if region.any():
                top.contour(region.T.astype(float), levels=[0.5], colors=_COLOURS[colour],
                            linewidths=0.9, extent=extent)  # fmt: skip
        bottom.imshow(np.asarray(swi)[..., z].T, cmap="gray", vmin=0, vmax=swi_max,
                      extent=extent, **_IMSHOW)  # fmt: skip
        top.set_title(f"χ, slice {z}")
        bottom.set_title(f"SWI, slice {z}")
    for ax in axes.flat:
        ax.set_axis_off()
    return FigureFile(_save(fig, out), -limit, limit)


@_styled
def plot_vein_projection(chi, veins, mask, out, *, voxel_size):
    """Maximum intensity projections of chi (grey) with the vein mask's projection (red), along
    the third voxel axis (axial) and the first (sagittal)."""
    chi, veins = np.asarray(chi, np.float32), np.asarray(veins, bool)
    chi = np.where(np.asarray(mask, bool), chi, 0)
    voxel = np.asarray(voxel_size, float)
    vmax = _percentile(chi[chi > 0], 99.5) or 0.1
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, axis, (a, b), name in ((axes[0], 2, (0, 1), "axial"), (axes[1], 0, (1, 2), "sagittal")):
        extent = (0, chi.shape[a] * voxel[a], 0, chi.shape[b] * voxel[b])
        ax.imshow(chi.max(axis=axis).T, cmap="gray", vmin=0, vmax=vmax, extent=extent, **_IMSHOW)
        overlay = np.ma.masked_where(~veins.any(axis=axis), np.ones(veins.max(axis=axis).shape))
        ax.imshow(overlay.T, cmap="autumn", alpha=0.55, extent=extent, **_IMSHOW)
        ax.set_title(f"{name} projection")
        ax.set_axis_off()
    return FigureFile(_save(fig, out), 0.0, vmax)
