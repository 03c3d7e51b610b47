"""IssueToken throughput with the defaults, against the Python-gRPC ceiling measured in the same run.

Run as ``.venv/bin/python tests/bench/bench_issue_token.py`` (``make bench``). In one run it:

1. measures the all-core RSA-2048 sign rate with ``openssl speed -mr -multi N`` (before and after
   the rest, and at the start of each round; N = the CPUs this process may use,
   :func:`authsvc.server.cpus.usable_cpus`, which is what ``authsvc serve`` starts by default);
2. registers a client and starts five servers side by side: ``authsvc serve`` with the defaults
   (no ``--workers``, the default log level INFO: one log line and one audit event per token,
   written to a file), the same with ``--log-level WARNING`` (what the per-token log costs),
   ``--workers 1`` (the scaling), and a bare ``grpc.aio`` server (``tests/bench/grpc_echo.py``)
   with the same worker count and SO_REUSEPORT that answers the same request with a fixed token
   response of the same size: the cost of a Python gRPC call with nothing of ours in it; and the
   same bare server signing once per call (``--sign``): a gRPC server that signs, nothing else;
3. checks one IssueToken of each authsvc server over a real channel (signature verified against
   GetJwks) and, after the measured runs (wrong secrets trip the failed-authentication limit), a
   wrong-secret control run that the success check must refuse;
4. warms each up, then runs rounds of h2load over h2c, the same shapes (-c, -m) for every server,
   the servers in rotated order within each step so that the machine's noise falls on all alike;
   every run must answer every request with one token-sized message (gRPC errors come back as
   HTTP 200 with no message, so the average response data per request must be one token frame);
5. computes the ceiling ``1 / (1/RSA + 1/echo)`` (a token costs one signature and one bare call:
   RSA = openssl's all-core sign/s, echo = the bare server's req/s) and reports IssueToken with the
   defaults against it, best and median of the rounds, and the CPU each costs per request;
6. writes its section of ``tests/bench/RESULTS.md`` and prints a summary.

Servers are stopped with SIGTERM (and waited for) even when a step fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc.server.cpus import usable_cpus
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.bench import common
from tests.bench.common import BenchError, Environment, H2Run, ServerProcess, grpc_frame, run_text

SECTION = "issue_token"
BEGIN_MARKER = common.begin_marker(SECTION, "tests/bench/bench_issue_token.py")
END_MARKER = common.end_marker(SECTION)

OPENSSL_SECONDS = 5
OPENSSL_ROUND_SECONDS = 2  # each round measures RSA again, beside the servers' runs of the round
PY_SIGN_SECONDS = 2.0
WARMUP_REQUESTS = 2000
ROUNDS = 4
# (h2load -c, -m), the same for every server. SO_REUSEPORT spreads connections over the workers by
# hash and -n gives every connection the same share of requests, so few connections can leave one
# worker idle at the end of a run: many connections keep every worker busy to the end.
CONCURRENCY = ((16, 4), (64, 1))
MEASURE_SECONDS = 2.5  # a measured run's -n is sized from the server's median rate so far to last this long
MIN_REQUESTS, MAX_REQUESTS = 1000, 40000
NEGATIVE_REQUESTS = 200
NOISY_CORES = 0.2  # other processes using more CPU than this during a counted run make the figures suspect
FRAME_TOLERANCE = 0.01  # the average response data per request may differ this much from one real response
GOAL = 0.90  # of the ceiling, with the defaults (issue 14)
CLIENT_ID = "bench"
SCOPE = "payments:read"
AUDIENCE = "payments"
ISSUER = "https://authsvc.bench"
GRPC_PATH = "/authsvc.v1.TokenService/IssueToken"


# -- small helpers -------------------------------------------------------------------------------


def authsvc_command() -> list[str]:
    script = Path(sys.executable).parent / "authsvc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "authsvc.cli"]


def issue_request(client_id: str, secret: str) -> token_pb2.IssueTokenRequest:
    return token_pb2.IssueTokenRequest(
        grant_type="client_credentials", client_id=client_id, client_secret=secret
    )


# -- openssl speed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpensslSpeed:
    command: str
    sign_per_s: float
    verify_per_s: float
    other_cores: float  # CPU used by other processes on the machine while openssl ran


def openssl_speed(nproc: int, seconds: int = OPENSSL_SECONDS) -> OpensslSpeed:
    """``openssl speed -mr``: with ``-multi`` the parent prints the summed ``+F2:k:bits:sign/s:verify/s``
    after the children's ``Got: +F2:...`` lines."""
    cmd = ["openssl", "speed", "-mr", "-multi", str(nproc), "-seconds", str(seconds), "rsa2048"]
    print(f"{shlex.join(cmd)} ({seconds}s sign + {seconds}s verify)...")
    start, own, machine = time.monotonic(), common.children_cpu_seconds(), common.machine_busy_seconds()
    out = run_text(cmd, timeout=30 * seconds)
    other = common.machine_busy_seconds() - machine - (common.children_cpu_seconds() - own)
    other_cores = max(0.0, other) / (time.monotonic() - start)
    totals = [
        m for line in out.splitlines() if (m := re.fullmatch(r"\+F2:\d+:(\d+):([\d.]+):([\d.]+)", line))
    ]
    if not totals or totals[-1].group(1) != "2048":
        raise BenchError(f"no RSA-2048 total in the output of {shlex.join(cmd)}:\n{out}")
    sign, verify = float(totals[-1].group(2)), float(totals[-1].group(3))
    print(f"  openssl speed: {sign:.0f} sign/s on {nproc} cores (other load {other_cores:.2f} cores)")
    return OpensslSpeed(shlex.join(cmd), sign, verify, other_cores)


def python_sign_rate() -> float:
    """One core, the service's own signing path: cryptography (with its bundled OpenSSL), PKCS#1 v1.5,
    SHA-256, over a message the size of a JWT signing input; signatures per second of this thread's
    CPU time, so that other processes on a shared machine do not lower it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = b"x" * 520
    count, start, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < PY_SIGN_SECONDS:
        key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    return count / (time.thread_time() - cpu)


# -- the servers ---------------------------------------------------------------------------------


def grpc_serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class AuthsvcServer(ServerProcess):
    """An ``authsvc serve`` process tree started by this script: ``options`` after the listen
    address and issuer; ``workers`` is how many processes it will have (to know when it is up)."""

    def __init__(
        self, name: str, data_dir: Path, options: str, *, workers: int, env: dict[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.port = common.free_port()
        self.workers = workers
        self.target = f"127.0.0.1:{self.port}"
        flags = f"--listen {self.target} --issuer {ISSUER} {options}".split()
        args = [*authsvc_command(), "serve", "--data-dir", str(data_dir), *flags]
        self.display = shlex.join(["authsvc", *args[len(authsvc_command()) :]]).replace(
            str(data_dir), "$DATA_DIR"
        )
        super().__init__(args, env, log_path, self._ready)

    def _ready(self) -> bool:
        return common.listening_sockets(self.port) >= self.workers and grpc_serving(self.target)


class EchoServer(ServerProcess):
    """``tests/bench/grpc_echo.py``: a bare grpc.aio server answering ``response`` (a serialized
    IssueTokenResponse) to every IssueToken, in ``workers`` processes."""

    def __init__(
        self, workers: int, response: Path, env: dict[str, str], log_path: Path, *, sign: bool = False
    ) -> None:
        self.name = "echo+sign" if sign else "echo"
        self.port = common.free_port()
        self.workers = workers
        self.target = f"127.0.0.1:{self.port}"
        script = Path(__file__).resolve().parent / "grpc_echo.py"
        args = [sys.executable, str(script), "--listen", self.target, "--workers", str(workers)]
        args += ["--response", str(response), *(["--sign"] if sign else [])]
        self.display = shlex.join(["python", "tests/bench/grpc_echo.py", *args[2:]]).replace(
            str(response), "response.bin"
        )
        super().__init__(args, env, log_path, self._ready)

    def _ready(self) -> bool:
        if common.listening_sockets(self.port) < self.workers:
            return False
        with grpc.insecure_channel(self.target) as channel:
            try:
                token_pb2_grpc.TokenServiceStub(channel).IssueToken(token_pb2.IssueTokenRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return True


class Server(AuthsvcServer):
    """``authsvc serve --workers N --log-level WARNING``: what bench_scale.py and bench_store.py
    start (through :func:`bench_workers` for the latter)."""

    def __init__(self, data_dir: Path, workers: int, env: dict[str, str], log_path: Path) -> None:
        options = f"--workers {workers} --log-level WARNING"
        super().__init__(f"workers-{workers}", data_dir, options, workers=workers, env=env, log_path=log_path)


Target = AuthsvcServer | EchoServer


def check_one_token(target: str, client_id: str, secret: str) -> int:
    """Issue one token with a real gRPC client, verify it against the JWKS, return the size of the
    response's gRPC frame (what h2load should receive as data per request)."""
    return len(grpc_frame(one_token(target, client_id, secret).SerializeToString()))


def one_token(target: str, client_id: str, secret: str) -> token_pb2.IssueTokenResponse:
    with grpc.insecure_channel(target) as channel:
        stub = token_pb2_grpc.TokenServiceStub(channel)
        response = stub.IssueToken(issue_request(client_id, secret), timeout=10)
        jwks = jwt.PyJWKSet.from_json(stub.GetJwks(token_pb2.GetJwksRequest(), timeout=10).jwks_json)
    key = jwks[jwt.get_unverified_header(response.access_token)["kid"]]
    claims = jwt.decode(
        response.access_token, key.key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER
    )
    if response.token_type != "Bearer" or claims["client_id"] != client_id or claims["scope"] != SCOPE:
        raise BenchError(f"unexpected token response: type={response.token_type!r} claims={claims!r}")
    return response


# -- h2load --------------------------------------------------------------------------------------


def h2load(
    server: Target, workdir: Path, body: str, requests: int, *, connections: int, streams: int
) -> H2Run:
    return common.h2load(
        f"http://{server.target}{GRPC_PATH}",
        workdir,
        body,
        requests,
        connections=connections,
        streams=streams,
        server_cpu=server.cpu_seconds,
    )


def tokens_only(run: H2Run, frame: int) -> bool:
    return common.data_matches(run, frame, FRAME_TOLERANCE)


def check_run(run: H2Run, frame: int) -> H2Run:
    """Every request answered 200 and, on average, carried one token-sized message. A refused call
    (grpc-status in the trailers, no message) would pull the average below the frame size."""
    return common.check_run(run, frame, FRAME_TOLERANCE, "token")


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Series:
    """One server's control, warm-up and measured runs (``runs[round]`` holds one run per shape)."""

    server: Target
    label: str
    negative: H2Run | None = None
    warmup: H2Run | None = None
    runs: dict[int, list[H2Run]] = field(default_factory=dict)

    @property
    def all_runs(self) -> list[H2Run]:
        return [r for rs in self.runs.values() for r in rs]

    @property
    def best(self) -> H2Run:
        quiet = [r for r in self.all_runs if r.other_cores <= NOISY_CORES] or self.all_runs
        return max(quiet, key=lambda r: r.req_per_s)

    def round_best(self, round_: int) -> float:
        return max(r.req_per_s for r in self.runs[round_])

    @property
    def median(self) -> float:
        """The median over the rounds of each round's better shape."""
        return statistics.median(self.round_best(n) for n in self.runs)

    @property
    def least_cpu_us(self) -> float:
        return min(r.server_us_per_request for r in self.all_runs)


def run_size(series: Series) -> int:
    # the median, not the best: on a busy machine a run sized from a best rate can last many times
    # as long, and the script must stay within its time
    rate = statistics.median(
        r.req_per_s for r in [*([series.warmup] if series.warmup else []), *series.all_runs]
    )
    return min(MAX_REQUESTS, max(MIN_REQUESTS, int(round(rate * MEASURE_SECONDS, -2))))


def measure(series: list[Series], work: Path, frame: int, workers: int) -> dict[int, OpensslSpeed]:
    """Warm-ups, then the rounds; each round begins with its own openssl run (returned by round)."""
    speeds: dict[int, OpensslSpeed] = {}
    for s in series:
        c, m = CONCURRENCY[0]
        s.warmup = check_run(
            h2load(s.server, work, "body.bin", WARMUP_REQUESTS, connections=c, streams=m), frame
        )
        print(f"  {s.server.name}: warm-up {s.warmup.req_per_s:.0f} req/s")
    for round_ in range(1, ROUNDS + 1):
        speeds[round_] = openssl_speed(workers, OPENSSL_ROUND_SECONDS)
        sizes = {s.server.name: run_size(s) for s in series}
        for s in series:
            s.runs[round_] = []
        for step, (c, m) in enumerate(CONCURRENCY):
            shift = (round_ + step) % len(series)
            for s in series[shift:] + series[:shift]:
                run = check_run(
                    h2load(s.server, work, "body.bin", sizes[s.server.name], connections=c, streams=m), frame
                )
                s.runs[round_].append(run)
                print(
                    f"  round {round_} {s.server.name} -c {c} -m {m}: {run.req_per_s:.0f} req/s, "
                    f"server {run.server_cores:.2f} cores ({run.server_split}), "
                    f"{run.server_us_per_request:.0f} us/req, h2load {run.client_cores:.2f}, "
                    f"other {run.other_cores:.2f}"
                )
    return speeds


def negative_control(series: Series, work: Path, frame: int) -> None:
    """Refused calls look like successes to h2load but carry no data: the check must see them."""
    run = h2load(series.server, work, "wrong-secret.bin", NEGATIVE_REQUESTS, connections=1, streams=4)
    if run.succeeded != run.requests or tokens_only(run, frame):
        raise BenchError(f"the negative control of {series.server.name} did not look as expected: {run}")
    series.negative = run
    print(
        f"  {series.server.name}: wrong-secret control {run.succeeded}/{run.requests} 'succeeded', "
        f"{run.data_per_request:.0f} B/req (a token is {frame} B)"
    )


# -- one server on its own (bench_store.py) -------------------------------------------------------

STORE_CONCURRENCY = ((16, 4), (64, 1), (128, 1))
STORE_MEASURE_SECONDS = 5.0


@dataclass(frozen=True)
class WorkersResult:
    workers: int
    server_command: str
    frame: int
    negative: H2Run
    warmup: H2Run
    runs: list[H2Run]

    @property
    def best(self) -> H2Run:
        return max(self.runs, key=lambda r: r.req_per_s)


def bench_workers(
    workers: int, data_dir: Path, env: dict[str, str], client_id: str, secret: str
) -> WorkersResult:
    """``authsvc serve --workers N`` alone: a warm-up, a run at each of STORE_CONCURRENCY, then the
    wrong-secret control (last: it trips the failed-authentication limit of the client here)."""
    work = data_dir.parent
    (work / "body.bin").write_bytes(grpc_frame(issue_request(client_id, secret).SerializeToString()))
    (work / "wrong-secret.bin").write_bytes(grpc_frame(issue_request(client_id, "wrong").SerializeToString()))
    server = Server(data_dir, workers, env, work / f"server-{workers}.log")
    try:
        server.start()
        frame = check_one_token(server.target, client_id, secret)
        c, m = STORE_CONCURRENCY[0]
        warmup = check_run(h2load(server, work, "body.bin", WARMUP_REQUESTS, connections=c, streams=m), frame)
        requests = min(
            MAX_REQUESTS, max(MIN_REQUESTS, int(round(warmup.req_per_s * STORE_MEASURE_SECONDS, -2)))
        )
        print(f"  workers={workers}: warm-up {warmup.req_per_s:.0f} req/s; measuring with -n {requests}")
        runs = []
        for connections, streams in STORE_CONCURRENCY:
            run = check_run(
                h2load(server, work, "body.bin", requests, connections=connections, streams=streams), frame
            )
            print(
                f"  workers={workers} -c {connections} -m {streams}: {run.req_per_s:.0f} req/s, "
                f"server {run.server_cores:.2f} cores ({run.server_split}), other {run.other_cores:.2f}"
            )
            runs.append(run)
        check_one_token(server.target, client_id, secret)  # still healthy after the load
        series = Series(server, "control")
        negative_control(series, work, frame)
        assert series.negative is not None
    finally:
        server.stop()
    return WorkersResult(workers, server.display, frame, series.negative, warmup, runs)


# -- report --------------------------------------------------------------------------------------


def ceiling(rsa: float, echo: float) -> float:
    """Tokens per second if a token cost exactly one signature and one bare gRPC call, each on all
    cores: the time of the two, added."""
    return 1 / (1 / rsa + 1 / echo)


@dataclass(frozen=True)
class Report:
    env: Environment
    workers: int  # what the default gave
    openssl_runs: list[OpensslSpeed]  # before, after, and one per round: noise only ever lowers a rate
    openssl_rounds: dict[int, OpensslSpeed]
    py_sign_per_s: float
    frame: int
    default: Series
    quiet: Series
    one: Series
    echo: Series
    signing_echo: Series
    seconds: float

    @property
    def openssl(self) -> OpensslSpeed:
        return max(self.openssl_runs, key=lambda o: o.sign_per_s)

    @property
    def rsa(self) -> float:
        return self.openssl.sign_per_s

    @property
    def ceiling(self) -> float:
        return ceiling(self.rsa, self.echo.best.req_per_s)

    def ratio(self, s: Series) -> float:
        return s.best.req_per_s / self.ceiling

    def median_ratio(self, s: Series) -> float:
        """The median over the rounds of the round's rate / the round's ceiling (its openssl and
        echo runs)."""
        return statistics.median(
            s.round_best(n) / ceiling(self.openssl_rounds[n].sign_per_s, self.echo.round_best(n))
            for n in sorted(s.runs)
        )

    @property
    def log_cost(self) -> float:
        """The median over the rounds of defaults / WARNING: what the per-token log line and audit
        event cost in throughput (1.0: nothing)."""
        return statistics.median(
            self.default.round_best(n) / self.quiet.round_best(n) for n in self.default.runs
        )

    @property
    def sign_us(self) -> float:
        return 1e6 / self.py_sign_per_s

    def cpu_ratio(self, s: Series) -> float:
        """The ceiling in CPU: (a bare call's server CPU + one signature's) / this server's CPU per
        token, least of the runs each. Other processes lower rates far more than CPU per request."""
        return (self.echo.least_cpu_us + self.sign_us) / s.least_cpu_us

    @property
    def series(self) -> list[Series]:
        return [self.default, self.quiet, self.one, self.echo, self.signing_echo]

    def of_signing_echo(self, s: Series) -> float:
        """Best against best: ``s`` / the bare server that signs."""
        return s.best.req_per_s / self.signing_echo.best.req_per_s

    def median_of_signing_echo(self, s: Series) -> float:
        return statistics.median(s.round_best(n) / self.signing_echo.round_best(n) for n in sorted(s.runs))

    @property
    def noise(self) -> float:
        return max([self.openssl.other_cores, *(s.best.other_cores for s in self.series)])

    @property
    def noise_warning(self) -> str | None:
        if self.noise <= NOISY_CORES:
            return None
        return (
            f"WARNING: other processes used up to {self.noise:.2f} cores during the counted runs; the "
            "machine was busy and the figures are unreliable. Rerun when it is quiet."
        )


def _rates(s: Series) -> str:
    return ", ".join(f"{s.round_best(n):.0f}" for n in sorted(s.runs))


def _verdict(ratio: float) -> str:
    return "met" if ratio >= GOAL else "NOT met"


def render(report: Report) -> str:
    d, q, one, echo, signing = report.default, report.quiet, report.one, report.echo, report.signing_echo
    rows = [
        f"| {n} | {s.server.name} | {run.connections} | {run.streams} | {run.requests} | {run.req_per_s:.0f} "
        f"| {run.mean_latency} | {run.data_per_request:.1f} | {run.server_cores:.2f} ({run.server_split}) "
        f"| {run.server_us_per_request:.0f} | {run.client_cores:.2f} | {run.other_cores:.2f} "
        f"| {'best' if run is s.best else ''} |"
        for n in range(1, ROUNDS + 1)
        for s in report.series
        for run in s.runs[n]
    ]
    beyond = d.least_cpu_us - echo.least_cpu_us - report.sign_us
    commands = [
        report.openssl.command,
        "AUTHSVC_KEK=<random 64 hex> authsvc clients create --data-dir $DATA_DIR "
        f"--client-id {CLIENT_ID} --scope {shlex.quote(SCOPE)} --audience {AUDIENCE} --output json",
        *(f"AUTHSVC_KEK=<same> {s.server.display}" for s in (d, q, one)),
        f"{echo.server.display}  # response.bin: the IssueTokenResponse of a real token",
        f"{signing.server.display}",
        "# wrong-secret controls",
        *(s.negative.command for s in (d, q, one) if s.negative is not None),
        "# warm-up",
        *(s.warmup.command for s in report.series if s.warmup is not None),
        f"# measured, round 1 of {ROUNDS} (each step runs every server, in rotated order; -n is sized from",
        f"# the server's median rate so far, to last about {MEASURE_SECONDS} s)",
        *(run.command for s in report.series for run in s.runs[1]),
    ]
    lines = [
        BEGIN_MARKER,
        "## IssueToken with the defaults against the Python-gRPC ceiling",
        "",
        *report.env.lines(),
        f"- Workers: `authsvc serve` without `--workers` started {report.workers} (the CPUs this process "
        "may use: affinity mask and cgroup quota)",
        f"- Run time: {report.seconds:.0f} s",
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| RSA: openssl RSA-2048 sign/s, {report.workers} processes (best of {len(report.openssl_runs)}: "
        f"{', '.join(f'{o.sign_per_s:.0f}' for o in report.openssl_runs)}) | {report.rsa:.0f} |",
        f"| echo: bare grpc.aio server, {report.workers} workers, req/s: best; rounds {_rates(echo)} "
        f"| {echo.best.req_per_s:.0f} |",
        f"| **Ceiling 1/(1/RSA + 1/echo)** | **{report.ceiling:.0f}** tokens/s |",
        f"| IssueToken req/s, defaults (`authsvc serve`, {report.workers} workers, log level INFO): best; "
        f"rounds {_rates(d)} | {d.best.req_per_s:.0f} |",
        f"| **Ratio IssueToken (defaults) / ceiling, best (goal >= {GOAL:.2f})** | **{report.ratio(d):.2f}** "
        f"({_verdict(report.ratio(d))}) |",
        "| Ratio IssueToken (defaults) / ceiling, median of the rounds' ratios "
        f"| {report.median_ratio(d):.2f} |",
        f"| IssueToken req/s, `--log-level WARNING` (no per-token line or audit event): best; rounds "
        f"{_rates(q)} | {q.best.req_per_s:.0f} |",
        f"| Ratio `--log-level WARNING` / ceiling, best; median | {report.ratio(q):.2f}; "
        f"{report.median_ratio(q):.2f} |",
        "| Ratio from server CPU per request, (echo + one signature) / IssueToken: defaults; WARNING "
        f"| {report.cpu_ratio(d):.2f}; {report.cpu_ratio(q):.2f} |",
        f"| What the per-token log line and audit event cost: defaults / WARNING, median of the rounds "
        f"| {report.log_cost:.2f} |",
        f"| IssueToken req/s, `--workers 1`: best; rounds {_rates(one)} | {one.best.req_per_s:.0f} |",
        f"| Scaling defaults / `--workers 1`, best | {d.best.req_per_s / one.best.req_per_s:.2f}x |",
        f"| Server CPU per request (least of the runs): defaults / WARNING / `--workers 1` / echo "
        f"| {d.least_cpu_us:.0f} / {q.least_cpu_us:.0f} / {one.least_cpu_us:.0f} / "
        f"{echo.least_cpu_us:.0f} us |",
        "| Reference: cryptography RSA-2048 sign, one core, in-process, per CPU second "
        f"| {report.py_sign_per_s:.0f}/s = "
        f"{report.sign_us:.0f} us |",
        f"| Server CPU per token beyond one bare call and one signature (defaults) | {beyond:.0f} us |",
        f"| echo+sign: the bare server signing once per call (`--sign`), req/s: best; rounds "
        f"{_rates(signing)} | {signing.best.req_per_s:.0f} ({report.ratio(signing):.2f} of the ceiling) |",
        "| **IssueToken (defaults) / echo+sign: best; median of the rounds; server CPU per request** "
        f"| **{report.of_signing_echo(d):.2f}**; {report.median_of_signing_echo(d):.2f}; "
        f"{signing.least_cpu_us / d.least_cpu_us:.2f} |",
        f"| Server CPU per request, echo+sign against echo + one signature "
        f"| {signing.least_cpu_us:.0f} against {echo.least_cpu_us + report.sign_us:.0f} us |",
        "",
        *([f"**{report.noise_warning}**", ""] if report.noise_warning else []),
        f"Measured runs ({ROUNDS} rounds after a warm-up of {WARMUP_REQUESTS} requests each; 'best' is "
        f"the fastest run with at most {NOISY_CORES} other cores, if the server had one; a token frame is "
        f"{report.frame} B):",
        "",
        "| round | server | -c | -m | requests | req/s | mean latency | data B/req | server cores "
        "(per process) | server CPU us/req | h2load cores | other cores | |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Commands (`body.bin`: a 5-byte gRPC prefix and the serialized IssueTokenRequest, "
        "client_secret_post; `wrong-secret.bin` the same with a wrong secret):",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "Notes:",
        "",
        "- echo+sign is the same bare server signing once per call in its handler: what a grpc.aio "
        "server that signs costs with nothing of ours in it. Where it stays below the ceiling, the gap "
        "is the stack's (a signature made inside a grpc.aio process costs more than the two parts "
        "measured apart), and IssueToken / echo+sign is what our code keeps of what is reachable.",
        "- The ceiling: a token costs one RSA-2048 signature and one gRPC call; on all cores at once "
        "the signatures alone run at RSA/s and bare calls alone at echo/s, so the two together at "
        "1/(1/RSA + 1/echo). Everything of ours beyond the call and the signature (parsing, the "
        "client cache and secret check, rate limits, claims, JSON, logging) is what keeps a server "
        "below it. The echo server parses the request and answers a prebuilt token response of the "
        "same size; it has no interceptor, health service or connection limits.",
        f"- h2load shares the {report.env.nproc} cores with the servers (in the best default run it used "
        f"{d.best.client_cores:.2f} cores), as it does with the echo server; openssl had every core "
        "to itself. All five servers run for the whole benchmark; the idle ones count as 'other cores'.",
        "- Shared machine: 'other cores' is CPU used by neither the measured server nor h2load "
        f"({', '.join(f'{o.other_cores:.2f}' for o in report.openssl_runs)} during the openssl runs). "
        "Noise only ever lowers a rate and falls on every server alike, because each step runs them "
        "all within seconds in rotated order: best runs are compared, the median of the per-round "
        "ratios is the cross-check.",
        "- `-n` gives every connection the same number of requests and SO_REUSEPORT spreads connections "
        "over the workers by hash, so an uneven spread leaves one worker idle at the end of a run; the "
        "per-process split shows it.",
        "- Success check: a refused gRPC call is HTTP 200 with a grpc-status trailer and no message, so "
        "h2load's 'succeeded' proves nothing. Every run must average the data bytes of one real token "
        f"response per request (within {FRAME_TOLERANCE:.0%}). Wrong-secret controls: "
        + "; ".join(
            f"{s.server.name} {s.negative.succeeded}/{s.negative.requests} 'succeeded' and "
            f"{s.negative.data_per_request:.0f} B/req"
            for s in (d, q, one)
            if s.negative is not None
        )
        + ".",
        "- openssl speed uses the system OpenSSL; the service signs with the OpenSSL bundled in "
        "cryptography (its one-core rate is listed for reference).",
        END_MARKER,
        "",
    ]
    return "\n".join(lines)


def summary(report: Report) -> str:
    d = report.default
    return (
        f"RSA {report.rsa:.0f} sign/s, echo {report.echo.best.req_per_s:.0f} req/s -> ceiling "
        f"{report.ceiling:.0f} tokens/s ({report.workers} workers)\n"
        f"IssueToken defaults: best {d.best.req_per_s:.0f} req/s = {report.ratio(d):.2f} of the ceiling "
        f"(median of rounds {report.median_ratio(d):.2f}; goal {GOAL:.2f})\n"
        f"--log-level WARNING: {report.ratio(report.quiet):.2f} of the ceiling; "
        f"log cost {report.log_cost:.2f}\n"
        f"--workers 1: best {report.one.best.req_per_s:.0f} req/s\n"
        f"written to {common.RESULTS}" + (f"\n{report.noise_warning}" if report.noise_warning else "")
    )


def main() -> int:
    common.exit_on_sigterm()
    common.ensure_h2load()
    started = time.monotonic()
    environment = Environment.collect()
    workers = usable_cpus()
    speeds = [openssl_speed(workers)]
    py_sign = python_sign_rate()
    print(f"  cryptography in-process, one core: {py_sign:.0f} sign per CPU second")
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        env = {**os.environ, "AUTHSVC_KEK": secrets.token_hex(32)}
        for name in [k for k in env if k.startswith("AUTHSVC_") and k != "AUTHSVC_KEK"]:
            del env[name]  # the defaults, whatever the caller's environment says
        create = f"clients create --client-id {CLIENT_ID} --scope {SCOPE} --audience {AUDIENCE} --output json"
        created = json.loads(
            run_text([*authsvc_command(), *create.split(), "--data-dir", str(data_dir)], env=env)
        )
        client_id, secret = str(created["client_id"]), str(created["client_secret"])
        (work / "body.bin").write_bytes(grpc_frame(issue_request(client_id, secret).SerializeToString()))
        (work / "wrong-secret.bin").write_bytes(
            grpc_frame(issue_request(client_id, "wrong").SerializeToString())
        )
        with ExitStack() as stack:
            servers = [
                AuthsvcServer(
                    "defaults", data_dir, "", workers=workers, env=env, log_path=work / "defaults.log"
                ),
                AuthsvcServer(
                    "warning",
                    data_dir,
                    "--log-level WARNING",
                    workers=workers,
                    env=env,
                    log_path=work / "warning.log",
                ),
                AuthsvcServer(
                    "workers-1", data_dir, "--workers 1", workers=1, env=env, log_path=work / "workers-1.log"
                ),
            ]
            for server in servers:
                print(f"starting {server.display}...")
                stack.callback(server.stop)
                server.start()
            response = one_token(servers[0].target, client_id, secret)
            frame = len(grpc_frame(response.SerializeToString()))
            (work / "response.bin").write_bytes(response.SerializeToString())
            echo = EchoServer(workers, work / "response.bin", env, work / "echo.log")
            signing = EchoServer(workers, work / "response.bin", env, work / "echo-sign.log", sign=True)
            for bare in (echo, signing):
                print(f"starting {bare.display}...")
                stack.callback(bare.stop)
                bare.start()
            labels = ("defaults", "--log-level WARNING", "--workers 1")
            series = [Series(s, label) for s, label in zip(servers, labels, strict=True)]
            for s in series:
                if check_one_token(s.server.target, client_id, secret) != frame:
                    raise BenchError(f"{s.server.name}: a token response of another size")
            controlled = list(series)
            series += [Series(echo, "echo"), Series(signing, "echo+sign")]
            rounds = measure(series, work, frame, workers)
            speeds += [rounds[n] for n in sorted(rounds)]
            for s in controlled:  # still healthy after the load
                check_one_token(s.server.target, client_id, secret)
                # last: wrong secrets empty the client's failed-authentication bucket for this address
                # (10/min), after which the server refuses even its right secret for a minute
                negative_control(s, work, frame)
    speeds.append(openssl_speed(workers))
    default, quiet, one, echo_run, signing_run = series
    report = Report(
        environment,
        workers,
        speeds,
        rounds,
        py_sign,
        frame,
        default,
        quiet,
        one,
        echo_run,
        signing_run,
        time.monotonic() - started,
    )
    common.write_section(SECTION, render(report))
    print(summary(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_issue_token: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
