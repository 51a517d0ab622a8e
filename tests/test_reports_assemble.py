"""The report assembled from a fake output folder: figures, sidecars, citation, Nipype results."""

import gzip
import html
import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from bids_qsm.reports.assemble import generate_report, generate_reports
from bids_qsm.reports.figures import plot_chimap, plot_map, plot_mask_outline, plot_swi

KEYS = ("mask", "totalfield", "localfield", "chimap", "r2star", "swi")
STAGES = {
    "PhaseScaling": {"units": "arbitrary", "scale": 0.000767},
    "Masking": {"method": "otsu", "erosions": 2},
    "Unwrapping": {"method": "romeo"},
    "EchoCombination": {"method": "linear"},
    "Relaxometry": {"method": "loglinear"},
    "BackgroundRemoval": {"method": "vsharp", "radius_mm": 12.0},
    "DipoleInversion": {"method": "tgv", "alpha1": 0.0015, "iterations": 1234},
    "Referencing": {"method": "mean"},
}


@pytest.fixture(scope="module")
def svgs(tmp_path_factory):
    """One small SVG per figure key, drawn by the report's own plotting functions."""
    rng = np.random.default_rng(7)
    shape, voxel = (16, 16, 12), (1.0, 1.0, 2.0)
    x, y, z = np.indices(shape)
    mask = (x - 8) ** 2 + (y - 8) ** 2 + ((z - 6) * 2) ** 2 < 36
    data = rng.standard_normal(shape).astype(np.float32)
    folder = tmp_path_factory.mktemp("svgs")
    plot_mask_outline(np.abs(data) + 1, mask, folder / "mask.svg", voxel_size=voxel)
    plot_map(data * mask, folder / "map.svg", voxel_size=voxel, mask=mask, symmetric=True)
    plot_chimap(data * mask, folder / "chimap.svg", voxel_size=voxel, mask=mask)
    plot_swi(np.abs(data) + 1, np.abs(data), folder / "swi.svg", voxel_size=voxel, mask=mask)
    drawn = {"mask": "mask", "chimap": "chimap", "swi": "swi"}
    return {key: folder / f"{drawn.get(key, 'map')}.svg" for key in KEYS}


def _figures(output_dir, prefix, svgs, keys=KEYS):
    folder = output_dir / prefix.split("_")[0] / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    for key in reversed(keys):  # written out of order: the report must sort them
        shutil.copy(svgs[key], folder / f"{prefix}_desc-{key}_qsm.svg")


def _sidecar(output_dir, prefix, suffix, **extra):
    entities = dict(part.split("-") for part in prefix.split("_"))
    folder = output_dir / f"sub-{entities['sub']}"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    (folder / "anat").mkdir(parents=True, exist_ok=True)
    sidecar = {
        "Units": "ppm",
        "EchoTime": [0.004, 0.008, 0.012],
        "MagneticFieldStrength": 3.0,
        "B0Direction": [0.0, 0.0, 1.0],
        **STAGES,
        **extra,
    }
    (folder / "anat" / f"{prefix}_{suffix}.json").write_text(json.dumps(sidecar))


def _citation(output_dir):
    (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    (output_dir / "logs" / "CITATION.md").write_text(
        "Susceptibility was estimated with total generalized variation.\n\n"
        "### References\n\n- Langkammer C, et al. Fast quantitative susceptibility mapping.\n"
    )


def _run_node(work_dir, subject, prefix, node="mask"):
    """A real Nipype node run where bids_qsm's workflow would have put it."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    base = work_dir / "bids_qsm_wf" / f"sub_{subject}_wf" / f"qsm_{prefix.replace('-', '_')}_wf"
    identity = pe.Node(niu.IdentityInterface(fields=["a"]), name=node, base_dir=str(base))
    identity.inputs.a = 1
    identity.run()
    return base


def _fake_result(run_dir, node, seconds):
    from nipype.utils.filemanip import savepkl

    (run_dir / node).mkdir(parents=True, exist_ok=True)
    result = SimpleNamespace(runtime=SimpleNamespace(duration=seconds))
    savepkl(str(run_dir / node / f"result_{node}.pklz"), result)


def _section(page, anchor):
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, flags=re.DOTALL)
    return match[1]


def _text(fragment):
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


def _sources(page):
    return re.findall(r'<img src="([^"]+)"', _section(page, "figures"))


def test_single_run_report_has_everything_the_run_left(tmp_path, svgs):
    out, work = tmp_path / "out", tmp_path / "work"
    _figures(out, "sub-01", svgs)
    folder = out / "sub-01" / "figures"
    shutil.copy(svgs["mask"], folder / "sub-01_desc-extra_qsm.png")
    shutil.copy(svgs["mask"], folder / "sub-01_desc-mask_qsm.svg.bak")  # not a figure
    rescaled = "phase rescaled from arbitrary units"
    _sidecar(out, "sub-01", "Chimap", ProcessingWarnings=[rescaled])
    _sidecar(out, "sub-01", "R2starmap", ProcessingWarnings=[rescaled, "R2* clipped at 500"])
    _citation(out)
    run_dir = _run_node(work, "01", "sub-01")
    _fake_result(run_dir, "invert", 12.5)
    (run_dir / "unwrap").mkdir()
    (run_dir / "unwrap" / "result_unwrap.pklz").write_bytes(gzip.compress(b"not a pickle"))

    path = generate_report(
        out, "sub-01", work_dir=work, problems=["sub-01_echo-3: phase sidecar lacks Units"]
    )
    assert path == out / "sub-01.html"
    page = path.read_text()

    sources = _sources(page)
    expected = [f"sub-01/figures/sub-01_desc-{key}_qsm.svg" for key in KEYS]
    assert sources == [*expected, "sub-01/figures/sub-01_desc-extra_qsm.png"]
    assert all((out / source).is_file() for source in sources)
    figures = _text(_section(page, "figures"))
    assert "Total field (Hz)" in figures and "Susceptibility (ppm, symmetric scale)" in figures
    assert "sub-01: " not in figures  # one run: no run name in the titles

    methods = _text(_section(page, "methods"))
    assert "Susceptibility was estimated with total generalized variation." in methods
    assert "Langkammer C, et al." in methods and "#" not in methods

    parameters = _text(_section(page, "parameters"))
    for text in ("sub-01", *STAGES, "tgv", "1234", "vsharp", "0.004, 0.008, 0.012", "3.0"):
        assert text in parameters
    assert "0.0, 0.0, 1.0" in parameters and "Units" not in parameters

    timings = _text(_section(page, "timings"))
    assert "invert" in timings and "12.5 s" in timings and "mask" in timings
    assert "unwrap" not in timings  # unreadable result file: skipped

    warnings = re.findall(r"<li>(.*?)</li>", _section(page, "warnings"))
    assert warnings == [
        f"sub-01: {rescaled}",
        "sub-01: R2* clipped at 500",
        "sub-01_echo-3: phase sidecar lacks Units",
    ]
    assert "No errors." in _section(page, "errors")


def test_two_runs_are_grouped_and_named(tmp_path, svgs):
    out, work = tmp_path / "out", tmp_path / "work"
    runs = ("sub-01_ses-1_acq-b", "sub-01_ses-1_acq-a")
    for prefix in runs:
        _figures(out, prefix, svgs)
        _sidecar(out, prefix, "Chimap")
        _fake_result(_run_node(work, "01", prefix, node="background"), "invert", 3.0)

    page = generate_report(out, "01", work_dir=work).read_text()

    sources = _sources(page)
    assert sources == [
        f"sub-01/figures/{prefix}_desc-{key}_qsm.svg" for prefix in sorted(runs) for key in KEYS
    ]
    figures = _text(_section(page, "figures"))
    assert "sub-01_ses-1_acq-a: Local field (ppm)" in figures
    assert "sub-01_ses-1_acq-b: R2* (1/s)" in figures
    assert "sub-01_ses-1_acq-a" in _text(_section(page, "parameters"))
    assert "sub-01_ses-1_acq-b" in _text(_section(page, "parameters"))
    timings = _text(_section(page, "timings"))
    for prefix in runs:
        assert f"{prefix}: background" in timings and f"{prefix}: invert" in timings
    assert "No warnings." in _section(page, "warnings")


def test_subject_without_a_chimap_gets_an_error(tmp_path, svgs):
    out, work = tmp_path / "out", tmp_path / "work"
    _figures(out, "sub-01", svgs)
    _sidecar(out, "sub-01", "Chimap")
    (out / "sub-02" / "anat").mkdir(parents=True)
    _run_node(work, "02", "sub-02_run-1")  # failed after masking: only its timing is left

    paths = generate_reports(
        out, ["01", "sub-02"], work_dir=work, problems_by_subject={"sub-02": ["inputs skipped"]}
    )
    assert paths == [out / "sub-01.html", out / "sub-02.html"]
    page = paths[1].read_text()
    errors = _text(_section(page, "errors"))
    assert "no susceptibility map was written for sub-02" in errors
    assert "inputs skipped" in _text(_section(page, "warnings"))
    assert "sub-02_run-1: mask" not in page and "mask" in _text(_section(page, "timings"))
    assert "CITATION.md is missing" in _text(_section(page, "methods"))
    assert _sources(page) == []
    assert "No errors." in _section(paths[0].read_text(), "errors")
