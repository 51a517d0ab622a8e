"""The BIDS-App command line: `_build_parser()` apart from parsing, checks bound to the parser.

A bad argument gets one line and exit code 2 (argparse's own convention); nothing heavy is
imported here beyond the stages' dispatch tables, whose keys are the method choices.
"""

import json
import re
from argparse import (
    Action,
    ArgumentDefaultsHelpFormatter,
    ArgumentParser,
    ArgumentTypeError,
    BooleanOptionalAction,
)
from pathlib import Path

from bids_qsm import __version__
from bids_qsm.config import Settings

NIPYPE_PLUGINS = (
    "MultiProc",
    "Linear",
    "SLURM",
    "SLURMGraph",
    "SGE",
    "SGEGraph",
    "PBS",
    "PBSGraph",
    "LSF",
    "Condor",
)

# argument dest -> (settings section, settings key)
SETTINGS_OF_ARGUMENT = {
    "work_dir": ("execution", "work_dir"),
    "participant_label": ("execution", "participant_label"),
    "session_label": ("execution", "session_label"),
    "bids_filters": ("execution", "bids_filters"),
    "skip_bids_validation": ("execution", "skip_bids_validation"),
    "phase_units": ("workflow", "phase_units"),
    "phase_sign": ("workflow", "phase_sign"),
    "mask_method": ("workflow", "mask"),
    "unwrap_method": ("workflow", "unwrap"),
    "combine_method": ("workflow", "combine"),
    "r2star_method": ("workflow", "relaxometry"),
    "background_method": ("workflow", "background"),
    "inversion_method": ("workflow", "inversion"),
    "two_pass": ("workflow", "two_pass"),
    "reference": ("workflow", "reference"),
    "reference_labels": ("workflow", "reference_labels"),
    "mask_dir": ("workflow", "mask_dir"),
    "segmentation_dir": ("workflow", "segmentation_dir"),
    "segmentation_lut": ("workflow", "segmentation_lut"),
    "registration": ("workflow", "registration"),
    "roi_erode": ("workflow", "roi_erode"),
    "foci": ("workflow", "foci"),
    "veins": ("workflow", "veins"),
    "lesion_dir": ("workflow", "lesion_dir"),
    "hct": ("workflow", "hct"),
    "nipype_plugin": ("nipype", "plugin"),
    "plugin_args": ("nipype", "plugin_args"),
    "nprocs": ("nipype", "nprocs"),
    "omp_nthreads": ("nipype", "omp_nthreads"),
    "mem_gb": ("nipype", "mem_gb"),
    "stop_on_first_crash": ("nipype", "stop_on_first_crash"),
}


def _stage_choices():
    """Method names per stage, from the numerical library's dispatch tables."""
    from bids_qsm.qsm.background import BACKGROUND
    from bids_qsm.qsm.combine import COMBINERS
    from bids_qsm.qsm.invert import INVERSIONS
    from bids_qsm.qsm.mask import MASKS
    from bids_qsm.qsm.phase import PHASE_UNITS
    from bids_qsm.qsm.reference import REFERENCES
    from bids_qsm.qsm.relaxometry import RELAXOMETRY
    from bids_qsm.qsm.unwrap import UNWRAPPERS

    return {
        "phase_units": tuple(PHASE_UNITS),
        "mask_method": tuple(MASKS),
        "unwrap_method": tuple(UNWRAPPERS),
        "combine_method": tuple(COMBINERS),
        "r2star_method": tuple(RELAXOMETRY),
        "background_method": tuple(BACKGROUND),
        "inversion_method": tuple(INVERSIONS),
        "reference": tuple(REFERENCES),
    }


class _StripPrefix(Action):
    """Store labels without their `sub-`/`ses-` prefix, dropping duplicates."""

    def __init__(self, *args, prefix, **kwargs):
        self.prefix = prefix
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        labels = [v.removeprefix(self.prefix) for v in values]
        bad = [v for v in labels if not re.fullmatch(r"[A-Za-z0-9]+", v)]
        if bad:
            parser.error(f"{option_string}: not a BIDS label: {', '.join(bad)}")
        setattr(namespace, self.dest, list(dict.fromkeys(labels)))


def _existing_dir(value):
    path = Path(value).expanduser().absolute()
    if not path.is_dir():
        raise ArgumentTypeError(f"no such directory: {value}")
    return path


def _existing_file(value):
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise ArgumentTypeError(f"no such file: {value}")
    return path


def _bids_filter_file(value):
    from bids_qsm.bids import load_bids_filters

    try:
        return load_bids_filters(_existing_file(value))
    except ValueError as err:
        raise ArgumentTypeError(str(err)) from None


def _json_object(value):
    try:
        data = json.loads(value)
    except ValueError as err:
        raise ArgumentTypeError(f"not a JSON object: {value!r} ({err})") from None
    if not isinstance(data, dict):
        raise ArgumentTypeError(f"not a JSON object: {value!r}")
    return data


def _plugin_args(value):
    """Nipype plugin arguments: a JSON object, or the path of a YAML (or JSON) file holding one."""
    path = Path(value).expanduser()
    if not path.is_file():
        return _json_object(value)
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ArgumentTypeError(f"{value}: not readable as YAML ({err})") from None
    if not isinstance(data, dict):
        raise ArgumentTypeError(f"{value}: does not hold a mapping of plugin arguments")
    return data


def _positive_int(value):
    try:
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise ArgumentTypeError(f"must be at least 1: {value!r}")
    return number


def _memory_gb(value):
    """'16', '16G', '16GB', '16000M', '16000MB' -> GB as a float."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([GgMm]?)[Bb]?\s*", value)
    if not match or float(match[1]) <= 0:
        raise ArgumentTypeError(f"not an amount of memory: {value!r} (e.g. 16G or 16000M)")
    amount = float(match[1])
    return amount / 1000 if match[2].lower() == "m" else amount


def _build_parser(defaults: Settings | None = None) -> ArgumentParser:
    """The argument parser; `defaults` (from --config-file) sets what an option defaults to."""
    defaults = defaults or Settings()
    choices = _stage_choices()
    parser = ArgumentParser(
        prog="bids_qsm",
        description="Quantitative susceptibility mapping of multi-echo GRE scans in a BIDS "
        "dataset, written as BIDS-Derivatives.",
        formatter_class=ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=_existing_dir, help="root of the BIDS dataset (read-only)")
    parser.add_argument("output_dir", type=Path, help="root of the BIDS-Derivatives output")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    parser.add_argument("--version", action="version", version=f"bids_qsm {__version__}")

    sel = parser.add_argument_group("selecting the data")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        action=_StripPrefix,
        prefix="sub-",
        metavar="LABEL",
        help="subjects to process (with or without 'sub-')",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        action=_StripPrefix,
        prefix="ses-",
        metavar="LABEL",
        help="sessions to process (with or without 'ses-')",
    )
    sel.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        dest="bids_filters",
        type=_bids_filter_file,
        metavar="FILE",
        help="JSON of BIDS entities that selects the MEGRE files",
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        action="store_true",
        help="do not check the input with the BIDS validator",
    )

    exe = parser.add_argument_group("execution")
    exe.add_argument(
        "-w",
        "--work-dir",
        "--work_dir",
        type=Path,
        metavar="DIR",
        help="Nipype work directory; a rerun with the same one resumes",
    )
    exe.add_argument(
        "--nprocs",
        "--nthreads",
        "--n-cpus",
        "--n_cpus",
        type=_positive_int,
        help="processes run at once (default: all cores)",
    )
    exe.add_argument(
        "--omp-nthreads",
        "--omp_nthreads",
        type=_positive_int,
        help="threads per process for numba and FFTs (default: all cores)",
    )
    exe.add_argument(
        "--mem",
        "--mem-gb",
        "--mem_gb",
        dest="mem_gb",
        type=_memory_gb,
        help="memory the run may use, e.g. 16G",
    )
    exe.add_argument(
        "--nipype-plugin", "--nipype_plugin", choices=NIPYPE_PLUGINS, help="Nipype execution plugin"
    )
    exe.add_argument(
        "--plugin-args",
        "--plugin_args",
        type=_plugin_args,
        metavar="JSON|YAML_FILE",
        help='plugin arguments as JSON, e.g. \'{"sbatch_args": "-p short"}\', or a YAML file',
    )
    exe.add_argument(
        "--stop-on-first-crash",
        "--stop_on_first_crash",
        action="store_true",
        help="stop at the first failing node instead of going on with others",
    )
    exe.add_argument(
        "--config-file",
        "--config_file",
        type=_existing_file,
        metavar="TOML",
        help="settings saved by an earlier run (logs/config-*.toml); options "
        "given on the command line take precedence",
    )
    exe.add_argument(
        "--reproduce",
        type=_existing_file,
        metavar="CHIMAP_JSON",
        help="use the methods and every parameter listed in the sidecar of an earlier Chimap",
    )
    exe.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    exe.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines, only warnings and errors"
    )

    qsm = parser.add_argument_group("methods")
    qsm.add_argument(
        "--phase-units",
        "--phase_units",
        choices=choices["phase_units"],
        help="how phase values are scaled; auto reads the sidecar's Units",
    )
    qsm.add_argument(
        "--phase-sign",
        "--phase_sign",
        type=int,
        choices=[1, -1],
        help="-1 for scanners whose phase falls with TE for a positive field",
    )
    qsm.add_argument(
        "--mask-method",
        "--mask_method",
        choices=choices["mask_method"],
        help="brain mask (default: %(default)s)",
    )
    qsm.add_argument(
        "--mask-dir",
        "--mask_dir",
        type=_existing_dir,
        metavar="DIR",
        help="BIDS-Derivatives folder with each run's own sub-<l>[_ses-<l>]*_desc-brain_mask"
        ".nii[.gz] on the MEGRE grid, used instead of --mask-method",
    )
    qsm.add_argument(
        "--unwrap-method",
        "--unwrap_method",
        choices=choices["unwrap_method"],
        help="phase unwrapping (default: %(default)s)",
    )
    qsm.add_argument(
        "--combine-method",
        "--combine_method",
        choices=choices["combine_method"],
        help="fit of the field over echoes (default: %(default)s)",
    )
    qsm.add_argument(
        "--r2star-method",
        "--r2star_method",
        choices=choices["r2star_method"],
        help="R2*/T2* fit (default: %(default)s)",
    )
    qsm.add_argument(
        "--background-method",
        "--background_method",
        choices=choices["background_method"],
        help="background field removal (default: %(default)s)",
    )
    qsm.add_argument(
        "--inversion-method",
        "--inversion_method",
        choices=choices["inversion_method"],
        help="dipole inversion (default: %(default)s)",
    )
    qsm.add_argument(
        "--two-pass",
        "--two_pass",
        action=BooleanOptionalAction,
        help="two-pass artefact reduction around strong sources (Stewart et al. 2022): invert "
        "once more without the voxels of unreliable field, and keep that map where it is valid",
    )
    qsm.add_argument(
        "--reference",
        choices=choices["reference"],
        help="susceptibility reference (default: %(default)s)",
    )

    roi = parser.add_argument_group("regions")
    roi.add_argument(
        "--segmentation-dir",
        "--segmentation_dir",
        type=_existing_dir,
        metavar="DIR",
        help="BIDS-Derivatives with a *_dseg.nii.gz per subject (on the MEGRE grid, or with its "
        "*_T1w.nii.gz to register): per-label chi tables, and the 'labels' reference",
    )
    roi.add_argument(
        "--segmentation-lut",
        "--segmentation_lut",
        metavar="{auto,freesurfer,TSV}",
        help="label names: auto (the dseg.tsv beside the labels), freesurfer (aseg numbering), "
        "or a dseg.tsv file",
    )
    roi.add_argument(
        "--registration",
        choices=["rigid", "affine"],
        help="T1w-to-magnitude registration of a segmentation off the MEGRE grid",
    )
    roi.add_argument(
        "--roi-erode",
        "--roi_erode",
        type=int,
        choices=range(0, 4),
        metavar="N",
        help="erode each label by N voxels before its statistics (partial volume)",
    )
    roi.add_argument(
        "--reference-labels",
        "--reference_labels",
        metavar="SPEC",
        help="labels of the 'labels' reference: csf, ventricles, white-matter, or indices/names "
        "separated by commas",
    )

    clinical = parser.add_argument_group(
        "clinical read-outs (research use, no diagnostic claim; see docs/outputs.md)"
    )
    clinical.add_argument(
        "--foci",
        action=BooleanOptionalAction,
        help="report microbleed-like (paramagnetic) and calcification-like (diamagnetic) foci",
    )
    clinical.add_argument(
        "--veins",
        action=BooleanOptionalAction,
        help="vein mask, venous susceptibility and oxygen saturation",
    )
    clinical.add_argument(
        "--lesion-dir",
        "--lesion_dir",
        type=_existing_dir,
        metavar="DIR",
        help="BIDS-Derivatives with each subject's *_desc-lesion_mask or *_desc-lesion_dseg"
        ".nii[.gz] (on the MEGRE grid, or with its *_T1w to register): paramagnetic rims",
    )
    clinical.add_argument(
        "--hct",
        type=float,
        metavar="FRACTION",
        help="haematocrit of the venous oxygen saturation model",
    )

    parser.set_defaults(
        **{
            dest: getattr(getattr(defaults, section), key)
            for dest, (section, key) in SETTINGS_OF_ARGUMENT.items()
        }
    )
    return parser


def parse_args(argv=None) -> tuple[Settings, int]:
    """Parse the command line into Settings and the verbosity (-1 with -q, 0, or the number of
    -v); exits 2 on bad arguments."""
    defaults = Settings()
    probe = ArgumentParser(add_help=False)
    probe.add_argument("--config-file", "--config_file", type=Path)
    known, _ = probe.parse_known_args(argv)
    if known.config_file is not None:
        try:
            defaults = Settings.from_toml(known.config_file)
        except (OSError, ValueError) as err:
            _build_parser().error(f"--config-file {known.config_file}: {err}")
    parser = _build_parser(defaults)
    opts = parser.parse_args(argv)

    settings = defaults
    for dest, (section, key) in SETTINGS_OF_ARGUMENT.items():
        setattr(getattr(settings, section), key, getattr(opts, dest))
    exe = settings.execution
    exe.bids_dir = opts.bids_dir
    exe.output_dir = opts.output_dir.expanduser().absolute()
    exe.analysis_level = opts.analysis_level
    if (
        exe.output_dir == exe.bids_dir
        or exe.bids_dir in exe.output_dir.parents
        and (exe.output_dir.relative_to(exe.bids_dir).parts[0] != "derivatives")
    ):
        parser.error("output_dir must not be the BIDS dataset itself (derivatives/ is fine)")
    if exe.work_dir is not None:
        exe.work_dir = exe.work_dir.expanduser().absolute()
        if exe.bids_dir in [exe.work_dir, *exe.work_dir.parents]:
            parser.error("--work-dir must not be inside the BIDS dataset, which is never written")
    if opts.reproduce is not None:
        from bids_qsm.provenance import apply_sidecar

        try:
            apply_sidecar(settings.workflow, opts.reproduce)
        except ValueError as err:
            parser.error(f"--reproduce: {err}")
    if not 0.1 <= settings.workflow.hct <= 0.8:
        parser.error(f"--hct must be a fraction between 0.1 and 0.8, not {settings.workflow.hct}")
    if settings.workflow.reference == "labels" and settings.workflow.segmentation_dir is None:
        parser.error("--reference labels needs --segmentation-dir")
    if settings.nipype.omp_nthreads and settings.nipype.nprocs:
        if settings.nipype.omp_nthreads > settings.nipype.nprocs:
            parser.error("--omp-nthreads cannot exceed --nprocs")
    return settings, -1 if opts.quiet else opts.verbose
