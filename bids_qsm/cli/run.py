"""`bids_qsm BIDS_DIR OUTPUT_DIR {participant,group}`: parse, check, build, run -> exit code.

Exit codes (DESIGN.md): 0 done; 1 processing failed; 2 usage; 16 BIDS validation failed;
18 selection found nothing; 66 required input missing or unreadable.
"""

import errno
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

EX_OK, EX_FAILED, EX_USAGE, EX_INVALID, EX_NOSELECTION, EX_NOINPUT = 0, 1, 2, 16, 18, 66

logger = logging.getLogger("bids_qsm")


def main(argv=None) -> int:
    """Entry point of the `bids_qsm` command: an exit code, and one line per problem found
    (never a traceback: `-vv` logs one for what we did not foresee)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort, see the docstring
        logger.debug("unexpected error", exc_info=True)
        _error(_unexpected(err))
        return EX_FAILED


def _unexpected(err):
    """One line for an error no check foresaw: a folder or a disk, else a bug to report."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return (
            f"no space left on the device{where}; free some, or point OUTPUT_DIR, --work-dir "
            "and TMPDIR to a disk with space"
        )
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    text = " ".join(str(err).split())
    return f"unexpected {type(err).__name__}: {text} (rerun with -vv for details, and report it)"


def _main(argv):
    from bids_qsm._environment import EnvironmentProblem, check_environment, short_socket_folder
    from bids_qsm.cli.parser import parse_args

    try:
        settings, verbosity = parse_args(argv)
    except SystemExit as stop:  # argparse: --help, --version, or a usage error
        return stop.code if isinstance(stop.code, int) else EX_USAGE
    _setup_logging(verbosity)
    try:
        check_environment()
        short_socket_folder()
    except EnvironmentProblem as err:
        _error(str(err))
        return EX_FAILED
    exe = settings.execution
    if exe.analysis_level == "group":
        return _run_group(settings)

    invalid = {}  # subject -> the validator's lines about its files
    if not exe.skip_bids_validation:
        code, invalid = _validate_input(exe.bids_dir)
        if code:
            return code
    participant_label = exe.participant_label or None
    if invalid:  # subjects whose files the validator refused are left out, the others go on
        every = sorted(p.name[4:] for p in Path(exe.bids_dir).glob("sub-*") if p.is_dir())
        participant_label = [s for s in participant_label or every if s not in invalid]
        if not participant_label:
            _error("no subject left without BIDS validation errors")
            return EX_INVALID

    from bids_qsm.bids import SelectionError, collect_runs

    exe.work_dir = exe.work_dir or Path(tempfile.gettempdir()) / "bids_qsm_work"
    code = _check_folder(exe.work_dir, "the work directory (--work-dir)")
    if code:
        return code
    try:
        runs, problems = collect_runs(
            exe.bids_dir,
            participant_label=participant_label,
            session_label=exe.session_label or None,
            bids_filters=exe.bids_filters or None,
            database_dir=exe.work_dir / "bids_db",
        )
    except SelectionError as err:
        _error(str(err))
        return EX_NOSELECTION
    masks, mask_problems = _find_masks(settings, runs)
    if settings.workflow.mask_dir is not None:
        runs = [run for run in runs if run.prefix in masks]
    segmentations, seg_problems = _find_segmentations(settings, runs)
    lesions, lesion_problems = _find_lesion_masks(settings, runs)
    problems = [*problems, *mask_problems, *seg_problems, *lesion_problems]
    for problem in problems:
        _error(str(problem))
    if not runs:
        _error("no usable MEGRE run left to process")
        return EX_INVALID if invalid else EX_NOINPUT

    from bids_qsm.derivatives import OutputDirError, init_derivatives

    code = _check_folder(exe.output_dir, "OUTPUT_DIR") or _check_space(exe.work_dir, runs)
    if code:
        return code
    try:
        init_derivatives(exe.output_dir, bids_dir=exe.bids_dir)
    except (OutputDirError, OSError) as err:
        _error(_unexpected(err) if isinstance(err, OSError) else str(err))
        return EX_FAILED
    settings.to_toml(exe.log_dir / f"config-{exe.run_uuid}.toml")

    failures = _run_workflow(settings, runs, segmentations, masks, verbosity, lesions)
    from bids_qsm.reports.assemble import generate_reports

    by_subject = {subject: list(lines) for subject, lines in invalid.items()}
    for problem in problems:
        by_subject.setdefault(problem.subject, []).append(str(problem))
    for run in runs:  # a failed run's line goes into its subject's report too
        by_subject[run.subject] = by_subject.get(run.subject, []) + [
            line for line in failures if re.search(rf"\b{re.escape(run.prefix)}\b", line)
        ]
    subjects = sorted({run.subject for run in runs} | set(by_subject) - {None})
    generate_reports(
        exe.output_dir, subjects, work_dir=exe.work_dir, problems_by_subject=by_subject
    )
    for line in failures:
        _error(line)
    if any(_INPUT_FAILURE not in line for line in failures):
        return EX_FAILED
    if invalid:
        return EX_INVALID
    if problems or failures:
        return EX_NOINPUT
    logger.info("done: %d run(s) written to %s", len(runs), exe.output_dir)
    return EX_OK


def _check_folder(folder, what):
    """EX_FAILED after one line when `folder` (created if missing) cannot take a file."""
    from bids_qsm._environment import unwritable

    reason = unwritable(Path(folder))
    if reason:
        _error(f"cannot write to {what} {folder}: {reason}")
        return EX_FAILED
    return EX_OK


def _check_space(work_dir, runs):
    """EX_FAILED after one line when the work directory's disk cannot hold even the smallest
    run's first step (its echoes as float32 magnitude and phase); a warning when it cannot hold
    every run's intermediate images (about 3 float32 volumes per echo and 10 more). A disk that
    fills up later fails the runs it stops, each in one line."""
    voxels = [int(np.prod(run.grid[0])) * 4 for run in runs]
    first = min(n * 2 * len(run.echoes) for n, run in zip(voxels, runs, strict=True))
    need = [n * (3 * len(run.echoes) + 10) for n, run in zip(voxels, runs, strict=True)]
    free = shutil.disk_usage(work_dir).free
    if free < first:
        _error(
            f"the work directory {work_dir} has {free / 1e6:.0f} MB free, a run needs at least "
            f"{first / 1e6:.0f} MB; free some space or choose another --work-dir"
        )
        return EX_FAILED
    if free < sum(need):
        logger.warning(
            "the work directory %s has %.0f MB free, the runs need about %.0f MB",
            work_dir, free / 1e6, sum(need) / 1e6,
        )  # fmt:skip
    return EX_OK


# Validator errors about the dataset's own files that leave every subject's data usable
_HARMLESS_FINDINGS = ("PARTICIPANT_ID_MISMATCH",)


def _validate_input(bids_dir):
    """(exit code, {subject: lines}): the validator's errors, one line each, naming the file.

    An error in a subject's own files leaves that subject out, and the others are processed
    (the exit code says 16 at the end); one in the dataset's own files stops here, with 16.
    """
    from bids_qsm.validation import ValidatorMissing, validate

    try:
        findings = validate(bids_dir)
    except (ValidatorMissing, RuntimeError) as err:
        _error(f"{err} (or use --skip-bids-validation)")
        return EX_FAILED, {}
    by_subject, fatal = {}, False
    for finding in findings:
        subject = re.match(r"/sub-([A-Za-z0-9]+)/", finding.location or "")
        if subject:
            line = f"BIDS validation: {bids_dir}{finding} (sub-{subject[1]} is not processed)"
            by_subject.setdefault(subject[1], []).append(line)
        else:
            line = f"BIDS validation: {finding}"
            if finding.code.split("/")[0] in _HARMLESS_FINDINGS:
                by_subject.setdefault(None, []).append(line)
            else:
                fatal = True
        _error(line)
    if fatal:
        _error(f"{bids_dir} is not valid BIDS (fix it, or use --skip-bids-validation)")
        return EX_INVALID, by_subject
    return EX_OK, by_subject


def _find_masks(settings, runs):
    """{run prefix: the user's brain mask} with --mask-dir, and one problem per run without
    (that run is not processed: a mask computed instead is not what was asked for)."""
    from bids_qsm.segmentation import find_mask

    return _find_per_run(settings.workflow.mask_dir, runs, find_mask, "{} is not processed")


def _find_per_run(folder, runs, find, consequence):
    """{run prefix: find(folder, ...)} for each run, and an `InputProblem` for each run whose
    file `find` refuses (`consequence` says what follows, with {} for the run); none without a
    folder."""
    from bids_qsm.bids import InputProblem
    from bids_qsm.segmentation import SegmentationError

    if folder is None:
        return {}, []
    found, problems = {}, []
    for run in runs:
        shape, affine = run.grid
        try:
            found[run.prefix] = find(
                folder, subject=run.subject, session=run.session,
                target_shape=shape, target_affine=affine,
            )  # fmt:skip
        except SegmentationError as err:
            message = f"{err.message} ({consequence.format(run.prefix)})"
            problems.append(InputProblem(err.path, run.subject, message))
    return found, problems


def _find_segmentations(settings, runs):
    """{run prefix: (Segmentation, reference label indices)}, and one problem per run without.

    A run whose segmentation is missing or unusable is still processed, without region
    statistics (and referenced to the brain mean if the label reference was asked for).
    """
    from bids_qsm.bids import InputProblem
    from bids_qsm.qsm.roi import resolve_labels
    from bids_qsm.segmentation import SegmentationError, find_segmentation

    methods = settings.workflow
    if methods.segmentation_dir is None:
        return {}, []
    found, problems = {}, []
    for run in runs:
        shape, affine = run.grid
        try:
            segmentation = find_segmentation(
                methods.segmentation_dir, subject=run.subject, session=run.session,
                target_shape=shape, target_affine=affine,
                lookup=methods.segmentation_lut,
            )  # fmt:skip
        except SegmentationError as err:
            message = f"{err.message} (no region statistics for {run.prefix})"
            problems.append(InputProblem(err.path, run.subject, message))
            continue
        label_values = ()
        if methods.reference == "labels":
            try:
                label_values = resolve_labels(methods.reference_labels, segmentation.names)
            except ValueError as err:
                message = f"{err} ({run.prefix} is referenced to the brain mean)"
                problems.append(InputProblem(segmentation.dseg, run.subject, message))
        found[run.prefix] = (segmentation, label_values)
    return found, problems


def _find_lesion_masks(settings, runs):
    """{run prefix: LesionInput} with --lesion-dir, and one problem per run without (that run is
    still processed, without the lesion table)."""
    from bids_qsm.lesion_masks import find_lesions

    return _find_per_run(settings.workflow.lesion_dir, runs, find_lesions, "no lesion table for {}")


def _run_group(settings):
    """Gather every run's region table into one cohort table, with QC and a figure."""
    from bids_qsm.group import bids_subjects, run_group

    exe = settings.execution
    if not (exe.output_dir / "dataset_description.json").exists():
        _error(f"{exe.output_dir}: no bids_qsm outputs here (run the participant level first)")
        return EX_NOINPUT
    result = run_group(
        exe.output_dir,
        expected_subjects=bids_subjects(exe.bids_dir, exe.participant_label or None),
    )
    for subject in result.missing_subjects:
        logger.warning("%s: no region table (not processed, or no segmentation)", subject)
    if not result.n_runs:
        _error(f"{exe.output_dir}: no region statistics to gather (use --segmentation-dir)")
        return EX_NOSELECTION
    logger.info("group table of %d run(s): %s", result.n_runs, result.table)
    return EX_OK


def _run_workflow(settings, runs, segmentations, masks, verbosity, lesions=None):
    """Build and run the graph; one line per failed node (empty when all went well)."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    from bids_qsm.cli.multiproc import MultiProc
    from bids_qsm.cli.progress import Progress, wait_for_slurm_jobs
    from bids_qsm.derivatives import write_citation
    from bids_qsm.workflows.base import init_bids_qsm_wf

    exe = settings.execution
    crash_dir = exe.log_dir / exe.run_uuid
    nipype_config.update_config(
        {
            "execution": {
                "crashdump_dir": str(crash_dir),
                "crashfile_format": "txt",
                "stop_on_first_crash": settings.nipype.stop_on_first_crash,
                "remove_unnecessary_outputs": False,
                "parameterize_dirs": False,
                # a local pool is cheap to poll; a cluster's queue is not
                "poll_sleep_duration": 0.2 if settings.nipype.plugin == "MultiProc" else 2.0,
            },
            "monitoring": {"enabled": False},
            "logging": {
                "workflow_level": "INFO" if verbosity > 0 else "WARNING",
                "interface_level": "WARNING",
                "utils_level": "WARNING",
            },
        }
    )
    nipype_logging.update_logging(nipype_config)
    # a failed node's traceback: its crash file has it, and our summary line names it
    workflow_log = nipype_logging.getLogger("nipype.workflow")
    (workflow_log.addFilter if verbosity <= 0 else workflow_log.removeFilter)(_no_node_errors)
    _configure_nipype_workers(exe.work_dir, verbosity)
    workflow = init_bids_qsm_wf(settings, runs, segmentations, masks, lesions)
    methods = settings.workflow
    write_citation(
        exe.output_dir,
        methods_text=workflow.visit_desc(),
        methods={
            "mask": methods.mask, "unwrap": methods.unwrap, "combine": methods.combine,
            "relaxometry": methods.relaxometry, "background": methods.background,
            "inversion": methods.inversion, "reference": methods.reference,
            **{readout: "default" for readout, used in (
                ("foci", methods.foci), ("veins", methods.veins), ("lesions", bool(lesions)),
                ("two_pass", methods.two_pass),
            ) if used},
        },
    )  # fmt:skip
    logger.info("processing %d run(s) in %s", len(runs), exe.work_dir)
    progress = Progress(runs, verbosity=verbosity)
    failures = []
    try:
        plugin = settings.nipype.plugin_settings()
        if plugin["plugin"].endswith("Graph"):
            logger.info("%s submits every job at once: no progress lines until the end",
                        plugin["plugin"])  # fmt:skip
        else:
            plugin["plugin_args"]["status_callback"] = progress
        if plugin["plugin"] in ("SLURM", "SLURMGraph"):
            _request_resources(workflow, plugin["plugin_args"].get("sbatch_args", ""))
        if plugin["plugin"] == "MultiProc":
            plugin["plugin"] = MultiProc(plugin_args=plugin.pop("plugin_args"))
        workflow.run(**plugin)
        if plugin["plugin"] == "SLURMGraph":  # it returns once the jobs are submitted
            wait_for_slurm_jobs(Path(workflow.base_dir) / workflow.name / "batch")
            failures = _crash_summaries(crash_dir, runs)
    except Exception as err:  # noqa: BLE001 - Nipype raises plain RuntimeError on node failures
        failures = _crash_summaries(crash_dir, runs) or [f"processing failed: {err}"]
    failed = progress.summary(exe.output_dir, failures)
    # every failed run gets its line, also one whose crash file could not be written
    unnamed = [p for p in failed if not any(re.search(rf"\b{re.escape(p)}\b", f) for f in failures)]
    return failures + [f"{prefix}: not every output was written" for prefix in unnamed]


def _request_resources(workflow, user_args):
    """Ask SLURM for each node's estimated memory and threads (Nipype's plugin asks for
    nothing, so every job would get the partition's default and the scheduler could not pack
    them), unless the user's own `sbatch_args` already set them."""
    for node in workflow._get_all_nodes():  # SLURMGraph submits even run_without_submitting
        request = []
        if not re.search(r"--mem\b|--mem-per-cpu", user_args):
            request.append(f"--mem={max(1, round(node.mem_gb * 1024))}M")
        if not re.search(r"--cpus-per-task|(^|\s)-c\b", user_args):
            request.append(f"--cpus-per-task={node.n_procs}")
        if request:
            # the leading space: SLURMGraph joins the user's and the node's args without one
            node.plugin_args = {"sbatch_args": " " + " ".join(request), "overwrite": False,
                                **node.plugin_args}  # fmt:skip


def _configure_nipype_workers(work_dir, verbosity):
    """Nipype's log levels for worker processes and batch jobs, which start fresh and would log
    every node at Nipype's default INFO level: a nipype.cfg they find through
    $NIPYPE_CONFIG_DIR (a folder the user set already is left alone)."""
    folder = Path(work_dir) / "nipype_config"
    folder.mkdir(parents=True, exist_ok=True)
    level = "INFO" if verbosity > 0 else "WARNING"
    (folder / "nipype.cfg").write_text(
        f"[logging]\nworkflow_level = {level}\ninterface_level = WARNING\nutils_level = WARNING\n"
    )
    os.environ.setdefault("NIPYPE_CONFIG_DIR", str(folder))


def _no_node_errors(record):
    """Logging filter: drop Nipype's ERROR records (node tracebacks), keep the rest."""
    return record.levelno < logging.ERROR


def _crash_summaries(crash_dir, runs=()):
    """One line per Nipype crash file: which run and step failed, and the last error line.

    An input image refused on loading (`InputDataError`) gets the refusal alone, which names the
    file, marked by `_INPUT_FAILURE` so that the exit code can tell it from a processing error.
    """
    owners = {f"qsm_{run.prefix.replace('-', '_')}_wf": run.prefix for run in runs}
    lines = []
    for crash in sorted(Path(crash_dir).glob("crash-*.txt")):
        text = crash.read_text(errors="replace")
        node = re.search(r"^Node: (\S+)", text, re.MULTILINE)
        # the last exception line, nested ones (indented by Nipype) included, module path dropped
        errors = re.findall(r"^\s*(?:[\w]+\.)*(\w*(?:Error|Exception|Exit)\w*: .*)$", text, re.M)
        reason = errors[-1].strip() if errors else "see crash file"
        # a crash file cut short (a full disk) still names its node in its own name
        name = node[1] if node else re.sub(r"^crash-\d+-\d+-[^-]+-|-[0-9a-f-]{36}\.txt$", "",
                                          crash.name)  # fmt:skip
        run = next((owners[part] for part in name.split(".") if part in owners), None)
        if reason.startswith("InputDataError: "):
            lines.append(
                f"{reason.removeprefix('InputDataError: ')} ({run or name}{_INPUT_FAILURE})"
            )
            continue
        step = f"{run}: {name.rsplit('.', 1)[-1]}" if run else name
        folder = re.search(r"^Working directory: (.+)$", text, re.M)
        folder = Path(folder[1].strip()) if folder else Path(crash_dir)
        full = folder if _disk_full(folder) else None
        lines.append(f"{step} failed: {_hint(reason, full)} (details: {crash})")
    return lines


def _disk_full(folder):
    """Whether the disk of `folder` (or of its nearest existing parent) has under 1 MB free."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and shutil.disk_usage(existing).free < 1e6


# ends the line of a run refused on loading its images
_INPUT_FAILURE = " is not processed"


def _hint(reason, full_folder=None):
    """The crash's error line, with what to do where the cause is the machine's. full_folder:
    the step's folder, on a full disk (its result could not be written, which Nipype reports
    as a missing file or a dead worker)."""
    if full_folder is not None or "No space left on device" in reason:
        why = f"; the disk of {full_folder} is full" if full_folder is not None else ""
        return f"{reason}{why}; free some, or put OUTPUT_DIR and --work-dir on a disk with space"
    if "MemoryError" in reason or "process running this node died" in reason:
        return f"{reason}; give the run more memory, or lower --nprocs"
    return reason


def _error(message):
    print(f"bids_qsm: error: {message}", file=sys.stderr)


def _setup_logging(verbosity):
    """Our messages at INFO (WARNING with -q, DEBUG with -vv) on stderr; Nipype's own chatter
    only with -v."""
    if not any(getattr(h, "_bids_qsm", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        handler._bids_qsm = True
        logger.addHandler(handler)
    for handler in logger.handlers:  # main() called again (tests): today's stderr, not a closed one
        if getattr(handler, "_bids_qsm", False):
            handler.stream = sys.stderr  # not setStream: it flushes the closed one
    levels = {-1: logging.WARNING, 0: logging.INFO, 1: logging.INFO}
    logger.setLevel(levels.get(verbosity, logging.DEBUG))


if __name__ == "__main__":
    sys.exit(main())
