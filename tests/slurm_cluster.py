"""A single-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd.

Debian's `slurmctld`, `slurmd`, `slurm-client` and `munge` are installed with apt-get when they
are missing (as root only). Everything the cluster writes (its munge key and socket, state,
spool, logs, configuration) lives in one private folder, and clients find it through
`$SLURM_CONF`, so a system's own SLURM or munge is neither used nor disturbed. `stop()` ends
every daemon this module started, by the PID it started, whether or not the test passed.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged")


class Unavailable(RuntimeError):
    """SLURM cannot run here (not installed and not installable, or the daemons do not start)."""


def ensure_installed():
    """Install Debian's SLURM and munge packages if a program is missing; Unavailable if not."""
    missing = [p for p in PROGRAMS if not _which(p)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(missing)} missing, and apt-get cannot run here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise Unavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}")
    missing = [p for p in PROGRAMS if not _which(p)]
    if missing:
        raise Unavailable(f"{', '.join(missing)} still missing after apt-get install")


def _which(program):
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class LocalSlurm:
    """One SLURM node on 127.0.0.1 with every CPU of this machine.

    Use as a context manager, or call `start()` and then `stop()` in a `finally`. `env` holds
    the variables a client (sbatch, squeue, Nipype's SLURM plugin) needs.
    """

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="bids_qsm-slurm-"))
        self.pids = []  # (name, Popen) of every daemon started, in start order
        self.env = {}

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout=60):
        """Start munged (as the munge user), slurmctld and slurmd; wait for the node to be idle."""
        if os.geteuid() != 0:
            raise Unavailable("a private SLURM cluster needs root (munged runs as 'munge')")
        try:
            munge_user = pwd.getpwnam("munge")
        except KeyError:
            raise Unavailable("no 'munge' user (is the munge package installed?)") from None
        try:
            self._start(munge_user, timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, munge_user, timeout):
        self.root.chmod(0o755)  # munged, running as 'munge', must reach its folder
        munge_dir = self.root / "munge"
        munge_dir.mkdir()
        munge_dir.chmod(0o755)  # clients must reach the socket; the key stays 0400
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        for path in (munge_dir, key):
            os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
        munge_socket = munge_dir / "munge.socket"
        self._spawn(
            "munged",
            [_which("munged"), "--foreground",
             f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
             f"--seed-file={munge_dir / 'munged.seed'}", "--num-threads=2"],
            user=munge_user.pw_uid, group=munge_user.pw_gid, extra_groups=[],
        )  # fmt:skip
        _wait_for(lambda: munge_socket.exists(), timeout, "munged did not create its socket")

        conf = self._write_config(munge_socket)
        self.env = {"SLURM_CONF": str(conf), "LOGNAME": os.environ.get("LOGNAME", "root")}
        env = {**os.environ, **self.env}
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"], env=env)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node], env=env)

        def idle():
            state = self.run(["sinfo", "--noheader", "--format=%T"], check=False)
            return state.returncode == 0 and state.stdout.strip() == "idle"

        _wait_for(idle, timeout, "the SLURM node did not become idle")

    def _write_config(self, munge_socket):
        self.node = socket.gethostname().split(".")[0]
        ports = _free_ports(2)
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir()
        memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        user = pwd.getpwuid(os.geteuid()).pw_name
        conf = self.root / "slurm.conf"
        conf.write_text(
            f"""\
ClusterName=bidsqsmtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "slurmctld.pid"}
SlurmdPidFile={self.root / "slurmd.pid"}
SlurmctldLogFile={self.root / "log" / "slurmctld.log"}
SlurmdLogFile={self.root / "log" / "slurmd.log"}
PlugStackConfig={self.root / "plugstack.conf"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.root / "plugstack.conf").write_text("")
        return conf

    def run(self, command, check=True):
        """Run a SLURM client command against this cluster."""
        return subprocess.run(
            command, env={**os.environ, **self.env}, capture_output=True, text=True,
            timeout=30, check=check,
        )  # fmt:skip

    def logs(self):
        """The daemons' log files, for a failing test's message."""
        texts = []
        for log in sorted(self.root.rglob("*.log")):
            texts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(texts)

    def _spawn(self, name, command, env=None, **as_user):
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - open while the daemon runs
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **as_user,
        )
        log.close()
        self.pids.append((name, process))
        time.sleep(0.2)
        if process.poll() is not None:
            text = (self.root / f"{name}.out").read_text(errors="replace")
            raise Unavailable(f"{name} exited at once ({process.returncode}): {text[-500:]}")

    def stop(self, grace=15):
        """Cancel this cluster's jobs, then end each daemon started, newest first, by its PID."""
        if self.env and any(p.poll() is None for name, p in self.pids if name == "slurmctld"):
            self.run(["scancel", "--full", f"--user={os.geteuid()}"], check=False)
        for _, process in reversed(self.pids):
            if process.poll() is None:
                _signal(process, signal.SIGTERM)
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal(process, signal.SIGKILL)
                    process.wait(grace)
        self.pids.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _signal(process, signum):
    """Signal a daemon and the processes of its own session (started with start_new_session)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _wait_for(condition, timeout, message):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Unavailable(message)
        time.sleep(0.5)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
