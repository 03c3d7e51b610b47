"""What the auth interceptors cost: one trivial unary method served with and without them, on a sync
``grpc.server`` and on ``grpc.aio.server``, in one run.

Run as ``.venv/bin/python tests/bench/bench_interceptor.py`` (``make bench``). In one run it:

1. generates an RSA-2048 key, writes its JWKS to a temporary file and signs access tokens (scope
   ``bench``) with :class:`~authsvc.core.tokens.TokenSigner`;
2. starts eight server processes of this same script (``--serve KIND/MODE``), each serving
   ``/bench.v1.Bench/Ping`` through a generic handler that returns a fixed 16-byte message, for KIND
   ``sync`` (``grpc.server`` with :class:`~authsvc.verify.AuthInterceptor`, a plain-function handler) and
   ``aio`` (``grpc.aio.server`` with :class:`~authsvc.verify.AioAuthInterceptor`, a coroutine handler),
   and MODE ``plain`` (no interceptor), ``noop`` (an interceptor that only calls ``continuation``: the
   floor of grpc's interceptor pipeline), ``cached`` (the interceptor over a
   :class:`~authsvc.verify.TokenVerifier` with its default verified-token cache: one repeated token) and
   ``fresh`` (the same with ``cache_size=0``: every call verifies fully, as a token never seen before);
3. checks each server with a real gRPC client (the token passes; a tampered, a scope-less and a missing
   token are refused where an interceptor is installed);
4. measures in-process, in microseconds per call: the raw RSA-2048 ``public_key.verify`` of a token's
   signature, ``verifier.verify`` of a fresh token (``cache_size=0``; and distinct tokens cycled
   through a cache smaller than their number), of a cached token, and the whole interceptor per call
   (aio ``intercept_service``; sync ``intercept_service`` plus the wrapped handler);
5. drives every server with h2load (``authorization: Bearer <token>``): tampered-token controls, a
   warm-up, then rounds that interleave the eight servers, checking that every response carried the
   message;
6. profiles the two ``cached`` servers under the same load with py-spy (``--gil``: where the thread
   holding the GIL is, i.e. where the server's Python time goes), when py-spy can attach;
7. with ``--callgrind`` (``make bench`` passes it; about 7 more minutes), counts instructions per call of
   the plain, noop and cached servers of both kinds under ``valgrind --tool=callgrind``, which, unlike
   the timings, repeat from run to run whatever else the machine does;
8. writes its section of ``tests/bench/RESULTS.md`` and prints a summary.

Servers are stopped with SIGTERM (and waited for) even when a step fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import functools
import hashlib
import os
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key, jwks_json
from authsvc.core.tokens import AccessTokenClaims, TokenSigner
from authsvc.verify import AioAuthInterceptor, AuthInterceptor, StaticJwksSource, TokenVerifier
from tests.bench import common
from tests.bench.common import BenchError, Environment, H2Run, ServerProcess, grpc_frame

SCRIPT = "tests/bench/bench_interceptor.py"
SECTION = "interceptor"
BEGIN_MARKER = common.begin_marker(SECTION, SCRIPT)
END_MARKER = common.end_marker(SECTION)

ISSUER = "https://authsvc.bench"
AUDIENCE = "bench"
SCOPE = "bench"
CLIENT_ID = "bench-client"
SERVICE, METHOD = "bench.v1.Bench", "Ping"
GRPC_PATH = f"/{SERVICE}/{METHOD}"
POLICY = {GRPC_PATH: [SCOPE]}
PAYLOAD = b"authsvc-bench-ok"  # the raw response message (bytes passthrough): 16 bytes
FRAME = len(grpc_frame(PAYLOAD))  # what h2load must count as response data per successful call
KINDS = ("sync", "aio")
MODES = ("plain", "noop", "cached", "fresh")
AUTH_MODES = ("cached", "fresh")  # the modes that verify tokens (plain and noop let every call through)
SERVERS = tuple(f"{kind}/{mode}" for kind in KINDS for mode in MODES)
TARGET_CACHED = 0.95  # issue 14 goal 1: cached / plain, both kinds
TARGET_FRESH = 0.85  # issue 14 goal 2: fresh / plain over gRPC
TARGET_VERIFY = 1.5  # issue 14 goal 2: full verification / raw RSA verify, in process
SYNC_WORKERS = 8  # the sync server's thread pool

CONNECTIONS, STREAMS = 16, 4  # h2load -c, -m
WARMUP_REQUESTS = 3000
# Each round runs every server once, the order rotated by one per round. After MIN_ROUNDS, rounds go on
# while a server has no quiet run (other processes below NOISY_CORES), up to MAX_ROUNDS or ROUNDS_SECONDS.
MIN_ROUNDS, MAX_ROUNDS, ROUNDS_SECONDS = 4, 6, 95.0
MEASURE_SECONDS = 3.0  # each measured run gets -n sized from its server's warm-up rate to last about this
MIN_REQUESTS, MAX_REQUESTS = 2000, 100_000
NEGATIVE_REQUESTS = 200
FRAME_TOLERANCE = 0.0  # every call answers exactly one FRAME-byte message; a refusal answers none
NOISY_CORES = 0.2  # other processes using more CPU than this during a counted run make the figures suspect
MICRO_BATCHES = 9  # in-process timings: batches of each function, interleaved; the fastest batch counts
MICRO_BATCH_SECONDS = 0.08
DISTINCT_TOKENS, DISTINCT_CACHE = 512, 64  # the in-process 'fresh, distinct' case: every call a miss
PROFILE_SECONDS, PROFILE_RATE, PROFILE_TOP = 5, 200, 12
# callgrind: each of these servers in its own valgrind'd process, driven by h2load from outside; the
# counters zeroed and dumped around runs of each size in turn (short, long, short, long)
CALLGRIND_MODES = ("plain", "noop", "cached")
CALLGRIND_WARMUP = 300
CALLGRIND_CALLS = (200, 1000, 200, 1000)


# -- the servers (``--serve KIND/MODE``) ---------------------------------------------------------


async def aio_ping(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """The trivial aio handler: whatever the request, the fixed message."""
    return PAYLOAD


ping = aio_ping  # bench_scale.py serves the same handler


def sync_ping(request: bytes, context: grpc.ServicerContext) -> bytes:
    """The trivial sync handler: whatever the request, the fixed message."""
    return PAYLOAD


class NoopInterceptor(grpc.ServerInterceptor):
    """The floor of any sync interceptor: grpc's interceptor pipeline with nothing in it."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return continuation(handler_call_details)


class AioNoopInterceptor(grpc.aio.ServerInterceptor):
    """The floor of any grpc.aio interceptor: grpc.aio's interceptor pipeline with nothing in it."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return await continuation(handler_call_details)


def make_verifier(jwks: str, mode: str, cache_size: int | None = None) -> TokenVerifier:
    source = StaticJwksSource(jwks)
    size = cache_size if cache_size is not None else 0 if mode == "fresh" else 10_000
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=source, cache_size=size)
    if not verifier.keys.refresh():  # so that the first call does not pay for the fetch
        raise SystemExit("bad JWKS")
    return verifier


def _generic_handler(behavior: Callable[..., Any]) -> grpc.GenericRpcHandler:
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        behavior
    )  # no (de)serializers: bytes in, bytes out
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})


async def serve_aio(mode: str, port: int, jwks: str) -> None:
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if mode == "noop":
        interceptors.append(AioNoopInterceptor())
    elif mode != "plain":
        interceptors.append(AioAuthInterceptor(make_verifier(jwks, mode), policy=POLICY))
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_generic_handler(aio_ping),))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"could not listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"serving aio/{mode} on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    await stop.wait()
    await server.stop(1)


def serve_sync(mode: str, port: int, jwks: str) -> None:
    interceptors: list[grpc.ServerInterceptor] = []
    if mode == "noop":
        interceptors.append(NoopInterceptor())
    elif mode != "plain":
        interceptors.append(AuthInterceptor(make_verifier(jwks, mode), policy=POLICY))
    pool = futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS)
    server = grpc.server(pool, interceptors=interceptors)
    server.add_generic_rpc_handlers((_generic_handler(sync_ping),))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"could not listen on 127.0.0.1:{port}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"serving sync/{mode} on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(1).wait()
    pool.shutdown(wait=True)


# -- driving the servers -------------------------------------------------------------------------


def ping_status(target: str, token: str | None) -> tuple[grpc.StatusCode, bytes | None]:
    """One Ping over a real gRPC channel: its status code and response."""
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GRPC_PATH)  # bytes passthrough
        try:
            response = call(b"", metadata=metadata, timeout=5)
        except grpc.RpcError as exc:
            return exc.code(), None
    return grpc.StatusCode.OK, bytes(response)


class BenchServer(ServerProcess):
    """One ``--serve KIND/MODE`` process; a bare MODE is an aio server (as bench_scale.py asks)."""

    def __init__(
        self, name: str, jwks_path: Path, token: str, log_path: Path, wrapper: Sequence[str] = ()
    ) -> None:
        name = name if "/" in name else f"aio/{name}"
        self.name = name
        self.kind, self.mode = name.split("/")
        self.port = common.free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}{GRPC_PATH}"
        self._token = token
        options = ["--serve", name, "--port", str(self.port), "--jwks", str(jwks_path)]
        self.display = shlex.join(["python", SCRIPT, *options]).replace(str(jwks_path), "$TMP/jwks.json")
        super().__init__(
            [*wrapper, sys.executable, str(Path(__file__).resolve()), *options],
            dict(os.environ),
            log_path,
            self._ready,
        )

    def _ready(self) -> bool:
        return common.listening_sockets(self.port) > 0 and ping_status(self.target, self._token)[0] in (
            grpc.StatusCode.OK,
            grpc.StatusCode.UNAUTHENTICATED,  # listening and answering: check_calls says whether correctly
        )


def check_calls(server: BenchServer, token: str, bad: str, unscoped: str) -> None:
    """The token passes and gets the message; with an interceptor, a tampered signature and a missing
    token are UNAUTHENTICATED and a token without the scope is PERMISSION_DENIED."""
    expect = {
        "valid token": (token, grpc.StatusCode.OK),
        "tampered signature": (bad, grpc.StatusCode.UNAUTHENTICATED),
        "no token": (None, grpc.StatusCode.UNAUTHENTICATED),
        "token without the scope": (unscoped, grpc.StatusCode.PERMISSION_DENIED),
    }
    for name, (sent, refused) in expect.items():
        status = refused if server.mode in AUTH_MODES else grpc.StatusCode.OK
        code, response = ping_status(server.target, sent)
        if code != status or (code == grpc.StatusCode.OK and response != PAYLOAD):
            raise BenchError(f"{server.name}: Ping with {name} gave {code} {response!r}, expected {status}")


def h2load(server: BenchServer, workdir: Path, requests: int, token: str, redact: dict[str, str]) -> H2Run:
    return common.h2load(
        server.url,
        workdir,
        "body.bin",
        requests,
        connections=CONNECTIONS,
        streams=STREAMS,
        server_cpu=server.cpu_seconds,
        headers=(*common.GRPC_HEADERS, f"authorization: Bearer {token}"),
        redact=redact,
    )


def check_run(run: H2Run) -> H2Run:
    return common.check_run(run, FRAME, FRAME_TOLERANCE, "Ping")


# -- instruction counts (callgrind) ---------------------------------------------------------------


@dataclass(frozen=True)
class Instructions:
    """Instructions per call of one server under callgrind: the counters are zeroed, h2load makes
    ``n`` calls, the counters are dumped; per call = (counts of the long runs - counts of the short
    runs) / (calls of the long runs - calls of the short runs), so that the connections' set-up and
    whatever does not scale with calls cancel out. ``crypto`` is the same for the instructions
    spent in libcrypto (the verifier's SHA-256 of the token, the only libcrypto call of a cached
    path; see the note on SHA-NI)."""

    name: str
    runs: list[tuple[int, int, int]]  # (calls, instructions, of which in libcrypto)

    def _per_call(self, index: int) -> float:
        short, long = min(n for n, _, _ in self.runs), max(n for n, _, _ in self.runs)
        low = [r[index] for r in self.runs if r[0] == short]
        high = [r[index] for r in self.runs if r[0] == long]
        return (sum(high) / len(high) - sum(low) / len(low)) / (long - short)

    @property
    def per_call(self) -> float:
        return self._per_call(1)

    @property
    def crypto_per_call(self) -> float:
        return self._per_call(2)

    @property
    def spread(self) -> float:
        """How far apart the estimates of each (short, long) pair are, relative to the figure."""
        short, long = min(n for n, _, _ in self.runs), max(n for n, _, _ in self.runs)
        low = [i for n, i, _ in self.runs if n == short]
        high = [i for n, i, _ in self.runs if n == long]
        pairs = [(h - lo) / (long - short) for lo, h in zip(low, high, strict=True)]
        return (max(pairs) - min(pairs)) / self.per_call


class CallgrindServer(BenchServer):
    """A BenchServer under ``valgrind --tool=callgrind`` (tens of times slower to start)."""

    START_SECONDS = 180.0

    def __init__(self, name: str, jwks_path: Path, token: str, workdir: Path) -> None:
        self.out = workdir / f"callgrind-{name.replace('/', '-')}.out"
        super().__init__(
            name,
            jwks_path,
            token,
            workdir / f"callgrind-{name.replace('/', '-')}.log",
            callgrind_command(self.out),
        )
        self.dumps = 0

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.args, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.START_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BenchError(f"the server exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(1.0)
        raise BenchError(f"the callgrind server did not become ready:\n{self.log_tail()}")

    def control(self, flag: str) -> None:
        common.run_text(["callgrind_control", flag, str(self.pid)], timeout=60)

    def counted(self, run: Callable[[], H2Run]) -> tuple[int, int]:
        """Zero the counters, ``run()``, dump them: (instructions, of which in libcrypto)."""
        self.control("-z")
        check_run(run())
        self.control("-d")
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}")
        for _ in range(100):  # the dump is written by the server, after callgrind_control returns
            if dump.exists() and re.search(r"^totals: \d+", dump.read_text(errors="replace"), re.M):
                break
            time.sleep(0.1)
        text = dump.read_text(errors="replace")
        found = re.search(r"^totals: (\d+)", text, re.M)
        if found is None:
            raise BenchError(f"no totals in {dump}")
        annotated = common.run_text(["callgrind_annotate", "--threshold=100", str(dump)], timeout=120)
        crypto = sum(
            int(line.split()[0].replace(",", ""))
            for line in annotated.splitlines()
            if "libcrypto" in line and line.strip()[:1].isdigit()
        )
        return int(found.group(1)), crypto


def callgrind_command(out: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=no",
        "--separate-threads=no",
        f"--callgrind-out-file={out}",
    ]


def callgrind_one(
    name: str, jwks_path: Path, token: str, workdir: Path, redact: dict[str, str]
) -> Instructions:
    server = CallgrindServer(name, jwks_path, token, workdir)
    try:
        server.start()
        h2load(server, workdir, CALLGRIND_WARMUP, token, redact)
        runs = []
        for calls in CALLGRIND_CALLS:
            runs.append(
                (calls, *server.counted(functools.partial(h2load, server, workdir, calls, token, redact)))
            )
    finally:
        server.stop()
    return Instructions(name, runs)


def callgrind_counts(
    jwks_path: Path, token: str, workdir: Path, redact: dict[str, str]
) -> dict[str, Instructions]:
    """Every CALLGRIND_SERVERS server in turn under callgrind, the two kinds of a mode side by side
    (instruction counts do not depend on what else the machine runs)."""
    counts: dict[str, Instructions] = {}
    with futures.ThreadPoolExecutor(max_workers=len(KINDS)) as pool:
        for mode in CALLGRIND_MODES:
            jobs = {
                kind: pool.submit(callgrind_one, f"{kind}/{mode}", jwks_path, token, workdir, redact)
                for kind in KINDS
            }
            for kind, job in jobs.items():
                got = counts[f"{kind}/{mode}"] = job.result()
                print(
                    f"  callgrind {kind}/{mode}: {got.per_call:.0f} instructions per call "
                    f"({got.crypto_per_call:.0f} in libcrypto), runs {got.runs}"
                )
    return counts


# -- the profile ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """py-spy's samples of one server under load: the share of GIL-holding samples per function."""

    server: str
    samples: int
    own: list[tuple[str, float]]  # (function, share of samples in the function itself)
    ours: list[tuple[str, float]]  # (authsvc function, share of samples in it or what it calls)
    note: str = ""


_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:)]+)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = (
                path.split(marker, 1)[1].split("/", 1)[-1]
                if marker.startswith("/")
                else path.split(marker, 1)[1]
            )
    return f"{match.group('func')} ({path})"


def profile(server: BenchServer, workdir: Path, requests: int, token: str, redact: dict[str, str]) -> Profile:
    """py-spy ``record --gil`` on ``server`` while h2load drives it (the run is checked like the others)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return Profile(server.name, 0, [], [], "py-spy is not installed (pip install py-spy)")
    out = workdir / f"profile-{server.kind}.txt"
    cmd = [pyspy, "record", "--gil", "--nonblocking", "-r", str(PROFILE_RATE), "-d", str(PROFILE_SECONDS)]
    cmd += ["-f", "raw", "-o", str(out), "--pid", str(server.pid)]
    spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)  # attached before the load starts
        check_run(h2load(server, workdir, requests, token, redact))
    finally:
        output = spy.communicate(timeout=PROFILE_SECONDS + 30)[0].decode(errors="replace")
    if spy.returncode != 0 or not out.exists():
        return Profile(server.name, 0, [], [], f"py-spy could not profile: {output.strip()[-200:]}")
    own: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            if "(authsvc/" in name:
                ours[name] += int(count)
    if total == 0:
        return Profile(server.name, 0, [], [], "py-spy took no samples")
    return Profile(
        server.name,
        total,
        [(f, c / total) for f, c in own.most_common(PROFILE_TOP)],
        [(f, c / total) for f, c in ours.most_common(PROFILE_TOP)],
    )


# -- in-process timings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Micro:
    name: str
    us_per_call: list[float]  # one figure per batch

    @property
    def best(self) -> float:
        return min(self.us_per_call)

    @property
    def median(self) -> float:
        return statistics.median(self.us_per_call)


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass
class _CallDetails:
    """What a server interceptor is given (``grpc.HandlerCallDetails``)."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class _SyncContext:
    """What the sync interceptor's guarded handler uses of a ``grpc.ServicerContext`` on an accepted
    call (the metadata, for an unbound token): enough to call it in process."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def micro_timings(jwks: str, token: str, distinct: list[str]) -> dict[str, Micro]:
    """Microseconds per call, timed in interleaved batches with ``time.perf_counter``:

    - ``raw``: the RSA-2048 verification of the token's signature (``public_key.verify``);
    - ``full``: ``verifier.verify(token)`` with ``cache_size=0`` (the same token every time);
    - ``distinct``: ``verifier.verify`` of DISTINCT_TOKENS different tokens in turn through a cache of
      DISTINCT_CACHE entries (every call a miss that inserts and evicts);
    - ``cached``: ``verifier.verify(token)`` with the default cache;
    - ``aio_cached``, ``aio_fresh``: ``AioAuthInterceptor.intercept_service`` awaited on an event loop, its
      continuation returning the Ping handler at once (token extraction, policy, verification, scopes);
    - ``sync_cached``, ``sync_fresh``: ``AuthInterceptor.intercept_service`` and the handler it returns,
      called as the worker thread would (the verification runs there)."""
    uncached, cached = make_verifier(jwks, "fresh"), make_verifier(jwks, "cached")
    cycling = make_verifier(jwks, "cached", cache_size=DISTINCT_CACHE)
    for verifier in (uncached, cached):
        if verifier.verify(token).scopes != {SCOPE}:  # also fills the cache
            raise BenchError("the bench token does not verify")
    signing_input, _, signature_b64 = token.rpartition(".")
    signature, message = _b64url_decode(signature_b64), signing_input.encode("ascii")
    public_key = uncached.keys.get(next(iter(uncached.keys.kids)))
    assert public_key is not None
    pkcs1v15, sha256 = padding.PKCS1v15(), hashes.SHA256()
    turn = iter(range(1 << 62))

    def timed(call: Callable[[], object]) -> Callable[[int], float]:
        def batch(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                call()
            return time.perf_counter() - start

        return batch

    aio_handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(aio_ping)
    sync_handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(sync_ping)
    details = _CallDetails(GRPC_PATH, (("user-agent", "h2load"), ("authorization", f"Bearer {token}")))
    loop = asyncio.new_event_loop()

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return aio_handler

    def aio_intercepted(verifier: TokenVerifier) -> Callable[[int], float]:
        interceptor = AioAuthInterceptor(verifier, policy=POLICY)

        async def run(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                await interceptor.intercept_service(continuation, details)
            return time.perf_counter() - start

        def batch(n: int) -> float:
            return loop.run_until_complete(run(n))

        return batch

    def sync_intercepted(verifier: TokenVerifier) -> Callable[[int], float]:
        interceptor = AuthInterceptor(verifier, policy=POLICY)
        context = _SyncContext(details.invocation_metadata)

        def call() -> object:
            handler = interceptor.intercept_service(lambda _: sync_handler, details)
            assert handler is not None and handler.unary_unary is not None
            return handler.unary_unary(b"", context)  # type: ignore[arg-type]

        if call() != PAYLOAD:
            raise BenchError("the sync interceptor did not pass the bench token in process")
        return timed(call)

    batches: dict[str, Callable[[int], float]] = {
        "raw": timed(lambda: public_key.verify(signature, message, pkcs1v15, sha256)),
        "full": timed(lambda: uncached.verify(token)),
        "distinct": timed(lambda: cycling.verify(distinct[next(turn) % len(distinct)])),
        "cached": timed(lambda: cached.verify(token)),
        "aio_cached": aio_intercepted(cached),
        "aio_fresh": aio_intercepted(uncached),
        "sync_cached": sync_intercepted(cached),
        "sync_fresh": sync_intercepted(uncached),
    }
    try:
        counts = {}
        for name, batch in batches.items():  # size the batches
            n, elapsed = 10, 0.0
            while (elapsed := batch(n)) < 0.02:
                n *= 2
            counts[name] = max(20, int(n * MICRO_BATCH_SECONDS / elapsed))
        timings: dict[str, list[float]] = {name: [] for name in batches}
        for _ in range(MICRO_BATCHES):
            for name, batch in batches.items():
                timings[name].append(batch(counts[name]) / counts[name] * 1e6)
    finally:
        loop.close()
    return {name: Micro(name, us) for name, us in timings.items()}


# -- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerResult:
    name: str
    server_command: str
    warmup: H2Run
    runs: list[tuple[int, H2Run]]  # (round, run)
    negative: H2Run | None  # the tampered-token control (interceptor modes only)

    @property
    def best(self) -> H2Run:
        """The fastest quiet run (other processes below NOISY_CORES), or the fastest run if none was."""
        quiet = [run for _, run in self.runs if run.other_cores <= NOISY_CORES]
        return max(quiet or [run for _, run in self.runs], key=lambda r: r.req_per_s)

    @property
    def rates(self) -> str:
        return ", ".join(f"{run.req_per_s:.0f}" for _, run in self.runs)

    def rate_in(self, round_: int) -> float:
        return next(run.req_per_s for r, run in self.runs if r == round_)

    @property
    def median_rate(self) -> float:
        return statistics.median(run.req_per_s for _, run in self.runs)

    @property
    def least_us(self) -> float:
        """The least server CPU per call of the measured runs, in microseconds (contention only adds)."""
        return min(run.server_us_per_request for _, run in self.runs)


@dataclass(frozen=True)
class Report:
    env: Environment
    token_bytes: int
    servers: dict[str, ServerResult]
    micro: dict[str, Micro]
    profiles: list[Profile]
    seconds: float
    instructions: dict[str, Instructions]  # empty when callgrind was not run

    def instruction_ratio(self, kind: str, mode: str, *, crypto: bool = True) -> float:
        """plain's instructions per call over ``mode``'s (as a throughput ratio); without
        ``crypto``, libcrypto's instructions left out of both."""
        plain, other = self.instructions[f"{kind}/plain"], self.instructions[f"{kind}/{mode}"]
        if crypto:
            return plain.per_call / other.per_call
        return (plain.per_call - plain.crypto_per_call) / (other.per_call - other.crypto_per_call)

    @property
    def rounds(self) -> int:
        return len(self.servers[SERVERS[0]].runs)

    def ratio(self, kind: str, mode: str) -> float:
        """The headline: best run of ``kind/mode`` over best run of ``kind/plain``."""
        return self.servers[f"{kind}/{mode}"].best.req_per_s / self.servers[f"{kind}/plain"].best.req_per_s

    def median_ratio(self, kind: str, mode: str) -> float:
        """Median run of ``kind/mode`` over median run of ``kind/plain``."""
        return self.servers[f"{kind}/{mode}"].median_rate / self.servers[f"{kind}/plain"].median_rate

    def paired_ratio(self, kind: str, mode: str) -> float:
        """Median over the rounds of ``kind/mode``'s rate over ``kind/plain``'s in the same round."""
        plain, other = self.servers[f"{kind}/plain"], self.servers[f"{kind}/{mode}"]
        return statistics.median(other.rate_in(r) / plain.rate_in(r) for r in range(1, self.rounds + 1))

    def cpu_ratio(self, kind: str, mode: str) -> float:
        """What the ratio would be for a CPU-bound server: plain's CPU per call over ``mode``'s."""
        return self.servers[f"{kind}/plain"].least_us / self.servers[f"{kind}/{mode}"].least_us

    def extra_us(self, kind: str, mode: str) -> float:
        """Server CPU per call above plain's (the least of the runs of each)."""
        return self.servers[f"{kind}/{mode}"].least_us - self.servers[f"{kind}/plain"].least_us

    def verify_ratio(self, name: str = "full") -> float:
        return self.micro[name].best / self.micro["raw"].best

    def verify_ratio_paired(self, name: str = "full") -> float:
        """Median over the batches of ``name`` over the raw RSA batch timed just before it."""
        pairs = zip(self.micro[name].us_per_call, self.micro["raw"].us_per_call, strict=True)
        return statistics.median(full / raw for full, raw in pairs)

    @property
    def noise(self) -> float:
        return max(m.best.other_cores for m in self.servers.values())

    @property
    def noise_warning(self) -> str | None:
        if self.noise <= NOISY_CORES:
            return None
        return (
            f"WARNING: other processes used up to {self.noise:.2f} cores during the best runs; the machine "
            "was busy and the figures (the ratios especially) are unreliable. Rerun when it is quiet."
        )

    def verdict(self, value: float, target: float, *, at_most: bool = False) -> str:
        return "met" if (value <= target if at_most else value >= target) else "NOT met"


def sign_tokens(count: int) -> tuple[SigningKey, Callable[[str], str]]:
    now = int(time.time())
    key = SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=now)
    signer = TokenSigner(key)

    def sign(scope: str) -> str:
        claims = AccessTokenClaims(
            iss=ISSUER,
            sub=CLIENT_ID,
            aud=AUDIENCE,
            exp=now + 3600,
            iat=now,
            nbf=now,
            jti=secrets.token_hex(16),
            client_id=CLIENT_ID,
            scope=scope,
        )
        return signer.sign(claims)

    return key, sign


def bench(
    workdir: Path, callgrind: bool
) -> tuple[dict[str, ServerResult], dict[str, Micro], list[Profile], int, dict[str, Instructions]]:
    key, sign = sign_tokens(DISTINCT_TOKENS)
    token, unscoped = sign(SCOPE), sign("other")
    distinct = [sign(SCOPE) for _ in range(DISTINCT_TOKENS)]
    # A canonical signature segment with one character changed in the middle: fails at the RSA check.
    middle = len(token) - 100
    bad = token[:middle] + ("B" if token[middle] == "A" else "A") + token[middle + 1 :]
    # The recorded commands name the tokens (double-quoted, so that a shell expands them).
    redact = {
        shlex.quote(f"authorization: Bearer {t}"): f'"authorization: Bearer {name}"'
        for t, name in ((token, "$TOKEN"), (bad, "$BAD_TOKEN"))
    }
    jwks = jwks_json([key.jwk])
    jwks_path = workdir / "jwks.json"
    jwks_path.write_text(jwks, encoding="utf-8")
    (workdir / "body.bin").write_bytes(grpc_frame(b""))
    print(
        f"token: {len(token)} B, kid {key.kid}; JWKS sha256 {hashlib.sha256(jwks.encode()).hexdigest()[:12]}"
    )

    with ExitStack() as stack:
        servers = {}
        for name in SERVERS:
            server = BenchServer(name, jwks_path, token, workdir / f"server-{name.replace('/', '-')}.log")
            stack.callback(server.stop)
            server.start()
            check_calls(server, token, bad, unscoped)
            servers[name] = server
        print(f"servers up and checked: {', '.join(f'{m} pid {s.pid}' for m, s in servers.items())}")

        print("in-process timings...")
        micro = micro_timings(jwks, token, distinct)
        for m in micro.values():
            print(f"  {m.name}: best {m.best:.1f} us/call, median {m.median:.1f}")

        negatives: dict[str, H2Run] = {}
        for name, server in servers.items():
            if server.mode not in AUTH_MODES:
                continue
            run = h2load(server, workdir, NEGATIVE_REQUESTS, bad, redact)
            if run.succeeded != run.requests or run.data_bytes != 0:
                raise BenchError(f"the tampered-token control did not look as expected: {run}")
            negatives[name] = run
            print(
                f"  {name}: tampered-token control {run.succeeded}/{run.requests} 'succeeded', "
                f"{run.data_per_request:.0f} B/req"
            )
        warmups, sizes = {}, {}
        for name in SERVERS:
            warmups[name] = check_run(h2load(servers[name], workdir, WARMUP_REQUESTS, token, redact))
            rate = warmups[name].req_per_s
            sizes[name] = min(MAX_REQUESTS, max(MIN_REQUESTS, int(round(rate * MEASURE_SECONDS, -2))))
            print(f"  {name}: warm-up {rate:.0f} req/s; measuring with -n {sizes[name]}")
        runs: dict[str, list[tuple[int, H2Run]]] = {name: [] for name in SERVERS}
        started = time.monotonic()
        for round_ in range(1, MAX_ROUNDS + 1):
            if round_ > MIN_ROUNDS and (
                all(any(run.other_cores <= NOISY_CORES for _, run in runs[name]) for name in SERVERS)
                or time.monotonic() - started > ROUNDS_SECONDS
            ):
                break
            shift = (round_ - 1) % len(SERVERS)
            for name in SERVERS[shift:] + SERVERS[:shift]:
                run = check_run(h2load(servers[name], workdir, sizes[name], token, redact))
                runs[name].append((round_, run))
                print(
                    f"  round {round_} {name}: {run.req_per_s:.0f} req/s, mean {run.mean_latency}, "
                    f"server {run.server_cores:.2f} cores {run.server_us_per_request:.0f} us/call, "
                    f"h2load {run.client_cores:.2f}, other {run.other_cores:.2f}"
                )
        profiles = []
        for kind in KINDS:
            name = f"{kind}/cached"
            profiles.append(profile(servers[name], workdir, sizes[name] * 2, token, redact))
            print(f"  profile {name}: {profiles[-1].samples} samples {profiles[-1].note}")
        for server in servers.values():
            check_calls(server, token, bad, unscoped)  # still healthy and still enforcing after the load
        results = {
            name: ServerResult(name, servers[name].display, warmups[name], runs[name], negatives.get(name))
            for name in SERVERS
        }
    instructions = {}
    if callgrind:
        print("instruction counts under callgrind...")
        instructions = callgrind_counts(jwks_path, token, workdir, redact)
    return results, micro, profiles, len(token), instructions


# -- report --------------------------------------------------------------------------------------


def _commands(report: Report) -> list[str]:
    commands = ["# servers (all eight run during the whole benchmark)"]
    commands += [m.server_command for m in report.servers.values()]
    commands += ["# tampered-token controls"]
    commands += [m.negative.command for m in report.servers.values() if m.negative is not None]
    commands += ["# warm-up"] + [m.warmup.command for m in report.servers.values()]
    commands += ["# measured (every round runs each server once; -n per server as shown)"]
    seen = dict.fromkeys(run.command for m in report.servers.values() for _, run in m.runs)
    commands += list(seen)
    commands += [
        "# profile of each cached server, during one more run of the same load",
        f"py-spy record --gil --nonblocking -r {PROFILE_RATE} -d {PROFILE_SECONDS} -f raw -o profile.txt "
        "--pid $PID",
    ]
    return commands


def _callgrind_lines(report: Report) -> list[str]:
    if not report.instructions:
        return [
            "Instruction counts: not measured in this run (they take `--callgrind`, which `make bench` "
            "passes, and valgrind, which this machine lacks).",
            "",
        ]
    rows = [
        f"| {c.name} | {c.per_call:,.0f} | {c.crypto_per_call:,.0f} | {c.spread:.1%} | "
        + ", ".join(f"{n}: {i:,}" for n, i, _ in c.runs)
        + " |"
        for c in report.instructions.values()
    ]
    return [
        "Instruction counts (deterministic where the timings are not): each server of "
        f"{', '.join(CALLGRIND_MODES)} runs alone under `valgrind --tool=callgrind --trace-children=no "
        "--separate-threads=no` (every thread counted), driven by the same h2load load from outside; "
        "`callgrind_control -z` before and `-d` after runs of "
        f"{' / '.join(map(str, CALLGRIND_CALLS))} calls (after {CALLGRIND_WARMUP} warm-up calls), and the "
        "figure per call is (mean of the long runs - mean of the short runs) / the difference in calls, so "
        "that start-up and the connections cancel out. 'spread' is how far the two pairs' estimates lie "
        "apart. The aio and sync server of a mode run side by side. Run with "
        f"`python {SCRIPT} --callgrind` (as `make bench` does: about 7 more minutes on 2 cores; the "
        "timed ratios of this shared machine swing more between runs than the effects measured here). "
        "Caveat: valgrind hides SHA-NI, so "
        "OpenSSL's SHA-256 of the token (the verified-token cache's key) runs its generic code under "
        "callgrind, several times the instructions it takes on this CPU (`sha_ni` in /proc/cpuinfo): the "
        "ratios without libcrypto bound the real cost from the other side.",
        "",
        "| server | instructions per call | in libcrypto | spread | instructions per dump (calls: Ir) |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _profile_lines(report: Report) -> list[str]:
    lines = [
        "Where the time goes (py-spy `--gil`: samples of the thread holding the GIL, so Python time; the "
        "C core of grpc runs without it and is not in these shares). For each `cached` server: the "
        "functions most often on top of the stack, and the authsvc functions most often anywhere on it "
        "(their own time and what they call). Without `--native` py-spy cannot name grpc's Cython "
        "functions: on the aio server they run inside `Handle._run` (asyncio's callbacks, where grpc.aio's "
        "per-call coroutines are stepped), on the sync server inside `_serve` and the `grpc/_server.py` "
        "frames around it:",
        "",
    ]
    for p in report.profiles:
        if not p.samples:
            lines += [f"- `{p.server}`: no profile ({p.note})", ""]
            continue
        lines += [
            f"`{p.server}`, {p.samples} samples:",
            "",
            "| on top of the stack | share | authsvc, inclusive | share |",
        ]
        lines += ["|---|---|---|---|"]
        for i in range(max(len(p.own), len(p.ours))):
            own = p.own[i] if i < len(p.own) else ("", 0.0)
            ours = p.ours[i] if i < len(p.ours) else ("", 0.0)
            lines.append(
                f"| {own[0]} | {own[1]:.1%} | {ours[0]} | {ours[1]:.1%} |".replace("|  | 0.0% |", "| | |")
            )
        lines.append("")
    return lines


def render(report: Report) -> str:
    m = report.micro
    rows = [
        f"| {round_} | {server.name} | {run.requests} | {run.req_per_s:.0f} | {run.mean_latency} "
        f"| {run.data_per_request:.1f} ({FRAME}) | {run.server_cores:.2f} | {run.server_us_per_request:.0f} "
        f"| {run.client_cores:.2f} | {run.other_cores:.2f} | {'best' if run is server.best else ''} |"
        for round_ in range(1, report.rounds + 1)
        for server in report.servers.values()
        for r, run in server.runs
        if r == round_
    ]
    micro_rows = [
        f"| {label} | {x.best:.1f} | {x.median:.1f} | {', '.join(f'{u:.1f}' for u in x.us_per_call)} |"
        for label, x in (
            ("`public_key.verify(sig, input, PKCS1v15(), SHA256())` (raw RSA-2048)", m["raw"]),
            ("`verifier.verify(token)`, `cache_size=0` (full verification)", m["full"]),
            (
                f"`verifier.verify(t)`, {DISTINCT_TOKENS} distinct tokens in turn, "
                f"`cache_size={DISTINCT_CACHE}`",
                m["distinct"],
            ),
            ("`verifier.verify(token)`, default cache, repeated token", m["cached"]),
            ("`AioAuthInterceptor.intercept_service`, default cache, repeated token", m["aio_cached"]),
            ("`AioAuthInterceptor.intercept_service`, `cache_size=0`", m["aio_fresh"]),
            ("`AuthInterceptor.intercept_service` + wrapped handler, default cache", m["sync_cached"]),
            ("`AuthInterceptor.intercept_service` + wrapped handler, `cache_size=0`", m["sync_fresh"]),
        )
    ]
    controls = ", ".join(
        f"{s.name} {s.negative.succeeded}/{s.negative.requests} 'succeeded' with "
        f"{s.negative.data_per_request:.0f} B/req"
        for s in report.servers.values()
        if s.negative is not None
    )
    figures = []
    for kind in KINDS:
        of_kind = [report.servers[f"{kind}/{x}"] for x in MODES]
        rates = " / ".join(f"{x.best.req_per_s:.0f} ({x.median_rate:.0f})" for x in of_kind)
        figures.append(f"| `{kind}` req/s, {' / '.join(MODES)}: best (median) of {report.rounds} | {rates} |")
        for mode, target in (("noop", None), ("cached", TARGET_CACHED), ("fresh", TARGET_FRESH)):
            ratio = report.ratio(kind, mode)
            figures.append(
                f"| `{kind}` noop / plain, best runs (the control: grpc's interceptor pipeline alone) "
                f"| {ratio:.2f} |"
                if target is None
                else f"| **`{kind}` {mode} / plain, best runs (target >= {target:.2f})** "
                f"| **{ratio:.2f}** ({report.verdict(ratio, target)}) |"
            )
            figures.append(
                f"| `{kind}` {mode} / plain: median runs; median of per-round ratios; server CPU per call "
                f"| {report.median_ratio(kind, mode):.2f}; {report.paired_ratio(kind, mode):.2f}; "
                f"{report.cpu_ratio(kind, mode):.2f} |"
            )
        figures.append(
            f"| `{kind}` server CPU per call, {' / '.join(MODES)} (least of the runs); above plain "
            f"| {' / '.join(f'{x.least_us:.0f}' for x in of_kind)} us; "
            f"{' / '.join(f'+{report.extra_us(kind, x):.0f}' for x in MODES[1:])} us |"
        )
        if report.instructions:
            counts = [report.instructions[f"{kind}/{x}"] for x in CALLGRIND_MODES]
            figures.append(
                f"| `{kind}` instructions per call under callgrind, {' / '.join(CALLGRIND_MODES)} (of which "
                "libcrypto) | "
                + " / ".join(f"{c.per_call:,.0f} ({c.crypto_per_call:,.0f})" for c in counts)
                + " |"
            )
            for mode in CALLGRIND_MODES[1:]:
                figures.append(
                    f"| **`{kind}` {mode} / plain by instructions per call** (plain's over {mode}'s; without "
                    f"libcrypto) | **{report.instruction_ratio(kind, mode):.3f}** "
                    f"({report.instruction_ratio(kind, mode, crypto=False):.3f}) |"
                )
    full_ratio, distinct_ratio = report.verify_ratio("full"), report.verify_ratio("distinct")
    lines = [
        BEGIN_MARKER,
        "## Auth interceptor overhead: a trivial unary method with and without the interceptor, sync and aio",
        "",
        *report.env.lines(),
        f"- Run time: {report.seconds:.0f} s",
        "",
        "| Figure | Value |",
        "|---|---|",
        *figures,
        f"| **Full verification / raw RSA verify, in process** (target <= {TARGET_VERIFY:.1f}; best batches; "
        f"median of per-batch ratios) | **{full_ratio:.2f}** "
        f"({report.verdict(full_ratio, TARGET_VERIFY, at_most=True)}; "
        f"{report.verify_ratio_paired('full'):.2f}) |",
        f"| Distinct fresh tokens / raw RSA verify, in process (best; median) | {distinct_ratio:.2f}; "
        f"{report.verify_ratio_paired('distinct'):.2f} |",
        f"| Raw RSA-2048 verify; full; distinct; cached verification, in process | {m['raw'].best:.1f}; "
        f"{m['full'].best:.1f}; {m['distinct'].best:.1f}; {m['cached'].best:.1f} us |",
        f"| Whole interceptor per call, in process: aio cached / fresh; sync cached / fresh "
        f"| {m['aio_cached'].best:.1f} / {m['aio_fresh'].best:.1f}; {m['sync_cached'].best:.1f} / "
        f"{m['sync_fresh'].best:.1f} us |",
        "",
        *([f"**{report.noise_warning}**", ""] if report.noise_warning else []),
        "This machine is shared with other jobs and noisy: trust the ratios of one run more than any "
        "absolute figure, and the CPU-per-call ratios more than the rates; rerun on a quiet machine for "
        "the final figures.",
        "",
        *_callgrind_lines(report),
        *_profile_lines(report),
        f"Measured runs (h2load -c {CONNECTIONS} -m {STREAMS}, after a warm-up of {WARMUP_REQUESTS} requests "
        f"per server; {report.rounds} rounds, each running every server once in rotated order; 'best' is the "
        f"fastest run with at most {NOISY_CORES} other cores, if the server had one):",
        "",
        "| round | server | requests | req/s | mean latency | data B/req (frame) | server cores "
        "| server CPU us/call | h2load cores | other cores | |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"In-process timings (us per call; {MICRO_BATCHES} interleaved batches of about "
        f"{MICRO_BATCH_SECONDS:.2f} s each, `time.perf_counter`; the best batch is the figure):",
        "",
        "| call | best | median | batches |",
        "|---|---|---|---|",
        *micro_rows,
        "",
        "Commands (`body.bin`: the 5-byte gRPC prefix of an empty message; `$TOKEN`: an RS256 access token "
        f"of {report.token_bytes} B signed for the run; `$BAD_TOKEN`: the same with one signature character "
        "changed):",
        "",
        "```sh",
        *_commands(report),
        "```",
        "",
        "Notes:",
        "",
        f"- The servers: one process per server, serving `{GRPC_PATH}` through "
        "`grpc.method_handlers_generic_handler` with bytes passthrough and a handler that returns a fixed "
        f"{len(PAYLOAD)}-byte message: `sync/*` a plain function on `grpc.server` with a "
        f"`ThreadPoolExecutor(max_workers={SYNC_WORKERS})`, `aio/*` a coroutine on `grpc.aio.server`. "
        f"`cached` and `fresh` add `AuthInterceptor` (sync) or `AioAuthInterceptor` (aio) over "
        f"`TokenVerifier(issuer={ISSUER!r}, audience={AUDIENCE!r}, jwks=StaticJwksSource(<the run's JWKS>))`,"
        f" policy `{{{GRPC_PATH!r}: [{SCOPE!r}]}}`; `fresh` with `cache_size=0`.",
        "- `fresh` stands for a new token on every call (many clients, each new): h2load sends one header "
        "set for every request, so the gRPC servers get one token and `cache_size=0` makes every call pay "
        "the full verification (size, base64url, strict JSON, header, claims, key lookup, RSA) that a token "
        "never seen before pays; nothing is remembered. In process, the 'distinct' row verifies "
        f"{DISTINCT_TOKENS} different tokens in turn through a {DISTINCT_CACHE}-entry cache, so every call "
        "also inserts an entry and evicts the oldest, as a stream of new clients does; the two agree.",
        "- Same core budget: all eight servers run for the whole benchmark, unpinned, each free to use all "
        f"{report.env.nproc} cores while it is measured; the idle ones show up under 'other cores'. h2load "
        "(one thread) shares the cores with the measured server.",
        "- Success check: a refused gRPC call is HTTP 200 with a grpc-status trailer and no message, so "
        f"h2load's 'succeeded' proves nothing. Every measured run must count exactly {FRAME} B of response "
        f"data per request (the {len(PAYLOAD)}-byte message in its 5-byte frame). Tampered-token controls: "
        f"{controls}. Before and after the load a gRPC client checked that each interceptor server accepts "
        "the token and refuses a tampered, a missing and a scope-less token.",
        "- Estimates of each ratio: the headline compares the best runs; then the median runs, the median "
        "of the per-round ratios (runs made seconds apart), and the server's least CPU time (all threads) "
        "per call, which depends least on the request rate. 'Above plain' is that CPU time above plain's: "
        "everything the interceptor adds, grpc's interceptor machinery included, so it exceeds the "
        "in-process figures. The in-process figures are best-of-batches wall time.",
        f"- Shared machine: 'other cores' is CPU used by neither the measured server nor h2load. The servers "
        "are interleaved and the best run of each is compared, because noise only ever lowers a rate; a run "
        f"with more than {NOISY_CORES} other cores counts as best only if its server had no quieter run, and "
        f"after {MIN_ROUNDS} rounds more follow (up to {MAX_ROUNDS}, about {ROUNDS_SECONDS:.0f} s of rounds "
        "in all) while a server has no quiet run. A warning above says when one never came.",
        END_MARKER,
        "",
    ]
    return "\n".join(lines)


def summary(report: Report) -> str:
    lines = []
    for kind in KINDS:
        rates = ", ".join(f"{mode} {report.servers[f'{kind}/{mode}'].best.req_per_s:.0f}" for mode in MODES)
        lines.append(
            f"{kind}: Ping req/s {rates}; cached/plain {report.ratio(kind, 'cached'):.2f} (median "
            f"{report.median_ratio(kind, 'cached'):.2f}, CPU {report.cpu_ratio(kind, 'cached'):.2f}); "
            f"fresh/plain "
            f"{report.ratio(kind, 'fresh'):.2f} (median {report.median_ratio(kind, 'fresh'):.2f}, CPU "
            f"{report.cpu_ratio(kind, 'fresh'):.2f})"
        )
    m = report.micro
    lines.append(
        f"in process: raw RSA {m['raw'].best:.1f} us, full verify {m['full'].best:.1f} us "
        f"({report.verify_ratio('full'):.2f}x), distinct {m['distinct'].best:.1f} us "
        f"({report.verify_ratio('distinct'):.2f}x), cached {m['cached'].best:.1f} us"
    )
    if report.instructions:
        lines.append(
            "callgrind, plain's instructions per call over noop's / cached's (without libcrypto): "
            + "; ".join(
                f"{kind} "
                + " / ".join(
                    f"{report.instruction_ratio(kind, m):.3f} "
                    f"({report.instruction_ratio(kind, m, crypto=False):.3f})"
                    for m in CALLGRIND_MODES[1:]
                )
                for kind in KINDS
            )
        )
    lines.append(f"written to {common.RESULTS}")
    if report.noise_warning:
        lines.append(report.noise_warning)
    return "\n".join(lines)


def main(callgrind: bool) -> int:
    common.exit_on_sigterm()
    if callgrind and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("bench_interceptor: no valgrind: instruction counts skipped", file=sys.stderr)
        callgrind = False
    common.ensure_h2load()
    started = time.monotonic()
    environment = Environment.collect()
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-interceptor-") as tmp:
        servers, micro, profiles, token_bytes, instructions = bench(Path(tmp), callgrind)
    report = Report(
        environment, token_bytes, servers, micro, profiles, time.monotonic() - started, instructions
    )
    common.write_section(SECTION, render(report))
    print(summary(report))
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--serve", choices=SERVERS, help="run one benchmark server instead of the benchmark")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jwks", type=Path, help="the JWKS file (for the interceptor modes)")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="also count instructions per call under callgrind (about 7 more minutes on 2 cores)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    if args.serve:
        kind, mode = args.serve.split("/")
        if not args.port or (mode in AUTH_MODES and args.jwks is None):
            sys.exit("--serve needs --port and, with an interceptor, --jwks")
        jwks_text = args.jwks.read_text(encoding="utf-8") if args.jwks else ""
        if kind == "aio":
            asyncio.run(serve_aio(mode, args.port, jwks_text))
        else:
            serve_sync(mode, args.port, jwks_text)
        sys.exit(0)
    try:
        sys.exit(main(args.callgrind))
    except BenchError as exc:
        print(f"bench_interceptor: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
