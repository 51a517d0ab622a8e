"""Physical constants and unit conversions between phase (rad), field (Hz) and ppm."""

GAMMA_BAR_HZ_PER_T = 42.57747892e6
"""Proton gyromagnetic ratio over 2 pi (Hz/T)."""


def hz_per_ppm(b0_tesla):
    """Frequency shift (Hz) of one ppm of field perturbation at field strength `b0_tesla` (T).

    >>> round(hz_per_ppm(3.0), 1)
    127.7
    """
    return GAMMA_BAR_HZ_PER_T * b0_tesla * 1e-6


def hz_to_ppm(field_hz, b0_tesla):
    """Field offset in Hz -> relative field perturbation in ppm."""
    return field_hz / hz_per_ppm(b0_tesla)


def ppm_to_hz(field_ppm, b0_tesla):
    """Relative field perturbation in ppm -> field offset in Hz."""
    return field_ppm * hz_per_ppm(b0_tesla)
