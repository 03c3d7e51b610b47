"""The HTTP token endpoint beside gRPC IssueToken and beside an Authlib + gunicorn peer, in one run.

Run as ``.venv/bin/python tests/bench/bench_http_token.py`` (``make bench``). It:

1. installs h2load where it is missing (:func:`common.ensure_h2load`), registers a client with
   ``authsvc clients create`` and generates the peer's RSA-2048 key;
2. starts ``authsvc serve --listen ... --http-listen ...`` with the default worker count (one per
   usable CPU, :func:`authsvc.server.cpus.usable_cpus`; one process tree serving both gRPC and
   HTTP) and the peer, ``tests/bench/peer_authlib.py`` on gunicorn with the same number of workers,
   twice: sync workers and gthread workers;
3. checks one token from each endpoint with a real client (signature, ``typ``, claims), and, after
   the measured runs (wrong secrets trip authsvc's failed-authentication limit), a wrong-secret
   control run per endpoint that the success check must refuse;
4. warms each endpoint up, then runs rounds of h2load (HTTP/1.1 with ``--h1`` for the HTTP
   endpoints, h2c for gRPC) at several concurrency settings, the endpoints in rotated order within
   each setting so that the machine's noise falls on all of them alike; every run must answer
   every request 200 with, on average, the body size of one token answer;
5. writes its section of ``tests/bench/RESULTS.md``: best and median per endpoint, the ratios
   HTTP / peer, gRPC / peer and HTTP / gRPC, server CPU per request, and every run's CPU split.

All four endpoints authenticate with ``client_secret_basic`` and ask for the same scope.
Servers are stopped with SIGTERM (and waited for) even when a step fails.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path
from urllib.parse import quote

import grpc
import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc.server.cpus import usable_cpus
from authsvc.v1 import token_pb2
from tests.bench import bench_issue_token, common
from tests.bench.common import BenchError, Environment, H2Run, ServerProcess, grpc_frame, run_text

SECTION = "http_token"
SCRIPT = "tests/bench/bench_http_token.py"
REPO = Path(__file__).resolve().parents[2]

CLIENT_ID = bench_issue_token.CLIENT_ID
SCOPE = bench_issue_token.SCOPE
AUDIENCE = bench_issue_token.AUDIENCE
ISSUER = bench_issue_token.ISSUER
PEER_ISSUER = "https://peer.bench"
TOKEN_TTL = 300  # authsvc's default token_ttl for a new client; the peer is given the same
TOKEN_PATH = "/oauth2/token"
FORM = "application/x-www-form-urlencoded"

GTHREAD_THREADS = 4
WARMUP_REQUESTS = 2000
ROUNDS = 4
# h2load -c for the HTTP/1.1 endpoints (-m 1: no pipelining); the gRPC endpoint gets bench_issue_token's
# (-c, -m) settings, as many requests in flight at each step.
HTTP_CONCURRENCY = ((16, 1), (64, 1), (128, 1))
GRPC_CONCURRENCY = ((16, 4), (64, 1), (128, 1))  # as many requests in flight as each HTTP step
MEASURE_SECONDS = 2.5  # a measured run's -n is sized from its endpoint's median rate so far to last this long
MIN_REQUESTS, MAX_REQUESTS = 1000, 30000
NEGATIVE_REQUESTS = 200
NOISY_CORES = bench_issue_token.NOISY_CORES
FRAME_TOLERANCE = bench_issue_token.FRAME_TOLERANCE
GOAL = 1.5


# -- requests ------------------------------------------------------------------------------------


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret form-urlencoded, then HTTP Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


FORM_BODY = f"grant_type=client_credentials&scope={quote(SCOPE, safe='')}"


def grpc_body() -> bytes:
    """IssueToken with the credentials in ``authorization: Basic`` metadata, as over HTTP."""
    return grpc_frame(
        token_pb2.IssueTokenRequest(grant_type="client_credentials", scope=SCOPE).SerializeToString()
    )


def verify_token_answer(body: bytes, key: RSAPublicKey, issuer: str) -> None:
    """An RFC 6749 §5.1 answer holding an RS256 ``at+jwt`` for our client, scope and audience."""
    answer = json.loads(body)
    token = answer["access_token"]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, issuer=issuer)
    if (
        answer["token_type"] != "Bearer"
        or answer["expires_in"] != TOKEN_TTL
        or header.get("typ") != "at+jwt"
        or not header.get("kid")
        or claims["client_id"] != CLIENT_ID
        or claims["sub"] != CLIENT_ID
        or claims["scope"] != SCOPE
    ):
        raise BenchError(f"unexpected token answer: {answer!r}, header {header!r}, claims {claims!r}")


def post_token(url: str, authorization: str) -> requests.Response:
    return requests.post(
        url, data=FORM_BODY, headers={"Content-Type": FORM, "Authorization": authorization}, timeout=10
    )


# -- the servers ---------------------------------------------------------------------------------


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


class OurServer(ServerProcess):
    """``authsvc serve`` with both listeners: gRPC on ``port``, HTTP on ``http_port``, and no
    ``--workers``: the default, one worker per usable CPU (``workers``, to know when it is up)."""

    def __init__(self, data_dir: Path, workers: int, env: dict[str, str], log_path: Path) -> None:
        self.workers = workers
        self.port, self.http_port = common.free_port(), common.free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.http_base = f"http://127.0.0.1:{self.http_port}"
        options = (
            f"--listen {self.target} --http-listen 127.0.0.1:{self.http_port} --issuer {ISSUER} "
            "--log-level WARNING"
        )
        base = bench_issue_token.authsvc_command()
        args = [*base, "serve", "--data-dir", str(data_dir), *options.split()]
        self.display = shlex.join(["authsvc", *args[len(base) :]]).replace(str(data_dir), "$DATA_DIR")
        super().__init__(args, env, log_path, self._ready)

    def _ready(self) -> bool:
        if common.listening_sockets(self.port) < self.workers:
            return False
        if common.listening_sockets(self.http_port) < self.workers:
            return False
        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING) and http_ok(
            self.http_base + "/.well-known/jwks.json"
        )


class PeerServer(ServerProcess):
    """``tests/bench/peer_authlib.py`` on gunicorn: ``worker_class`` sync or gthread."""

    def __init__(
        self, worker_class: str, workers: int, env: dict[str, str], log_path: Path, key_file: Path
    ) -> None:
        self.workers = workers
        self.worker_class = worker_class
        self.port = common.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        threads = ["--threads", str(GTHREAD_THREADS)] if worker_class == "gthread" else []
        gunicorn = Path(sys.executable).parent / "gunicorn"
        command = [str(gunicorn)] if gunicorn.exists() else [sys.executable, "-m", "gunicorn"]
        options = [
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            *threads,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "warning",
            "--chdir",
            str(REPO),
            "tests.bench.peer_authlib:app",
        ]
        peer_env = {
            "PEER_KEY_FILE": str(key_file),
            "PEER_CLIENT_ID": CLIENT_ID,
            "PEER_SCOPE": SCOPE,
            "PEER_AUDIENCE": AUDIENCE,
            "PEER_ISSUER": PEER_ISSUER,
            "PEER_TOKEN_TTL": str(TOKEN_TTL),
        }
        self.display = " ".join(f"{k}={v}" for k, v in peer_env.items() if k != "PEER_KEY_FILE")
        self.display = (
            f"PEER_KEY_FILE=$TMP/peer-key.pem PEER_CLIENT_SECRET=<the secret> {self.display} "
            + shlex.join(["gunicorn", *options]).replace(str(REPO), "$REPO")
        )
        super().__init__([*command, *options], {**env, **peer_env}, log_path, self._ready)

    def _ready(self) -> bool:
        # the master and every worker forked, and one of them answering
        return len(self.pids()) > self.workers and http_ok(self.base + "/healthz")


# -- endpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One thing to measure: a URL, the body h2load sends, and the response data a token answer has."""

    name: str  # short, for tables
    label: str  # what it is, for the figures
    url: str
    body: str  # a file in the work directory
    headers: tuple[str, ...]
    h1: bool
    concurrency: tuple[tuple[int, int], ...]
    frame: int  # data bytes of one token answer (HTTP body, or gRPC frame)
    server: ServerProcess


def http_headers(authorization: str) -> tuple[str, ...]:
    return (f"content-type: {FORM}", f"authorization: {authorization}")


def grpc_headers(authorization: str) -> tuple[str, ...]:
    return (*common.GRPC_HEADERS, f"authorization: {authorization}")


def h2load(
    endpoint: Endpoint, workdir: Path, count: int, connections: int, streams: int, *, wrong: str | None = None
) -> H2Run:
    """h2load against ``endpoint``; ``wrong``, an ``authorization`` value, replaces the right one."""
    headers = endpoint.headers
    redact = {h.split(": ", 1)[1]: "$BASIC" for h in headers if h.startswith("authorization:")}
    if wrong is not None:
        headers = tuple(f"authorization: {wrong}" if h.startswith("authorization:") else h for h in headers)
        redact = {wrong: "$WRONG_BASIC"}
    return common.h2load(
        endpoint.url,
        workdir,
        endpoint.body,
        count,
        connections=connections,
        streams=streams,
        server_cpu=endpoint.server.cpu_seconds,
        headers=headers,
        redact=redact,
        h1=endpoint.h1,
    )


def check_run(run: H2Run, endpoint: Endpoint) -> H2Run:
    return common.check_run(run, endpoint.frame, FRAME_TOLERANCE, "token")


def control(endpoint: Endpoint, workdir: Path, wrong: str) -> H2Run:
    """A wrong-secret run: the success check must refuse it (HTTP: 401s; gRPC: 200s without data)."""
    run = h2load(endpoint, workdir, NEGATIVE_REQUESTS, 4, 1, wrong=wrong)
    if endpoint.h1:  # every answer an error (h2load counts a 4xx as not 'succeeded'), with its body
        refused = run.status_2xx == 0 and 0 < run.data_per_request < endpoint.frame / 2
    else:  # gRPC refusals are 200 with a grpc-status trailer and no message
        refused = run.succeeded == run.requests and not common.data_matches(run, endpoint.frame, 0.5)
    if not refused:
        raise BenchError(f"the wrong-secret control of {endpoint.name} did not look as expected: {run}")
    print(
        f"  {endpoint.name}: wrong-secret control {run.status_2xx}/{run.requests} 2xx, "
        f"{run.data_per_request:.0f} B/req (a token answer is {endpoint.frame} B)"
    )
    return run


# -- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    endpoint: Endpoint
    round: int
    run: H2Run


@dataclass(frozen=True)
class EndpointResult:
    endpoint: Endpoint
    control: H2Run
    warmup: H2Run
    runs: list[Measured]

    @property
    def quiet(self) -> list[Measured]:
        return [m for m in self.runs if m.run.other_cores <= NOISY_CORES] or self.runs

    @property
    def best(self) -> Measured:
        """The fastest run with at most NOISY_CORES other cores (the fastest at all if none was quiet)."""
        return max(self.quiet, key=lambda m: m.run.req_per_s)

    @property
    def noisy_best(self) -> bool:
        return self.best.run.other_cores > NOISY_CORES

    @property
    def median(self) -> float:
        return statistics.median(m.run.req_per_s for m in self.runs)

    @property
    def least_cpu_us(self) -> float:
        return min(m.run.server_us_per_request for m in self.runs)

    def at(self, round_: int, step: int) -> H2Run:
        return [m.run for m in self.runs if m.round == round_][step]


def run_size(seen: list[H2Run]) -> int:
    # the median, not the best: on a busy machine a run sized from a best rate can last many times
    # as long, and the script must stay within its time
    rate = statistics.median(r.req_per_s for r in seen)
    return min(MAX_REQUESTS, max(MIN_REQUESTS, int(round(rate * MEASURE_SECONDS, -2))))


def measure(
    endpoints: list[Endpoint], workdir: Path, wrong: str, healthy: Callable[[], None]
) -> list[EndpointResult]:
    """Warm-ups, the measured rounds, ``healthy()`` (every endpoint still issues tokens), and the
    wrong-secret controls."""
    warmups: dict[str, H2Run] = {}
    for e in endpoints:
        c, m = e.concurrency[0]
        warmups[e.name] = check_run(h2load(e, workdir, WARMUP_REQUESTS, c, m), e)
        print(f"  {e.name}: warm-up {warmups[e.name].req_per_s:.0f} req/s")
    runs: dict[str, list[Measured]] = {e.name: [] for e in endpoints}
    for round_ in range(1, ROUNDS + 1):
        # -n from the median rate seen so far (warm-up and runs): neither one slow nor one fast run rules
        sizes = {e.name: run_size([warmups[e.name], *(m.run for m in runs[e.name])]) for e in endpoints}
        for step in range(len(HTTP_CONCURRENCY)):
            shift = (round_ + step) % len(endpoints)
            for e in endpoints[shift:] + endpoints[:shift]:
                c, m = e.concurrency[step]
                run = check_run(h2load(e, workdir, sizes[e.name], c, m), e)
                runs[e.name].append(Measured(e, round_, run))
                print(
                    f"  round {round_} {e.name} -c {c} -m {m}: {run.req_per_s:.0f} req/s, mean "
                    f"{run.mean_latency}, server {run.server_cores:.2f} cores ({run.server_split}), "
                    f"{run.server_us_per_request:.0f} us/req, h2load {run.client_cores:.2f}, "
                    f"other {run.other_cores:.2f}"
                )
    healthy()
    # last: wrong secrets empty the client's failed-authentication bucket for this address (10/min),
    # after which authsvc refuses even the right secret from it for a minute
    controls = {e.name: control(e, workdir, wrong) for e in endpoints}
    for e in endpoints:
        runs[e.name].sort(key=lambda m: (m.round, e.concurrency.index((m.run.connections, m.run.streams))))
    return [EndpointResult(e, controls[e.name], warmups[e.name], runs[e.name]) for e in endpoints]


# -- report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    env: Environment
    workers: int
    our_command: str
    results: dict[str, EndpointResult]
    code: str
    sign_per_s: float  # RSA-2048 signatures per second, one core, in-process (cryptography)
    load_before: str
    load_after: str
    seconds: float

    @property
    def http(self) -> EndpointResult:
        return self.results["http"]

    @property
    def grpc(self) -> EndpointResult:
        return self.results["grpc"]

    @property
    def peer(self) -> EndpointResult:
        """The better peer configuration, by its best run."""
        return max(
            (self.results["peer-sync"], self.results["peer-gthread"]), key=lambda r: r.best.run.req_per_s
        )

    def ratio(self, ours: EndpointResult) -> float:
        return ours.best.run.req_per_s / self.peer.best.run.req_per_s

    def median_ratio(self, ours: EndpointResult) -> float:
        return ours.median / self.peer.median

    def paired_ratio(self, ours: EndpointResult) -> float:
        """The median, over rounds and concurrency steps, of ours / the peer measured seconds apart."""
        return statistics.median(
            ours.at(r, s).req_per_s / self.peer.at(r, s).req_per_s
            for r in range(1, ROUNDS + 1)
            for s in range(len(HTTP_CONCURRENCY))
        )

    def cpu_ratio(self, ours: EndpointResult) -> float:
        """Peer server CPU per request over ours (least of the runs): higher is better for us."""
        return self.peer.least_cpu_us / ours.least_cpu_us

    @property
    def sign_us(self) -> float:
        return 1e6 / self.sign_per_s

    def beyond_signing(self, r: EndpointResult) -> float:
        """Server CPU per request that is not the RSA signature (parsing, framework, auth, JSON, kernel)."""
        return r.least_cpu_us - self.sign_us

    @property
    def noise(self) -> float:
        return max(r.best.run.other_cores for r in self.results.values())

    @property
    def noise_warning(self) -> str | None:
        if self.noise <= NOISY_CORES:
            return None
        return (
            f"WARNING: other processes used up to {self.noise:.2f} cores during a best run (no quieter run "
            "was had); the machine was busy and the figures are unreliable. Rerun when it is quiet."
        )


def _verdict(ratio: float) -> str:
    return "met" if ratio >= GOAL else "not met"


def _figure(r: EndpointResult) -> str:
    b = r.best.run
    rates = ", ".join(f"{m.run.req_per_s:.0f}" for m in r.runs)
    flag = " (noisy)" if r.noisy_best else ""
    return (
        f"| {r.endpoint.label} req/s: best (-c {b.connections} -m {b.streams}, round {r.best.round}){flag}; "
        f"median of {len(r.runs)}: {rates} | {b.req_per_s:.0f}; {r.median:.0f} |"
    )


def render(report: Report) -> str:
    http, grpc_, peer = report.http, report.grpc, report.peer
    rows = [
        f"| {m.round} | {r.endpoint.name} | {m.run.connections} | {m.run.streams} | {m.run.requests} "
        f"| {m.run.req_per_s:.0f} | {m.run.mean_latency} | {m.run.data_per_request:.1f} ({r.endpoint.frame}) "
        f"| {m.run.server_cores:.2f} ({m.run.server_split}) | {m.run.server_us_per_request:.0f} "
        f"| {m.run.client_cores:.2f} | {m.run.other_cores:.2f} | {'best' if m is r.best else ''} |"
        for round_ in range(1, ROUNDS + 1)
        for r in report.results.values()
        for m in r.runs
        if m.round == round_
    ]
    versions = ", ".join(
        f"{name} {dist_version(name)}"
        for name in ("aiohttp", "Authlib", "joserfc", "Flask", "Werkzeug", "gunicorn")
    )
    peer_results = [report.results["peer-sync"], report.results["peer-gthread"]]
    commands = [
        "AUTHSVC_KEK=<random 64 hex> authsvc clients create --data-dir $DATA_DIR "
        f"--client-id {CLIENT_ID} --scope {shlex.quote(SCOPE)} --audience {AUDIENCE} --output json",
        f"AUTHSVC_KEK=<same> {report.our_command}",
        *(r.endpoint.server.display for r in peer_results if isinstance(r.endpoint.server, PeerServer)),
        "# wrong-secret controls",
        *(r.control.command for r in report.results.values()),
        "# warm-up",
        *(r.warmup.command for r in report.results.values()),
        "# measured, round 1 (every round runs each endpoint at each step, in rotated order; -n is",
        f"# sized from the median rate the endpoint has shown so far, to last about {MEASURE_SECONDS:.0f} s)",
        *(m.run.command for r in report.results.values() for m in r.runs if m.round == 1),
    ]
    control_text = "; ".join(
        f"{r.endpoint.name} {r.control.status_2xx}/{r.control.requests} 2xx and "
        f"{r.control.data_per_request:.0f} B/req"
        for r in report.results.values()
    )
    lines = [
        common.begin_marker(SECTION, SCRIPT),
        "## Token endpoint: HTTP and gRPC against an Authlib + gunicorn peer",
        "",
        *report.env.lines(),
        f"- HTTP stacks: {versions}",
        f"- Code measured: {report.code}",
        f"- Run time: {report.seconds:.0f} s; load average before {report.load_before}, "
        f"after {report.load_after}",
        "",
        "| Figure | Value |",
        "|---|---|",
        _figure(http),
        _figure(grpc_),
        *(_figure(r) for r in peer_results),
        f"| **Ratio HTTP / peer, best runs (goal >= {GOAL})** | **{report.ratio(http):.2f}** "
        f"({_verdict(report.ratio(http))}) |",
        f"| **Ratio gRPC / peer, best runs (goal >= {GOAL})** | **{report.ratio(grpc_):.2f}** "
        f"({_verdict(report.ratio(grpc_))}) |",
        f"| Ratio HTTP / gRPC, best runs | {http.best.run.req_per_s / grpc_.best.run.req_per_s:.2f} |",
        f"| Ratio HTTP / peer: of the medians; median of the {ROUNDS * len(HTTP_CONCURRENCY)} paired runs; "
        f"from server CPU per request | {report.median_ratio(http):.2f}; {report.paired_ratio(http):.2f}; "
        f"{report.cpu_ratio(http):.2f} |",
        f"| Ratio gRPC / peer: of the medians; median of the paired runs; from server CPU per request "
        f"| {report.median_ratio(grpc_):.2f}; {report.paired_ratio(grpc_):.2f}; "
        f"{report.cpu_ratio(grpc_):.2f} |",
        f"| Server CPU per request (least of the runs), HTTP / gRPC / {peer.endpoint.name} / "
        f"{next(r for r in peer_results if r is not peer).endpoint.name} "
        f"| {http.least_cpu_us:.0f} / {grpc_.least_cpu_us:.0f} / {peer.least_cpu_us:.0f} / "
        f"{next(r for r in peer_results if r is not peer).least_cpu_us:.0f} us |",
        f"| Reference: RSA-2048 sign, one core, in-process (cryptography, as both sides sign) "
        f"| {report.sign_per_s:.0f}/s = {report.sign_us:.0f} us |",
        f"| Server CPU per request beyond the signature, HTTP / gRPC / {peer.endpoint.name} "
        f"| {report.beyond_signing(http):.0f} / {report.beyond_signing(grpc_):.0f} / "
        f"{report.beyond_signing(peer):.0f} us |",
        "",
        f"The peer is the better of its two configurations by best run: `{peer.endpoint.name}`.",
        "",
        *([f"**{report.noise_warning}**", ""] if report.noise_warning else []),
        f"Measured runs ({ROUNDS} rounds after a warm-up of {WARMUP_REQUESTS} requests per endpoint; "
        "'best' is the fastest run with at most "
        f"{NOISY_CORES} other cores, if the endpoint had one):",
        "",
        "| round | endpoint | -c | -m | requests | req/s | mean latency | data B/req (token answer) "
        "| server cores (per process) | server CPU us/req | h2load cores | other cores | |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Commands (`$DATA_DIR`, `$TMP`: temporary directories; `$REPO`: the repository; `$BASIC`: "
        f"`Basic base64({CLIENT_ID}:<secret>)`; `form.txt`: `{FORM_BODY}`; `grpc.bin`: the 5-byte gRPC "
        f"prefix and an IssueTokenRequest with grant_type and scope only, the credentials being in "
        "`authorization: Basic` metadata):",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "What each side does per request:",
        "",
        f"- authsvc (no `--workers`: {report.workers} by default, each worker one process serving gRPC "
        "and HTTP on one asyncio loop, SO_REUSEPORT per listener): aiohttp parses the request and the "
        "form (RFC 6749 §3.2: a size cap, each parameter once), the edge decodes "
        "`client_secret_basic` (§2.3.1), the "
        "core takes the client from the per-worker client cache (2 s TTL: one SQLite read per client "
        "and worker every 2 s), computes HMAC-SHA256(pepper, secret) twice and compares in constant "
        "time (the current secret and, always, the previous one of a rotation's grace), checks the "
        "grant type, scope and audience, builds the RFC 9068 claims "
        "(`iss sub aud exp iat nbf jti client_id scope`) "
        "and signs RS256 with cryptography; a JSON answer with `Cache-Control: no-store`. With "
        "`--log-level WARNING` the per-token INFO line is not written. gRPC: the same application "
        "call behind grpc.aio, `authorization: Basic` metadata.",
        "- peer (`tests/bench/peer_authlib.py`, gunicorn with the same number of workers, `sync` or "
        f"`gthread --threads {GTHREAD_THREADS}`, no access log): Flask/Werkzeug parse the request, "
        "Authlib's `AuthorizationServer` picks the `ClientCredentialsGrant`, authenticates "
        "`client_secret_basic` against one in-memory client (HMAC-SHA256 of the secret with a pepper, "
        "`hmac.compare_digest`, like ours), checks grant type and scope, and Authlib's RFC 9068 "
        "`JWTBearerTokenGenerator` signs RS256 with joserfc (on cryptography) with a 2048-bit key "
        "parsed once; claims `iss sub aud exp iat jti client_id scope` (no `nbf`), header "
        "`typ: at+jwt` and `kid`; `save_token` stores nothing; JSON answer with `Cache-Control: no-store`. "
        "No database on either side's hot path.",
        "- Connections: h2load keeps its connections open. aiohttp and gthread keep them alive; a gunicorn "
        "sync worker closes every connection after one answer, so against `peer-sync` every request "
        "opens a new TCP connection (its cost is in the server's and h2load's CPU). The peer's better "
        "configuration is compared.",
        "- gthread workers share one listening socket and accept as fast as they can, so connections "
        "opened together (h2load opens all of its own at the start) may pile onto one worker: the "
        "per-process column shows it (e.g. 1.2+0.1 cores). Sync workers take one connection per "
        "request and stay balanced. That is gunicorn's behaviour, not the load generator's; both are "
        "reported and the better one is the peer.",
        "",
        "Notes:",
        "",
        f"- One machine, {report.env.nproc} cores: h2load (one thread) shares them with the measured "
        f"server; in the best HTTP run it used {http.best.run.client_cores:.2f} cores, in the peer's best "
        f"{peer.best.run.client_cores:.2f}. All four servers run for the whole benchmark; the idle ones "
        "count as 'other cores'.",
        "- Shared machine: 'other cores' is CPU used by neither the measured server nor h2load (other "
        "engineers' tests, the idle servers). Noise only ever lowers a rate, and it falls on every "
        "endpoint alike because each step runs them all within seconds in rotated order: the headline "
        "compares best runs; the paired median and the CPU-per-request ratio are the cross-checks.",
        "- Success check: every measured run must answer every request with 2xx and average the "
        f"data bytes of one token answer (within {FRAME_TOLERANCE:.0%}); before the load each endpoint "
        "issued one token that was verified (RS256 signature against its JWKS or key, `typ`, claims). "
        "Wrong-secret controls: " + control_text + " (a refused gRPC call is HTTP 200 with no data).",
        common.end_marker(SECTION),
        "",
    ]
    return "\n".join(lines)


def summary(report: Report) -> str:
    http, grpc_, peer = report.http, report.grpc, report.peer
    return (
        f"HTTP /oauth2/token: best {http.best.run.req_per_s:.0f} req/s, median {http.median:.0f}\n"
        f"gRPC IssueToken:    best {grpc_.best.run.req_per_s:.0f} req/s, median {grpc_.median:.0f}\n"
        f"peer ({peer.endpoint.name}): best {peer.best.run.req_per_s:.0f} req/s, median {peer.median:.0f}\n"
        f"ratio HTTP / peer {report.ratio(http):.2f}, gRPC / peer {report.ratio(grpc_):.2f} "
        f"(goal >= {GOAL}); written to {common.RESULTS}"
        + (f"\n{report.noise_warning}" if report.noise_warning else "")
    )


# -- main ----------------------------------------------------------------------------------------


def code_state() -> str:
    """The commit measured, and which of the service's files differed from it in the working tree."""
    try:
        head = run_text(["git", "rev-parse", "--short", "HEAD"], cwd=REPO).strip()
        dirty = run_text(["git", "status", "--porcelain", "--", "authsvc"], cwd=REPO).split("\n")
    except (BenchError, OSError):
        return "unknown (not a git checkout)"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return f"commit {head}" + (f", with uncommitted changes to {', '.join(changed)}" if changed else "")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def start(stack: ExitStack, server: ServerProcess) -> None:
    """Start ``server``; ``stack`` stops it (SIGTERM, waited for) however the benchmark ends."""
    stack.callback(server.stop)
    server.start()


def peer_key(path: Path) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return key


def main() -> int:
    common.exit_on_sigterm()
    common.ensure_h2load()
    started = time.monotonic()
    load_before, code = load_average(), code_state()
    environment = Environment.collect()
    workers = usable_cpus()  # what authsvc serve starts by default; the peer gets as many
    sign_per_s = bench_issue_token.python_sign_rate()
    print(f"  cryptography in-process, one core: {sign_per_s:.0f} RSA-2048 sign/s")
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-http-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        env = {**os.environ, "AUTHSVC_KEK": secrets.token_hex(32)}
        create = f"clients create --client-id {CLIENT_ID} --scope {SCOPE} --audience {AUDIENCE} --output json"
        created = json.loads(
            run_text(
                [*bench_issue_token.authsvc_command(), *create.split(), "--data-dir", str(data_dir)], env=env
            )
        )
        secret = str(created["client_secret"])
        authorization, wrong = basic(CLIENT_ID, secret), basic(CLIENT_ID, "wrong-" + secret)
        key = peer_key(work / "peer-key.pem")
        (work / "form.txt").write_text(FORM_BODY)
        (work / "grpc.bin").write_bytes(grpc_body())
        with ExitStack() as stack:
            print(
                f"starting authsvc serve ({workers} workers by default) and the Authlib peer "
                "(sync, gthread)..."
            )
            ours = OurServer(data_dir, workers, env, work / "authsvc.log")
            start(stack, ours)
            peers = {
                kind: PeerServer(
                    kind,
                    workers,
                    {**env, "PEER_CLIENT_SECRET": secret},
                    work / f"peer-{kind}.log",
                    work / "peer-key.pem",
                )
                for kind in ("sync", "gthread")
            }
            for peer in peers.values():
                start(stack, peer)

            jwks = jwt.PyJWKSet.from_json(
                requests.get(ours.http_base + "/.well-known/jwks.json", timeout=10).text
            )
            answer = post_token(ours.http_base + TOKEN_PATH, authorization)
            if answer.status_code != 200:
                raise BenchError(f"authsvc HTTP token endpoint answered {answer.status_code}: {answer.text}")
            kid = jwt.get_unverified_header(answer.json()["access_token"])["kid"]
            verify_token_answer(answer.content, jwks[kid].key, ISSUER)
            endpoints = [
                Endpoint(
                    "http",
                    f"authsvc HTTP `POST {TOKEN_PATH}`, defaults ({workers} workers)",
                    ours.http_base + TOKEN_PATH,
                    "form.txt",
                    http_headers(authorization),
                    True,
                    HTTP_CONCURRENCY,
                    len(answer.content),
                    ours,
                ),
                Endpoint(
                    "grpc",
                    f"authsvc gRPC `IssueToken`, defaults ({workers} workers; same processes)",
                    f"http://{ours.target}{bench_issue_token.GRPC_PATH}",
                    "grpc.bin",
                    grpc_headers(authorization),
                    False,
                    GRPC_CONCURRENCY,
                    bench_issue_token.check_one_token(ours.target, CLIENT_ID, secret),
                    ours,
                ),
            ]
            for kind, peer in peers.items():
                answer = post_token(peer.base + TOKEN_PATH, authorization)
                if answer.status_code != 200:
                    raise BenchError(f"the {kind} peer answered {answer.status_code}: {answer.text}")
                verify_token_answer(answer.content, key.public_key(), PEER_ISSUER)
                threads = f" --threads {GTHREAD_THREADS}" if kind == "gthread" else ""
                endpoints.append(
                    Endpoint(
                        f"peer-{kind}",
                        f"peer: Authlib + gunicorn `--workers {workers} --worker-class {kind}{threads}`",
                        peer.base + TOKEN_PATH,
                        "form.txt",
                        http_headers(authorization),
                        True,
                        HTTP_CONCURRENCY,
                        len(answer.content),
                        peer,
                    )
                )
            print("  one token from each endpoint verified")

            def healthy() -> None:  # still issuing tokens after the load
                for e in endpoints:
                    if e.h1 and post_token(e.url, authorization).status_code != 200:
                        raise BenchError(f"{e.name} no longer issues tokens after the load")
                bench_issue_token.check_one_token(ours.target, CLIENT_ID, secret)

            results = measure(endpoints, work, wrong, healthy)
    report = Report(
        environment,
        workers,
        ours.display,
        {r.endpoint.name: r for r in results},
        code,
        sign_per_s,
        load_before,
        load_average(),
        time.monotonic() - started,
    )
    common.write_section(SECTION, render(report))
    print(summary(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_http_token: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
