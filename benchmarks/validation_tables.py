"""Regenerate docs/validation.md's tables: every background x inversion pair on every fixture.

Usage: python benchmarks/validation_tables.py [--out docs/validation.md] [--cache DIR]
       [--fixtures head cosmos forward] [--backgrounds lbv ...] [--inversions tfi ...]
       [--no-2016]

For each fixture (made once and kept in --cache; a fixture there made by the same code, the
same last commit and uncommitted changes under bids_qsm/, is reused):

- head: the project's head phantom (`bids_qsm-phantom` defaults: 2 mm, 3 T, 5 echoes, SNR 100;
  skull, air, veins, a microbleed, a calcification, deep grey matter labels);
- cosmos: the COSMOS map of the 2016 challenge in the simulated head (`--chi-map`), the
  `3t-5echo-snr50-tilt15` protocol of simulate_realistic.py, acquired at 1.5 mm instead of the
  map's 1.06 mm so that 30 pairs fit in minutes;
- forward: the same map block-averaged to 2.1 mm through `qsm-forward` (simulate_forward.py,
  SNR 100), skipped with a note when qsm-forward is not importable;

the default pipeline (`bids_qsm ... participant`) runs once; its total field, noise map, brain
mask and its background and inversion nodes' inputs (echo times, B0, thread count, settings) are
then reused for every pair, which runs in this process through the pipeline's own interfaces
(`RemoveBackground` with its unreliable-edge step, `Invert` with its noise-derived strength,
`Reference`): the numbers are the pipeline's. The default pair is checked against the pipeline's
own map. Each map is scored by validate_realistic.py (`score_chi`, `score_local`), and the
tables, plus the 2016 challenge's (validate_qsm2016.py: correlation and slope against COSMOS),
replace the section of --out between the markers below (the rest of the file is left alone).
"""

import argparse
import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import simulate_realistic  # noqa: E402
import validate_qsm2016  # noqa: E402
from validate_realistic import load_truth, score_chi, score_local  # noqa: E402

from bids_qsm.qsm.background import BACKGROUND  # noqa: E402
from bids_qsm.qsm.invert import INVERSIONS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN validation_tables.py (generated: edit the script, not this section) -->"
END = "<!-- END validation_tables.py -->"
CACHE = Path(tempfile.gettempdir()) / "bids_qsm_validation_tables"
COSMOS_PROTOCOL = "3t-5echo-snr50-tilt15"
COSMOS_VOXEL_MM = 1.5  # the map's own 1.06 mm would take the COSMOS fixture's 30 pairs to hours
FIXTURES = {
    "head": "Head phantom (`bids_qsm-phantom` defaults: 96 x 112 x 80 at 2 mm, 3 T, "
    "TE 4-28 ms x 5, SNR 100)",
    "cosmos": f"COSMOS in the head (`bids_qsm-phantom --chi-map`, acquired at {COSMOS_VOXEL_MM:g} "
    "mm, 3 T, TE 4-28 ms x 5, SNR 50, tilt 15 deg, seed 2)",
    "forward": "qsm-forward (COSMOS block-averaged to 2.1 mm, 3 T, TE 5.4-27 ms x 5, SNR 100)",
}
COLUMNS = (
    "background", "inversion", "NRMSE %", "HFEN %", "SSIM", "slope", "r", "coverage",
    "local field error %", "max deep GM error (ppm)", "vein (true)", "microbleed (true)",
    "calcification (true)", "time (s)",
)  # fmt: skip


def make_fixture(name, folder, version):
    """The fixture's BIDS dataset under `folder` (made unless one made by this code `version`
    is there), or None when it cannot be made here (no qsm-forward)."""
    bids, done = folder / "bids", folder / "fixture.done"
    if _stamp(done) == version:
        print(f"[{name}] reusing {bids}", flush=True)
        return bids
    from bids_qsm import phantom

    for old in (done, folder / "pipeline.done"):
        old.unlink(missing_ok=True)
    shutil.rmtree(bids, ignore_errors=True)

    start = time.perf_counter()
    if name == "head":
        code = phantom.main([str(bids)])
    elif name == "cosmos":
        b0, echo_times, snr, tilt, seed = simulate_realistic.FIXTURES[COSMOS_PROTOCOL]
        code = phantom.main([
            str(bids), "--chi-map", str(simulate_realistic.COSMOS), "--chi-axcodes", "RPS",
            "--voxel-size", *[str(COSMOS_VOXEL_MM)] * 3, "--b0", str(b0), "--snr", str(snr),
            "--tilt", str(tilt), "--seed", str(seed), "--echo-times", *map(str, echo_times),
        ])  # fmt: skip
    else:
        try:
            import qsm_forward  # noqa: F401
        except ImportError:
            return None
        import simulate_forward

        chi, mask = _coarse_cosmos(folder / "maps_2x")
        simulate_forward.simulate(bids, chi_map=chi, mask=mask, snr=100.0)
        code = 0
    if code:
        raise RuntimeError(f"making the {name} fixture failed with exit code {code}")
    done.write_text(f"{version}\n")
    print(f"[{name}] made {bids} in {time.perf_counter() - start:.0f} s", flush=True)
    return bids


def _coarse_cosmos(folder):
    """The 2016 COSMOS map and mask averaged over 2 x 2 x 2 voxel blocks (a block is brain when
    half of it is), as NIfTI files under `folder`."""
    data = validate_qsm2016.DATA
    chi_img, mask_img = nib.load(data / "chi_cosmos.nii.gz"), nib.load(data / "msk.nii.gz")
    brain = np.asarray(mask_img.dataobj) > 0
    chi = np.where(brain, np.asarray(chi_img.dataobj, np.float32), 0.0)

    def blocks(a):
        n = [s // 2 * 2 for s in a.shape]
        a = a[: n[0], : n[1], : n[2]].astype(np.float64)
        return a.reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2).mean(axis=(1, 3, 5))

    fraction = blocks(brain)
    coarse_brain = fraction >= 0.5
    coarse_chi = np.where(coarse_brain, blocks(chi) / np.maximum(fraction, 1e-6), 0.0)
    affine = chi_img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (chi_img.affine @ [0.5, 0.5, 0.5, 1.0])[:3]  # the block's centre
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "chi.nii.gz", folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(coarse_chi.astype(np.float32), affine), paths[0])
    nib.save(nib.Nifti1Image(coarse_brain.astype(np.uint8), affine), paths[1])
    return paths


def field_stage(name, bids, folder, version):
    """Run the default pipeline once (unless this code `version` ran it there) and return the
    saved inputs of its background, invert and reference nodes, its own referenced chi map
    (file, `chi`) and its wall time (s, `seconds`)."""
    from nipype.utils.filemanip import loadpkl

    work, done = folder / "work", folder / "pipeline.done"
    if _stamp(done) != version:
        from bids_qsm.cli.run import main as bids_qsm

        # Nipype's cache keys on inputs, not code: a run of other code must go.
        for old in (work, folder / "out"):
            shutil.rmtree(old, ignore_errors=True)
        start = time.perf_counter()
        code = bids_qsm([str(bids), str(folder / "out"), "participant", "-w", str(work),
                         "--skip-bids-validation"])  # fmt: skip
        if code:
            raise RuntimeError(f"the default pipeline failed on {name} with exit code {code}")
        seconds = time.perf_counter() - start
        done.write_text(f"{version}\n{seconds:.0f}\n")  # the run's wall time, for the table
        print(f"[{name}] default pipeline: {seconds:.0f} s", flush=True)
    nodes = {}
    for node in ("background", "invert", "reference"):
        found = sorted(work.rglob(f"inversion_wf/{node}/_inputs.pklz"))
        if not found:
            raise RuntimeError(f"no {node} node in {work}: remove {done} to rerun the pipeline")
        nodes[node] = loadpkl(found[0])
    nodes["chi"] = next(work.rglob("inversion_wf/reference/chi_referenced.nii"))
    nodes["seconds"] = done.read_text().split()[1]
    nodes["two_pass"] = any(work.rglob("inversion_wf/two_pass/_inputs.pklz"))
    return nodes


def run_pairs(name, bids, folder, backgrounds, inversions, version):
    """Score every pair on one fixture; returns the table rows (dicts), the default pair and
    the default pipeline's wall time (s, text)."""
    from bids_qsm.interfaces.inversion import Invert, Reference, RemoveBackground

    nodes = field_stage(name, bids, folder, version)
    default = (nodes["background"]["method"], nodes["invert"]["method"])
    truth = load_truth(bids)
    b0 = nodes["background"]["field_strength"]
    pairs = folder / "pairs"
    rows = []
    for background in backgrounds:
        start = time.perf_counter()
        try:
            removed = RemoveBackground(**{**nodes["background"], "method": background}).run(
                cwd=str(_folder(pairs / background))
            )
        except Exception as error:  # a method that fails is a result of the table too
            print(f"[{name}] {background}: failed: {_last_line(error)}", flush=True)
            rows += [{"pair": (background, inv), "failed": _last_line(error)} for inv in inversions]
            continue
        seconds = time.perf_counter() - start
        local, valid = removed.outputs.out_file, removed.outputs.mask
        # As in the pipeline: after LBV (only) the inversion is told LBV's boundary.
        invert_inputs = {k: v for k, v in nodes["invert"].items() if k != "lbv_mask"}
        if background == "lbv":
            invert_inputs["lbv_mask"] = removed.outputs.method_mask
        local_score = {}
        if truth["local"] is not None:
            local_score = score_local(
                truth, nib.load(local).get_fdata(), nib.load(valid).get_fdata() > 0, b0
            )
        for inversion in inversions:
            row = {"pair": (background, inversion)}
            start = time.perf_counter()
            try:
                cwd = _folder(pairs / f"{background}_{inversion}")
                inverted = Invert(
                    **{**invert_inputs, "method": inversion, "local_field": local, "mask": valid}
                ).run(cwd=str(cwd))
                referenced = Reference(
                    **{**nodes["reference"], "chimap": inverted.outputs.out_file,
                       "mask": inverted.outputs.mask}
                ).run(cwd=str(cwd))  # fmt: skip
            except Exception as error:
                row["failed"] = _last_line(error)
                print(f"[{name}] {background}:{inversion}: failed: {row['failed']}", flush=True)
                rows.append(row)
                continue
            row["seconds"] = seconds + time.perf_counter() - start
            chi = nib.load(referenced.outputs.out_file).get_fdata()
            row.update(score_chi(truth, chi), **local_score)
            if (background, inversion) == default:
                ref = nib.load(nodes["chi"]).get_fdata()
                row["pipeline_diff"] = float(np.abs(chi - ref).max())
                row["two_pass"] = nodes["two_pass"]
            rows.append(row)
            print(f"[{name}] {background}:{inversion}: NRMSE {row['nrmse']:.1f} %  "
                  f"HFEN {row['hfen']:.1f} %  slope {row['slope']:.3f}  "
                  f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    return rows, default, nodes["seconds"]


def _stamp(path):
    """The code version written in a stamp file (its first line), or None."""
    return path.read_text().split("\n", 1)[0] if path.is_file() else None


def code_version():
    """The last commit that changed bids_qsm/ (short), plus a hash of the uncommitted changes
    there if any: commits of docs or tests alone leave it as it is."""
    commit = _git("log", "-1", "--format=%h", "--", "bids_qsm") or "?"
    diff = _git("diff", "HEAD", "--", "bids_qsm")
    return commit + (f"+{hashlib.sha1(diff.encode()).hexdigest()[:8]}" if diff else "")


def _folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _last_line(error):
    text = str(error).strip().splitlines() or [type(error).__name__]
    return text[-1][:200]


def table(rows, default):
    """Markdown table of one fixture's rows (dicts from `run_pairs`), the default pair marked."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        background, inversion = row["pair"]
        if (background, inversion) == default:
            background, inversion = f"**{background}**", f"**{inversion}** (default)"
        if "failed" in row:
            cells = [background, inversion, f"failed: {row['failed'].replace('|', '/')}"]
            cells += [""] * (len(COLUMNS) - len(cells))
        else:
            cells = [
                background, inversion, f"{row['nrmse']:.1f}", f"{row['hfen']:.1f}",
                f"{row['ssim']:.3f}", f"{row['slope']:.3f}", f"{row['r']:.3f}",
                f"{row['coverage']:.3f}", _number(row.get("local_nrmse"), "{:.1f}"),
                _number(row.get("deep_gm_err"), "{:.4f}"),
                *(_pair(row.get(name)) for name in ("Vein", "Microbleed", "Calcification")),
                f"{row['seconds']:.0f}",
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value, spec):
    return "" if value is None or not np.isfinite(value) else spec.format(value)


def _pair(values):
    if values is None or not np.all(np.isfinite(values)):
        return ""
    return f"{values[0]:+.3f} ({values[1]:+.3f})"


def qsm2016_table(inversions):
    """validate_qsm2016.py's table (its rows only) for these inversions, or a note."""
    if not (validate_qsm2016.DATA / "phs_tissue.nii.gz").is_file():
        return f"Skipped: {validate_qsm2016.DATA} not found."
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.md"
        validate_qsm2016.main(["--out", str(out), "--methods", *inversions])
        return "\n".join(x for x in out.read_text().splitlines() if x.startswith("|"))


def footer(seconds, version):
    """Machine, date, code version (at the start of the run: `version`) and run time."""
    cpu = next(
        (x.split(":", 1)[1].strip() for x in _read("/proc/cpuinfo").splitlines()
         if x.startswith("model name")), platform.processor() or "?",
    )  # fmt: skip
    mem = next((int(x.split()[1]) / 2**20 for x in _read("/proc/meminfo").splitlines()
                if x.startswith("MemTotal")), 0.0)  # fmt: skip
    commit = version + (" (+: uncommitted changes under bids_qsm/)" if "+" in version else "")
    if code_version() != version:
        commit += f", the code changing to {code_version()} during the run"
    load = os.getloadavg()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Generated {now} with bids_qsm/ at commit {commit}, in {seconds / 60:.0f} min on "
        f"{os.cpu_count()} cores ({cpu}, {mem:.0f} GB), shared with other work (load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; times are upper bounds)."
    )


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args):
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def section(results, sanity, seconds, *, command, version):
    """The generated markdown section, markers included. results: [(fixture, rows, default,
    note)], note the default pipeline's wall time (s) or, where rows is None, why it has none;
    sanity: the 2016 table or None."""
    parts = [
        BEGIN,
        "## Every background x inversion pair, per fixture (generated)",
        "",
        f"    {command}",
        "",
        "Fixtures and the default pipeline's runs are kept in `--cache` and reused. "
        "Per fixture the default pipeline runs once; its total field, noise map and brain mask "
        "then go through each pair by the pipeline's own interfaces (`RemoveBackground` with "
        "the unreliable-edge step, `Invert` with the noise-derived strength, `Reference`), "
        "with the pipeline's settings. Scores as in `validate_realistic.py`: chi against the "
        "true chi in the true brain where the map is non-zero, both demeaned there (NRMSE, "
        "HFEN, SSIM, least-squares slope of the map against the truth, correlation r, "
        "coverage of the brain); the local field's error relative to the true local field's "
        "RMS on the mask it is valid on; the largest error of a deep grey matter mean and the "
        "vein, microbleed and calcification means (ppm, the truth's over the same voxels in "
        "brackets) where the fixture labels them. Time: background removal plus inversion, "
        f"one run each. The COSMOS map is acquired at {COSMOS_VOXEL_MM:g} mm in the head and "
        "block-averaged to "
        "2.1 mm for qsm-forward, coarser than its own 1.06 mm, so that 30 pairs take minutes, "
        "not hours: the default pair at 1.06 mm is in the section above.",
    ]
    parts[-1] = textwrap.fill(parts[-1], width=100)
    for fixture, rows, default, note in results:
        parts += ["", f"### {FIXTURES[fixture]}", ""]
        if rows is None:
            parts.append(note)
            continue
        parts.append(table(rows, default))
        check = [r["pipeline_diff"] for r in rows if "pipeline_diff" in r]
        if check:
            same = "is" if check[0] == 0 else f"differs by at most {check[0]:.2g} ppm from"
            wall = f" (end to end in {note} s)" if note else ""
            parts += ["", f"The default pair's map {same} the pipeline's own{wall}."]
            if any(r.get("two_pass") for r in rows):
                parts[-1] += " The pipeline ran two passes; the pairs here run one."
    if sanity is not None:
        parts += [
            "",
            "### 2016 challenge (sanity check: correlation and slope against COSMOS)",
            "",
            textwrap.fill(
                "`validate_qsm2016.py` on the challenge's local field (no noise map: TGV takes "
                "its fixed strength). Target: correlation >= 0.78 with slope >= 0.85.",
                width=100,
            ),
            "",
            sanity,
        ]
    parts += ["", textwrap.fill(footer(seconds, version), width=100), END]
    return "\n".join(parts) + "\n"


def write_section(path, text):
    """Replace the generated section of `path` (or append it when the file has no markers),
    reading the file just before writing so that hand edits made meanwhile are kept."""
    old = Path(path).read_text() if Path(path).is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + text
    Path(path).write_text(new)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "validation.md")
    parser.add_argument("--cache", type=Path, default=CACHE, help="fixtures and pipeline runs")
    parser.add_argument("--fixtures", nargs="+", choices=list(FIXTURES), default=list(FIXTURES))
    parser.add_argument("--backgrounds", nargs="+", choices=list(BACKGROUND),
                        default=list(BACKGROUND))  # fmt: skip
    parser.add_argument("--inversions", nargs="+", choices=list(INVERSIONS),
                        default=list(INVERSIONS))  # fmt: skip
    parser.add_argument("--no-2016", dest="qsm2016", action="store_false",
                        help="leave out the 2016 challenge's table")  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    start, version = time.perf_counter(), code_version()
    results = []
    for fixture in args.fixtures:
        folder = _folder(args.cache / fixture)
        try:
            bids = make_fixture(fixture, folder, version)
            if bids is None:
                note = "Skipped: qsm-forward is not importable here."
                print(f"[{fixture}] {note}", flush=True)
                results.append((fixture, None, None, note))
                continue
            rows, default, seconds = run_pairs(
                fixture, bids, folder, args.backgrounds, args.inversions, version
            )
        except Exception as error:
            traceback.print_exc()
            results.append((fixture, None, None, f"Failed: {_last_line(error)}"))
            continue
        results.append((fixture, rows, default, seconds))
    sanity = None
    if args.qsm2016:
        print("[2016] validate_qsm2016.py", flush=True)
        sanity = qsm2016_table(args.inversions)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/validation_tables.py", *given])
    text = section(results, sanity, time.perf_counter() - start, command=command, version=version)
    write_section(args.out, text)
    print(f"wrote {args.out} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
