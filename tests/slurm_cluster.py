"""A real one-node Slurm cluster on 127.0.0.1 for the tests, as a session-scoped pytest fixture.

Debian's `slurm-wlm` and `munge` packages (`.ci/run` installs them) run it from a throwaway folder
under /tmp: a fresh munge key and munged on its own socket, then slurmctld and slurmd from a
generated slurm.conf that names this host with its real CPUs and memory (what `slurmd -C` finds),
on free ports, without cgroups (proctrack/linuxproc, task/none) and without accounting. Several
such clusters (two test sessions at once) never see each other: ports, munge socket, state and
spool folders are all their own. Use it by importing the fixture into a test module:

    from slurm_cluster import slurm  # noqa: F401  (the fixture)

    def test_x(slurm):
        slurm.run("sbatch", ...)      # SLURM_CONF is set in os.environ for the whole session

The fixture skips where the packages are absent, saying so; under CI=true it fails instead.
At the end it cancels every job of its cluster, stops the three daemons and kills any process left
that belongs to it (found by the SLURM_CONF in its environment), then removes the folder. A folder
left by a session that died (SIGKILL, a crash) is cleaned the same way by the next session: its
owner's pid is recorded beside its slurm.conf.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
PREFIX = "dlexp-slurm-"
NODE = "dlexpnode"


def missing_programs() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def _which(program: str) -> str:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or program


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid,
    it names one process even after its pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _processes_of(base: Path) -> list[int]:
    """Every process that belongs to the cluster in `base`: its daemons (the folder is on their
    command line) and everything started under it (SLURM_CONF=<base>/slurm.conf in the environment)."""
    conf = f"SLURM_CONF={base / 'slurm.conf'}".encode()
    mine = str(base).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if mine + b"/" in cmdline or conf in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _kill_all(base: Path) -> None:
    for _ in range(3):
        pids = _processes_of(base)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


def reap_stale() -> None:
    """Clean up after earlier sessions that died: their daemons, jobs and folders."""
    for base in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            pid, started = (base / "owner").read_text().split()
        except (OSError, ValueError):
            if time.time() - base.stat().st_mtime < 60:
                continue  # a session that is writing its owner file right now
            pid, started = "0", ""
        if _start_time(int(pid)) == started:
            continue  # its session is alive (maybe another test run at the same time)
        _kill_all(base)
        shutil.rmtree(base, ignore_errors=True)


def _node_line() -> str:
    """This host's real CPUs, sockets, cores, threads and memory, as slurmd itself finds them."""
    res = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30)
    line = next((x for x in res.stdout.splitlines() if x.startswith("NodeName=")), "")
    fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    if "CPUs" not in fields or "RealMemory" not in fields:  # older slurmd: count them ourselves
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        fields = {"CPUs": str(os.cpu_count() or 1), "RealMemory": str(mem_kb // 1024)}
    return " ".join(f"{k}={fields[k]}" for k in keep if k in fields)


@dataclass
class Cluster:
    base: Path
    conf: Path
    cpus: int
    memory_mb: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        """A Slurm command against this cluster; its stdout (stderr too when it fails)."""
        res = subprocess.run([_which(cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "SLURM_CONF": str(self.conf)})
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout}{res.stderr}")
        return res.stdout + ("" if res.returncode == 0 else res.stderr)

    def states(self) -> dict[str, str]:
        """job id (`123` or `123_4`) -> state, for every job slurmctld still knows."""
        out = self.run("squeue", "--array", "--noheader", "--states=all", "--format=%i|%T")
        return dict(line.split("|", 1) for line in out.split() if "|" in line)

    def wait_for(self, job_id: str, states: tuple[str, ...], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.states().get(job_id)
            if state in states:
                return state
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {self.states()}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.base.glob("*.log")))

    def start(self) -> None:
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        b = self.base
        self.procs["munged"] = subprocess.Popen(
            [_which("munged"), "--foreground", "--force", f"--socket={b / 'munge.socket'}", f"--key-file={b / 'munge.key'}",
             f"--pid-file={b / 'munged.pid'}", f"--log-file={b / 'munged.log'}", f"--seed-file={b / 'munged.seed'}"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(b / "munged.out", "w"))
        _wait(lambda: (b / "munge.socket").exists(), 20, "munged did not create its socket", self)
        # -c: a clean start, no job state from an earlier controller on the same folder
        self.procs["slurmctld"] = subprocess.Popen([_which("slurmctld"), "-D", "-c", "-f", str(self.conf)], env=env,
                                                   stdout=subprocess.DEVNULL, stderr=open(b / "slurmctld.out", "w"))
        self.procs["slurmd"] = subprocess.Popen([_which("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)], env=env,
                                                stdout=subprocess.DEVNULL, stderr=open(b / "slurmd.out", "w"))

        def idle() -> bool:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while starting\n{self.logs()}")
            out = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=10)
            return set(out.split()) == {"idle"}  # the node once per partition

        _wait(idle, 60, "the node did not become idle", self)

    def stop(self) -> None:
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--quiet", f"--user={os.getuid()}", check=False, timeout=15)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)
        _kill_all(self.base)  # jobs or steps a daemon left behind


def _wait(condition, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s\n{cluster.logs()}")
        time.sleep(0.2)


def write_config(base: Path) -> Cluster:
    """Key, folders and slurm.conf of a cluster in `base`."""
    (base / "munge.key").write_bytes(os.urandom(1024))
    os.chmod(base / "munge.key", 0o600)
    for d in ("state", "spool"):
        (base / d).mkdir()
    node = _node_line()
    fields = dict(kv.split("=", 1) for kv in node.split())
    host = socket.gethostname().split(".")[0]
    conf = base / "slurm.conf"
    conf.write_text(f"""\
# a throwaway one-node cluster for dlexp's tests (tests/slurm_cluster.py)
ClusterName=dlexptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base / 'munge.socket'}
SlurmUser={_user()}
SlurmdUser=root
StateSaveLocation={base / 'state'}
SlurmdSpoolDir={base / 'spool'}
SlurmctldPidFile={base / 'slurmctld.pid'}
SlurmdPidFile={base / 'slurmd.pid'}
SlurmctldLogFile={base / 'slurmctld.log'}
SlurmdLogFile={base / 'slurmd.log'}
# no cgroups: processes are tracked by their parent pids, tasks are not bound to CPUs
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# finished jobs stay visible in squeue for 10 minutes (there is no accounting database for sacct)
MinJobAge=600
# a cancelled job gets SIGTERM, then SIGKILL 10 s later
KillWait=10
# array task ids 0-9 only (the default allows 1001), so that a too-large array is cheap to try
MaxArraySize=10
# a job of partition `urgent` that needs busy CPUs preempts `debug` jobs, which Slurm requeues
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
""")
    return Cluster(base=base, conf=conf, cpus=int(fields["CPUs"]), memory_mb=int(fields["RealMemory"]))


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="session")
def slurm():
    """A running one-node Slurm cluster; SLURM_CONF points the Slurm commands at it for the session."""
    missing = missing_programs()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm is missing in CI ({', '.join(missing)}); .ci/run installs slurm-wlm and munge")
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge; CI runs these tests")
    if os.geteuid() != 0:
        # slurmd must run as root to start jobs as their user
        if os.environ.get("CI"):
            pytest.fail("the Slurm test cluster needs root (slurmd starts jobs as their user)")
        pytest.skip("the Slurm test cluster needs root (slurmd starts jobs as their user); CI runs as root")
    reap_stale()
    base = Path(tempfile.mkdtemp(prefix=PREFIX))
    os.chmod(base, 0o755)  # munged wants its socket's folder readable by all
    (base / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    cluster = write_config(base)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old
            shutil.rmtree(base, ignore_errors=True)
