"""``authsvc serve --workers``: by default one worker per CPU the process may use (its affinity
mask, lowered to its cgroup's CPU quota), one when a listener cannot be shared (port 0, unix:),
the flag or ``AUTHSVC_WORKERS`` to choose; a port something already holds is refused before any
worker starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from authsvc.cli import build_parser
from authsvc.core.errors import ConfigurationError
from authsvc.server.app import check_ports_free
from authsvc.server.cpus import cgroup_cpu_limit, usable_cpus
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import KEK, serve_config
from tests.helpers import create_client

# -- the CPU count ------------------------------------------------------------------------------


def cgroup_tree(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup (``files``: relative path -> content) and /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(own)
    return root, proc


@pytest.mark.parametrize(
    ("own", "files", "expected"),
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
        # no cgroup namespace: the process's path below the mount, its parents' limits too
        (
            "0::/kubepods/pod1/c1\n",
            {"kubepods/pod1/c1/cpu.max": "max 100000", "kubepods/cpu.max": "200000 100000"},
            2.0,
        ),
        ("0::/a\n", {"a/cpu.max": "50000 100000", "cpu.max": "400000 100000"}, 0.5),
        # cgroup v1 (or hybrid): the cpu controller's CFS quota and period
        (
            "4:memory:/x\n1:cpu,cpuacct:/\n0::/\n",
            {"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"},
            3.0,
        ),
        ("1:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ("0::/\n", {"cpu.max": "garbage"}, None),
        ("", {}, None),
    ],
    ids=[
        "v2-no-limit",
        "v2-quota",
        "v2-parent-limit",
        "v2-tightest",
        "v1-quota",
        "v1-no-limit",
        "garbage",
        "none",
    ],
)
def test_cgroup_cpu_limit(tmp_path: Path, own: str, files: dict[str, str], expected: float | None) -> None:
    root, proc = cgroup_tree(tmp_path, own, files)
    assert cgroup_cpu_limit(cgroup_root=root, proc_self_cgroup=proc) == expected


@pytest.mark.parametrize(
    ("affinity", "limit", "expected"),
    [(8, None, 8), (8, 1.5, 2), (8, 0.2, 1), (2, 16.0, 2), (0, None, 1)],
    ids=["mask", "quota-rounded-up", "small-quota", "mask-below-quota", "at-least-one"],
)
def test_usable_cpus_is_the_mask_lowered_to_the_quota(
    affinity: int, limit: float | None, expected: int
) -> None:
    assert usable_cpus(affinity=lambda: affinity, cgroup_limit=lambda: limit) == expected


def test_usable_cpus_of_this_process_is_within_its_affinity() -> None:
    cpus = usable_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))


# -- the configuration --------------------------------------------------------------------------


def test_default_is_one_worker_per_usable_cpu(tmp_path: Path) -> None:
    config = serve_config(tmp_path, listen="127.0.0.1:50999", cpus=4, workers=None)  # None: the default
    assert config.workers is None and config.worker_count == 4 and config.worker_note is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"listen": "127.0.0.1:0"},
        {"listen": "unix:/tmp/authsvc-test.sock"},
        {"listen": "127.0.0.1:50999", "http_listen": "127.0.0.1:0"},
        {"listen": "127.0.0.1:50999", "metrics_listen": "127.0.0.1:0"},
    ],
    ids=["grpc-port-0", "unix", "http-port-0", "metrics-port-0"],
)
def test_default_is_one_worker_when_a_listener_cannot_be_shared(
    tmp_path: Path, overrides: dict[str, object]
) -> None:
    config = serve_config(tmp_path, cpus=4, workers=None, **{"listen": "127.0.0.1:0", **overrides})
    assert config.worker_count == 1
    assert config.worker_note is not None and "one worker, not 4" in config.worker_note


def test_an_explicit_count_wins_and_one_is_no_note(tmp_path: Path) -> None:
    assert serve_config(tmp_path, listen="127.0.0.1:50999", cpus=4, workers=2).worker_count == 2
    single = serve_config(tmp_path, cpus=4, workers=1)  # port 0, said so: nothing to explain
    assert single.worker_count == 1 and single.worker_note is None


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"listen": "127.0.0.1:0"}, "--listen"),
        ({"listen": "unix:/tmp/authsvc-test.sock"}, "--listen"),
        ({"listen": "127.0.0.1:50999", "http_listen": "127.0.0.1:0"}, "--http-listen"),
    ],
    ids=["grpc-port-0", "unix", "http-port-0"],
)
def test_several_explicit_workers_need_fixed_ports(
    tmp_path: Path, overrides: dict[str, object], flag: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"give {flag} a fixed HOST:PORT"):
        serve_config(tmp_path, workers=2, **overrides)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, None),
        (["--workers", "3"], {}, 3),
        ([], {"AUTHSVC_WORKERS": "2"}, 2),
        (["--workers", "1"], {"AUTHSVC_WORKERS": "4"}, 1),
    ],
    ids=["default", "flag", "env", "flag-wins"],
)
def test_workers_flag_and_environment(argv: list[str], env: dict[str, str], expected: int | None) -> None:
    assert build_parser(env).parse_args(["serve", *argv]).workers == expected


def test_a_held_port_is_refused_before_the_workers_start(tmp_path: Path) -> None:
    """SO_REUSEPORT would let the workers join another server's socket group; the plain probe
    sees the port taken, even by a SO_REUSEPORT listener."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        config = serve_config(tmp_path, listen=f"127.0.0.1:{port}", workers=2)
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}.*--listen"):
            check_ports_free(config)
    check_ports_free(config)  # released: free again


# -- the command --------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    return {
        **base,
        "AUTHSVC_KEK": KEK,
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
        "AUTHSVC_LOG_LEVEL": "INFO",
    }


def _serve(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "authsvc.cli", "serve", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _lines_until(proc: subprocess.Popen[str], pattern: str, count: int = 1) -> list[str]:
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if sum(1 for s in seen if re.search(pattern, s)) >= count:
            return seen
    raise AssertionError("the server exited first:\n" + "".join(seen))


def test_port_0_serves_in_one_process_and_says_why(tmp_path: Path) -> None:
    proc = _serve({**_env(tmp_path)}, "--listen", "127.0.0.1:0")
    try:
        seen = _lines_until(proc, r"TokenService listening on 127\.0\.0\.1:\d+")
        if usable_cpus() > 1:
            assert any("one worker, not" in line and "--listen is port 0" in line for line in seen), seen
        assert not any("starting" in line and "workers" in line for line in seen), seen
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, rest


def test_the_default_serves_on_every_usable_cpu_and_drains_them_all(tmp_path: Path) -> None:
    """Without --workers, on a fixed port: one process per usable CPU (its affinity mask, cut to
    two CPUs to see a group of two where the machine has them), each serving tokens; SIGTERM
    stops every one of them with 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(tmp_path)
    client_id, secret = "shop", create_client(env, "shop", "payments:read")
    # at most two CPUs in its mask whatever the machine (taskset, as an operator would)
    cpus = sorted(os.sched_getaffinity(0))[:2]
    workers = min(2, usable_cpus(affinity=lambda: len(cpus)))
    proc = subprocess.Popen(
        ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, "-m", "authsvc.cli", "serve",
         "--listen", f"127.0.0.1:{port}"],
        env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        seen = _lines_until(proc, r"TokenService listening on", count=workers)
        if workers > 1:
            assert any(f"starting {workers} workers (one per usable CPU)" in line for line in seen), seen
        for _ in range(4):  # a new channel each time: connections spread over the workers
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = token_pb2_grpc.TokenServiceStub(channel).IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials", client_id=client_id, client_secret=secret
                    ),
                    timeout=10,
                )
            assert reply.access_token.count(".") == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest
    assert rest.count("stopped") >= workers, rest  # each worker drained and said so
