"""What metrics cost per call: one trivial unary method served with and without them, in one run.

Run as ``.venv/bin/python tests/bench/bench_metrics.py`` (``make bench``). In one run it:

1. generates an RSA-2048 key, writes its JWKS to a temporary file and signs one access token (scope
   ``bench``);
2. starts four server processes of this same script (``--serve MODE``), each a server from
   :func:`authsvc.serving.new_server` (the options and DecodeGuard both services use) serving
   ``/bench.v1.Bench/Ping``, a handler that returns a fixed 16-byte message:
   ``bare`` as the TokenService serves without ``--metrics-listen``; ``metrics`` with
   :class:`~authsvc.metrics.MetricsInterceptor` first, as with ``--metrics-listen``; ``auth`` with
   :class:`~authsvc.verify.AioAuthInterceptor` (a repeated token: the verified-token cache answers), as
   the PaymentService serves without metrics; ``auth_metrics`` the same with the metrics interceptor and
   the verifier's hook (:class:`~authsvc.metrics.VerificationMetrics`), as with ``--metrics-listen``.
   The metered servers also serve ``/metrics``;
3. checks each server with a real gRPC client (the token passes; with an interceptor, a tampered token
   is refused);
4. times in-process, per call, what the metrics add: the interceptor and its wrapper around the
   handler, and ``verifier.verify(token)`` with and without the hook;
5. drives every server with h2load: a warm-up, then rounds that interleave the modes, checking that every
   response carried the message;
6. scrapes the metered servers: ``grpc_server_handled_total`` and
   ``authsvc_token_verifications_total`` must equal the calls each server was sent, exactly;
7. writes its section of ``tests/bench/RESULTS.md`` and prints a summary.

Figures are ratios (metered over unmetered); the goal is a cost under 5 % of a bare call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc import serving
from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key, jwks_json
from authsvc.core.tokens import AccessTokenClaims, TokenSigner
from authsvc.listen import ConnectionLimits
from authsvc.metrics import ServerMetrics, VerificationMetrics
from authsvc.verify import AioAuthInterceptor, StaticJwksSource, TokenVerifier
from tests.bench import common
from tests.bench.common import BenchError, Environment, H2Run, ServerProcess, grpc_frame

SCRIPT = "tests/bench/bench_metrics.py"
SECTION = "metrics"
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
FRAME = len(grpc_frame(PAYLOAD))
MODES = ("bare", "metrics", "auth", "auth_metrics")
METERED = {"metrics": "bare", "auth_metrics": "auth"}  # metered mode -> the same without metrics
AUTH_MODES = ("auth", "auth_metrics")
GOAL = 0.05  # the most metrics may cost, as a share of the call without them

CONNECTIONS, STREAMS = 8, 8
WARMUP_REQUESTS = 4000
MIN_ROUNDS, MAX_ROUNDS, ROUNDS_SECONDS = 4, 8, 90.0
MEASURE_SECONDS = 3.0
MIN_REQUESTS, MAX_REQUESTS = 2000, 100_000
NOISY_CORES = 0.2
MICRO_BATCHES = 11
MICRO_BATCH_SECONDS = 0.1


# -- the server (``--serve MODE``) ---------------------------------------------------------------


async def ping(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """The trivial handler: whatever the request, the fixed message."""
    return PAYLOAD


def build(mode: str, jwks: str | None) -> tuple[list[grpc.aio.ServerInterceptor], ServerMetrics | None]:
    """The interceptors of ``mode`` (and its metrics), as the services install them."""
    metrics = ServerMetrics() if mode in METERED else None
    interceptors: list[grpc.aio.ServerInterceptor] = [] if metrics is None else [metrics.interceptor]
    if mode in AUTH_MODES:
        assert jwks is not None
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=StaticJwksSource(jwks))
        if not verifier.keys.refresh():
            raise SystemExit("bad JWKS")
        if metrics is not None:
            metrics.watch_verifier(verifier)
        interceptors.append(AioAuthInterceptor(verifier, policy=POLICY))
    return interceptors, metrics


async def serve(mode: str, port: int, metrics_port: int, jwks_path: Path) -> None:
    interceptors, metrics = build(mode, jwks_path.read_text(encoding="utf-8"))
    server = serving.new_server(
        limits=ConnectionLimits(),
        max_message_bytes=64 * 1024,
        max_metadata_bytes=16 * 1024,
        interceptors=interceptors,
    )
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(ping)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"could not listen on 127.0.0.1:{port}")
    await server.start()
    management = None
    if metrics is not None:
        management = await serving.start_management(
            f"127.0.0.1:{metrics_port}", metrics.exposed, lambda: None, grace=1
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"serving {mode} on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    await stop.wait()
    if management is not None:
        await management.stop()
    await server.stop(1)


# -- driving the servers -------------------------------------------------------------------------


def ping_status(target: str, token: str | None) -> tuple[grpc.StatusCode, bytes | None]:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GRPC_PATH)
        try:
            response = call(b"", metadata=metadata, timeout=5)
        except grpc.RpcError as exc:
            return exc.code(), None
    return grpc.StatusCode.OK, bytes(response)


class BenchServer(ServerProcess):
    """One ``--serve MODE`` process; counts the calls it was sent, to check its metrics against."""

    def __init__(self, mode: str, jwks_path: Path, token: str, log_path: Path) -> None:
        self.mode = mode
        self.port = common.free_port()
        self.metrics_port = common.free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}{GRPC_PATH}"
        self.sent = 0  # Ping calls sent (each answered; the checks count their refusals apart)
        self.refused = 0
        self._token = token
        options = ["--serve", mode, "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        options += ["--jwks", str(jwks_path)]
        self.display = shlex.join(["python", SCRIPT, *options]).replace(str(jwks_path), "$TMP/jwks.json")
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), *options], dict(os.environ), log_path, self._ready
        )

    def _ready(self) -> bool:
        if common.listening_sockets(self.port) == 0:
            return False
        if ping_status(self.target, self._token)[0] != grpc.StatusCode.OK:
            return False
        self.sent += 1
        return True

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = answer.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }


def check_calls(server: BenchServer, token: str, bad: str) -> None:
    code, response = ping_status(server.target, token)
    if code != grpc.StatusCode.OK or response != PAYLOAD:
        raise BenchError(f"{server.mode}: Ping gave {code} {response!r}")
    server.sent += 1
    if server.mode in AUTH_MODES:
        code, _ = ping_status(server.target, bad)
        if code != grpc.StatusCode.UNAUTHENTICATED:
            raise BenchError(f"{server.mode}: a tampered token gave {code}, not UNAUTHENTICATED")
        server.refused += 1


def h2load(server: BenchServer, workdir: Path, requests: int, token: str, redact: dict[str, str]) -> H2Run:
    run = common.check_run(
        common.h2load(
            server.url,
            workdir,
            "body.bin",
            requests,
            connections=CONNECTIONS,
            streams=STREAMS,
            server_cpu=server.cpu_seconds,
            headers=(*common.GRPC_HEADERS, f"authorization: Bearer {token}"),
            redact=redact,
        ),
        FRAME,
        0.0,
        "Ping",
    )
    server.sent += run.requests
    return run


def check_counts(server: BenchServer) -> str:
    """The metered server counted exactly the calls it was sent; returns what was checked."""
    samples = server.scrape()
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": METHOD}
    ok = samples.get(("grpc_server_handled_total", frozenset({**labels, "grpc_code": "OK"}.items())), 0.0)
    refused = samples.get(
        ("grpc_server_handled_total", frozenset({**labels, "grpc_code": "Unauthenticated"}.items())), 0.0
    )
    if ok != server.sent or refused != server.refused:
        raise BenchError(
            f"{server.mode}: /metrics counted {ok} OK and {refused} refused calls; "
            f"sent {server.sent} and {server.refused}"
        )
    checked = f"{server.mode}: grpc_server_handled_total OK {ok:.0f} = calls sent"
    if server.mode in AUTH_MODES:
        verified = sum(v for (name, ls), v in samples.items() if name == "authsvc_token_verifications_total")
        if verified != server.sent + server.refused:
            raise BenchError(
                f"{server.mode}: {verified} verifications counted, {server.sent + server.refused} made"
            )
        checked += f", authsvc_token_verifications_total {verified:.0f} = tokens verified"
    return checked


# -- in-process timings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Micro:
    name: str
    us_per_call: list[float]

    @property
    def best(self) -> float:
        return min(self.us_per_call)


@dataclass
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class _Context:
    """What the metrics wrapper asks of a servicer context: the code set (none: OK)."""

    def code(self) -> None:
        return None


def micro_timings(jwks: str, token: str) -> dict[str, Micro]:
    """Microseconds per call, in interleaved batches (``time.perf_counter``; the best batch counts):

    - ``call`` and ``call_metered``: the continuation awaited and the handler it returns called, without
      and with :class:`~authsvc.metrics.MetricsInterceptor` around them (all it adds per call: the wrapper,
      the started and handled counters, the latency histogram);
    - ``verify`` and ``verify_metered``: ``verifier.verify(token)`` of a repeated token (the cache
      answers), without and with the :class:`~authsvc.metrics.VerificationMetrics` hook;
    - ``verify_full`` and ``verify_full_metered``: the same with ``cache_size=0`` (RSA every call)."""
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(ping)
    details = _CallDetails(GRPC_PATH, ())
    context = _Context()
    loop = asyncio.new_event_loop()
    interceptor = ServerMetrics().interceptor

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return handler

    def calls(metered: bool) -> Callable[[int], float]:
        async def run(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                if metered:
                    found = await interceptor.intercept_service(continuation, details)
                else:
                    found = await continuation(details)
                assert found is not None and found.unary_unary is not None
                await found.unary_unary(b"", context)  # type: ignore[arg-type]
            return time.perf_counter() - start

        return lambda n: loop.run_until_complete(run(n))

    def verifier(metered: bool, cache_size: int) -> Callable[[int], float]:
        v = TokenVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks=StaticJwksSource(jwks), cache_size=cache_size
        )
        if metered:
            v.metrics = VerificationMetrics(ServerMetrics().registry)
        if v.verify(token).scopes != {SCOPE}:
            raise BenchError("the bench token does not verify")

        def batch(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                v.verify(token)
            return time.perf_counter() - start

        return batch

    batches: dict[str, Callable[[int], float]] = {
        "call": calls(False),
        "call_metered": calls(True),
        "verify": verifier(False, 10_000),
        "verify_metered": verifier(True, 10_000),
        "verify_full": verifier(False, 0),
        "verify_full_metered": verifier(True, 0),
    }
    try:
        counts = {}
        for name, batch in batches.items():
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
class ModeResult:
    mode: str
    server_command: str
    warmup: H2Run
    runs: list[tuple[int, H2Run]]

    @property
    def best(self) -> H2Run:
        quiet = [run for _, run in self.runs if run.other_cores <= NOISY_CORES]
        return max(quiet or [run for _, run in self.runs], key=lambda r: r.req_per_s)

    @property
    def rates(self) -> str:
        return ", ".join(f"{run.req_per_s:.0f}" for _, run in self.runs)

    def rate_in(self, round_: int) -> float:
        return next(run.req_per_s for r, run in self.runs if r == round_)

    def us_in(self, round_: int) -> float:
        return next(run.server_us_per_request for r, run in self.runs if r == round_)

    @property
    def least_us(self) -> float:
        """The least server CPU per call of the measured runs (contention only adds)."""
        return min(run.server_us_per_request for _, run in self.runs)


@dataclass(frozen=True)
class Report:
    env: Environment
    modes: dict[str, ModeResult]
    micro: dict[str, Micro]
    counts: list[str]
    seconds: float

    @property
    def rounds(self) -> int:
        return len(self.modes["bare"].runs)

    def cpu_ratio(self, mode: str) -> float:
        """Server CPU per call of ``mode`` over the same without metrics (least of the runs of each)."""
        return self.modes[mode].least_us / self.modes[METERED[mode]].least_us

    def paired_cpu_ratio(self, mode: str) -> float:
        """Median over the rounds of ``mode``'s server CPU per call over the unmetered one's in the round."""
        other, base = self.modes[mode], self.modes[METERED[mode]]
        return statistics.median(other.us_in(r) / base.us_in(r) for r in range(1, self.rounds + 1))

    def best_ratio(self, mode: str) -> float:
        """Throughput of the best run of ``mode`` over the best of the same without metrics."""
        return self.modes[mode].best.req_per_s / self.modes[METERED[mode]].best.req_per_s

    def paired_ratio(self, mode: str) -> float:
        """Median over the rounds of ``mode``'s rate over the unmetered one's in the same round."""
        other, base = self.modes[mode], self.modes[METERED[mode]]
        return statistics.median(other.rate_in(r) / base.rate_in(r) for r in range(1, self.rounds + 1))

    def micro_share(self, mode: str) -> float:
        """What the metrics add per call in-process, as a share of the unmetered server's CPU per call."""
        extra = self.micro["call_metered"].best - self.micro["call"].best
        if mode == "auth_metrics":
            extra += self.micro["verify_metered"].best - self.micro["verify"].best
        return extra / self.modes[METERED[mode]].least_us

    def verdict(self, mode: str) -> str:
        return "met" if self.cpu_ratio(mode) - 1 <= GOAL else "NOT met"

    @property
    def noise(self) -> float:
        return max(m.best.other_cores for m in self.modes.values())


def bench(workdir: Path) -> tuple[dict[str, ModeResult], dict[str, Micro], list[str]]:
    now = int(time.time())
    key = SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=now)
    claims = AccessTokenClaims(
        iss=ISSUER,
        sub=CLIENT_ID,
        aud=AUDIENCE,
        exp=now + 3600,
        iat=now,
        nbf=now,
        jti=secrets.token_hex(16),
        client_id=CLIENT_ID,
        scope=SCOPE,
    )
    token = TokenSigner(key).sign(claims)
    middle = len(token) - 100
    bad = token[:middle] + ("B" if token[middle] == "A" else "A") + token[middle + 1 :]
    redact = {shlex.quote(f"authorization: Bearer {token}"): '"authorization: Bearer $TOKEN"'}
    jwks = jwks_json([key.jwk])
    jwks_path = workdir / "jwks.json"
    jwks_path.write_text(jwks, encoding="utf-8")
    (workdir / "body.bin").write_bytes(grpc_frame(b""))

    with ExitStack() as stack:
        servers = {}
        for mode in MODES:
            server = BenchServer(mode, jwks_path, token, workdir / f"server-{mode}.log")
            stack.callback(server.stop)
            server.start()
            check_calls(server, token, bad)
            servers[mode] = server
        print(f"servers up and checked: {', '.join(f'{m} pid {s.pid}' for m, s in servers.items())}")

        print("in-process timings...")
        micro = micro_timings(jwks, token)
        for m in micro.values():
            print(f"  {m.name}: best {m.best:.2f} us/call")

        warmups, sizes = {}, {}
        for mode in MODES:
            warmups[mode] = h2load(servers[mode], workdir, WARMUP_REQUESTS, token, redact)
            rate = warmups[mode].req_per_s
            sizes[mode] = min(MAX_REQUESTS, max(MIN_REQUESTS, int(round(rate * MEASURE_SECONDS, -2))))
            print(f"  {mode}: warm-up {rate:.0f} req/s; measuring with -n {sizes[mode]}")
        runs: dict[str, list[tuple[int, H2Run]]] = {mode: [] for mode in MODES}
        started = time.monotonic()
        for round_ in range(1, MAX_ROUNDS + 1):
            if round_ > MIN_ROUNDS and (
                all(any(run.other_cores <= NOISY_CORES for _, run in runs[mode]) for mode in MODES)
                or time.monotonic() - started > ROUNDS_SECONDS
            ):
                break
            shift = (round_ - 1) % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                run = h2load(servers[mode], workdir, sizes[mode], token, redact)
                runs[mode].append((round_, run))
                print(
                    f"  round {round_} {mode}: {run.req_per_s:.0f} req/s, "
                    f"server {run.server_cores:.2f} cores "
                    f"{run.server_us_per_request:.0f} us/call, other {run.other_cores:.2f}"
                )
        for server in servers.values():
            check_calls(server, token, bad)
        counts = [check_counts(servers[mode]) for mode in METERED]
        for line in counts:
            print(f"  {line}")
        results = {mode: ModeResult(mode, servers[mode].display, warmups[mode], runs[mode]) for mode in MODES}
    return results, micro, counts


# -- report --------------------------------------------------------------------------------------


def render(report: Report) -> str:
    m = report.micro
    rows = [
        f"| {round_} | {mode.mode} | {run.requests} | {run.req_per_s:.0f} "
        f"| {run.data_per_request:.1f} ({FRAME}) "
        f"| {run.server_cores:.2f} | {run.server_us_per_request:.0f} | {run.client_cores:.2f} "
        f"| {run.other_cores:.2f} | {'best' if run is mode.best else ''} |"
        for round_ in range(1, report.rounds + 1)
        for mode in report.modes.values()
        for r, run in mode.runs
        if r == round_
    ]
    micro_rows = [
        f"| {label} | {m[a].best:.2f} | {m[b].best:.2f} | {m[b].best / m[a].best:.2f} |"
        for label, a, b in (
            ("continuation + handler, without / with MetricsInterceptor", "call", "call_metered"),
            (
                "`verifier.verify(token)`, repeated token (cache), without / with the hook",
                "verify",
                "verify_metered",
            ),
            (
                "`verifier.verify(token)`, `cache_size=0`, without / with the hook",
                "verify_full",
                "verify_full_metered",
            ),
        )
    ]
    figures = []
    for mode, base in METERED.items():
        figures += [
            f"| **Server CPU per call, {mode} / {base} (least of the runs; goal <= {1 + GOAL:.2f})** "
            f"| **{report.cpu_ratio(mode):.3f}** ({report.verdict(mode)}) |",
            f"| Server CPU per call, {mode} / {base}: median of the {report.rounds} per-round ratios "
            f"| {report.paired_cpu_ratio(mode):.3f} |",
            f"| Throughput {mode} / {base}: best runs; median of the {report.rounds} per-round ratios "
            f"| {report.best_ratio(mode):.3f}; {report.paired_ratio(mode):.3f} |",
            f"| In-process extra per call over {base}'s server CPU per call "
            f"| {report.micro_share(mode):.3f} |",
        ]
    warning = (
        [f"**WARNING: other processes used up to {report.noise:.2f} cores during the best runs; "
         "the ratios are "
         "unreliable. Rerun when the machine is quiet.**", ""]
        if report.noise > NOISY_CORES
        else []
    )  # fmt: skip
    commands = ["# servers (all four run during the whole benchmark)"]
    commands += [mode.server_command for mode in report.modes.values()]
    commands += ["# warm-up"] + [mode.warmup.command for mode in report.modes.values()]
    commands += ["# measured (every round runs each mode once; -n per mode as shown)"]
    commands += list(dict.fromkeys(run.command for mode in report.modes.values() for _, run in mode.runs))
    lines = [
        BEGIN_MARKER,
        "## Metrics overhead: a trivial unary method with and without the metrics interceptor and hooks",
        "",
        *report.env.lines(),
        f"- Run time: {report.seconds:.0f} s",
        "",
        "| Figure | Value |",
        "|---|---|",
        *figures,
        *(
            f"| Ping req/s, `{mode.mode}`, runs: {mode.rates} | best {mode.best.req_per_s:.0f} |"
            for mode in report.modes.values()
        ),
        "",
        *warning,
        f"Measured runs (h2load -c {CONNECTIONS} -m {STREAMS}, after a warm-up of {WARMUP_REQUESTS} "
        f"requests per mode; {report.rounds} rounds, each running every mode once in rotated order):",
        "",
        "| round | mode | requests | req/s | data B/req (frame) | server cores | server CPU us/call "
        "| h2load cores | other cores | |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"In-process timings (us per call, best of {MICRO_BATCHES} interleaved batches of about "
        f"{MICRO_BATCH_SECONDS:.2f} s; wall time on a shared machine):",
        "",
        "| call | without | with | ratio |",
        "|---|---|---|---|",
        *micro_rows,
        "",
        "Counts checked after the load (each metered server's `/metrics` against the calls this script "
        "sent it):",
        "",
        *(f"- {line}" for line in report.counts),
        "",
        "Commands (`body.bin`: the 5-byte gRPC prefix of an empty message; `$TOKEN`: an RS256 access token "
        "signed for the run):",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "Notes:",
        "",
        "- The servers: `authsvc.serving.new_server` (the limits, options and DecodeGuard of both services) "
        f"serving `{GRPC_PATH}` with bytes passthrough; the handler returns a fixed {len(PAYLOAD)}-byte "
        "message. `metrics` and `auth_metrics` install `ServerMetrics().interceptor` first, as "
        "`--metrics-listen` does, and serve `/metrics`; `auth` and `auth_metrics` add "
        "`AioAuthInterceptor(TokenVerifier(...), policy=...)` "
        "(one repeated token: the verified-token cache answers, the common case of a resource server); in "
        "`auth_metrics` the verifier also has the `VerificationMetrics` hook and the key-set collectors "
        "(`ServerMetrics.watch_verifier`), as payments-svc with `--metrics-listen`.",
        "- The headline is the server's CPU per call (all its threads), least of the runs of each mode: it "
        "depends less on the request rate and on the neighbours than throughput, and the cost of metrics is "
        "CPU. The throughput ratios and the in-process figure (what the interceptor and hook add per call, "
        "timed in this process, over the unmetered server's CPU per call) are two more estimates.",
        "- Shared machine: 'other cores' is CPU used by neither the measured server nor h2load; modes are "
        "interleaved and noise only ever adds. Success check: every measured run must count exactly "
        f"{FRAME} B of response data per request; a gRPC refusal carries none.",
        END_MARKER,
        "",
    ]
    return "\n".join(lines)


def summary(report: Report) -> str:
    parts = [
        f"{mode}/{base}: server CPU per call {report.cpu_ratio(mode):.3f} (goal <= {1 + GOAL:.2f}: "
        f"{report.verdict(mode)}; per-round median {report.paired_cpu_ratio(mode):.3f}), "
        f"throughput best {report.best_ratio(mode):.3f}, per-round "
        f"{report.paired_ratio(mode):.3f}, in-process share {report.micro_share(mode):.3f}"
        for mode, base in METERED.items()
    ]
    return "\n".join([*parts, *report.counts, f"written to {common.RESULTS}"])


def main() -> int:
    common.exit_on_sigterm()
    common.ensure_h2load()
    started = time.monotonic()
    environment = Environment.collect()
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-metrics-") as tmp:
        modes, micro, counts = bench(Path(tmp))
    report = Report(environment, modes, micro, counts, time.monotonic() - started)
    common.write_section(SECTION, render(report))
    print(summary(report))
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--serve", choices=MODES, help="run one benchmark server instead of the benchmark")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--jwks", type=Path)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    if args.serve:
        if not args.port or args.jwks is None:
            sys.exit("--serve needs --port and --jwks")
        asyncio.run(serve(args.serve, args.port, args.metrics_port, args.jwks))
        sys.exit(0)
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_metrics: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
