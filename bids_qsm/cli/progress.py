"""What a run is doing: one line per finished stage of each MEGRE run, and a closing summary.

Nipype calls `Progress` for every node it starts, finishes or loses (its `status_callback`,
which every plugin but the *Graph ones offers). Lines go to the `bids_qsm.progress` logger, so
`-q` (WARNING) silences them; with `-v` the plumbing nodes and the sinks get a line too.
"""

import logging
import re
import subprocess
import time
from pathlib import Path

logger = logging.getLogger("bids_qsm.progress")

# node name -> what the line calls it (nodes not named here are plumbing: shown with -v)
STAGES = {
    "phase_units": "phase scaling",
    "mask": "brain mask",
    "unwrap": "phase unwrapping",
    "combine": "field fit",
    "relaxometry": "R2*/T2* fit",
    "background": "background removal",
    "invert": "dipole inversion",
    "reference": "referencing",
    "swi": "SWI",
    "figures": "figures",
    "foci": "foci",
    "veins": "veins",
    "lesions": "lesion rims",
}
# where one node name serves two stages, its workflow tells them apart
_STAGES_IN = {("readouts_wf", "figures"): "read-out figures"}


class Progress:
    """Nipype status callback that reports per MEGRE run, e.g.
    `sub-01 ses-1: background removal done, 4.1 s`.

    runs: the runs being processed (anything with `prefix`, e.g. `sub-01_ses-1`, and `subject`);
    verbosity: 0 stages only, 1 and more every node. A node finished by an earlier run into the
    same work directory is reported as reused.
    """

    def __init__(self, runs, *, verbosity=0):
        self.runs = list(runs)
        self.verbosity = verbosity
        self.started = time.time()
        self.failed = {}  # run prefix -> stages that failed
        self.finished = {}  # run prefix -> number of nodes finished (computed or reused)
        self.reused = {}  # run prefix -> number of nodes reused from the work directory
        # graph names that belong to one run (base.py names them after the run's prefix)
        self._names = {}
        for run in self.runs:
            key = run.prefix.replace("-", "_")
            self._names[run.prefix] = {
                f"qsm_{key}_wf", f"ds_{key}_wf", f"ds_roi_{key}_wf", f"labels_{key}",
                f"roistats_{key}",
            }  # fmt:skip
        self._owner = {name: prefix for prefix, names in self._names.items() for name in names}

    def __call__(self, node, status):
        if status == "start":
            return
        try:
            self._report(node, status)
        except Exception:  # noqa: BLE001 - a progress line is never worth stopping the run
            logger.debug("no progress line for %s", node, exc_info=True)

    def _report(self, node, status):
        prefix = self._run_of(node)
        if prefix is None:
            return
        parent = node._hierarchy.rsplit(".", 1)[-1] if node._hierarchy else ""
        stage = _STAGES_IN.get((parent, node.name), STAGES.get(node.name))
        if node.name.startswith("labels_"):
            stage = "labels"
        elif node.name.startswith("roistats_"):
            stage = "region statistics"
        label = prefix.replace("_", " ")
        what = stage or node.fullname.split(".", 1)[-1]
        if status == "exception":
            self.failed.setdefault(prefix, []).append(what)
            logger.warning("%s: %s failed", label, what)
            return
        self.finished[prefix] = self.finished.get(prefix, 0) + 1
        seconds, reused = _timing(node, self.started)
        self.reused[prefix] = self.reused.get(prefix, 0) + reused
        if stage is None and self.verbosity < 1:
            return
        if reused:
            logger.info("%s: %s reused from the work directory", label, what)
        elif seconds is None:
            logger.info("%s: %s done", label, what)
        else:
            logger.info("%s: %s done, %.1f s", label, what, seconds)

    def _run_of(self, node):
        names = [*node._hierarchy.split("."), node.name] if node._hierarchy else [node.name]
        for name in names:
            if name in self._owner:
                return self._owner[name]
        return None

    def summary(self, output_dir, failures=()):
        """Log what each run wrote and which failed; returns the prefixes of the failed runs.

        failures: the run's failure lines (one per crash file), which name the failed node and
        cover the *Graph plugins, whose jobs never call back.
        """
        output_dir = Path(output_dir)
        failed = []
        elapsed = time.time() - self.started
        for run in self.runs:
            label = run.prefix.replace("_", " ")
            stages = list(self.failed.get(run.prefix, []))
            for line in failures:
                # "sub-01: invert failed: ..." or "bids_qsm_wf.sub_01_wf.qsm_sub_01_wf.invert
                # failed: ...", or an input refusal that names the run
                head = line.split(" failed", 1)[0]
                node = head.rsplit(": ", 1)[-1].split(".")
                ours = head.startswith(f"{run.prefix}: ") or self._names[run.prefix].intersection(
                    node
                )
                if ours:
                    stages.append(STAGES.get(node[-1], node[-1]))
                elif re.search(rf"(?<![\w-]){re.escape(run.prefix)}(?![\w-])", line):
                    stages.append("input")
            folder = output_dir / f"sub-{run.subject}"
            written = sorted(folder.rglob(f"{run.prefix}_*")) if folder.is_dir() else []
            chimap = any(p.name.endswith("_Chimap.nii.gz") for p in written)
            if stages or not chimap:
                failed.append(run.prefix)
                reason = ", ".join(dict.fromkeys(stages)) or "no Chimap written"
                logger.warning("summary: %s failed (%s); %d file(s) written", label, reason,
                               len(written))  # fmt:skip
                continue
            reused = self.reused.get(run.prefix, 0)
            logger.info(
                "summary: %s: %d file(s) in %s%s", label, len(written),
                _common_folder(written, output_dir),
                f" ({reused} of {self.finished[run.prefix]} steps reused)" if reused else "",
            )  # fmt:skip
        logger.info(
            "summary: %d of %d run(s) written, %d failed, in %.0f s",
            len(self.runs) - len(failed), len(self.runs), len(failed), elapsed,
        )  # fmt:skip
        return failed


def _timing(node, started):
    """(seconds the node's interface ran, or None; whether its result predates this run)."""
    result_file = Path(node.output_dir()) / f"result_{node.name}.pklz"
    try:
        reused = result_file.stat().st_mtime < started
    except OSError:
        reused = False
    try:
        seconds = node.result.runtime.duration
    except Exception:  # noqa: BLE001 - a result without timing still gets its line
        seconds = None
    return seconds, reused


def _common_folder(paths, root):
    folders = {p.parent for p in paths if p.parent.name != "figures"}
    if len(folders) == 1:
        return str(folders.pop())
    return str(root)


def wait_for_slurm_jobs(batch_dir, *, poll_s=2.0, stuck_polls=5):
    """Wait while a SLURM job of this run (one whose batch script lies in `batch_dir`) is
    queued or running, and say how many are left; returns the number of jobs cancelled.

    Nipype's SLURMGraph plugin returns as soon as it has submitted the jobs. A job whose
    dependency failed waits forever (reason `DependencyNeverSatisfied`, or `Dependency` once
    nothing else of the run is queued or running): it is cancelled, so the run can end and
    report the failure.
    """
    batch_dir = str(Path(batch_dir).absolute())
    left, stuck, cancelled = None, 0, 0
    while True:
        jobs = _our_jobs(batch_dir)
        if not jobs:
            return cancelled
        if len(jobs) != left:
            running = sum(state == "RUNNING" for state, _ in jobs.values())
            logger.info("SLURM: %d job(s) left, %d running", len(jobs), running)
            left = len(jobs)
        never = [job for job, (_, reason) in jobs.items() if reason == "DependencyNeverSatisfied"]
        waiting = all(reason == "Dependency" for _, reason in jobs.values())
        stuck = stuck + 1 if waiting else 0
        if never or stuck >= stuck_polls:
            doomed = never or list(jobs)
            logger.warning("SLURM: cancelling %d job(s) whose dependencies failed", len(doomed))
            subprocess.run(["scancel", *doomed], capture_output=True, timeout=60)
            cancelled += len(doomed)
            stuck = 0
        time.sleep(poll_s)


def _our_jobs(batch_dir):
    """{job id: (state, reason)} of this user's jobs whose script lies in `batch_dir`."""
    listing = subprocess.run(
        ["squeue", "--me", "--noheader", "--format=%i|%T|%r|%o"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt:skip
    jobs = {}
    for line in listing.stdout.splitlines():
        job, state, reason, command = line.strip().split("|", 3)
        if command.startswith(batch_dir + "/"):
            jobs[job] = (state, reason)
    return jobs
