"""Defaults for the caches and telemetry of our dependencies, set before any of them is imported.

Numba, matplotlib and TemplateFlow write caches in places of their own unless told otherwise
(beside the installed package, in the home directory), which fails in read-only containers;
ours all go into one folder (`cache_root`). Nipype phones home unless told not to. Each default
yields to a value the user already exported.

`check_environment` and `short_socket_folder` run when a command starts: a folder that cannot be
worked with gets one line naming the variable to set, never a traceback from deep inside a
dependency.
"""

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

# A Unix socket's path may not exceed 107 bytes (108 with its terminating NUL). The worker pool's
# forkserver listens on <tempdir>/pymp-xxxxxxxx/listener-xxxxxxxx, 34 bytes beyond the folder.
_SOCKET_PATH_MAX = 107
_SOCKET_NAME_LEN = len("/pymp-xxxxxxxx/listener-xxxxxxxx")
_SHORT_TEMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")
_MIN_FREE_TMP_MB = 64  # the caches and the sockets; the work directory has its own check
# variable that chooses each cache folder, as told to the user
CACHE_VARIABLES = ("NUMBA_CACHE_DIR", "MPLCONFIGDIR", "TEMPLATEFLOW_HOME")


class EnvironmentProblem(RuntimeError):
    """A folder the run needs cannot be used; ``str()`` is one line that names the variable."""


def cache_root():
    """Folder for our dependencies' caches: $BIDS_QSM_CACHE, else the user's cache folder
    ($XDG_CACHE_HOME or ~/.cache, /bids_qsm) when it can be written, else a per-user folder in
    the temporary folder.

    Not $TMPDIR first: batch systems give every job a fresh one, and each job would compile
    every numba kernel again (about a minute of CPU per process).
    """
    root = os.environ.get("BIDS_QSM_CACHE")
    if root:
        return Path(root)
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if os.path.isabs(home) and not unwritable(Path(home) / "bids_qsm"):
        return Path(home) / "bids_qsm"
    return Path(tempfile.gettempdir()) / f"bids_qsm-cache-{os.getuid()}"


def set_environment_defaults():
    """Point numba, matplotlib and TemplateFlow caches away from $HOME; silence Nipype telemetry."""
    root = cache_root()
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / "numba"))
    os.environ.setdefault("MPLCONFIGDIR", str(root / "matplotlib"))
    if "TEMPLATEFLOW_HOME" not in os.environ:
        os.environ["TEMPLATEFLOW_HOME"] = str(_empty_templateflow_home(root / "templateflow"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Nipype's batch plugins read LOGNAME, which minimal containers do not set.
    os.environ.setdefault("LOGNAME", os.environ.get("USER", "bids_qsm"))


def _empty_templateflow_home(path):
    """A TemplateFlow home that holds no templates, which we never use.

    niworkflows indexes TemplateFlow when its BIDS interfaces are imported; an empty home would be
    filled with a skeleton of thousands of files that takes 5-30 s to index in every process. A
    home that only describes itself is taken as installed and indexes in milliseconds.
    """
    description = path / "dataset_description.json"
    if not description.exists():
        try:
            path.mkdir(parents=True, exist_ok=True)
            description.write_text(
                json.dumps(
                    {
                        "Name": "TemplateFlow home of bids_qsm (no templates)",
                        "BIDSVersion": "1.10.0",
                    }
                )
            )
        except OSError:  # read-only: niworkflows will say so if it needs the folder
            pass
    return path


def check_environment():
    """Whether the caches and the temporary folder can be written: raises EnvironmentProblem.

    Each cache folder (numba's kernels, matplotlib's fonts, TemplateFlow's stub) must accept a
    file; the temporary folder must accept one and have some space left. Without this, numba
    falls back to compiling every kernel in every process and a full $TMPDIR fails a random step.
    """
    for variable in CACHE_VARIABLES:
        folder = Path(os.environ[variable])
        reason = unwritable(folder)
        if reason:
            raise EnvironmentProblem(
                f"cannot write to {folder} ({variable}: {reason}); set {variable}, or "
                "BIDS_QSM_CACHE for all caches, to a writable folder"
            )
    tmp = Path(tempfile.gettempdir())
    reason = unwritable(tmp)
    if reason:
        raise EnvironmentProblem(
            f"cannot write to the temporary folder {tmp} ({reason}); set TMPDIR to a writable one"
        )
    free_mb = shutil.disk_usage(tmp).free / 1e6
    if free_mb < _MIN_FREE_TMP_MB:
        raise EnvironmentProblem(
            f"the temporary folder {tmp} has {free_mb:.0f} MB free; set TMPDIR to a folder with "
            f"at least {_MIN_FREE_TMP_MB} MB free"
        )


def short_socket_folder():
    """Give multiprocessing a short folder for its sockets when $TMPDIR is too long for them.

    Clusters hand jobs a TMPDIR like /scratch/<site>/<user>/<job>/<task>/tmp; under it the worker
    pool's socket path passes the 107-byte limit of Unix sockets ("AF_UNIX path too long").
    Only the sockets move (to /tmp, /var/tmp or /dev/shm, removed at exit); everything else
    stays in TMPDIR. Returns the folder used, or None when TMPDIR is short enough.
    Raises EnvironmentProblem when no short writable folder exists.
    """
    import multiprocessing.util

    if len(os.fsencode(tempfile.gettempdir())) + _SOCKET_NAME_LEN <= _SOCKET_PATH_MAX:
        return None
    for candidate in _SHORT_TEMP_FOLDERS:
        if not unwritable(Path(candidate)):
            saved = tempfile.tempdir
            tempfile.tempdir = candidate  # multiprocessing makes (and later removes) its folder
            try:
                return multiprocessing.util.get_temp_dir()
            finally:
                tempfile.tempdir = saved
    raise EnvironmentProblem(
        f"TMPDIR {tempfile.gettempdir()} is {len(tempfile.gettempdir())} characters long, too "
        f"long for the worker pool's sockets (at most {_SOCKET_PATH_MAX - _SOCKET_NAME_LEN}), and "
        f"none of {', '.join(_SHORT_TEMP_FOLDERS)} is writable; set TMPDIR to a shorter folder"
    )


def unwritable(folder):
    """Why a file cannot be created in `folder` (made if missing), or "" when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bids_qsm-probe-"):
            pass
    except OSError as err:
        if err.errno == errno.ENOSPC:
            return "no space left"
        return err.strerror or type(err).__name__
    return ""
