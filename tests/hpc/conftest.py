"""A real single-node Slurm cluster (munged, slurmctld, slurmd) started for the `slurm` tests.

The daemons come from Debian's slurm-wlm and munge packages (``.ci/install-slurm``). The fixture
writes a munge key and a minimal slurm.conf into a temporary directory, starts the daemons
there on free ports, waits for the node to be idle and points ``SLURM_CONF`` at it. Where any
piece is missing or fails to start, the tests skip with the reason and the daemon's log tail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "squeue", "scontrol", "scancel")
READY_TIMEOUT_S = 60.0


@dataclass
class SlurmCluster:
    """What the tests need to know about the running cluster."""

    conf: Path
    root: Path
    node: str
    partition: str
    cpus: int
    ready_s: float

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, check=check)


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"({path.name} not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _slurm_conf(root: Path, node: str, cpus: int) -> str:
    return f"""\
ClusterName=otfparsltest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket.2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=500 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _start_munge(root: Path, munged: str) -> None:
    munge_dir = root / "munge"
    munge_dir.mkdir()
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    user = pwd.getpwnam("munge")
    for path in (munge_dir, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    munge_dir.chmod(0o755)
    cmd = [munged, f"--key-file={key}", f"--socket={munge_dir}/munge.socket.2",
           f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
           f"--seed-file={munge_dir}/munged.seed"]
    subprocess.run(["runuser", "-u", "munge", "--", *cmd], check=True, capture_output=True,
                   text=True, timeout=30)


def _wait_idle(cluster: SlurmCluster, sinfo: str) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        out = cluster.run(sinfo, "-h", "-N", "-o", "%t", check=False)
        state = out.stdout.strip() or out.stderr.strip()
        if state == "idle":
            return state
        time.sleep(0.5)
    raise RuntimeError(f"node not idle after {READY_TIMEOUT_S:.0f} s; last sinfo: {state!r}")


def _daemon_pids(root: Path) -> list[int]:
    """Read the pids of the daemons this fixture started from their pid files."""
    pids = []
    for pid_file in (root / "slurmctld.pid", root / "slurmd.pid", root / "munge" / "munged.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def _drain(cluster: SlurmCluster, wait_s: float = 20.0) -> None:
    """Cancel every job and wait until none is left, so no slurmstepd outlives slurmd."""
    jobs = cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
    if jobs:
        cluster.run("scancel", *jobs, check=False)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
            return
        time.sleep(0.5)


def _stop(root: Path, cluster: SlurmCluster | None, scontrol: str | None, pids: list[int]) -> None:
    """Ask Slurm to shut down, then make sure every daemon we started has exited."""
    pids = sorted(set(pids) | set(_daemon_pids(root)))  # read before shutdown removes the files
    if cluster is not None and scontrol:
        _drain(cluster)
        cluster.run(scontrol, "shutdown", check=False)
    for pid in pids:
        _terminate(pid, wait_s=10.0)


def _terminate(pid: int, wait_s: float) -> None:
    """Wait for one daemon we started to exit (after SIGTERM), SIGKILL it if it does not."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd on this host; yield the cluster; stop them all."""
    paths = {name: _find(name) for name in DAEMONS + CLIENTS + ("runuser",)}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        pytest.skip(f"Slurm not installed (missing {', '.join(missing)}); run .ci/install-slurm as root")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("no 'munge' user (the munge package creates it)")
    root = Path(tempfile.mkdtemp(prefix="otfparsl-slurm-"))
    root.chmod(0o755)  # munged runs as the munge user and must reach its directory
    node, cpus = socket.gethostname().split(".")[0], os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node, cpus))
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    cluster = SlurmCluster(conf=conf, root=root, node=node, partition="debug", cpus=cpus, ready_s=0.0)
    saved = os.environ.get("SLURM_CONF")
    start = time.perf_counter()
    step = "munged"
    try:
        _start_munge(root, paths["munged"])
        step = "slurmctld"
        subprocess.run([paths["slurmctld"], "-f", str(conf)], check=True, capture_output=True, text=True, timeout=30)
        step = "slurmd"
        subprocess.run([paths["slurmd"], "-f", str(conf), "-N", node], check=True, capture_output=True, text=True, timeout=30)
        step = "node idle"
        _wait_idle(cluster, paths["sinfo"])
    except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
        logs = "\n".join(f"--- {p.name}:\n{_tail(p)}" for p in (
            root / "munge" / "munged.log", root / "slurmctld.log", root / "slurmd.log"))
        _stop(root, cluster, paths["scontrol"], [])
        detail = getattr(exc, "stderr", "") or ""
        pytest.skip(f"Slurm could not start ({step}): {exc!r} {detail}\n{logs}")
    cluster.ready_s = time.perf_counter() - start
    pids = _daemon_pids(root)
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield cluster
    finally:
        _stop(root, cluster, paths["scontrol"], pids)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(root, ignore_errors=True)
