"""One settings object per run, in three sections, saved as TOML beside the run's logs.

Only the command line and the top two workflow levels read it; every sub-workflow below takes
keyword-only arguments instead, so it can be built in a test without any global state.
"""

import sys
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Execution:
    """What to process and where."""

    bids_dir: Path | None = None
    output_dir: Path | None = None
    analysis_level: str = "participant"
    work_dir: Path | None = None
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    run_uuid: str = field(
        default_factory=lambda: (
            datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S_") + uuid.uuid4().hex[:8]
        )
    )

    @property
    def log_dir(self) -> Path:
        """Per-run logs and settings under the derivatives root."""
        return Path(self.output_dir) / "logs"


@dataclass
class Workflow:
    """Method choices per stage (the keys of each stage's dispatch table in `bids_qsm.qsm`)."""

    phase_units: str = "auto"
    phase_sign: int = 1
    mask: str = "otsu"
    unwrap: str = "romeo"
    combine: str = "linear"
    relaxometry: str = "loglinear"
    background: str = "lbv"
    inversion: str = "tfi"
    two_pass: bool = False  # off: no better on the head phantom or the realistic fixtures
    reference: str = "mean"
    reference_labels: str = "csf"
    mask_dir: Path | None = None
    segmentation_dir: Path | None = None
    segmentation_lut: str = "auto"
    registration: str = "rigid"
    roi_erode: int = 0
    foci: bool = True
    veins: bool = False
    lesion_dir: Path | None = None
    hct: float = 0.40
    parameters: dict = field(default_factory=dict)  # {stage: {parameter: value}}


@dataclass
class Nipype:
    """How Nipype executes the graph."""

    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    nprocs: int | None = None
    omp_nthreads: int | None = None
    mem_gb: float | None = None
    stop_on_first_crash: bool = False

    def plugin_settings(self) -> dict:
        """The `plugin` and `plugin_args` for `Workflow.run`."""
        args = {"raise_insufficient": False, **self.plugin_args}
        if self.plugin == "MultiProc":
            # Forked workers inherit numba's and OpenBLAS's thread pools of a parent that has
            # already computed, and can die or deadlock; fresh processes cannot.
            args.setdefault("mp_context", "forkserver")
            if self.nprocs:
                args.setdefault("n_procs", self.nprocs)
            if self.mem_gb:
                args.setdefault("memory_gb", self.mem_gb)
        else:
            args = dict(self.plugin_args)
        return {"plugin": self.plugin, "plugin_args": args}


@dataclass
class Settings:
    """All settings of one invocation."""

    execution: Execution = field(default_factory=Execution)
    workflow: Workflow = field(default_factory=Workflow)
    nipype: Nipype = field(default_factory=Nipype)

    def to_toml(self, path) -> Path:
        """Write the settings as TOML (None values are left out: TOML has no null)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(_plain(asdict(self))))
        return path

    @classmethod
    def from_toml(cls, path) -> "Settings":
        """Read settings written by `to_toml` (or by hand); unknown keys are an error."""
        data = tomllib.loads(Path(path).read_text())
        settings = cls()
        for section in fields(cls):
            values = data.pop(section.name, {})
            target = getattr(settings, section.name)
            known = {f.name: f for f in fields(target)}
            for key, value in values.items():
                if key not in known:
                    raise ValueError(f"{path}: unknown setting [{section.name}] {key}")
                if known[key].type in (Path | None,) and value is not None:
                    value = Path(value)
                setattr(target, key, value)
        if data:
            raise ValueError(f"{path}: unknown section(s) {', '.join(sorted(data))}")
        return settings


def _plain(value):
    """Turn dataclass output into TOML-able values: Paths to str, drop None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
