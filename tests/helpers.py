"""Shared test machinery: real servers on free ports, each on its own event loop thread."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, Protocol, TypeVar


class Stoppable(Protocol):
    async def stop(self, grace: float | None) -> None: ...


T = TypeVar("T", bound=Stoppable)
R = TypeVar("R")


class ServerThread(Generic[T]):
    """Runs a ``grpc.aio`` server on an event loop in a background thread.

    ``start`` is awaited on that loop and returns the running server (anything with an async
    ``stop(grace)``); :meth:`stop` shuts it down and ends the thread.
    """

    def __init__(self, start: Callable[[], Awaitable[T]]) -> None:
        self._start = start
        self._ready: Future[T] = Future()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self._stopped = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            running = self.loop.run_until_complete(self._start())
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(running)
        self.loop.run_forever()

    def start(self) -> T:
        self._thread.start()
        return self._ready.result(timeout=30)

    @property
    def running(self) -> T:
        return self._ready.result()

    def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._ready.done() and self._ready.exception() is None:
            asyncio.run_coroutine_threadsafe(self.running.stop(grace), self.loop).result(timeout=30)
            asyncio.run_coroutine_threadsafe(_finish_tasks(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


async def _finish_tasks() -> None:
    """Cancel what is still pending on the loop (grpc.aio leaves a stream's tasks behind when the
    server stops mid-call) and wait for it, as ``asyncio.run`` does before it closes its loop: a
    task left pending on a closed loop is finalized whenever the collector gets to it, and its
    cleanup then fails with "Event loop is closed" inside whatever test runs at that moment."""
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    await asyncio.get_running_loop().shutdown_asyncgens()


class Command:
    """A server command (``authsvc serve``, ``payments-svc serve``) in a subprocess; the port it
    bound is read from its "listening on" log line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.log: list[str] = []
        for line in self.proc.stderr:
            self.log.append(line)
            if m := re.search(r"listening on (?:127\.0\.0\.1:(\d+)|unix:)", line):
                self.port = int(m.group(1)) if m.group(1) else 0  # 0: a unix: socket
                h = re.search(r"HTTP on 127\.0\.0\.1:(\d+)", line)
                self.http_port = int(h.group(1)) if h else None
                break
        else:
            raise AssertionError("the command never said where it listens:\n" + "".join(self.log))
        stderr = self.proc.stderr
        self._reader = threading.Thread(target=lambda: self.log.extend(stderr), daemon=True)
        self._reader.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The base URL of its HTTP listener (started with --http-listen)."""
        assert self.http_port is not None, "the command serves no HTTP"
        return f"http://127.0.0.1:{self.http_port}"

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait(timeout=15)

    def output(self) -> str:
        return "".join(self.log)


def authsvc_cli(*args: str, env: Mapping[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """``authsvc ARGS`` as a subprocess, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "authsvc.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def create_client(env: Mapping[str, str], client_id: str, scope: str, audience: str = "payments") -> str:
    """Register a client with ``authsvc clients create``; returns its secret."""
    out = authsvc_cli(
        "clients",
        "create",
        "--client-id",
        client_id,
        "--scope",
        scope,
        "--audience",
        audience,
        "--output",
        "json",
        env=env,
    )
    return str(json.loads(out.stdout)["client_secret"])


@contextmanager
def token_and_payment_services(env: dict[str, str]) -> Iterator[tuple[Command, Command]]:
    """``authsvc serve`` and ``payments-svc serve`` (pointed at it) as processes on free ports;
    sets ``PAYMENTS_TOKEN_SERVICE`` in ``env``; stops both with SIGTERM."""
    auth = Command(
        [
            sys.executable,
            "-m",
            "authsvc.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        env,
    )
    try:
        env["PAYMENTS_TOKEN_SERVICE"] = auth.target
        gateway = Command([sys.executable, "-m", "payments_svc.cli", "serve", "--listen", "127.0.0.1:0"], env)
        try:
            yield auth, gateway
        finally:
            gateway.terminate()
    finally:
        auth.terminate()


def run_at_once(n: int, work: Callable[[int], R]) -> tuple[list[R], list[BaseException]]:
    """``work(0..n-1)`` in n threads released together; the results and the errors."""
    barrier = threading.Barrier(n)
    results: list[R] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            result = work(i)
            with lock:
                results.append(result)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def _ephemeral_low() -> int:
    """The lowest port of the kernel's range for binds to port 0 (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing is bound to, for a test that must name its port before a server
    binds it (a command's environment, a server that comes back on the same address).

    Chosen below the kernel's ephemeral range: every server the suite starts on port 0, in any
    process, gets its port from that range, and a port taken from it here could be handed to one
    of them between this check and the bind that uses it ("address already in use" under load).
    At random among ~10,000, and checked free, so that two tests rarely ask for the same one."""
    high = _ephemeral_low() - 1
    low = max(1024, high - 10_000)
    while True:
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
