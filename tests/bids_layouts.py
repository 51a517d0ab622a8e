"""Tiny BIDS datasets for tests: 8x8x4 NIfTI images with JSON sidecars, written to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (8, 8, 4)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def write_nifti(path: Path, *, shape=SHAPE, affine=AFFINE, value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.float32), affine), path)
    return path


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_dataset(root: Path) -> Path:
    """An empty raw BIDS dataset (dataset_description.json only)."""
    write_json(root / "dataset_description.json", {"Name": "test", "BIDSVersion": "1.9.0"})
    return root


def add_run(
    root: Path,
    subject: str = "01",
    *,
    session: str | None = None,
    acq: str | None = None,
    rec: str | None = None,
    run: str | None = None,
    suffix: str = "MEGRE",
    echo_times=(0.004, 0.008, 0.012),
    echo_labels=None,
    parts=("mag", "phase"),
    field_strength: float | None = 3.0,
    units: str | None = "rad",
    shape=SHAPE,
    affine=AFFINE,
    extension: str = ".nii.gz",
) -> dict:
    """Write one run; returns {(echo label, part): NIfTI path}.

    echo_labels: the echo- labels (default 1..N; None entries write no echo- entity).
    field_strength / units None leave the key out of the sidecars; units go to phase sidecars.
    """
    labels = echo_labels or [str(i + 1) for i in range(len(echo_times))]
    folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    entities = [f"sub-{subject}"]
    entities += [f"{k}-{v}" for k, v in (("ses", session), ("acq", acq), ("rec", rec), ("run", run))
                 if v is not None]  # fmt: skip
    files = {}
    for te, label in zip(echo_times, labels, strict=True):
        for part in parts:
            part_entity = [f"part-{part}"] if part else []  # "": no part- entity
            name = "_".join(entities + ([f"echo-{label}"] if label else []) + part_entity)
            nifti = write_nifti(folder / f"{name}_{suffix}{extension}", shape=shape, affine=affine)
            sidecar = {"EchoTime": te}
            if field_strength is not None:
                sidecar["MagneticFieldStrength"] = field_strength
            if part == "phase" and units is not None:
                sidecar["Units"] = units
            write_json(folder / f"{name}_{suffix}.json", sidecar)
            files[(label, part)] = nifti
    return files


def sidecar_of(nifti: Path) -> Path:
    return nifti.with_name(nifti.name.split(".", 1)[0] + ".json")


def edit_sidecar(nifti: Path, *, drop=(), **changes) -> None:
    """Change keys of a NIfTI's own sidecar (drop: keys to remove)."""
    path = sidecar_of(nifti)
    data = json.loads(path.read_text())
    data.update(changes)
    for key in drop:
        data.pop(key, None)
    path.write_text(json.dumps(data))
