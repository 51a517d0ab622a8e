"""A mask's bounding box plus a margin, on an FFT-friendly grid, and the real FFTs used on it.

Every Fourier-domain method (background removal, dipole inversion) works on the mask's bounding
box padded by a margin that keeps the periodic wrap-around of its kernels away from the mask.
The box may reach past the volume: those voxels are zero when cropping and dropped when pasting.
"""

import math

import numpy as np
import scipy.fft

from .dipole import kspace_grid


def bounding_box(mask):
    """Slices of the smallest box that holds every voxel of `mask` (bool, 3-D)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the mask is empty")
    slices = []
    for axis in range(mask.ndim):
        nonzero = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        slices.append(slice(int(nonzero[0]), int(nonzero[-1]) + 1))
    return tuple(slices)


class FFTBox:
    """The bounding box of `mask` plus `margin` voxels per side (an int or one per axis).

    The box starts `margin` voxels before the mask's first voxel on each axis; its size is the
    next fast real-FFT length at or above the bounding box plus twice the margin, the extra
    voxels going after it. `crop` copies what the box and the volume share (zeros elsewhere),
    `paste` puts the box back into a volume of zeros.
    """

    def __init__(self, mask, margin):
        mask = np.asarray(mask, dtype=bool)
        self.volume_shape = mask.shape
        self.bbox = bounding_box(mask)
        margin = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
        self.lo = tuple(s.start - int(m) for s, m in zip(self.bbox, margin, strict=True))
        self.shape = tuple(
            scipy.fft.next_fast_len(s.stop - s.start + 2 * int(m), real=True)
            for s, m in zip(self.bbox, margin, strict=True)
        )
        # The region shared by the box and the volume, in both coordinate systems.
        self._vol = tuple(
            slice(max(a, 0), min(a + n, v))
            for a, n, v in zip(self.lo, self.shape, self.volume_shape, strict=True)
        )
        self._box = tuple(
            slice(s.start - a, s.stop - a) for s, a in zip(self._vol, self.lo, strict=True)
        )

    def crop(self, volume, dtype=None):
        """The box's part of `volume` (its dtype unless `dtype` is given), zeros past the volume."""
        volume = np.asarray(volume)
        out = np.zeros(self.shape, dtype=volume.dtype if dtype is None else dtype)
        out[self._box] = volume[self._vol]
        return out

    def paste(self, boxed, mask=None):
        """A volume of zeros with the box's values in place; zero outside `mask` if given."""
        out = np.zeros(self.volume_shape, dtype=boxed.dtype)
        out[self._vol] = boxed[self._box]
        if mask is not None:
            out[~np.asarray(mask, dtype=bool)] = 0
        return out


def rfftn(array):
    """Real 3-D FFT (rfft half) of `array` as float32, on all cores."""
    return scipy.fft.rfftn(np.asarray(array).astype(np.float32, copy=False), workers=-1)


def irfftn(spectrum, shape):
    """Inverse of `rfftn` onto a grid of `shape`, float32."""
    return scipy.fft.irfftn(spectrum, s=shape, workers=-1).astype(np.float32, copy=False)


def fft_pad(mask, fraction=0.25, minimum=8):
    """Zero padding (voxels per side): `fraction` of the mask's extent on each axis, at least
    `minimum`; a quarter keeps the periodic wrap-around of deconvolved dipole fields away from
    the brain at a modest FFT cost."""
    return tuple(
        max(minimum, int(math.ceil(fraction * (s.stop - s.start)))) for s in bounding_box(mask)
    )


def half_spectrum(kernel):
    """The part of a full 3-D Fourier-domain array that a real FFT (`rfftn`) keeps, contiguous
    (numba kernels take it)."""
    return np.ascontiguousarray(kernel[..., : kernel.shape[2] // 2 + 1])


def gradient_power(shape, voxel_size):
    """|G(k)|^2 (1/mm^2) of the periodic forward-difference gradient on an FFT grid, as the
    rfft half (`half_spectrum`), float32."""
    k = kspace_grid(shape, voxel_size)
    out = 0.0
    for ki, h in zip(k, voxel_size, strict=True):
        out = out + (2.0 - 2.0 * np.cos(2.0 * np.pi * ki * h)) / h**2
    return half_spectrum(np.asarray(out, dtype=np.float32) + np.zeros(shape, dtype=np.float32))
