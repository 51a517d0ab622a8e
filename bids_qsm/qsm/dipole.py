"""The unit dipole kernel, the B0 direction of a grid, and the forward field model."""

import numpy as np
import scipy.fft


def b0_direction(affine):
    """B0 (scanner z) as a unit vector in the voxel axes of a grid with this 4x4 affine.

    The affine maps voxel indices to scanner millimetres (RAS+, as NIfTI). Its 3x3 part is the
    rotation (possibly with a flip) times the voxel sizes; B0 points along scanner z, so in voxel
    axes it is the third row of the pure rotation. The sign is irrelevant to the dipole kernel.

    >>> b0_direction(np.diag([2.0, 2.0, 3.0, 1.0])).tolist()
    [0.0, 0.0, 1.0]
    """
    linear = np.asarray(affine, dtype=float)[:3, :3]
    rotation = linear / np.linalg.norm(linear, axis=0)
    direction = rotation.T @ np.array([0.0, 0.0, 1.0])
    return direction / np.linalg.norm(direction)


def voxel_sizes(affine):
    """Voxel edge lengths (mm) of a grid with this 4x4 affine."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def kspace_grid(shape, voxel_size):
    """Spatial frequencies (cycles/mm) of an FFT grid, one open-mesh array per axis."""
    freqs = [
        scipy.fft.fftfreq(n, d=h).astype(np.float32) for n, h in zip(shape, voxel_size, strict=True)
    ]
    return np.meshgrid(*freqs, indexing="ij", sparse=True)


def dipole_kernel(shape, voxel_size, b0_dir=(0.0, 0.0, 1.0), dtype=np.float32):
    """Unit dipole response D(k) = 1/3 - (k.b)^2 / |k|^2 on an FFT grid.

    shape: grid size in voxels; voxel_size: mm; b0_dir: B0 as a unit vector in the voxel axes
    (see `b0_direction`). D[0, 0, 0] = 0, so a uniform susceptibility makes no field; the 1/3 is
    the Lorentz-sphere correction. Field (ppm) = ifftn(D * fftn(chi in ppm)).
    """
    b = np.asarray(b0_dir, dtype=float)
    b = (b / np.linalg.norm(b)).astype(np.float32)
    kx, ky, kz = kspace_grid(shape, voxel_size)
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = 1.0 / 3.0 - kb**2 / k2
    kernel[0, 0, 0] = 0.0
    return kernel.astype(dtype)


def forward_field(chi, voxel_size, b0_dir=(0.0, 0.0, 1.0), pad=None, workers=-1):
    """Field perturbation (ppm) made by a susceptibility distribution `chi` (ppm).

    The convolution is periodic: `pad` (voxels per side, default half the grid) adds zeros around
    `chi` so that the wrap-around of the dipole's far field stays small; the result is cropped
    back to the shape of `chi`.
    """
    chi = np.asarray(chi, dtype=np.float32)
    if pad is None:
        pad = tuple(n // 2 for n in chi.shape)
    pad = np.broadcast_to(np.asarray(pad, dtype=int), (3,))
    padded = np.pad(chi, [(p, p) for p in pad])
    kernel = dipole_kernel(padded.shape, voxel_size, b0_dir)
    field = scipy.fft.irfftn(
        kernel[..., : padded.shape[2] // 2 + 1] * scipy.fft.rfftn(padded, workers=workers),
        s=padded.shape,
        workers=workers,
    )
    crop = tuple(slice(p, p + n) for p, n in zip(pad, chi.shape, strict=True))
    return field[crop].astype(np.float32)
