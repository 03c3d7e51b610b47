"""What the benchmarks under ``tests/bench/`` share.

- running commands, CPU accounting (this process's children, other processes, the whole machine);
- :class:`ServerProcess`: a server started in its own session and stopped with SIGTERM;
- :func:`ensure_h2load`: installs h2load (``nghttp2-client``) with apt-get where it is missing;
- :func:`h2load`: one h2load run over h2c (or HTTP/1.1), parsed into :class:`H2Run` with the CPU that
  the server, h2load and everything else used meanwhile, and the data-bytes check that proves gRPC
  calls succeeded;
- :class:`Environment`: date, machine and tool versions for a results section;
- :func:`write_section`: rewrites one script's section of ``tests/bench/RESULTS.md``.

The scripts run as ``python tests/bench/<script>.py``; they put the repository root on ``sys.path`` so
that ``tests.bench.common`` imports as it does for mypy.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from pathlib import Path
from types import FrameType

from cryptography.hazmat.backends.openssl import backend as openssl_backend

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Each script under `tests/bench/` owns one section below, delimited by `<!-- BEGIN name ... -->` and\n"
    "`<!-- END name -->` comments, and rewrites only that section on every run.\n"
)
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
H2LOAD_TIMEOUT = 180
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class BenchError(RuntimeError):
    """The benchmark could not produce a trustworthy figure."""


# -- small helpers -------------------------------------------------------------------------------


def run_text(
    cmd: Sequence[str], *, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    out = subprocess.run(
        list(cmd), capture_output=True, text=True, check=False, timeout=timeout, env=env, cwd=cwd
    )
    if out.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: compressed flag 0, 4-byte big-endian length, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks stop the servers."""
    signal.signal(signal.SIGTERM, _terminate)


# -- CPU accounting ------------------------------------------------------------------------------


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (h2load, openssl)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def processes_cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU time used so far by each of ``pids`` that is still alive."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14, 15 of stat
    return used


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- server processes ----------------------------------------------------------------------------


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (with SO_REUSEPORT each worker has its own)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":
                count += 1
    return count


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process remains in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


class ServerProcess:
    """A server process (tree) started by a benchmark in its own session, its output in ``log_path``.

    :meth:`start` returns once ``ready()`` is true; :meth:`stop` sends SIGTERM, waits, and fails the
    benchmark if the server needed SIGKILL or did not exit with 0.
    """

    def __init__(
        self, args: Sequence[str], env: dict[str, str], log_path: Path, ready: Callable[[], bool]
    ) -> None:
        self.args = list(args)
        self._env = env
        self._log_path = log_path
        self._ready = ready
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.args, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BenchError(f"the server exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.2)
        raise BenchError(f"the server did not become ready in {START_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        """The server process and its descendants (the workers)."""
        return [] if self._proc is None else process_tree(self._proc.pid)

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU time used so far by each live server process."""
        return processes_cpu_seconds(self.pids())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL the process group only if that does not end it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise BenchError(
                    f"the server ignored SIGTERM for {STOP_TIMEOUT:.0f}s and was killed"
                ) from None
        # Workers and multiprocessing's resource tracker share the server's process group and may
        # take a moment longer than their parent.
        deadline = time.monotonic() + 5
        while group_alive(proc.pid):
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise BenchError("server processes outlived their parent by 5s and were killed")
            time.sleep(0.1)
        if proc.returncode != 0:
            raise BenchError(f"the server exited with {proc.returncode} after SIGTERM:\n{self.log_tail()}")


# -- h2load --------------------------------------------------------------------------------------


H2LOAD_PACKAGE = "nghttp2-client"  # the Debian/Ubuntu package that ships h2load


def ensure_h2load() -> None:
    """Make sure ``h2load`` is on ``PATH``: install the ``nghttp2-client`` package with apt-get when it is
    missing and this process may (root, or password-less sudo), otherwise say how to get it."""
    if shutil.which("h2load"):
        return
    apt = shutil.which("apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if apt is None or (sudo and shutil.which("sudo") is None):
        raise BenchError(f"h2load is not installed: install it (Debian/Ubuntu package {H2LOAD_PACKAGE})")
    print(f"h2load is not installed: apt-get install {H2LOAD_PACKAGE}...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_text([*sudo, apt, "update", "-qq"], timeout=600, env=env)
    run_text([*sudo, apt, "install", "-y", "-qq", H2LOAD_PACKAGE], timeout=600, env=env)
    if not shutil.which("h2load"):
        raise BenchError(f"{H2LOAD_PACKAGE} was installed but h2load is still not on PATH")


@dataclass(frozen=True)
class H2Run:
    command: str
    connections: int
    streams: int
    requests: int
    succeeded: int
    status_2xx: int
    seconds: float
    req_per_s: float
    data_bytes: int
    mean_latency: str
    client_cpu: float  # h2load CPU seconds
    server_cpu: list[float]  # CPU seconds of each server process over the same interval, largest first
    machine_cpu: float  # CPU seconds of the whole machine over the same interval

    @property
    def data_per_request(self) -> float:
        return self.data_bytes / self.requests

    @property
    def client_cores(self) -> float:
        return self.client_cpu / self.seconds

    @property
    def server_cores(self) -> float:
        return sum(self.server_cpu) / self.seconds

    @property
    def server_us_per_request(self) -> float:
        """Server CPU (all its threads and processes) per request, in microseconds."""
        return sum(self.server_cpu) / self.requests * 1e6

    @property
    def server_split(self) -> str:
        """Cores used by each busy server process, e.g. ``0.97+0.91``: shows how the load was spread."""
        return "+".join(f"{c / self.seconds:.2f}" for c in self.server_cpu if c / self.seconds >= 0.01)

    @property
    def other_cores(self) -> float:
        """Cores used by neither the server nor h2load: the noise of a shared machine."""
        return max(0.0, self.machine_cpu - sum(self.server_cpu) - self.client_cpu) / self.seconds


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise BenchError(f"h2load output lacks /{pattern}/:\n{text}")
    return match


def h2load(
    url: str,
    workdir: Path,
    body: str,
    requests: int,
    *,
    connections: int,
    streams: int,
    server_cpu: Callable[[], dict[int, float]],
    headers: Sequence[str] = GRPC_HEADERS,
    redact: Mapping[str, str] | None = None,
    h1: bool = False,
) -> H2Run:
    """One h2load run: ``-n requests -c connections -m streams``, the body from the file ``body`` in
    ``workdir``. ``server_cpu`` gives the server's CPU seconds per process (sampled before and after);
    ``redact`` replaces secrets (or merely long values) in the command as recorded. ``h1`` speaks
    HTTP/1.1 (``--h1``) instead of h2c; ``-m`` is then the pipelining depth, so keep it at 1."""
    load = f"{'--h1 ' if h1 else ''}-n {requests} -c {connections} -m {streams} -d {body}"
    cmd = ["h2load", *load.split(), *(arg for header in headers for arg in ("-H", header)), url]
    client_before, server_before, machine_before = (
        children_cpu_seconds(),
        server_cpu(),
        machine_busy_seconds(),
    )
    out = run_text(cmd, timeout=H2LOAD_TIMEOUT, cwd=workdir)
    client_cpu, machine_cpu = children_cpu_seconds() - client_before, machine_busy_seconds() - machine_before
    server_after = sorted((t - server_before.get(pid, 0.0) for pid, t in server_cpu().items()), reverse=True)
    finished = _search(r"^finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    counts = _search(r"^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    command = shlex.join(cmd)
    for secret, placeholder in (redact or {}).items():
        command = command.replace(secret, placeholder)
    return H2Run(
        command=command,
        connections=connections,
        streams=streams,
        requests=int(counts.group(1)),
        succeeded=int(counts.group(2)),
        status_2xx=int(_search(r"^status codes: (\d+) 2xx", out).group(1)),
        seconds=float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1),
        req_per_s=float(finished.group(3)),
        data_bytes=int(_search(r"^traffic: .*\((\d+)\) data$", out).group(1)),
        mean_latency=_search(r"^time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1),
        client_cpu=client_cpu,
        server_cpu=server_after,
        machine_cpu=machine_cpu,
    )


def data_matches(run: H2Run, frame: int, tolerance: float) -> bool:
    """Whether the average response data per request is one ``frame`` (within ``tolerance``)."""
    return abs(run.data_per_request - frame) <= tolerance * frame


def check_run(run: H2Run, frame: int, tolerance: float, noun: str) -> H2Run:
    """Every request answered 200 and, on average, carried one response message of ``frame`` bytes.
    A refused call (grpc-status in the trailers, no message) would pull the average below the frame."""
    if run.succeeded != run.requests or run.status_2xx != run.requests:
        raise BenchError(
            f"h2load: {run.succeeded}/{run.requests} succeeded, {run.status_2xx} 2xx: {run.command}"
        )
    if not data_matches(run, frame, tolerance):
        raise BenchError(
            f"responses were not all {noun}s: {run.data_per_request:.1f} B of data per request, one {noun} "
            f"response is {frame} B (gRPC errors carry no data): {run.command}"
        )
    return run


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """When and where a benchmark ran, with which tools."""

    date: str
    nproc: int
    openssl_version: str
    h2load_version: str

    @classmethod
    def collect(cls) -> Environment:
        return cls(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            nproc=int(run_text(["nproc"]).strip()),
            openssl_version=run_text(["openssl", "version"]).strip(),
            h2load_version=run_text(["h2load", "--version"]).strip().removeprefix("h2load "),
        )

    def lines(self) -> list[str]:
        """The ``- Date``, ``- Machine``, ``- Tools`` and ``- Service stack`` lines of a section."""
        stack = (
            f"Python {platform.python_version()}, grpcio {dist_version('grpcio')}, "
            f"cryptography {dist_version('cryptography')} ({openssl_backend.openssl_version_text()})"
        )
        return [
            f"- Date: {self.date}",
            f"- Machine: nproc={self.nproc}, {cpu_model()}, {platform.system()} {platform.release()}",
            f"- Tools: {self.openssl_version}; h2load {self.h2load_version}",
            f"- Service stack: {stack}",
        ]


def begin_marker(section: str, script: str) -> str:
    return f"<!-- BEGIN {section} ({script} rewrites this section) -->"


def end_marker(section: str) -> str:
    return f"<!-- END {section} -->"


def write_section(section: str, text: str, results: Path = RESULTS) -> None:
    """Replace the section ``section`` of ``results`` (from its BEGIN marker to its END marker) with
    ``text``, or append ``text`` if the section is not there yet."""
    current = results.read_text() if results.exists() else RESULTS_HEADER
    begin = re.escape(f"<!-- BEGIN {section}")
    pattern = re.compile(begin + r"[ >].*?" + re.escape(end_marker(section)) + r"\n?", re.DOTALL)
    if pattern.search(current):
        current = pattern.sub(lambda _: text, current, count=1)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    results.write_text(current)
