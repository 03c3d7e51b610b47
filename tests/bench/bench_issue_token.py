"""IssueToken throughput compared with the machine's raw RSA-2048 signing rate.

Run as ``.venv/bin/python tests/bench/bench_issue_token.py`` (``make bench``). In one run it:

1. measures the all-core RSA-2048 sign rate with ``openssl speed -mr -multi $(nproc)``;
2. starts ``authsvc serve --workers $(nproc)`` on a temporary data directory, registers a client
   and checks one IssueToken over a real gRPC channel (signature verified against GetJwks);
3. drives IssueToken with h2load over h2c (warm-up, then a few concurrency settings), checking
   that every response carried a token: gRPC errors come back as HTTP 200 with no message, so the
   average response data per request must match one real token response;
4. repeats 2-3 with ``--workers 1`` to show the scaling;
5. writes its section of ``tests/bench/RESULTS.md`` (between its own HTML comment markers) and
   prints a summary.

Servers are stopped with SIGTERM (and waited for) even when a step fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.bench import common
from tests.bench.common import BenchError, Environment, H2Run, ServerProcess, grpc_frame, run_text

SECTION = "issue_token"
BEGIN_MARKER = common.begin_marker(SECTION, "tests/bench/bench_issue_token.py")
END_MARKER = common.end_marker(SECTION)

OPENSSL_SECONDS = 5
PY_SIGN_SECONDS = 2.0
WARMUP_REQUESTS = 3000
WARMUP_CONCURRENCY = (8, 16)
# (h2load -c, -m) candidates; the best is reported. SO_REUSEPORT spreads connections over the workers by
# hash and -n gives every connection the same share of requests, so few connections leave one worker idle
# at the end of a run while the other finishes: many connections keep both busy to the end.
CONCURRENCY = ((16, 4), (64, 1), (128, 1))
MEASURE_SECONDS = 7.0  # each measured run gets -n sized from the warm-up rate to last about this long
MIN_REQUESTS, MAX_REQUESTS = 2000, 60000
NEGATIVE_REQUESTS = 200
NOISY_CORES = 0.2  # other processes using more CPU than this during a counted run make the figures suspect
FRAME_TOLERANCE = 0.01  # the average response data per request may differ this much from one real response
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


def openssl_speed(nproc: int) -> OpensslSpeed:
    """``openssl speed -mr``: with ``-multi`` the parent prints the summed ``+F2:k:bits:sign/s:verify/s``
    after the children's ``Got: +F2:...`` lines."""
    cmd = ["openssl", "speed", "-mr", "-multi", str(nproc), "-seconds", str(OPENSSL_SECONDS), "rsa2048"]
    print(f"{shlex.join(cmd)} ({OPENSSL_SECONDS}s sign + {OPENSSL_SECONDS}s verify)...")
    start, own, machine = time.monotonic(), common.children_cpu_seconds(), common.machine_busy_seconds()
    out = run_text(cmd, timeout=30 * OPENSSL_SECONDS)
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
    SHA-256, over a message the size of a JWT signing input."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = b"x" * 520
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < PY_SIGN_SECONDS:
        key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    return count / elapsed


# -- the server ----------------------------------------------------------------------------------


class Server(ServerProcess):
    """An ``authsvc serve`` process tree started by this script."""

    def __init__(self, data_dir: Path, workers: int, env: dict[str, str], log_path: Path) -> None:
        self.port = common.free_port()
        self.workers = workers
        self.target = f"127.0.0.1:{self.port}"
        options = f"--listen {self.target} --issuer {ISSUER} --workers {workers} --log-level WARNING"
        args = [*authsvc_command(), "serve", "--data-dir", str(data_dir), *options.split()]
        self.display = shlex.join(["authsvc", *args[len(authsvc_command()) :]]).replace(
            str(data_dir), "$DATA_DIR"
        )
        super().__init__(args, env, log_path, self._ready)

    def _ready(self) -> bool:
        return common.listening_sockets(self.port) >= self.workers and self._serving()

    def _serving(self) -> bool:
        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def running_server(data_dir: Path, workers: int, env: dict[str, str], log_path: Path) -> Iterator[Server]:
    server = Server(data_dir, workers, env, log_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def check_one_token(target: str, client_id: str, secret: str) -> int:
    """Issue one token with a real gRPC client, verify it against the JWKS, return the size of the
    response's gRPC frame (what h2load should receive as data per request)."""
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
    return len(grpc_frame(response.SerializeToString()))


# -- h2load --------------------------------------------------------------------------------------


def h2load(
    server: Server, workdir: Path, body: str, requests: int, *, connections: int, streams: int
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


# -- one server configuration --------------------------------------------------------------------


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
    work = data_dir.parent
    (work / "body.bin").write_bytes(grpc_frame(issue_request(client_id, secret).SerializeToString()))
    (work / "wrong-secret.bin").write_bytes(grpc_frame(issue_request(client_id, "wrong").SerializeToString()))
    with running_server(data_dir, workers, env, work / f"server-{workers}.log") as server:
        frame = check_one_token(server.target, client_id, secret)
        # Negative control: refused calls look like successes to h2load but carry no data.
        negative = h2load(server, work, "wrong-secret.bin", NEGATIVE_REQUESTS, connections=1, streams=4)
        if negative.succeeded != negative.requests or tokens_only(negative, frame):
            raise BenchError(f"the negative control did not look as expected: {negative}")
        print(
            f"  workers={workers}: one token OK ({frame} B frame); wrong-secret control: "
            f"{negative.succeeded}/{negative.requests} 'succeeded', {negative.data_per_request:.0f} B/req"
        )
        c, m = WARMUP_CONCURRENCY
        warmup = check_run(h2load(server, work, "body.bin", WARMUP_REQUESTS, connections=c, streams=m), frame)
        requests = min(MAX_REQUESTS, max(MIN_REQUESTS, int(round(warmup.req_per_s * MEASURE_SECONDS, -2))))
        print(f"  workers={workers}: warm-up {warmup.req_per_s:.0f} req/s; measuring with -n {requests}")
        runs = []
        for connections, streams in CONCURRENCY:
            run = check_run(
                h2load(server, work, "body.bin", requests, connections=connections, streams=streams), frame
            )
            print(
                f"  workers={workers} -c {connections} -m {streams}: {run.req_per_s:.0f} req/s, "
                f"mean {run.mean_latency}, server {run.server_cores:.2f} cores ({run.server_split}), "
                f"h2load {run.client_cores:.2f}, other {run.other_cores:.2f}"
            )
            runs.append(run)
        check_one_token(server.target, client_id, secret)  # still healthy after the load
    return WorkersResult(workers, server.display, frame, negative, warmup, runs)


# -- report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    env: Environment
    openssl_runs: list[OpensslSpeed]  # before and after the service runs: noise only ever lowers a rate
    py_sign_per_s: float
    results: list[WorkersResult]

    @property
    def nproc(self) -> int:
        return self.env.nproc

    @property
    def openssl(self) -> OpensslSpeed:
        return max(self.openssl_runs, key=lambda o: o.sign_per_s)

    @property
    def openssl_rates(self) -> str:
        return ", ".join(f"{o.sign_per_s:.0f}" for o in self.openssl_runs)

    @property
    def noise(self) -> float:
        """The most CPU other processes used during any run the headline figures come from."""
        return max([self.openssl.other_cores, *(r.best.other_cores for r in self.results)])

    @property
    def noise_warning(self) -> str | None:
        if self.noise <= NOISY_CORES:
            return None
        return (
            f"WARNING: other processes used up to {self.noise:.2f} cores during the counted runs; the "
            "machine was busy and the figures (the ratio especially) are unreliable. Rerun when it is quiet."
        )

    @property
    def all_cores(self) -> WorkersResult:
        return max(self.results, key=lambda r: r.workers)

    @property
    def one_worker(self) -> WorkersResult:
        return min(self.results, key=lambda r: r.workers)

    @property
    def ratio(self) -> float:
        return self.all_cores.best.req_per_s / self.openssl.sign_per_s

    @property
    def scaling(self) -> float:
        return self.all_cores.best.req_per_s / self.one_worker.best.req_per_s


def _commands(report: Report) -> list[str]:
    commands = [
        report.openssl.command,
        "AUTHSVC_KEK=<random 64 hex> authsvc clients create --data-dir $DATA_DIR "
        f"--client-id {CLIENT_ID} --scope {shlex.quote(SCOPE)} --audience {AUDIENCE} --output json",
    ]
    for r in report.results:
        commands += [f"AUTHSVC_KEK=<same> {r.server_command}", "# warm-up", r.warmup.command, "# measured"]
        commands += [run.command for run in r.runs]
    return commands


def render(report: Report) -> str:
    full, one, control = report.all_cores, report.one_worker, report.all_cores.negative
    rows = [
        f"| {r.workers} | {run.connections} | {run.streams} | {run.requests} | {run.req_per_s:.0f} "
        f"| {run.mean_latency} | {run.data_per_request:.1f} ({r.frame}) | {run.server_cores:.2f} "
        f"({run.server_split}) | {run.client_cores:.2f} | {run.other_cores:.2f} "
        f"| {'best' if run is r.best else ''} |"
        for r in report.results
        for run in r.runs
    ]
    lines = [
        BEGIN_MARKER,
        "## IssueToken throughput vs. raw RSA-2048 signing",
        "",
        *report.env.lines(),
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| openssl RSA-2048 sign/s, all {report.nproc} cores (best of {len(report.openssl_runs)}: "
        f"{report.openssl_rates}) | {report.openssl.sign_per_s:.0f} |",
        f"| IssueToken req/s, `--workers {full.workers}` (best) | {full.best.req_per_s:.0f} "
        f"(-c {full.best.connections} -m {full.best.streams}) |",
        f"| IssueToken req/s, `--workers {one.workers}` (best) | {one.best.req_per_s:.0f} "
        f"(-c {one.best.connections} -m {one.best.streams}) |",
        f"| **Ratio IssueToken req/s / openssl all-core sign/s** | **{report.ratio:.2f}** |",
        f"| Scaling `--workers {full.workers}` / `--workers {one.workers}` | {report.scaling:.2f}x |",
        f"| Reference: cryptography sign/s, one core, in-process | {report.py_sign_per_s:.0f} |",
        "",
        *([f"**{report.noise_warning}**", ""] if report.noise_warning else []),
        f"Measured runs (after a warm-up of {WARMUP_REQUESTS} requests at "
        f"-c {WARMUP_CONCURRENCY[0]} -m {WARMUP_CONCURRENCY[1]}):",
        "",
        "| workers | -c | -m | requests | req/s | mean latency | data B/req (token frame) "
        "| server cores (per process) | h2load cores | other cores | |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Commands (`body.bin`: a 5-byte gRPC prefix and the serialized IssueTokenRequest):",
        "",
        "```sh",
        *_commands(report),
        "```",
        "",
        "Notes:",
        "",
        f"- h2load shares the {report.nproc} cores with the server: in the best all-core run it used "
        f"{full.best.client_cores:.2f} cores and the server {full.best.server_cores:.2f}, while openssl had "
        "every core to itself. The ratio is therefore a lower bound for a server on dedicated cores.",
        "- Shared machine: 'other cores' is CPU used by neither the server nor h2load during a run "
        f"({', '.join(f'{o.other_cores:.2f}' for o in report.openssl_runs)} during the openssl runs). "
        "Background load lowers the rates, openssl's more than the service's, so the best openssl and "
        f"h2load runs are compared, and runs with more than {NOISY_CORES} other cores are flagged.",
        "- `-n` gives every connection the same number of requests and SO_REUSEPORT spreads connections "
        "over the workers by hash, so an uneven spread leaves one worker idle at the end of a run; the "
        "per-process split shows it. Many connections keep the spread even.",
        "- Success check: a refused gRPC call is HTTP 200 with a grpc-status trailer and no message, so "
        "h2load's 'succeeded' proves nothing. Every run must average the data bytes of one real token "
        f"response per request (within {FRAME_TOLERANCE:.0%}). A wrong-secret control run gave "
        f"{control.succeeded}/{control.requests} 'succeeded' and {control.data_per_request:.0f} B/req.",
        "- openssl speed uses the system OpenSSL; the service signs with the OpenSSL bundled in "
        "cryptography (its one-core rate is listed for reference).",
        END_MARKER,
        "",
    ]
    return "\n".join(lines)


def write_results(section: str) -> None:
    common.write_section(SECTION, section)


def summary(report: Report) -> str:
    full, one = report.all_cores, report.one_worker
    return (
        f"openssl all-core sign/s: {report.openssl.sign_per_s:.0f} (best of "
        f"{report.openssl_rates}; nproc={report.nproc})\n"
        f"IssueToken req/s --workers {full.workers}: {full.best.req_per_s:.0f} "
        f"(-c {full.best.connections} -m {full.best.streams}; "
        f"h2load used {full.best.client_cores:.2f} cores, server {full.best.server_cores:.2f})\n"
        f"IssueToken req/s --workers {one.workers}: {one.best.req_per_s:.0f} "
        f"(-c {one.best.connections} -m {one.best.streams})\n"
        f"ratio IssueToken / openssl sign: {report.ratio:.2f}; scaling {report.scaling:.2f}x\n"
        f"written to {common.RESULTS}" + (f"\n{report.noise_warning}" if report.noise_warning else "")
    )


def main() -> int:
    common.exit_on_sigterm()
    common.ensure_h2load()
    environment = Environment.collect()
    nproc = environment.nproc
    speeds = [openssl_speed(nproc)]
    py_sign = python_sign_rate()
    print(f"  cryptography in-process, one core: {py_sign:.0f} sign/s")
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "AUTHSVC_KEK": secrets.token_hex(32)}
        create = f"clients create --client-id {CLIENT_ID} --scope {SCOPE} --audience {AUDIENCE} --output json"
        created = json.loads(
            run_text([*authsvc_command(), *create.split(), "--data-dir", str(data_dir)], env=env)
        )
        client_id, secret = str(created["client_id"]), str(created["client_secret"])
        results = []
        for workers in dict.fromkeys((nproc, 1)):
            print(f"IssueToken with --workers {workers}...")
            results.append(bench_workers(workers, data_dir, env, client_id, secret))
    speeds.append(openssl_speed(nproc))
    report = Report(environment, speeds, py_sign, results)
    write_results(render(report))
    print(summary(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_issue_token: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
