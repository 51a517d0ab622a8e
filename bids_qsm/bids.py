"""Find the multi-echo gradient-echo (MEGRE) runs of a BIDS dataset and check their inputs.

One pybids layout is built per call, indexing only the requested subjects (``derivatives/``,
``code/``, ``sourcedata/`` ... are never indexed), optionally cached in a database folder of the
work directory. Every run is grouped from its files, its echoes paired (magnitude with phase, or
real with imaginary) and ordered by ``EchoTime`` (s); anything wrong with a run becomes one
`InputProblem` line naming the file, and that run is left out while the others go on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_qsm.interfaces.nifti import volumes_hint

logger = logging.getLogger(__name__)

SUFFIXES = ("MEGRE", "T2starw")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
# Entities that name a run's outputs, as (pybids name, BIDS key), in BIDS filename order.
RUN_ENTITIES = (("acquisition", "acq"), ("reconstruction", "rec"), ("run", "run"))
# Entities that may tell two otherwise identical runs apart; they don't name outputs, so two
# such files in one run are reported as duplicates for the user to filter.
_OTHER_ENTITIES = ("ceagent", "chunk", "flip", "inv", "mt", "proc", "direction")
_AFFINE_TOL_MM = 1e-4
_MIN_VOXELS = 4  # along each axis: fewer is a 2-D acquisition (a slice or a few)
_MAX_B0_T = 25.0  # beyond any MRI magnet (21.1 T): a value in mT or G
_MAX_TE_S = 1.0  # no gradient echo is this long: larger values are milliseconds
# Filter keys that would break the pairing of echoes and parts; the app queries them itself.
_RESERVED_FILTERS = ("part", "echo", "extension", "datatype")
_SHORT_ENTITY_NAMES = {
    "sub": "subject",
    "ses": "session",
    "acq": "acquisition",
    "ce": "ceagent",
    "rec": "reconstruction",
    "dir": "direction",
}
_PHASE_UNITS = {"rad": "rad", "radian": "rad", "radians": "rad", "arbitrary": "arbitrary"}


@dataclass(frozen=True)
class Echo:
    """The files of one echo: magnitude + phase, or real + imaginary (complex input)."""

    echo_time: float  # seconds
    magnitude: Path | None  # part-mag file (None when given as real/imag)
    phase: Path | None  # part-phase file
    real: Path | None = None  # part-real / part-imag complex input
    imag: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """The echo's NIfTI files that are present, in the order mag, phase, real, imag."""
        return tuple(p for p in (self.magnitude, self.phase, self.real, self.imag) if p)


@dataclass(frozen=True)
class MegreRun:
    """One acquisition of N echoes (N >= 1), ready for the per-run workflow."""

    subject: str  # label without "sub-"
    session: str | None
    entities: dict  # {"acq": ..., "rec": ..., "run": ...}, only present ones, str values
    suffix: str  # "MEGRE" or "T2starw"
    echoes: tuple[Echo, ...]  # ordered by echo_time
    field_strength: float  # tesla (MagneticFieldStrength)
    phase_units: str  # "rad" | "arbitrary" | "missing" (phase sidecar Units)

    @property
    def prefix(self) -> str:
        """Output name stem in BIDS entity order, e.g. "sub-01_ses-02_acq-x_rec-y_run-1"."""
        parts = [f"sub-{self.subject}"]
        if self.session is not None:
            parts.append(f"ses-{self.session}")
        parts += [f"{key}-{self.entities[key]}" for _, key in RUN_ENTITIES if key in self.entities]
        return "_".join(parts)

    @property
    def grid(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """Shape (3-D) and voxel-to-mm affine of the run's images (equal across echoes and
        parts: ingest checked it), from the first echo's header."""
        first = self.echoes[0]
        img = nib.load(first.phase or first.real)
        return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=float)

    @property
    def echo_times(self) -> tuple[float, ...]:
        """Echo times in seconds, ascending."""
        return tuple(echo.echo_time for echo in self.echoes)

    @property
    def sources(self) -> list[str]:
        """``bids:raw:`` URIs of every input NIfTI, echo by echo."""
        return [
            f"bids:raw:{_dataset_path(path, self.subject)}"
            for echo in self.echoes
            for path in echo.files
        ]


@dataclass(frozen=True)
class InputProblem:
    """Why one run (or file) cannot be processed; ``str()`` gives the one line for the user."""

    path: Path | None  # the file (or folder) at fault
    subject: str | None
    message: str  # one line, e.g. "no phase image for echo 3"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


class SelectionError(Exception):
    """The selection (participants, sessions, filters) matched no MEGRE run."""


def load_bids_filters(path) -> dict:
    """Read a ``--bids-filter-file``: a JSON object of pybids entity filters for the MEGRE files.

    Two layouts are accepted: fMRIPrep style ``{"megre": {"acquisition": "fast"}}`` (other
    top-level keys, meant for other apps, are ignored) or the plain ``{"acquisition": "fast"}``.
    Keys are pybids entity names (``acquisition``, ``reconstruction``, ``run``, ``session`` ...;
    the BIDS short forms ``acq``, ``rec``, ``ses``, ``ce``, ``dir`` are accepted). A value is a
    label, a list of labels, ``null`` (the entity must be absent) or ``"*"`` (any label, entity
    present). ``suffix`` may narrow to ``MEGRE`` or ``T2starw``; ``part``, ``echo``, ``extension``
    and ``datatype`` are chosen by the app and refused. Returns the plain entity dict, JSON values
    (``null`` stays ``None``), with pybids names. Raises ValueError with one line on any error.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the BIDS filter file: {_one_line(err)}") from None
    try:
        return _normalise_filters(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def collect_runs(
    bids_dir,
    *,
    participant_label=None,
    session_label=None,
    bids_filters=None,
    database_dir=None,
) -> tuple[list[MegreRun], list[InputProblem]]:
    """Find every MEGRE (and single-echo part-mag/phase T2starw) run of the selected subjects.

    participant_label / session_label: lists of labels, with or without ``sub-`` / ``ses-``
    (None: all). bids_filters: a dict as returned by `load_bids_filters` (either layout).
    database_dir: a folder (in the work directory) to keep the pybids index in; it is reused
    while the indexed files are unchanged and rebuilt otherwise.

    Returns (runs, problems): runs sorted by subject and name, each fully checked; problems one
    per fault found (a faulty run is not in ``runs``; other runs and subjects still are).
    Raises SelectionError (one line) when a requested participant does not exist or nothing
    valid or faulty was found, FileNotFoundError when bids_dir is not a folder.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    root = Path(bids_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: BIDS dataset folder not found")
    filters = _normalise_filters(bids_filters or {})
    # participant labels given on the command line win over a "subject" filter
    from_filter = filters.pop("subject", None)
    subjects = _select_subjects(root, participant_label or _listify(from_filter or []))
    sessions = _strip_prefixes(session_label, "ses-")

    dataset_files = list(_dataset_files(root, subjects))
    problems = _check_sidecars(root, dataset_files)
    ignore = _ignore_patterns(root, subjects, [p.path for p in problems])
    layout_args = {"validate": False, "indexer": BIDSLayoutIndexer(validate=False, ignore=ignore)}
    layout = _load_layout(root, subjects, dataset_files, layout_args, database_dir, BIDSLayout)

    query = {
        **filters,
        "subject": subjects,
        "suffix": [s for s in SUFFIXES if s in _listify(filters.get("suffix", list(SUFFIXES)))],
        "extension": list(NIFTI_EXTENSIONS),
        "datatype": "anat",
    }
    if sessions:
        query["session"] = sessions
    files = layout.get(**_to_pybids_query(query))

    runs = []
    for key, group in sorted(_group_files(files).items(), key=lambda item: _sort_key(item[0])):
        run, run_problems = _check_run(layout, root, key, group)
        problems += run_problems
        if run is not None:
            runs.append(run)
    runs, clashes = _drop_prefix_clashes(runs)
    problems += clashes
    if (runs or problems) and not (sessions or filters):
        # e.g. a folder copied half-way; one without MEGRE in a selection is not reported
        found = {run.subject for run in runs} | {problem.subject for problem in problems}
        problems += [
            InputProblem(root / f"sub-{s}", s, "no MEGRE images (anat/*_MEGRE.nii[.gz]) found")
            for s in subjects
            if s not in found
        ]

    if not runs and not problems:
        what = ", ".join(f"sub-{s}" for s in subjects)
        if sessions:
            what += " (sessions " + ", ".join(f"ses-{s}" for s in sessions) + ")"
        if filters:
            what += " with the BIDS filters " + json.dumps(filters)
        raise SelectionError(f"no MEGRE runs found for {what} in {root}")
    logger.info("Found %d MEGRE run(s) with %d input problem(s)", len(runs), len(problems))
    return runs, problems


# --- selection -------------------------------------------------------------------------------


def _strip_prefixes(labels, prefix: str) -> list[str]:
    """Labels without their ``sub-``/``ses-`` prefix, duplicates dropped, order kept."""
    if labels is None:
        return []
    if isinstance(labels, str):
        labels = [labels]
    labels = [str(label) for label in labels]
    stripped = [label[len(prefix) :] if label.startswith(prefix) else label for label in labels]
    return list(dict.fromkeys(stripped))


def _select_subjects(root: Path, participant_label) -> list[str]:
    available = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
    requested = _strip_prefixes(participant_label, "sub-")
    if not requested:
        if not available:
            raise SelectionError(f"no sub-* folders in {root}")
        return available
    missing = [label for label in requested if label not in available]
    if missing:
        names = ", ".join(f"sub-{label}" for label in missing)
        raise SelectionError(f"participant(s) not found in {root}: {names}")
    return requested


def _ignore_patterns(root: Path, subjects: list[str], bad_files: list[Path]) -> list[re.Pattern]:
    """What pybids must not index: every top-level folder but the selected sub- ones
    (derivatives/, sourcedata/, code/, a work folder, other subjects) and the unreadable JSON
    files. Patterns are matched against "/"-rooted paths relative to the dataset."""
    keep = {f"sub-{s}" for s in subjects}
    folders = [p.name for p in root.iterdir() if p.is_dir() and p.name not in keep]
    ignore = (
        [re.compile("^/(?:" + "|".join(map(re.escape, folders)) + ")(?:/|$)")] if folders else []
    )
    ignore += [re.compile("^/" + re.escape(_relative(path, root)) + "$") for path in bad_files]
    return ignore


def _normalise_filters(data) -> dict:
    if not isinstance(data, dict):
        raise ValueError("BIDS filters must be a JSON object")
    if "megre" in data:
        data = data["megre"]
        if not isinstance(data, dict):
            raise ValueError('"megre" must be a JSON object of entity filters')
    from bids.layout.models import Config

    known = set(Config.load("bids").entities)
    filters = {}
    for key, value in data.items():
        name = _SHORT_ENTITY_NAMES.get(key, key)
        if name in _RESERVED_FILTERS:
            raise ValueError(f'BIDS filter "{key}" is not allowed: the app selects it itself')
        if name not in known:
            raise ValueError(f'BIDS filter "{key}" is not a BIDS entity')
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values) and (
            value is not None
        ):
            raise ValueError(f'BIDS filter "{key}" must be a label, a list of labels or null')
        if isinstance(value, list) and "*" in value:
            raise ValueError(f'BIDS filter "{key}": "*" cannot be part of a list')
        if name == "suffix" and not set(values) & set(SUFFIXES):
            raise ValueError(f'BIDS filter "suffix" must select {" or ".join(SUFFIXES)}')
        filters[name] = value
    return filters


def _to_pybids_query(query: dict) -> dict:
    """JSON filter values to pybids ones: null -> entity absent, "*" -> any label."""
    from bids.layout import Query

    def convert(value):
        if value is None:
            return Query.NONE
        if value == "*":
            return Query.ANY
        return value

    return {
        key: value if isinstance(value, list) else convert(value) for key, value in query.items()
    }


def _listify(value) -> list:
    return value if isinstance(value, list) else [value]


# --- layout and its cache --------------------------------------------------------------------


def _load_layout(root: Path, subjects, dataset_files, layout_args: dict, database_dir, bids_layout):
    """The layout of the selected subjects, from a cached index when nothing has changed."""
    if database_dir is None:
        return bids_layout(root, **layout_args)
    # One index per (dataset, subject selection); a fingerprint of the indexed files' names,
    # sizes and times tells whether it is still valid (a fixed sidecar must be re-read).
    key = hashlib.sha1(json.dumps([str(root), subjects]).encode()).hexdigest()[:16]
    db_path = Path(database_dir) / f"bids_db-{key}"
    stamp_file = db_path / "fingerprint"
    stamp = _fingerprint(root, dataset_files)
    fresh = stamp_file.is_file() and stamp_file.read_text() == stamp
    db_path.mkdir(parents=True, exist_ok=True)
    if fresh:
        try:
            layout = bids_layout(root, database_path=db_path, **layout_args)
            logger.debug("Reusing the BIDS index in %s", db_path)
            return layout
        except Exception as err:  # a damaged or incompatible index is rebuilt, not fatal
            logger.debug("Rebuilding the BIDS index in %s: %s", db_path, err)
    stamp_file.unlink(missing_ok=True)
    layout = bids_layout(root, database_path=db_path, reset_database=True, **layout_args)
    stamp_file.write_text(stamp)
    return layout


def _fingerprint(root: Path, dataset_files: list[Path]) -> str:
    digest = hashlib.sha1()
    for path in dataset_files:
        st = path.stat()
        digest.update(f"{_relative(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _dataset_files(root: Path, subjects: list[str]):
    """Top-level files and every file of the selected subjects (no hidden ones), sorted."""
    yield from sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    for subject in subjects:
        yield from sorted(
            p
            for p in (root / f"sub-{subject}").rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.parts[len(root.parts) :])
        )


def _check_sidecars(root: Path, dataset_files: list[Path]) -> list[InputProblem]:
    """One problem per unreadable JSON sidecar (pybids would stop the whole index on it)."""
    problems = []
    for path in dataset_files:
        if path.suffix != ".json":
            continue
        try:
            json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(InputProblem(path, _subject_of(path, root), f"invalid JSON: {err}"))
    return problems


def _subject_of(path: Path, root: Path) -> str | None:
    first = Path(_relative(path, root)).parts[0]
    return first[4:] if first.startswith("sub-") and (root / first).is_dir() else None


def _relative(path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _dataset_path(path: Path, subject: str) -> str:
    """Path of a subject's file relative to the dataset root (from its sub- folder on)."""
    parts = path.parts
    start = max(i for i, part in enumerate(parts[:-1]) if part == f"sub-{subject}")
    return "/".join(parts[start:])


# --- grouping --------------------------------------------------------------------------------


def _group_files(files) -> dict:
    """{(subject, session, acq, rec, run, suffix): {echo label: {part: [BIDSFile]}}}."""
    groups = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for bids_file in files:
        ents = bids_file.get_entities()
        part = ents.get("part")
        if part is None:
            if ents["suffix"] != "MEGRE":
                continue  # a plain T2*-weighted image: no phase, not a QSM input
            part = "mag"  # BIDS: a MEGRE file without part- is the magnitude
        key = (
            ents["subject"],
            _label(ents.get("session")),
            *(_label(ents.get(name)) for name, _ in RUN_ENTITIES),
            ents["suffix"],
        )
        groups[key][_label(ents.get("echo"))][part].append(bids_file)
    return groups


def _label(value) -> str | None:
    # pybids keeps a run's zero padding in str() (PaddedInt "01" -> "01")
    return None if value is None else str(value)


def _sort_key(key: tuple) -> tuple:
    return tuple("" if v is None else v for v in key)


def _echo_name(label: str | None) -> str:
    return "the echo" if label is None else f"echo {label}"


# --- checks of one run -----------------------------------------------------------------------


def _check_run(layout, root: Path, key: tuple, group: dict):
    """(MegreRun, []) when the run is usable, else (None, [InputProblem, ...])."""
    subject, session, acq, rec, run_label, suffix = key
    problems: list[InputProblem] = []

    def problem(path, message):
        problems.append(InputProblem(Path(path) if path else None, subject, message))

    parts_of = _pair_parts(group, problem)
    if not parts_of:  # cannot happen (a group exists because a file was found), but be sure
        problem(root / f"sub-{subject}", "no echoes found")
    if problems:
        return None, problems
    complex_input = not any("phase" in parts for parts in parts_of.values())
    main, partner = ("real", "imag") if complex_input else ("mag", "phase")
    echoes, field_strengths, units = [], {}, {}
    for echo in sorted(parts_of, key=_label_order):
        parts = parts_of[echo]
        meta = {part: layout.get_metadata(str(parts[part])) for part in (main, partner)}
        te = _echo_time(parts[main], meta[main], echo, problem)
        other_te = meta[partner].get("EchoTime")
        if te is not None and _is_number(other_te) and abs(other_te - te) > 1e-6:
            problem(
                _sidecar(parts[partner]),
                f"EchoTime {other_te} s differs from {te} s of {parts[main].name}",
            )
        for part in (main, partner):
            field_strengths[parts[part]] = meta[part].get("MagneticFieldStrength")
        if complex_input:
            files = (None, None, parts["real"], parts["imag"])
        else:
            files = (parts["mag"], parts["phase"])
            units[parts["phase"]] = meta["phase"].get("Units")
        if te is not None:
            echoes.append((te, echo, Echo(te, *files)))

    b0 = _field_strength(field_strengths, problem)
    phase_units = "rad" if complex_input else _phase_units(units, problem)
    _check_echo_times(echoes, problem)
    _check_geometry([e for *_, e in sorted(echoes, key=_echo_order)], problem)
    if problems:
        return None, problems
    entities = {
        short: value
        for (_, short), value in zip(RUN_ENTITIES, (acq, rec, run_label), strict=True)
        if value is not None
    }
    run = MegreRun(
        subject=subject,
        session=session,
        entities=entities,
        suffix=suffix,
        echoes=tuple(e for *_, e in sorted(echoes, key=_echo_order)),
        field_strength=b0,
        phase_units=phase_units,
    )
    return run, []


def _pair_parts(group: dict, problem) -> dict:
    """{echo label: {part: Path}} with one file per part and the parts of each echo paired:
    magnitude with phase, or (when the run has no phase at all) real with imaginary."""
    parts_of = {}
    for echo, by_part in group.items():
        parts_of[echo] = {}
        for part, bids_files in by_part.items():
            # several files mean an entity we don't group on differs (ce-, chunk-, ...)
            first, *others = sorted(bids_files, key=lambda f: f.path)
            parts_of[echo][part] = Path(first.path)
            for other in others:
                problem(other.path, _duplicate_message(first, other, part, echo))
    has_phase = any("phase" in parts for parts in parts_of.values())
    has_complex = any("real" in parts or "imag" in parts for parts in parts_of.values())
    first, second = ("real", "imag") if has_complex and not has_phase else ("mag", "phase")
    names = {"mag": "magnitude", "phase": "phase", "real": "real", "imag": "imaginary"}
    for echo, parts in sorted(parts_of.items(), key=lambda item: _label_order(item[0])):
        for have, lack in ((first, second), (second, first)):
            if have in parts and lack not in parts:
                problem(parts[have], f"no {names[lack]} image (part-{lack}) for {_echo_name(echo)}")
        any_file = min(parts.values())
        # e.g. an echo given only as real/imag in a run of mag/phase echoes
        if first not in parts and second not in parts:
            problem(any_file, f"no part-{first}/part-{second} images for {_echo_name(echo)}")
        elif first == "mag" and ("real" in parts or "imag" in parts):
            logger.warning("%s: part-real/imag images ignored, mag/phase are used", any_file)
    return parts_of


def _label_order(label: str | None) -> tuple:
    return (int(label) if label and label.isdigit() else 0, label or "")


def _echo_order(item) -> tuple:
    te, label, _ = item
    return (te, *_label_order(label))


def _duplicate_message(first, other, part: str, echo) -> str:
    a, b = first.get_entities(), other.get_entities()
    differ = sorted(n for n in _OTHER_ENTITIES if a.get(n) != b.get(n))
    why = f" (they differ in {', '.join(differ)})" if differ else ""
    return (
        f"second part-{part} image for {_echo_name(echo)} besides {Path(first.path).name}{why};"
        " select one with --bids-filter-file"
    )


def _sidecar(path: Path) -> Path:
    """The file's own JSON sidecar if there is one, else the image (for messages)."""
    own = path.with_name(path.name.split(".", 1)[0] + ".json")
    return own if own.is_file() else path


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _echo_time(path: Path, meta: dict, echo, problem) -> float | None:
    te = meta.get("EchoTime")
    if te is None:
        sidecar = _sidecar(path)
        where = "no JSON sidecar with EchoTime" if sidecar == path else "no EchoTime in the sidecar"
        problem(sidecar, f"{where} ({_echo_name(echo)})")
        return None
    if not _is_number(te):
        problem(_sidecar(path), f"EchoTime {te!r} is not a number of seconds")
        return None
    if te <= 0:
        problem(_sidecar(path), f"EchoTime {te} s is not positive")
        return None
    if te >= _MAX_TE_S:
        problem(_sidecar(path), f"EchoTime {te} looks like milliseconds; BIDS uses seconds")
        return None
    return float(te)


def _check_echo_times(echoes: list, problem) -> None:
    """Echo times must differ, and rise with the echo number where echoes are numbered:
    converters number echoes in order of acquisition, so a later echo with an earlier time is
    a sidecar copied or edited by mistake, and its phase would be fitted at the wrong time."""
    seen = {}
    for te, label, echo in sorted(echoes, key=_echo_order):
        main = echo.magnitude or echo.real
        if te in seen:
            problem(
                _sidecar(main),
                f"EchoTime {te} s of {_echo_name(label)} repeats that of {seen[te].name}",
            )
        seen[te] = main
    numbered = [(int(label), te, echo) for te, label, echo in echoes if label and label.isdigit()]
    if len(numbered) < len(echoes):
        return
    numbered.sort(key=lambda item: item[0])
    for (n0, te0, _), (n1, te1, echo1) in zip(numbered, numbered[1:], strict=False):
        if te1 < te0:
            problem(
                _sidecar(echo1.magnitude or echo1.real),
                f"EchoTime {te1} s of echo {n1} is earlier than {te0} s of echo {n0}; echoes "
                "are numbered in order of acquisition, so a sidecar is wrong",
            )


def _field_strength(values: dict, problem) -> float | None:
    numbers = {}
    for path, value in values.items():
        if value is None:
            problem(_sidecar(path), "no MagneticFieldStrength (tesla) in the sidecars")
            return None
        if not _is_number(value) or value <= 0:
            problem(_sidecar(path), f"MagneticFieldStrength {value!r} is not a positive number")
            return None
        if value > _MAX_B0_T:
            problem(_sidecar(path), f"MagneticFieldStrength {value} is not in tesla (mT? G?)")
            return None
        numbers[path] = float(value)
    (first, b0), *others = numbers.items()
    for path, value in others:
        if value != b0:
            problem(
                _sidecar(path),
                f"MagneticFieldStrength {value} T differs from {b0} T of {first.name}",
            )
            return None
    return b0


def _phase_units(units: dict, problem) -> str:
    kinds = {}
    for path, value in units.items():
        if value is None:
            kinds[path] = "missing"
        elif isinstance(value, str) and value.strip().lower() in _PHASE_UNITS:
            kinds[path] = _PHASE_UNITS[value.strip().lower()]
        else:
            problem(
                _sidecar(path), f'phase Units {value!r} not understood (use "rad" or "arbitrary")'
            )
            return "missing"
    if len(set(kinds.values())) > 1:
        first = next(iter(kinds))
        other = next(p for p, k in kinds.items() if k != kinds[first])
        problem(
            _sidecar(other),
            f"phase Units {kinds[other]} differ from {kinds[first]} of {first.name}",
        )
        return "missing"
    return next(iter(kinds.values()))


def _check_geometry(echoes: list[Echo], problem) -> None:
    """All images 3-D, same shape and affine (within 1e-4 mm); header and file size only."""
    reference = None
    for echo in echoes:
        for path in echo.files:
            try:
                shape, affine = _read_header(path)
            except _Unreadable as err:
                problem(path, f"cannot read NIfTI: {err}")
                continue
            if len(shape) != 3:
                problem(path, f"expected a 3-D image, found shape {shape}: {volumes_hint(shape)}")
                continue
            unusable = _unusable_grid(shape, affine)
            if unusable:
                problem(path, unusable)
                continue
            if reference is None:
                reference = (path, shape, affine)
                continue
            ref_path, ref_shape, ref_affine = reference
            if shape != ref_shape:
                problem(path, f"shape {shape} differs from {ref_shape} of {ref_path.name}")
            elif np.abs(affine - ref_affine).max() > _AFFINE_TOL_MM:
                diff = np.abs(affine - ref_affine).max()
                problem(
                    path, f"affine differs from that of {ref_path.name} (by up to {diff:.3g} mm)"
                )


def _unusable_grid(shape, affine) -> str:
    """Why a 3-D grid cannot carry a QSM, or "" when it can."""
    if min(shape) < _MIN_VOXELS:
        return f"shape {shape}: QSM needs at least {_MIN_VOXELS} voxels along every axis"
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if not (np.all(np.isfinite(sizes)) and sizes.min() > 0.01 and sizes.max() < 50):
        shown = tuple(round(float(v), 4) for v in sizes)
        return f"voxel size {shown} mm in the header's affine is not a real one (pixdim, sform)"
    return ""


class _Unreadable(Exception):
    pass


def _read_header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from the header; a truncated file is caught without reading its data.
    Trailing dimensions of length 1 are dropped (some converters write x*y*z*1)."""
    try:
        empty = path.stat().st_size == 0
    except OSError as err:
        if path.is_symlink():  # e.g. a DataLad / git-annex file whose content was not fetched
            raise _Unreadable("broken symbolic link (content not fetched? datalad get)") from None
        raise _Unreadable(err.strerror or type(err).__name__) from None
    if empty:
        raise _Unreadable("the file is empty (0 bytes)")
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    if gzipped != (path.suffix == ".gz"):
        really = "gzip-compressed" if gzipped else "not gzip-compressed"
        raise _Unreadable(f"named {path.suffix} but {really}: rename it or (un)compress it")
    try:
        img = nib.load(path)
        shape, affine = tuple(int(n) for n in img.shape), np.asarray(img.affine, dtype=float)
    except Exception as err:  # nibabel raises many kinds on damaged files
        raise _Unreadable(f"not a NIfTI image ({_one_line(err)})") from None
    if img.get_data_dtype().kind not in "biuf":
        raise _Unreadable(
            f"data type {img.get_data_dtype()} is not real-valued: give magnitude and phase (or "
            "real and imaginary parts) as separate real images"
        )
    try:
        expected = int(img.dataobj.offset) + int(np.prod(shape)) * img.get_data_dtype().itemsize
    except Exception as err:  # nibabel raises many kinds on damaged files
        raise _Unreadable(_one_line(err)) from None
    size = _data_size(path, expected)
    if size < expected:
        raise _Unreadable(f"file holds {size} bytes, the header needs {expected} (truncated?)")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape, affine


def _data_size(path: Path, expected: int) -> int:
    """Uncompressed size of a NIfTI file, cheaply: the gzip trailer holds it (modulo 2**32);
    only when that disagrees is the stream decompressed to tell truncation from multi-member."""
    if path.suffix != ".gz":
        return path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        if struct.unpack("<I", fh.read(4))[0] == expected % 2**32:
            return expected
    size = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise _Unreadable(_one_line(err)) from None
    return size


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _drop_prefix_clashes(runs: list[MegreRun]) -> tuple[list[MegreRun], list[InputProblem]]:
    """Keep the first of runs that would write the same outputs (MEGRE and T2starw alike)."""
    kept, problems = {}, []
    for run in runs:
        first = kept.setdefault(run.prefix, run)
        if first is not run:
            message = (
                f"same output name {run.prefix} as the {first.suffix} run;"
                " select one with --bids-filter-file"
            )
            problems.append(InputProblem(run.echoes[0].files[0], run.subject, message))
    return list(kept.values()), problems
