"""What AioAuthInterceptor costs: one trivial unary method served with and without it, in one run.

Run as ``.venv/bin/python tests/bench/bench_interceptor.py`` (``make bench``). In one run it:

1. generates an RSA-2048 key, writes its JWKS to a temporary file and signs one access token (scope
   ``bench``) with :class:`~authsvc.core.tokens.TokenSigner`;
2. starts three ``grpc.aio`` server processes of this same script (``--serve MODE``), each serving
   ``/bench.v1.Bench/Ping`` through a generic handler that returns a fixed 16-byte message:
   ``plain`` without an interceptor, ``cached`` with :class:`~authsvc.verify.AioAuthInterceptor` over a
   :class:`~authsvc.verify.TokenVerifier` with its default verified-token cache, ``uncached`` the same with
   ``cache_size=0`` (every call verifies fully: the cost of a fresh token on every call);
3. checks each server with a real gRPC client (the token passes; a tampered, a scope-less and a missing
   token are refused where an interceptor is installed);
4. measures in-process, in microseconds per call: ``verifier.verify(token)`` with ``cache_size=0`` and
   with the cache, the raw RSA-2048 ``public_key.verify`` of the same token's signature, and the whole
   ``intercept_service`` with either verifier;
5. drives every server with h2load (``authorization: Bearer <token>``): a tampered-token control, a
   warm-up, then rounds that interleave the modes, checking that every response carried the message;
6. writes its section of ``tests/bench/RESULTS.md`` and prints a summary.

Servers are stopped with SIGTERM (and waited for) even when a step fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import secrets
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key, jwks_json
from authsvc.core.tokens import AccessTokenClaims, TokenSigner
from authsvc.verify import AioAuthInterceptor, StaticJwksSource, TokenVerifier
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
MODES = ("plain", "cached", "uncached")
AUTH_MODES = ("cached", "uncached")
TARGET_RATIO = 0.90

CONNECTIONS, STREAMS = 8, 8  # h2load -c, -m
WARMUP_REQUESTS = 4000
# Each round runs every mode once, the order rotated by one per round. After MIN_ROUNDS, rounds go on while
# a mode has no quiet run (other processes below NOISY_CORES), up to MAX_ROUNDS or ROUNDS_SECONDS.
MIN_ROUNDS, MAX_ROUNDS, ROUNDS_SECONDS = 4, 8, 70.0
MEASURE_SECONDS = 4.0  # each measured run gets -n sized from its mode's warm-up rate to last about this long
MIN_REQUESTS, MAX_REQUESTS = 2000, 100_000
NEGATIVE_REQUESTS = 200
FRAME_TOLERANCE = 0.0  # every call answers exactly one FRAME-byte message; a refusal answers none
NOISY_CORES = 0.2  # other processes using more CPU than this during a counted run make the figures suspect
MICRO_BATCHES = 11  # in-process timings: batches of each function, interleaved; the fastest batch counts
MICRO_BATCH_SECONDS = 0.1


# -- the server (``--serve MODE``) ---------------------------------------------------------------


async def ping(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """The trivial handler: whatever the request, the fixed message."""
    return PAYLOAD


def make_verifier(jwks: str, mode: str) -> TokenVerifier:
    source = StaticJwksSource(jwks)
    if mode == "uncached":
        return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=source, cache_size=0)
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=source)


async def serve(mode: str, port: int, jwks_path: Path) -> None:
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if mode != "plain":
        verifier = make_verifier(jwks_path.read_text(encoding="utf-8"), mode)
        if not verifier.keys.refresh():  # so that the first call does not pay for the fetch
            raise SystemExit(f"bad JWKS in {jwks_path}")
        interceptors.append(AioAuthInterceptor(verifier, policy=POLICY))
    server = grpc.aio.server(interceptors=interceptors)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        ping
    )  # no (de)serializers: bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"could not listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"serving {mode} on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    await stop.wait()
    await server.stop(1)


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
    """One ``--serve MODE`` process."""

    def __init__(self, mode: str, jwks_path: Path, token: str, log_path: Path) -> None:
        self.mode = mode
        self.port = common.free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}{GRPC_PATH}"
        self._token = token
        options = ["--serve", mode, "--port", str(self.port), "--jwks", str(jwks_path)]
        self.display = shlex.join(["python", SCRIPT, *options]).replace(str(jwks_path), "$TMP/jwks.json")
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), *options], dict(os.environ), log_path, self._ready
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
        status = grpc.StatusCode.OK if server.mode == "plain" else refused
        code, response = ping_status(server.target, sent)
        if code != status or (code == grpc.StatusCode.OK and response != PAYLOAD):
            raise BenchError(f"{server.mode}: Ping with {name} gave {code} {response!r}, expected {status}")


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


def micro_timings(jwks: str, token: str) -> dict[str, Micro]:
    """Microseconds per call, timed in interleaved batches with ``time.perf_counter``:

    - ``raw``: the RSA-2048 verification of the token's signature (``public_key.verify``);
    - ``full`` and ``cached``: ``verifier.verify(token)`` with ``cache_size=0`` and with the cache;
    - ``intercept_cached`` and ``intercept_uncached``: ``AioAuthInterceptor.intercept_service`` awaited on
      an event loop, its continuation returning the Ping handler at once: all the interceptor does per
      call (token extraction, policy, verification, scope check, wrapping the handler)."""
    uncached, cached = make_verifier(jwks, "uncached"), make_verifier(jwks, "cached")
    for verifier in (uncached, cached):
        if verifier.verify(token).scopes != {SCOPE}:  # also fetches the keys and fills the cache
            raise BenchError("the bench token does not verify")
    signing_input, _, signature_b64 = token.rpartition(".")
    signature, message = _b64url_decode(signature_b64), signing_input.encode("ascii")
    public_key = uncached.keys.get(next(iter(uncached.keys.kids)))
    assert public_key is not None
    pkcs1v15, sha256 = padding.PKCS1v15(), hashes.SHA256()

    def timed(call: Callable[[], object]) -> Callable[[int], float]:
        def batch(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                call()
            return time.perf_counter() - start

        return batch

    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(ping)
    details = _CallDetails(GRPC_PATH, (("authorization", f"Bearer {token}"),))
    loop = asyncio.new_event_loop()

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return handler

    def intercepted(verifier: TokenVerifier) -> Callable[[int], float]:
        interceptor = AioAuthInterceptor(verifier, policy=POLICY)

        async def run(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                await interceptor.intercept_service(continuation, details)
            return time.perf_counter() - start

        def batch(n: int) -> float:
            return loop.run_until_complete(run(n))

        return batch

    batches: dict[str, Callable[[int], float]] = {
        "raw": timed(lambda: public_key.verify(signature, message, pkcs1v15, sha256)),
        "full": timed(lambda: uncached.verify(token)),
        "cached": timed(lambda: cached.verify(token)),
        "intercept_cached": intercepted(cached),
        "intercept_uncached": intercepted(uncached),
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
class ModeResult:
    mode: str
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
    def quiet_runs(self) -> int:
        return sum(run.other_cores <= NOISY_CORES for _, run in self.runs)

    @property
    def rates(self) -> str:
        return ", ".join(f"{run.req_per_s:.0f}" for _, run in self.runs)

    def rate_in(self, round_: int) -> float:
        return next(run.req_per_s for r, run in self.runs if r == round_)

    @property
    def least_us(self) -> float:
        """The least server CPU per call of the measured runs, in microseconds (contention only adds)."""
        return min(run.server_us_per_request for _, run in self.runs)


@dataclass(frozen=True)
class Report:
    env: Environment
    token_bytes: int
    modes: dict[str, ModeResult]
    micro: dict[str, Micro]
    seconds: float

    @property
    def rounds(self) -> int:
        return len(self.modes["plain"].runs)

    def ratio(self, mode: str) -> float:
        """The headline: best run of ``mode`` over best run of plain."""
        return self.modes[mode].best.req_per_s / self.modes["plain"].best.req_per_s

    def paired_ratio(self, mode: str) -> float:
        """Median over the rounds of ``mode``'s rate over plain's in the same round."""
        plain, other = self.modes["plain"], self.modes[mode]
        return statistics.median(other.rate_in(r) / plain.rate_in(r) for r in range(1, self.rounds + 1))

    def cpu_ratio(self, mode: str) -> float:
        """What the ratio would be for a CPU-bound server: plain's CPU per call over ``mode``'s."""
        return self.modes["plain"].least_us / self.modes[mode].least_us

    def extra_us(self, mode: str) -> float:
        """Server CPU per call above plain's (the least of the runs of each)."""
        return self.modes[mode].least_us - self.modes["plain"].least_us

    @property
    def verify_ratio(self) -> float:
        return self.micro["full"].best / self.micro["raw"].best

    @property
    def verify_ratio_paired(self) -> float:
        """Median over the batches of full verification over the raw RSA batch timed just before it."""
        pairs = zip(self.micro["full"].us_per_call, self.micro["raw"].us_per_call, strict=True)
        return statistics.median(full / raw for full, raw in pairs)

    @property
    def noise(self) -> float:
        return max(m.best.other_cores for m in self.modes.values())

    @property
    def noise_warning(self) -> str | None:
        if self.noise <= NOISY_CORES:
            return None
        return (
            f"WARNING: other processes used up to {self.noise:.2f} cores during the best runs; the machine "
            "was busy and the figures (the ratios especially) are unreliable. Rerun when it is quiet."
        )

    @property
    def verdict(self) -> str:
        return "met" if self.ratio("cached") >= TARGET_RATIO else "NOT met"


def bench(workdir: Path) -> tuple[dict[str, ModeResult], dict[str, Micro], int]:
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

    token, unscoped = sign(SCOPE), sign("other")
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
        for mode in MODES:
            server = BenchServer(mode, jwks_path, token, workdir / f"server-{mode}.log")
            stack.callback(server.stop)
            server.start()
            check_calls(server, token, bad, unscoped)
            servers[mode] = server
        print(f"servers up and checked: {', '.join(f'{m} pid {s.pid}' for m, s in servers.items())}")

        print("in-process timings...")
        micro = micro_timings(jwks, token)
        for m in micro.values():
            print(f"  {m.name}: best {m.best:.1f} us/call, median {m.median:.1f}")

        negatives: dict[str, H2Run] = {}
        for mode in AUTH_MODES:
            run = h2load(servers[mode], workdir, NEGATIVE_REQUESTS, bad, redact)
            if run.succeeded != run.requests or run.data_bytes != 0:
                raise BenchError(f"the tampered-token control did not look as expected: {run}")
            negatives[mode] = run
            print(
                f"  {mode}: tampered-token control {run.succeeded}/{run.requests} 'succeeded', "
                f"{run.data_per_request:.0f} B/req"
            )
        warmups, sizes = {}, {}
        for mode in MODES:
            warmups[mode] = check_run(h2load(servers[mode], workdir, WARMUP_REQUESTS, token, redact))
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
                run = check_run(h2load(servers[mode], workdir, sizes[mode], token, redact))
                runs[mode].append((round_, run))
                print(
                    f"  round {round_} {mode}: {run.req_per_s:.0f} req/s, mean {run.mean_latency}, "
                    f"server {run.server_cores:.2f} cores {run.server_us_per_request:.0f} us/call, "
                    f"h2load {run.client_cores:.2f}, other {run.other_cores:.2f}"
                )
        for server in servers.values():
            check_calls(server, token, bad, unscoped)  # still healthy and still enforcing after the load
        results = {
            mode: ModeResult(mode, servers[mode].display, warmups[mode], runs[mode], negatives.get(mode))
            for mode in MODES
        }
    return results, micro, len(token)


# -- report --------------------------------------------------------------------------------------


def _commands(report: Report) -> list[str]:
    commands = ["# servers (all three run during the whole benchmark)"]
    commands += [m.server_command for m in report.modes.values()]
    commands += ["# tampered-token controls"]
    commands += [m.negative.command for m in report.modes.values() if m.negative is not None]
    commands += ["# warm-up"] + [m.warmup.command for m in report.modes.values()]
    commands += ["# measured (every round runs each mode once; -n per mode as shown)"]
    seen = dict.fromkeys(run.command for m in report.modes.values() for _, run in m.runs)
    return commands + list(seen)


def render(report: Report) -> str:
    plain, cached, uncached = (report.modes[m] for m in MODES)
    full, hit, raw = report.micro["full"], report.micro["cached"], report.micro["raw"]
    icached, iuncached = report.micro["intercept_cached"], report.micro["intercept_uncached"]
    rows = [
        f"| {round_} | {mode.mode} | {run.requests} | {run.req_per_s:.0f} | {run.mean_latency} "
        f"| {run.data_per_request:.1f} ({FRAME}) | {run.server_cores:.2f} | {run.server_us_per_request:.0f} "
        f"| {run.client_cores:.2f} | {run.other_cores:.2f} | {'best' if run is mode.best else ''} |"
        for round_ in range(1, report.rounds + 1)
        for mode in report.modes.values()
        for r, run in mode.runs
        if r == round_
    ]
    micro_rows = [
        f"| {label} | {m.best:.1f} | {m.median:.1f} | {', '.join(f'{u:.1f}' for u in m.us_per_call)} |"
        for label, m in (
            ("`verifier.verify(token)`, `cache_size=0` (full verification)", full),
            ("`verifier.verify(token)`, default cache, repeated token", hit),
            ("`public_key.verify(sig, input, PKCS1v15(), SHA256())` (raw RSA-2048)", raw),
            ("`AioAuthInterceptor.intercept_service`, default cache, repeated token", icached),
            ("`AioAuthInterceptor.intercept_service`, `cache_size=0`", iuncached),
        )
    ]
    controls = ", ".join(
        f"{m.mode} {m.negative.succeeded}/{m.negative.requests} 'succeeded' with "
        f"{m.negative.data_per_request:.0f} B/req"
        for m in (cached, uncached)
        if m.negative is not None
    )
    lines = [
        BEGIN_MARKER,
        "## Auth interceptor overhead: a trivial unary method with and without AioAuthInterceptor",
        "",
        *report.env.lines(),
        f"- Run time: {report.seconds:.0f} s",
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| Ping req/s, `plain` (no interceptor), best of {report.rounds}: {plain.rates} "
        f"| {plain.best.req_per_s:.0f} |",
        f"| Ping req/s, `cached` (interceptor, one repeated token), best of {report.rounds}: {cached.rates} "
        f"| {cached.best.req_per_s:.0f} |",
        f"| Ping req/s, `uncached` (interceptor, `cache_size=0`: a fresh token every call), best of "
        f"{report.rounds}: {uncached.rates} | {uncached.best.req_per_s:.0f} |",
        f"| **Ratio cached / plain, best runs (target >= {TARGET_RATIO:.2f})** "
        f"| **{report.ratio('cached'):.2f}** ({report.verdict}) |",
        f"| Ratio cached / plain: median of the {report.rounds} per-round ratios; from server CPU per call "
        f"| {report.paired_ratio('cached'):.2f}; {report.cpu_ratio('cached'):.2f} |",
        f"| **Ratio uncached / plain, best runs (fresh token every call)** "
        f"| **{report.ratio('uncached'):.2f}** |",
        f"| Ratio uncached / plain: median of the {report.rounds} per-round ratios; from server CPU per call "
        f"| {report.paired_ratio('uncached'):.2f}; {report.cpu_ratio('uncached'):.2f} |",
        f"| Server CPU per call, plain / cached / uncached (least of the runs) "
        f"| {' / '.join(f'{m.least_us:.0f}' for m in (plain, cached, uncached))} us |",
        f"| Interceptor cost per call in the server (CPU above plain), cached / uncached "
        f"| {report.extra_us('cached'):.0f} / {report.extra_us('uncached'):.0f} us |",
        f"| Full verification, in-process (`cache_size=0`) | {full.best:.1f} us |",
        f"| Cached verification, in-process (repeated token) | {hit.best:.1f} us |",
        f"| Raw RSA-2048 verify, in-process, same token | {raw.best:.1f} us |",
        f"| **Ratio full verification / raw RSA verify** (best batches; median of per-batch ratios) "
        f"| **{report.verify_ratio:.2f}** ({report.verify_ratio_paired:.2f}) |",
        f"| Whole interceptor per call, in-process, cached / `cache_size=0` | {icached.best:.1f} / "
        f"{iuncached.best:.1f} us |",
        "",
        *([f"**{report.noise_warning}**", ""] if report.noise_warning else []),
        f"Measured runs (h2load -c {CONNECTIONS} -m {STREAMS}, after a warm-up of {WARMUP_REQUESTS} requests "
        f"per mode; {report.rounds} rounds, each running every mode once in rotated order; 'best' is the "
        f"fastest run with at most {NOISY_CORES} other cores, if the mode had one):",
        "",
        "| round | mode | requests | req/s | mean latency | data B/req (frame) | server cores "
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
        f"- The servers: one `grpc.aio.server` process per mode, serving `{GRPC_PATH}` through "
        "`grpc.method_handlers_generic_handler` with bytes passthrough; the handler is the same coroutine in "
        f"every mode and returns a fixed {len(PAYLOAD)}-byte message. `cached` and `uncached` add "
        f"`AioAuthInterceptor(TokenVerifier(issuer={ISSUER!r}, audience={AUDIENCE!r}, "
        f"jwks=StaticJwksSource(<the run's JWKS>)), policy={{{GRPC_PATH!r}: [{SCOPE!r}]}})`, `uncached` with "
        "`cache_size=0`.",
        "- `uncached` stands for a fresh token on every call: with `cache_size=0` every call pays the full "
        "verification (parsing, claims, key lookup, RSA) that a token never seen before costs, and its "
        "result is put in the cache and evicted at once, as a new token evicts the oldest from a full cache.",
        "- Same core budget: all three servers run for the whole benchmark, unpinned, each free to use all "
        f"{report.env.nproc} cores while it is measured; the idle ones show up under 'other cores'. h2load "
        "(one thread) shares the cores with the measured server.",
        "- Success check: a refused gRPC call is HTTP 200 with a grpc-status trailer and no message, so "
        f"h2load's 'succeeded' proves nothing. Every measured run must count exactly {FRAME} B of response "
        f"data per request (the {len(PAYLOAD)}-byte message in its 5-byte frame). Tampered-token controls: "
        f"{controls}. Before and after the load a gRPC client checked that each interceptor server accepts "
        "the token and refuses a tampered, a missing and a scope-less token.",
        "- Three estimates of each ratio: the headline compares the best runs; the per-round median pairs "
        "runs made seconds apart; the CPU ratio divides the server's least CPU time (all threads) per call, "
        "which depends less on the request rate. 'Interceptor cost per call in the server' is that "
        "CPU time above plain's: it holds everything the interceptor adds, grpc.aio's interceptor "
        "machinery included, so it exceeds the in-process `intercept_service` figure. The in-process "
        "figures are best-of-batches wall time on a shared machine.",
        f"- Shared machine: 'other cores' is CPU used by neither the measured server nor h2load. The modes "
        "are interleaved and the best run of each is compared, because noise only ever lowers a rate; a run "
        f"with more than {NOISY_CORES} other cores counts as best only if its mode had no quieter run, and "
        f"after {MIN_ROUNDS} rounds more follow (up to {MAX_ROUNDS}, about {ROUNDS_SECONDS:.0f} s of rounds "
        "in all) while a mode has no quiet run. A warning above says when one never came.",
        END_MARKER,
        "",
    ]
    return "\n".join(lines)


def summary(report: Report) -> str:
    plain, cached, uncached = (report.modes[m].best for m in MODES)
    full, hit, raw = report.micro["full"], report.micro["cached"], report.micro["raw"]
    return (
        f"Ping req/s: plain {plain.req_per_s:.0f}, cached {cached.req_per_s:.0f}, "
        f"uncached {uncached.req_per_s:.0f}\n"
        f"ratio cached/plain {report.ratio('cached'):.2f} (target {TARGET_RATIO:.2f}: {report.verdict}; "
        f"per-round median {report.paired_ratio('cached'):.2f}, CPU {report.cpu_ratio('cached'):.2f})\n"
        f"ratio uncached/plain {report.ratio('uncached'):.2f} (per-round median "
        f"{report.paired_ratio('uncached'):.2f}, CPU {report.cpu_ratio('uncached'):.2f})\n"
        f"server CPU per call (least): plain {report.modes['plain'].least_us:.0f} us, cached "
        f"{report.modes['cached'].least_us:.0f} us, uncached {report.modes['uncached'].least_us:.0f} us\n"
        f"in-process: full verify {full.best:.1f} us, cached verify {hit.best:.1f} us, raw RSA verify "
        f"{raw.best:.1f} us; full/raw {report.verify_ratio:.2f} (per-batch median "
        f"{report.verify_ratio_paired:.2f})\n"
        f"written to {common.RESULTS}" + (f"\n{report.noise_warning}" if report.noise_warning else "")
    )


def main() -> int:
    common.exit_on_sigterm()
    common.ensure_h2load()
    started = time.monotonic()
    environment = Environment.collect()
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-interceptor-") as tmp:
        modes, micro, token_bytes = bench(Path(tmp))
    report = Report(environment, token_bytes, modes, micro, time.monotonic() - started)
    common.write_section(SECTION, render(report))
    print(summary(report))
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--serve", choices=MODES, help="run one benchmark server instead of the benchmark")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jwks", type=Path, help="the JWKS file (for --serve cached and uncached)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    if args.serve:
        if not args.port or (args.serve != "plain" and args.jwks is None):
            sys.exit("--serve needs --port and, with an interceptor, --jwks")
        asyncio.run(serve(args.serve, args.port, args.jwks))
        sys.exit(0)
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_interceptor: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
