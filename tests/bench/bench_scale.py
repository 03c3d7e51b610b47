"""How issuance and verification scale: 10 to 100,000 registered clients, 1 to 1,000 distinct tokens.

Run as ``.venv/bin/python tests/bench/bench_scale.py`` (``make bench``); ``--quick`` is a smoke run
(SQLite only, small sizes, short windows) that prints its figures and writes nothing unless given
``--results FILE``; ``--store sqlite`` skips PostgreSQL. In one run:

1. **Issuance vs registered clients**, on SQLite and on PostgreSQL (a database created for the run at
   ``AUTHSVC_BENCH_POSTGRES``, default the local server, dropped afterwards). Two ``authsvc serve
   --workers $(nproc)`` run on the store for the whole curve: one with the default client cache (2 s,
   10,000 entries per worker process), one with ``AUTHSVC_CLIENT_CACHE_TTL=0.001``, where practically
   every request reads its client from the store (the cache-miss path). At each size the new clients
   are registered in bulk: each is built and validated by ``core.clients.new_client`` with a secret
   from ``generate_client_secret`` hashed by the deployment's own hasher, and the rows go in with the
   store's own row codec and INSERT statement in one transaction (100,000 ``clients create`` commands
   would take the whole budget; registration is not measured). Then each server is driven round-robin
   over *every* registered client, so at large sizes the default cache misses as well, as it would
   for real clients. At the first size h2load (one client's fixed request) runs too, as a reference.
2. **Client lookup in process** at each size: ``CachedClientLookup.get_client`` answered from the
   cache (a hit), and with its entry expired (a miss: the store read, the decode, the insert, the
   eviction), then one pass over up to 20,000 clients to show the cache's bound holding.
3. **Verification vs distinct tokens**, in process: ``TokenVerifier.verify`` and the whole
   ``AioAuthInterceptor.intercept_service``, round-robin over 1, 10, 100 and 1,000 distinct tokens (all
   in the default 10,000-entry cache), and over 1,000 tokens with ``cache_size=100``: beyond the
   cache, where round-robin evicts every token before its next use (every call a full verification).
4. **Verification over gRPC**: one ``grpc.aio`` server process of this script per row
   (``--serve-verify``), :class:`~authsvc.verify.AioAuthInterceptor` in front of the trivial Ping
   handler of ``bench_interceptor.py``, plus that script's server without an interceptor as the
   control for the smallest and the largest token set; all run at once and are driven in rounds.

h2load sends one fixed body and fixed headers, so it cannot spread calls over many clients or tokens.
The load comes from ``GENERATORS`` processes of this script (spawned with multiprocessing), each with
``CHANNELS`` gRPC channels (separate TCP connections) and ``IN_FLIGHT`` calls in flight on a
``grpc.aio`` loop, sending pre-serialized requests (bytes passthrough) round-robin over its share of
the clients or tokens. Every call must end OK with a response of the right shape (a token response;
exactly the handler's message); one failure fails the benchmark. The figures that matter are ratios
to the smallest size: of the rate, of the server's CPU time per call (all its processes and threads,
from /proc) and of the server's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import itertools
import multiprocessing
import os
import random
import re
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc.authority import Authority, open_authority
from authsvc.core.clients import Client, new_client
from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key, jwks_json
from authsvc.core.ports import SystemClock, SystemRandom
from authsvc.core.secrets import generate_client_secret
from authsvc.core.tokens import AccessTokenClaims, TokenSigner
from authsvc.store import postgres, sql
from authsvc.store.cache import CachedClientLookup
from authsvc.store.postgres import PostgresStore
from authsvc.store.sqlite import SQLiteStore
from authsvc.verify import AioAuthInterceptor, StaticJwksSource, TokenVerifier
from tests.bench import bench_interceptor as ping_bench
from tests.bench import common
from tests.bench.bench_issue_token import (
    AUDIENCE,
    SCOPE,
    Server,
    check_one_token,
    issue_request,
    python_sign_rate,
)
from tests.bench.common import BenchError, Environment, H2Run, ServerProcess, grpc_frame

SCRIPT = "tests/bench/bench_scale.py"
SECTION = "scale"
ADMIN_URL = os.environ.get("AUTHSVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ISSUE_PATH = "/authsvc.v1.TokenService/IssueToken"
CLIENT_CACHE_ENTRIES = 10_000  # CachedClientLookup's default max_entries, per server process
VERIFIER_CACHE_ENTRIES = 10_000  # TokenVerifier's default cache_size
MISS_TTL = "0.001"  # AUTHSVC_CLIENT_CACHE_TTL of the miss-path server: an entry lives 1 ms
MIN_TOKEN_RESPONSE = 300  # bytes: an IssueTokenResponse carries a whole RS256 JWT
NOISY_CORES = 0.2  # other processes using more CPU than this during a counted window make the figures suspect


@dataclass(frozen=True)
class Plan:
    client_sizes: tuple[int, ...]
    token_sizes: tuple[int, ...]
    beyond: tuple[int, int]  # (distinct tokens, verifier cache_size) for the beyond-the-cache row
    stores: tuple[str, ...]
    warmup: float  # seconds of load before the measured windows
    seconds: float  # each measured window
    windows: int  # measured windows per issuance load (the fastest counts)
    verify_rounds: int  # rounds over the verification servers, one window each
    verify_warmup: float
    verify_seconds: float
    retry_until: float  # seconds into the run: until then, a load with no quiet window runs once more
    micro_batches: int
    micro_batch_seconds: float


FULL = Plan(
    client_sizes=(10, 100, 1_000, 10_000, 100_000),
    token_sizes=(1, 10, 100, 1_000),
    beyond=(1_000, 100),
    stores=("sqlite", "postgresql"),
    warmup=1.0,
    seconds=2.0,
    windows=2,
    verify_rounds=3,
    verify_warmup=0.5,
    verify_seconds=1.5,
    retry_until=200.0,
    micro_batches=7,
    micro_batch_seconds=0.05,
)
QUICK = Plan(
    client_sizes=(10, 1_000),
    token_sizes=(1, 100),
    beyond=(100, 10),
    stores=("sqlite",),
    warmup=0.5,
    seconds=1.0,
    windows=2,
    verify_rounds=2,
    verify_warmup=0.5,
    verify_seconds=1.0,
    retry_until=0.0,
    micro_batches=3,
    micro_batch_seconds=0.02,
)

GENERATORS = 2  # load-generator processes
CHANNELS = 4  # gRPC channels (TCP connections) per generator: SO_REUSEPORT spreads them over the workers
IN_FLIGHT = 16  # calls in flight per generator
H2LOAD_CONNECTIONS = 64  # the reference h2load run: -c 64 -m 1, as the issuance section's best settings


# -- the load generator (spawned processes) ------------------------------------------------------

Call = tuple[bytes, tuple[tuple[str, str], ...] | None]  # serialized request, metadata


@dataclass(frozen=True)
class Job:
    target: str
    path: str
    calls: list[Call]
    expect: bytes | None  # the exact response every call must get, or None
    min_bytes: int  # else at least this many bytes


@dataclass(frozen=True)
class Share:
    """One generator's part of a run: calls answered correctly inside each window, failures anywhere."""

    calls: list[int]  # per window
    cpu_seconds: list[float]  # the generator process's CPU time in each window
    failures: int
    first_failure: str


def generator_main(conn: Connection) -> None:
    """A generator process: run each :class:`Job` it is sent until it is sent None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when it ends
    while (job := conn.recv()) is not None:
        try:
            conn.send(asyncio.run(_load(conn, job)))
        except Exception as exc:  # the parent fails the benchmark with it
            conn.send(f"{type(exc).__name__}: {exc}")


async def _load(conn: Connection, job: Job) -> Share:
    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels = [grpc.aio.insecure_channel(job.target, options=options) for _ in range(CHANNELS)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        # bytes passthrough: no (de)serializers
        methods: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            channel.unary_unary(job.path) for channel in channels
        ]
        conn.send("ready")
        bounds: list[float] = await asyncio.to_thread(conn.recv)  # window edges, time.monotonic()
        stop_at = bounds[-1]
        counter, n = itertools.count(), len(job.calls)
        done = [0] * (len(bounds) - 1)
        failures = 0
        first = ""
        marks: list[float] = []

        async def caller(k: int) -> None:
            nonlocal failures, first
            method = methods[k % len(methods)]
            while time.monotonic() < stop_at:
                body, metadata = job.calls[next(counter) % n]
                try:
                    response = await method(body, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    failures += 1
                    first = first or f"{exc.code().name}: {exc.details()}"
                    continue
                if (job.expect is not None and response != job.expect) or len(response) < job.min_bytes:
                    failures += 1
                    first = first or f"unexpected response of {len(response)} B"
                    continue
                window = bisect.bisect_right(bounds, time.monotonic()) - 1
                if 0 <= window < len(done):
                    done[window] += 1

        async def cpu_marks() -> None:
            for edge in bounds:
                await asyncio.sleep(max(0.0, edge - time.monotonic()))
                marks.append(time.process_time())

        await asyncio.gather(cpu_marks(), *(caller(k) for k in range(IN_FLIGHT)))
        return Share(done, [b - a for a, b in itertools.pairwise(marks)], failures, first)
    finally:
        for channel in channels:
            await channel.close()


@dataclass(frozen=True)
class LoadRun:
    """One counted window: calls answered, and the CPU the server, the generators and the machine used."""

    calls: int
    seconds: float
    server_cpu: float
    generator_cpu: float
    machine_cpu: float

    @property
    def req_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def server_us_per_call(self) -> float:
        return self.server_cpu / self.calls * 1e6

    @property
    def server_cores(self) -> float:
        return self.server_cpu / self.seconds

    @property
    def generator_cores(self) -> float:
        return self.generator_cpu / self.seconds

    @property
    def other_cores(self) -> float:
        return max(0.0, self.machine_cpu - self.server_cpu - self.generator_cpu) / self.seconds


@dataclass(frozen=True)
class Measured:
    """The counted windows of one load. The figures come from the quiet windows (other processes below
    NOISY_CORES) if there are any, else from all: the fastest rate, the least CPU per call (noise only
    ever lowers the one and adds to the other)."""

    windows: list[LoadRun]

    @property
    def quiet(self) -> list[LoadRun]:
        return [w for w in self.windows if w.other_cores <= NOISY_CORES]

    @property
    def counted(self) -> list[LoadRun]:
        return self.quiet or self.windows

    @property
    def best(self) -> LoadRun:
        return max(self.counted, key=lambda w: w.req_per_s)

    @property
    def rates(self) -> str:
        return "/".join(f"{w.req_per_s:.0f}" for w in self.windows)

    @property
    def least_us(self) -> float:
        return min(w.server_us_per_call for w in self.counted)

    @property
    def other_cores(self) -> float:
        """The most CPU other processes used in a counted window."""
        return max(w.other_cores for w in self.counted)

    @property
    def cpu(self) -> str:
        return "/".join(f"{w.server_us_per_call:.0f}" for w in self.windows)


class LoadGenerator:
    """``GENERATORS`` spawned processes that drive one server at a time."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(GENERATORS):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=generator_main, args=(child,), daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)

    def _recv(self, conn: Connection, timeout: float) -> object:
        if not conn.poll(timeout):
            raise BenchError(f"a load generator did not answer in {timeout:.0f}s")
        return conn.recv()

    def run(
        self,
        target: str,
        path: str,
        calls: Sequence[Call],
        *,
        server_cpu: Callable[[], dict[int, float]],
        plan: Plan,
        windows: int | None = None,
        expect: bytes | None = None,
        min_bytes: int = 1,
    ) -> Measured:
        """Round-robin over ``calls`` (each generator takes every GENERATORS-th one; all of them when
        there are fewer calls than generators): ``plan.warmup`` s of load, then ``windows`` (default
        ``plan.windows``) windows of ``plan.seconds`` each, counted apart."""
        for i, conn in enumerate(self._conns):
            share = list(calls[i :: len(self._conns)]) if len(calls) >= len(self._conns) else list(calls)
            conn.send(Job(target, path, share, expect, min_bytes))
        for conn in self._conns:
            if (answer := self._recv(conn, 30)) != "ready":
                raise BenchError(f"a load generator could not start: {answer}")
        first = time.monotonic() + plan.warmup
        bounds = [first + k * plan.seconds for k in range((windows or plan.windows) + 1)]
        for conn in self._conns:
            conn.send(bounds)
        samples = []
        for edge in bounds:
            time.sleep(max(0.0, edge - time.monotonic()))
            samples.append((server_cpu(), common.machine_busy_seconds()))
        shares = [self._recv(conn, 60) for conn in self._conns]
        done = [s for s in shares if isinstance(s, Share)]
        if len(done) != len(shares):
            raise BenchError(f"a load generator failed: {shares!r}")
        failures = sum(s.failures for s in done)
        if failures:
            raise BenchError(
                f"{failures} calls failed, the first: {next(s.first_failure for s in done if s.failures)}"
            )
        counted = []
        for k, ((server_a, machine_a), (server_b, machine_b)) in enumerate(itertools.pairwise(samples)):
            calls_k = sum(s.calls[k] for s in done)
            if calls_k == 0:
                raise BenchError("no call completed in a measured window")
            server = sum(t - server_a.get(pid, 0.0) for pid, t in server_b.items())
            generators = sum(s.cpu_seconds[k] for s in done)
            counted.append(LoadRun(calls_k, plan.seconds, server, generators, machine_b - machine_a))
        return Measured(counted)

    def close(self) -> None:
        for conn in self._conns:
            with suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


@dataclass(frozen=True)
class Driver:
    """The load generators with the plan; :meth:`measure` runs a load once more when none of its
    windows was quiet, as long as the run is younger than ``plan.retry_until``."""

    generator: LoadGenerator
    plan: Plan
    retry_deadline: float  # time.monotonic()

    def measure(
        self,
        target: str,
        path: str,
        calls: Sequence[Call],
        *,
        server_cpu: Callable[[], dict[int, float]],
        min_bytes: int,
    ) -> Measured:
        def once() -> Measured:
            return self.generator.run(
                target, path, calls, server_cpu=server_cpu, plan=self.plan, min_bytes=min_bytes
            )

        measured = once()
        if not measured.quiet and time.monotonic() < self.retry_deadline:
            measured = Measured(measured.windows + once().windows)
        return measured


def rss_mib(pids: Sequence[int]) -> float:
    """Resident memory of ``pids``, summed (VmRSS, MiB)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


# -- in-process timings ----------------------------------------------------------------------------


def best_us(batches: dict[str, Callable[[int], object]], plan: Plan) -> dict[str, float]:
    """Microseconds per call of each batch function (``batch(n)`` makes n calls): sized to
    ``plan.micro_batch_seconds``, run ``plan.micro_batches`` times interleaved; the fastest batch counts."""
    counts = {}
    for name, batch in batches.items():
        n = 10
        while (elapsed := _timed(batch, n)) < plan.micro_batch_seconds / 4:
            n *= 2
        counts[name] = max(20, int(n * plan.micro_batch_seconds / elapsed))
    timings: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(plan.micro_batches):
        for name, batch in batches.items():
            timings[name].append(_timed(batch, counts[name]) / counts[name] * 1e6)
    return {name: min(us) for name, us in timings.items()}


def _timed(batch: Callable[[int], object], n: int) -> float:
    start = time.perf_counter()
    batch(n)
    return time.perf_counter() - start


def round_robin(call: Callable[[str], object], items: Sequence[str]) -> Callable[[int], None]:
    def batch(n: int) -> None:
        for item in itertools.islice(itertools.cycle(items), n):
            call(item)

    return batch


@dataclass(frozen=True)
class Lookup:
    hit_us: float
    miss_us: float
    entries: int  # what the cache held after the misses


class _Known:
    """A client lookup over clients already in memory: fills a cache without the store's cost."""

    def __init__(self, clients: Sequence[Client]) -> None:
        self._clients = {c.client_id: c for c in clients}

    def get_client(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)


def _expiring() -> Callable[[], float]:
    """A monotonic clock that jumps 10 s per reading: every cached entry has expired by the next."""
    ticks = itertools.count(0.0, 10.0)
    return lambda: next(ticks)


def lookup_timings(authority: Authority, clients: Sequence[Client], plan: Plan) -> Lookup:
    """``CachedClientLookup.get_client``: a hit (the clock stands still) round-robin over a full cache
    of the first ``min(size, 10,000)`` clients; a miss on the store (every call finds its entry
    expired) over ids spread across all registered clients; then, to show the bound, one pass of misses
    over up to 20,000 clients (served from memory: the bound does not depend on the store)."""
    known = _Known(clients)
    ids = [c.client_id for c in clients]
    hot = ids[:CLIENT_CACHE_ENTRIES]
    hits = CachedClientLookup(known, ttl=2.0, monotonic=lambda: 0.0)
    for client_id in hot:
        hits.get_client(client_id)
    misses = CachedClientLookup(authority.store, ttl=2.0, monotonic=_expiring())
    spread = random.Random(len(ids)).sample(ids, min(len(ids), 2_000))
    us = best_us(
        {"hit": round_robin(hits.get_client, hot), "miss": round_robin(misses.get_client, spread)}, plan
    )
    bounded = CachedClientLookup(known, ttl=2.0, monotonic=_expiring())
    for client_id in random.Random(len(ids)).sample(ids, min(len(ids), 2 * CLIENT_CACHE_ENTRIES)):
        bounded.get_client(client_id)
    return Lookup(us["hit"], us["miss"], len(bounded))


# -- issuance vs registered clients ----------------------------------------------------------------


def client_id_for(i: int) -> str:
    return f"scale-{i:06d}"


def register_bulk(authority: Authority, first: int, count: int) -> list[tuple[Client, str]]:
    """Register clients ``first .. first+count-1`` in one transaction; returns each with its secret."""
    hasher, now, rng = authority.deployment.hasher(), int(authority.clock.now()), authority.random
    credentials, rows = [], []
    for i in range(first, first + count):
        secret = generate_client_secret(rng)
        client = new_client(
            client_id=client_id_for(i),
            secret_hash=hasher.hash(secret),
            scopes=[SCOPE],
            audiences=[AUDIENCE],
            now=now,
        )
        credentials.append((client, secret))
        rows.append(sql._client_row(client))  # the store's own row codec and statement, in bulk
    store = authority.store
    if isinstance(store, PostgresStore):
        with store._write() as pg, pg.cursor() as cursor:
            cursor.executemany(postgres._sql(sql._INSERT_CLIENT), rows)
    elif isinstance(store, SQLiteStore):
        with store._write() as lite:
            lite.executemany(sql._INSERT_CLIENT, rows)
    else:
        raise BenchError(f"no bulk insert for {type(store).__name__}")
    for client, _ in (credentials[0], credentials[-1]):
        if store.get_client(client.client_id) != client:
            raise BenchError(f"client {client.client_id} was not registered")
    return credentials


@dataclass(frozen=True)
class IssueRow:
    clients: int
    cached: Measured
    cached_rss: float
    miss: Measured
    miss_rss: float
    lookup: Lookup


@dataclass
class StoreCurve:
    store: str
    rows: list[IssueRow] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)  # mode -> server command
    register_seconds: float = 0.0
    h2load: H2Run | None = None  # one client's fixed body, on the default-cache server at the first size


def issuance_curve(
    kind: str,
    authority: Authority,
    data_dir: Path,
    env: dict[str, str],
    *,
    driver: Driver,
    with_h2load: bool,
) -> StoreCurve:
    """Two servers on the store for the whole curve, one per mode; at each size the new clients are
    registered (the servers read them through their caches like any other), then each server is driven
    over all registered clients, the order of the modes alternating from one size to the next."""
    curve, plan = StoreCurve(kind), driver.plan
    registered: list[tuple[Client, str]] = []
    modes = {"cached": env, "miss": {**env, "AUTHSVC_CLIENT_CACHE_TTL": MISS_TTL}}
    workers = len(os.sched_getaffinity(0))
    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        for index, size in enumerate(plan.client_sizes):
            started = time.monotonic()
            registered += register_bulk(authority, len(registered), size - len(registered))
            curve.register_seconds += time.monotonic() - started
            for mode, mode_env in modes.items():
                if mode not in servers:  # started once the first clients exist; one after the other
                    server = Server(data_dir, workers, mode_env, data_dir.parent / f"issuer-{mode}.log")
                    stack.callback(server.stop)
                    server.start()
                    servers[mode] = server
                    curve.commands[mode] = server.display
            calls: list[Call] = [
                (issue_request(c.client_id, secret).SerializeToString(), None) for c, secret in registered
            ]
            first, newest = registered[0], registered[-1]
            first_credentials, newest_credentials = (
                (first[0].client_id, first[1]),
                (newest[0].client_id, newest[1]),
            )
            lookup = lookup_timings(authority, [c for c, _ in registered], plan)
            print(
                f"  {kind} {size:,} clients, in process: lookup hit {lookup.hit_us:.2f} us, miss "
                f"{lookup.miss_us:.1f} us; cache entries after the misses {lookup.entries:,}"
            )
            runs: dict[str, tuple[Measured, float]] = {}
            for mode in list(modes)[:: 1 if index % 2 == 0 else -1]:
                server = servers[mode]
                frame = check_one_token(
                    server.target, *first_credentials
                )  # a real token, checked with the JWKS
                measured = driver.measure(
                    server.target,
                    ISSUE_PATH,
                    calls,
                    server_cpu=server.cpu_seconds,
                    min_bytes=MIN_TOKEN_RESPONSE,
                )
                rss = rss_mib(server.pids())
                check_one_token(server.target, *newest_credentials)  # the newest client, after the load
                runs[mode] = (measured, rss)
                run = measured.best
                if index == 0 and mode == "cached" and with_h2load:
                    curve.h2load = h2load_reference(
                        server, data_dir.parent, first_credentials, frame, run.req_per_s * plan.seconds
                    )
                    print(
                        f"  reference: h2load, one client: {curve.h2load.req_per_s:.0f} tokens/s, server "
                        f"{curve.h2load.server_us_per_request:.0f} us CPU/token, "
                        f"other {curve.h2load.other_cores:.2f}"
                    )
                print(
                    f"  {kind} {size:,} clients, {mode}: {measured.rates} tokens/s, server {measured.cpu} us "
                    f"CPU/token, RSS {rss:.0f} MiB; best: server {run.server_cores:.2f} cores, "
                    f"generators {run.generator_cores:.2f}, other {run.other_cores:.2f}"
                )
            (cached, cached_rss), (miss, miss_rss) = runs["cached"], runs["miss"]
            curve.rows.append(IssueRow(size, cached, cached_rss, miss, miss_rss, lookup))
    return curve


def h2load_reference(
    server: Server, work: Path, credentials: tuple[str, str], frame: int, requests: float
) -> H2Run:
    """h2load on the same server with one client's request, for comparison with the generators."""
    (work / "h2load-body.bin").write_bytes(grpc_frame(issue_request(*credentials).SerializeToString()))
    run = common.h2load(
        f"http://{server.target}{ISSUE_PATH}",
        work,
        "h2load-body.bin",
        max(1000, int(round(requests, -2))),
        connections=H2LOAD_CONNECTIONS,
        streams=1,
        server_cpu=server.cpu_seconds,
    )
    return common.check_run(run, frame, 0.01, "token")


def bench_store(kind: str, work: Path, driver: Driver, *, with_h2load: bool) -> StoreCurve:
    kek = secrets.token_hex(32)
    data_dir = work / kind / "data"
    data_dir.parent.mkdir(parents=True)
    env = {**os.environ, "AUTHSVC_KEK": kek}
    env.pop("AUTHSVC_DATABASE_URL", None)
    env.pop("AUTHSVC_CLIENT_CACHE_TTL", None)
    with ExitStack() as stack:
        url = None
        if kind == "postgresql":
            name = f"authsvc_bench_scale_{secrets.token_hex(4)}"
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            stack.callback(_drop_database, name)
            url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            env["AUTHSVC_DATABASE_URL"] = url
        authority = open_authority(
            data_dir, kek=kek, kek_file=None, clock=SystemClock(), random=SystemRandom(), database_url=url
        )
        stack.callback(authority.close)
        print(f"issuance on {kind}...")
        return issuance_curve(kind, authority, data_dir, env, driver=driver, with_h2load=with_h2load)
    raise AssertionError("unreachable")


def _drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- verification vs distinct tokens ---------------------------------------------------------------


async def serve_verify(port: int, jwks_path: Path, cache_size: int) -> None:
    """``--serve-verify``: the trivial Ping handler behind AioAuthInterceptor; on SIGTERM it prints how
    many entries its verified-token cache held."""
    verifier = TokenVerifier(
        issuer=ping_bench.ISSUER,
        audience=ping_bench.AUDIENCE,
        jwks=StaticJwksSource(jwks_path.read_text(encoding="utf-8")),
        cache_size=cache_size,
    )
    if not verifier.keys.refresh():
        raise SystemExit(f"bad JWKS in {jwks_path}")
    server = grpc.aio.server(interceptors=[AioAuthInterceptor(verifier, policy=ping_bench.POLICY)])
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(ping_bench.ping)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ping_bench.SERVICE, {ping_bench.METHOD: handler}),)
    )
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"could not listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)
    print(f"verified-token cache entries: {len(verifier._verified)}", flush=True)


class VerifyServer(ServerProcess):
    def __init__(self, jwks_path: Path, cache_size: int, token: str, log_path: Path) -> None:
        self.port = common.free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._token = token
        self._log = log_path
        options = ["--serve-verify", "--port", str(self.port), "--jwks", str(jwks_path)]
        options += ["--cache-size", str(cache_size)]
        self.display = shlex.join(["python", SCRIPT, *options]).replace(str(jwks_path), "$TMP/jwks.json")
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), *options], dict(os.environ), log_path, self._ready
        )

    def _ready(self) -> bool:
        if common.listening_sockets(self.port) == 0:
            return False
        code, _ = ping_bench.ping_status(self.target, self._token)
        return code in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED)  # answering: checked after

    def cache_entries(self) -> int | None:
        """After :meth:`stop`: what the server said its cache held."""
        for line in self._log.read_text(errors="replace").splitlines()[::-1]:
            if line.startswith("verified-token cache entries: "):
                return int(line.rsplit(" ", 1)[1])
        return None


@dataclass(frozen=True)
class VerifyRow:
    tokens: int
    cache_size: int
    in_process_us: float
    intercept_us: float
    measured: Measured  # one window per round
    rss: float
    entries: int | None
    plain: Measured | None  # the same calls on the server without an interceptor, where measured

    @property
    def run(self) -> LoadRun:
        return self.measured.best

    @property
    def interceptor_us(self) -> float | None:
        """Server CPU per call above the same calls' on the server without an interceptor."""
        return None if self.plain is None else self.measured.least_us - self.plain.least_us


def sign_tokens(count: int) -> tuple[str, list[str]]:
    """A fresh key's JWKS and ``count`` distinct tokens (one client each), valid for an hour."""
    now = int(time.time())
    key = SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=now)
    signer = TokenSigner(key)
    tokens = [
        signer.sign(
            AccessTokenClaims(
                iss=ping_bench.ISSUER,
                sub=f"client-{i}",
                aud=ping_bench.AUDIENCE,
                exp=now + 3600,
                iat=now,
                nbf=now,
                jti=secrets.token_hex(16),
                client_id=f"client-{i}",
                scope=ping_bench.SCOPE,
            )
        )
        for i in range(count)
    ]
    return jwks_json([key.jwk]), tokens


def intercepted(
    verifier: TokenVerifier, tokens: Sequence[str], loop: asyncio.AbstractEventLoop
) -> Callable[[int], object]:
    """A batch of ``AioAuthInterceptor.intercept_service`` calls, round-robin over ``tokens``, its
    continuation returning the Ping handler at once: all the interceptor does per call."""
    interceptor = AioAuthInterceptor(verifier, policy=ping_bench.POLICY)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(ping_bench.ping)
    details = [
        ping_bench._CallDetails(ping_bench.GRPC_PATH, (("authorization", f"Bearer {t}"),)) for t in tokens
    ]

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return handler

    async def run(n: int) -> None:
        for call in itertools.islice(itertools.cycle(details), n):
            await interceptor.intercept_service(continuation, call)

    return lambda n: loop.run_until_complete(run(n))


def verification_curve(work: Path, generator: LoadGenerator, plan: Plan) -> tuple[list[VerifyRow], str]:
    """In-process timings, then one server per row (and one without an interceptor, for the smallest
    and the largest token set) all running at once, driven in ``plan.verify_rounds`` rounds, the order
    reversed every other round; each load counts one window per round."""
    configs = [(n, VERIFIER_CACHE_ENTRIES) for n in plan.token_sizes] + [plan.beyond]
    jwks, tokens = sign_tokens(max(n for n, _ in configs))
    jwks_path = work / "jwks.json"
    jwks_path.write_text(jwks, encoding="utf-8")
    verifiers = {}
    for n, cache_size in configs:
        verifier = TokenVerifier(
            issuer=ping_bench.ISSUER,
            audience=ping_bench.AUDIENCE,
            jwks=StaticJwksSource(jwks),
            cache_size=cache_size,
        )
        for token in tokens[:n]:
            if verifier.verify(token).scopes != {ping_bench.SCOPE}:  # fills the cache (as far as it goes)
                raise BenchError("a bench token does not verify")
        verifiers[(n, cache_size)] = verifier
    print("verification in process...")
    loop = asyncio.new_event_loop()
    try:
        batches: dict[str, Callable[[int], object]] = {
            f"{n}/{size}": round_robin(verifiers[(n, size)].verify, tokens[:n]) for n, size in configs
        }
        batches |= {
            f"{n}/{size}/intercept": intercepted(verifiers[(n, size)], tokens[:n], loop)
            for n, size in configs
        }
        micro = best_us(batches, plan)
    finally:
        loop.close()
    for n, size in configs:
        print(
            f"  {n:,} tokens, cache_size={size:,}: {micro[f'{n}/{size}']:.1f} us/verify, "
            f"{micro[f'{n}/{size}/intercept']:.1f} us/intercept_service"
        )
    bad = tokens[0][:-60] + ("A" if tokens[0][-60] != "A" else "B") + tokens[0][-59:]
    print("verification over gRPC...")
    with ExitStack() as stack:
        servers: dict[tuple[int, int], VerifyServer] = {}
        for n, cache_size in configs:
            server = VerifyServer(jwks_path, cache_size, tokens[0], work / f"verify-{n}-{cache_size}.log")
            stack.callback(server.stop)
            server.start()
            servers[(n, cache_size)] = server
            if ping_bench.ping_status(server.target, bad)[0] != grpc.StatusCode.UNAUTHENTICATED:
                raise BenchError("a verification server accepted a tampered token")
        plain = ping_bench.BenchServer("plain", jwks_path, tokens[0], work / "verify-plain.log")
        stack.callback(plain.stop)
        plain.start()
        controls = sorted({min(plan.token_sizes), max(plan.token_sizes)})
        loads: list[tuple[tuple[int, int], ServerProcess, str]] = [
            (key, server, server.target) for key, server in servers.items()
        ]
        loads += [((n, 0), plain, plain.target) for n in controls]  # cache size 0: the plain server
        windows: dict[tuple[int, int], list[LoadRun]] = {key: [] for key, _, _ in loads}
        round_plan = dataclasses.replace(plan, warmup=plan.verify_warmup, seconds=plan.verify_seconds)
        for round_ in range(plan.verify_rounds):
            for (n, size), driven, target in loads if round_ % 2 == 0 else loads[::-1]:
                calls: list[Call] = [(b"", (("authorization", f"Bearer {t}"),)) for t in tokens[:n]]
                measured = generator.run(
                    target,
                    ping_bench.GRPC_PATH,
                    calls,
                    server_cpu=driven.cpu_seconds,
                    plan=round_plan,
                    windows=1,
                    expect=ping_bench.PAYLOAD,
                )
                run = measured.best
                windows[(n, size)].append(run)
                print(
                    f"  round {round_ + 1}, {n:,} tokens, "
                    f"{f'cache_size={size:,}' if size else 'no interceptor'}: "
                    f"{run.req_per_s:.0f} calls/s, server {run.server_us_per_call:.0f} us CPU/call; "
                    f"generators {run.generator_cores:.2f} cores, other {run.other_cores:.2f}"
                )
        rss = {key: rss_mib(server.pids()) for key, server in servers.items()}
        for server in servers.values():
            if ping_bench.ping_status(server.target, bad)[0] != grpc.StatusCode.UNAUTHENTICATED:
                raise BenchError("a verification server accepted a tampered token after the load")
            server.stop()
    rows = []
    for n, size in configs:
        control = windows.get((n, 0))
        rows.append(
            VerifyRow(
                n,
                size,
                micro[f"{n}/{size}"],
                micro[f"{n}/{size}/intercept"],
                Measured(windows[(n, size)]),
                rss[(n, size)],
                servers[(n, size)].cache_entries(),
                None if control is None else Measured(control),
            )
        )
        print(
            f"  {n:,} tokens, cache_size={size:,}: RSS {rss[(n, size)]:.0f} MiB, "
            f"cache entries {rows[-1].entries}"
        )
    return rows, next(iter(servers.values())).display


# -- report ----------------------------------------------------------------------------------------


def cell(value: float, base: float, digits: int = 0) -> str:
    """A figure and, in brackets, its ratio to the first row's."""
    return f"{value:.{digits}f} ({value / base:.2f})"


@dataclass(frozen=True)
class Report:
    env: Environment
    plan: Plan
    curves: list[StoreCurve]
    verify: list[VerifyRow]
    verify_command: str
    seconds: float
    sign_per_s: float

    @property
    def worst_other(self) -> float:
        """The most CPU other processes used during a counted window."""
        measured = [r.measured for r in self.verify] + [r.plain for r in self.verify if r.plain is not None]
        measured += [m for c in self.curves for row in c.rows for m in (row.cached, row.miss)]
        return max(w.other_cores for m in measured for w in m.windows)


def _issue_table(curve: StoreCurve) -> list[str]:
    a = curve.rows[0]
    rows = []
    for r in curve.rows:
        other = max(r.cached.other_cores, r.miss.other_cores)
        rows.append(
            f"| {r.clients:,} | {cell(r.cached.best.req_per_s, a.cached.best.req_per_s)} "
            f"| {cell(r.cached.least_us, a.cached.least_us)} "
            f"| {cell(r.cached_rss, a.cached_rss)} "
            f"| {cell(r.miss.best.req_per_s, a.miss.best.req_per_s)} "
            f"| {cell(r.miss.least_us, a.miss.least_us)} "
            f"| {cell(r.miss_rss, a.miss_rss)} "
            f"| {r.lookup.hit_us:.2f} / {r.lookup.miss_us:.1f} | {r.lookup.entries:,} | {other:.2f} |"
        )
    return [
        f"### Issuance on {curve.store}: IssueToken vs registered clients",
        "",
        "| registered clients | default cache: tokens/s | server CPU us/token | server RSS MiB "
        "| store read per request: tokens/s | server CPU us/token | server RSS MiB "
        "| in process: lookup hit / miss us | cache entries after the misses | other cores (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Ratios (in brackets) are to the {a.clients:,}-client row. 'default cache': `authsvc serve` as "
        f"shipped (client cache 2 s, {CLIENT_CACHE_ENTRIES:,} entries per worker process); 'store read per "
        f"request': `AUTHSVC_CLIENT_CACHE_TTL={MISS_TTL}`. Requests go round-robin over every registered "
        "client. In process: `CachedClientLookup.get_client` answered from the cache, and with its entry "
        "expired (the store read, the decode, the insert, the eviction); then one pass over up to "
        f"{2 * CLIENT_CACHE_ENTRIES:,} of the clients, after which the cache holds what the last column "
        f"says. Registering the {a.clients:,} to {curve.rows[-1].clients:,} clients in bulk took "
        f"{curve.register_seconds:.1f} s in all (not part of any figure).",
        "",
        *(
            [
                f"Reference, same server, {a.clients:,} clients registered: h2load with one client's fixed "
                f"request, `-c {H2LOAD_CONNECTIONS} -m 1`, {curve.h2load.req_per_s:.0f} tokens/s, server CPU "
                f"{curve.h2load.server_us_per_request:.0f} us/token, other cores "
                f"{curve.h2load.other_cores:.2f} (the generators: {a.cached.best.req_per_s:.0f} tokens/s, "
                f"{a.cached.least_us:.0f} us/token): "
                "`" + re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT", curve.h2load.command) + "`.",
                "",
            ]
            if curve.h2load is not None
            else []
        ),
    ]


def _verify_label(row: VerifyRow) -> str:
    if row.cache_size == VERIFIER_CACHE_ENTRIES:
        return f"{row.tokens:,}"
    return f"{row.tokens:,}, `cache_size={row.cache_size}` (beyond the cache)"


def render(report: Report) -> str:
    one = report.verify[0]
    verify_rows = [
        f"| {_verify_label(r)} | {cell(r.in_process_us, one.in_process_us, 1)} "
        f"| {cell(r.intercept_us, one.intercept_us, 1)} "
        f"| {cell(r.run.req_per_s, one.run.req_per_s)} "
        f"| {cell(r.measured.least_us, one.measured.least_us)} "
        f"| {'-' if r.plain is None else f'{r.plain.least_us:.0f}'} "
        f"| {'-' if r.interceptor_us is None else f'{r.interceptor_us:.0f}'} | {cell(r.rss, one.rss)} "
        f"| {'?' if r.entries is None else f'{r.entries:,}'} "
        f"| {r.measured.other_cores:.2f} |"
        for r in report.verify
    ]
    commands = [f"python {SCRIPT}   # the whole benchmark; --quick: a smoke run that writes nothing"]
    sqlite = next((c.commands for c in report.curves if c.store == "sqlite"), None)
    if sqlite:
        commands += [
            "# issuance servers; on PostgreSQL with AUTHSVC_DATABASE_URL=postgresql://…/$DB as well",
            f"AUTHSVC_KEK=<random 64 hex> {sqlite['cached']}",
            f"AUTHSVC_KEK=<same> AUTHSVC_CLIENT_CACHE_TTL={MISS_TTL} {sqlite['miss']}",
        ]
    commands += ["# the verification server (--cache-size as in the row)", report.verify_command]
    warning = (
        [
            f"**WARNING: other processes used up to {report.worst_other:.2f} cores during a counted "
            "window; the machine was busy and the ratios are less reliable. Rerun when it is quiet.**",
            "",
        ]
        if report.worst_other > NOISY_CORES
        else []
    )
    plan = report.plan
    lines = [
        common.begin_marker(SECTION, SCRIPT),
        "## Scale: issuance vs registered clients, verification vs distinct tokens",
        "",
        *report.env.lines(),
        f"- Run time: {report.seconds:.0f} s",
        f"- Reference: RSA-2048 signatures per second on one core, in process (cryptography), at the start: "
        f"{report.sign_per_s:.0f}. This machine's speed differs from run to run: compare absolute figures "
        "only within a section",
        f"- Load: {GENERATORS} generator processes (this script), each with {CHANNELS} gRPC channels and "
        f"{IN_FLIGHT} calls in flight, round-robin over the clients or tokens. Issuance: {plan.warmup} s of "
        f"warm-up, then {plan.windows} windows of {plan.seconds} s (and {plan.windows} more when none was "
        f"quiet, for the first {plan.retry_until:.0f} s of the run); verification: {plan.verify_rounds} "
        f"rounds of {plan.verify_warmup} s of warm-up and one {plan.verify_seconds} s window. The figures "
        f"are the fastest rate and the least CPU per call of the quiet windows (other processes at most "
        f"{NOISY_CORES} cores), or of all windows where none was quiet: noise only ever lowers the one and "
        "raises the other",
        "",
        *warning,
        *(line for curve in report.curves for line in _issue_table(curve)),
        "### Verification vs distinct tokens in flight",
        "",
        "| distinct tokens | in process: us/verify | in process: us/intercept_service "
        "| over gRPC: calls/s | server CPU us/call "
        "| same calls, no interceptor: us/call | the interceptor's CPU us/call "
        "| server RSS MiB | cache entries at exit | other cores (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *verify_rows,
        "",
        "Ratios are to the one-token row. In process: `TokenVerifier.verify`, and the whole "
        "`AioAuthInterceptor.intercept_service` (token extraction, policy, verification, scope check, "
        "wrapping the handler), round-robin over the tokens, best of "
        f"{plan.micro_batches} interleaved batches. Over gRPC: one `grpc.aio` server process per row with "
        "`AioAuthInterceptor` in front of the trivial Ping handler of the interceptor section, and that "
        "section's server without an interceptor driven with the same calls (the smallest and the largest "
        "token set): the difference is what the interceptor costs in the server, HTTP/2 header "
        "decoding of distinct tokens excluded. All servers run at once and are driven in "
        f"{plan.verify_rounds} rounds, the order reversed every other round. The verifier's cache holds "
        f"{VERIFIER_CACHE_ENTRIES:,} verified tokens by default; in the last row it is smaller than the "
        "token set, so round-robin evicts every token before its next use and every call is a full "
        "verification: what a token never seen before costs.",
        "",
        "Commands:",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "Notes:",
        "",
        "- Both caches are bounded (`CachedClientLookup(max_entries=10_000)`, `TokenVerifier(cache_size="
        "10_000)`) and evict their oldest entry in O(1) (`OrderedDict.popitem`); a hit is one dict lookup "
        "(for a token, after a SHA-256 of it). The 'cache entries' columns show the bounds holding.",
        "- The client cache keeps an entry 2 s: each worker reads a client from the store at most once per "
        "2 s, so the share of requests that read the store grows with the number of clients asked in turn, "
        "until one round over them takes longer than 2 s and practically every request does (beyond "
        f"{CLIENT_CACHE_ENTRIES:,} clients per worker the bound evicts each one before its turn as well). "
        "The 'store read per request' columns are that path at every size. Real clients keep a token for "
        "its lifetime (the SDK does), so with many clients most token requests take it.",
        "- Server CPU per call counts every thread and process of the server (from /proc), over the "
        "counted window: `authsvc serve` is a parent and its workers; the verification server is one "
        "process. RSS is VmRSS summed over the same processes, right after the load.",
        "- The issuance servers run for the whole curve (one per mode, started once); the clients of each "
        "size are registered while they run and reach them through their caches as any new client does.",
        "- The generators are Python, so they cost more CPU per call than h2load and share the cores with "
        "the server: absolute rates here are below the other sections'; the ratios compare the same load "
        "at every size. 'other cores' is CPU used by neither the server nor the generators.",
        "- Success check: every call must end OK with a token response (at least "
        f"{MIN_TOKEN_RESPONSE} B) or exactly the handler's {len(ping_bench.PAYLOAD)}-byte message; one "
        "failure fails the benchmark. Around every issuance load a gRPC client issues a token (the first "
        "and the newest client) and verifies it against GetJwks; every verification server refuses a "
        "tampered token before and after its load.",
        common.end_marker(SECTION),
        "",
    ]
    return "\n".join(lines)


def summary(report: Report) -> str:
    """Ratios of the largest size to the smallest (issuance) and of each token set to one token."""
    lines = []
    for curve in report.curves:
        a, z = curve.rows[0], curve.rows[-1]
        lines.append(
            f"{curve.store}, {z.clients:,} / {a.clients:,} clients: default cache tokens/s "
            f"{z.cached.best.req_per_s / a.cached.best.req_per_s:.2f}, CPU/token "
            f"{z.cached.least_us / a.cached.least_us:.2f}, RSS {z.cached_rss / a.cached_rss:.2f}; "
            f"store read per request tokens/s {z.miss.best.req_per_s / a.miss.best.req_per_s:.2f}, "
            f"CPU/token {z.miss.least_us / a.miss.least_us:.2f}, RSS {z.miss_rss / a.miss_rss:.2f}"
        )
    one = report.verify[0]
    for row in report.verify[1:]:
        lines.append(
            f"verify, {row.tokens:,} tokens (cache_size {row.cache_size:,}) / 1: in process "
            f"{row.in_process_us / one.in_process_us:.2f}, gRPC calls/s "
            f"{row.run.req_per_s / one.run.req_per_s:.2f}, CPU/call "
            f"{row.measured.least_us / one.measured.least_us:.2f}, RSS {row.rss / one.rss:.2f}"
            + ("" if row.interceptor_us is None else f"; interceptor {row.interceptor_us:.0f} us/call")
        )
    if one.interceptor_us is not None:
        lines.append(f"verify, 1 token: interceptor {one.interceptor_us:.0f} us/call")
    return "\n".join(lines)


def main(plan: Plan, results: Path | None) -> int:
    common.exit_on_sigterm()
    common.ensure_h2load()
    started = time.monotonic()
    environment = Environment.collect()
    sign_per_s = python_sign_rate()
    print(f"RSA-2048 sign/s, one core, in process: {sign_per_s:.0f}")
    generator = LoadGenerator()
    driver = Driver(generator, plan, started + plan.retry_until)
    try:
        with tempfile.TemporaryDirectory(prefix="authsvc-bench-scale-") as tmp:
            work = Path(tmp)
            curves = [
                bench_store(kind, work, driver, with_h2load=i == 0) for i, kind in enumerate(plan.stores)
            ]
            verify, verify_command = verification_curve(work, generator, plan)
    finally:
        generator.close()
    report = Report(environment, plan, curves, verify, verify_command, time.monotonic() - started, sign_per_s)
    text = render(report)  # rendered even when not written: --quick exercises it too
    print(summary(report))
    if results is None:
        print(f"--quick: nothing written ({report.seconds:.0f} s)")
    else:
        common.write_section(SECTION, text, results)
        print(f"written to {results} ({report.seconds:.0f} s)")
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small sizes, SQLite only, writes nothing"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help=f"write the section into this file (default {common.RESULTS.name}; --quick: nowhere)",
    )
    parser.add_argument(
        "--store",
        action="append",
        choices=FULL.stores,
        help="measure issuance on this store only (repeatable; default: both, --quick: sqlite)",
    )
    parser.add_argument("--serve-verify", action="store_true", help="run the verification server instead")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jwks", type=Path)
    parser.add_argument("--cache-size", type=int, default=VERIFIER_CACHE_ENTRIES)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    if args.serve_verify:
        if not args.port or args.jwks is None:
            sys.exit("--serve-verify needs --port and --jwks")
        asyncio.run(serve_verify(args.port, args.jwks, args.cache_size))
        sys.exit(0)
    try:
        plan = QUICK if args.quick else FULL
        if args.store:
            plan = dataclasses.replace(plan, stores=tuple(args.store))
        results = args.results or (None if args.quick else common.RESULTS)
        sys.exit(main(plan, results))
    except BenchError as exc:
        print(f"bench_scale: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
