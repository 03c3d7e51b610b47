"""What private_key_jwt costs per token, beside client_secret, in one run.

Run as ``.venv/bin/python tests/bench/bench_client_auth.py`` (``make bench``). A client_secret
request costs one keyed hash (two, with the rotation decoy) on top of the token's RSA signature; a
private_key_jwt request adds one signature verification (RS256 or ES256) and one store write (the
assertion's ``jti``, RFC 7523 §3), and runs off the event loop because of that write. The script:

1. times the parts in-process, in interleaved batches: RSA-2048 and P-256 verification of an
   assertion, one ``jti`` write to the SQLite store (WAL, ``synchronous=FULL``) and, where
   PostgreSQL runs (``AUTHSVC_BENCH_POSTGRES``, default the local server), to PostgreSQL, and
   ``TokenEndpoint.issue`` whole for each method;
2. starts ``authsvc serve --workers 1`` on SQLite in a temporary data directory, registers a
   client_secret client and two private_key_jwt clients (RS256, ES256), and drives IssueToken over
   h2c with an asyncio gRPC client in this process (h2load cannot vary the body, and every
   assertion needs its own ``jti``): the requests are serialized beforehand, the assertions signed
   beforehand, each mode runs in every round (rounds rotate the order), and every response is
   checked to be a token;
3. writes its section of ``tests/bench/RESULTS.md``: req/s and server CPU per token per mode, the
   ratios to client_secret, and the parts' costs.

The server is stopped with SIGTERM (and waited for) even when a step fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from authsvc.core.auth_methods import PrivateKeyJwt
from authsvc.core.client_assertion import AssertionPolicy
from authsvc.core.client_auth import presented_credentials
from authsvc.core.client_keys import ClientKey, parse_client_jwks, verify_signature
from authsvc.core.clients import AuthRegistration, ClientAuthMethod, new_client
from authsvc.core.grants import TokenRequest, client_credentials_endpoint
from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key
from authsvc.core.ports import SystemClock, SystemRandom
from authsvc.core.secrets import SecretHasher
from authsvc.core.tokens import TokenSigner
from authsvc.store.base import AssertionStore
from authsvc.store.cache import CachedClientLookup
from authsvc.store.sqlite import SQLiteStore
from authsvc.v1 import token_pb2
from tests.assertions import ASSERTION_TYPE, ClientKeyPair, ec_key, jwks_json, rsa_key
from tests.bench import common
from tests.bench.common import BenchError, Environment, ServerProcess, run_text

SECTION = "client_auth"
ISSUER = "https://authsvc.bench"
SCOPE = "payments:read"
AUDIENCE = "payments"
GRPC_PATH = "/authsvc.v1.TokenService/IssueToken"
ROUNDS = 3
REQUESTS = 4000  # per mode and round
WARMUP = 600
CONCURRENCY = 32
BATCHES = 9
BATCH_SECONDS = 0.15
NOISY_CORES = 0.2  # other processes using more CPU than this during a run make the figures suspect
ADMIN_URL = os.environ.get("AUTHSVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
RSA = rsa_key("bench-rsa")
EC = ec_key("bench-ec")
MODES = ("client_secret", "private_key_jwt RS256", "private_key_jwt ES256")


def authsvc_command() -> list[str]:
    script = Path(sys.executable).parent / "authsvc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "authsvc.cli"]


# -- in-process parts ----------------------------------------------------------------------------


def per_call_us(work: Callable[[], object]) -> list[float]:
    """Microseconds per call of ``work`` in each of BATCHES batches of about BATCH_SECONDS."""
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.05:
        work()
        calls += 1
    per_batch = max(1, int(calls * BATCH_SECONDS / 0.05))
    out = []
    for _ in range(BATCHES):
        start = time.perf_counter()
        for _ in range(per_batch):
            work()
        out.append((time.perf_counter() - start) / per_batch * 1e6)
    return out


@dataclass(frozen=True)
class Part:
    name: str
    batches: list[float]

    @property
    def best(self) -> float:
        return min(self.batches)

    @property
    def median(self) -> float:
        return statistics.median(self.batches)


def _signed(key: ClientKeyPair, client_id: str, alg: str) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now, "exp": now + 120}
    return jwt.encode(
        {**claims, "jti": uuid.uuid4().hex}, key.private_key, algorithm=alg, headers={"kid": key.kid}
    )


def _pg_store() -> tuple[AssertionStore, Callable[[], None]] | None:
    try:
        import psycopg

        from authsvc.store.postgres import PostgresStore

        name = f"authsvc_bench_{secrets.token_hex(4)}"
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # PostgreSQL is optional here: the results say it was not measured
        print(f"  PostgreSQL not measured: {exc}")
        return None
    store = PostgresStore(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")

    def drop() -> None:
        store.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return store, drop


def measure_parts(tmp: Path) -> list[Part]:
    token_key = generate_rsa_key()
    message = b"x" * 520  # the size of an access token's signing input
    parts = [
        Part(
            "reference: sign one RSA-2048 token (PKCS#1 v1.5, SHA-256), the floor of every token",
            per_call_us(lambda: token_key.sign(message, padding.PKCS1v15(), hashes.SHA256())),
        )
    ]
    for label, key, alg in (("RS256 (RSA-2048)", RSA, "RS256"), ("ES256 (P-256)", EC, "ES256")):
        client_key = parse_client_jwks(jwks_json(key))[0].keys[key.kid]
        text = _signed(key, "x", alg)
        head, payload, signature = text.split(".")
        data, raw = f"{head}.{payload}".encode(), jwt.utils.base64url_decode(signature)
        if not verify_signature(client_key, alg, data, raw):
            raise BenchError(f"the {alg} signature did not verify")

        def verify(k: ClientKey = client_key, a: str = alg, d: bytes = data, r: bytes = raw) -> bool:
            return verify_signature(k, a, d, r)

        parts.append(Part(f"verify one {label} assertion signature", per_call_us(verify)))
    sqlite = SQLiteStore(tmp / "parts.db")
    counter = iter(range(10**9))
    now = int(time.time())
    parts.append(
        Part(
            "record one jti, SQLite (WAL, synchronous=FULL)",
            per_call_us(
                lambda: sqlite.use_assertion_jti("c", f"j{next(counter)}", expires_at=now + 150, now=now)
            ),
        )
    )
    pg = _pg_store()
    if pg is not None:
        store, drop = pg
        try:
            parts.append(
                Part(
                    "record one jti, PostgreSQL (local, same machine)",
                    per_call_us(
                        lambda: store.use_assertion_jti(
                            "c", f"j{next(counter)}", expires_at=now + 150, now=now
                        )
                    ),
                )
            )
        finally:
            drop()
    loop = asyncio.new_event_loop()
    try:
        parts.append(
            Part(
                "one hop to a worker thread and back (asyncio.to_thread of a no-op, from run_until_complete)",
                per_call_us(lambda: loop.run_until_complete(asyncio.to_thread(int))),
            )
        )
    finally:
        loop.close()
    parts += issue_parts(sqlite)
    sqlite.close()
    return parts


def issue_parts(store: SQLiteStore) -> list[Part]:
    """``TokenEndpoint.issue`` in-process, cached client lookup, the token's RSA signature included."""
    hasher = SecretHasher(secrets.token_bytes(32))
    secret = "authsvc_cs_" + secrets.token_urlsafe(32)
    store.create_client(
        new_client(
            client_id="secret", secret_hash=hasher.hash(secret), scopes=[SCOPE], audiences=[AUDIENCE], now=0
        )
    )
    for client_id, key, alg in (("rs", RSA, "RS256"), ("es", EC, "ES256")):
        auth = AuthRegistration(
            method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks=jwks_json(key), signing_algs=(alg,)
        )
        store.create_client(
            new_client(
                client_id=client_id, secret_hash="", scopes=[SCOPE], audiences=[AUDIENCE], now=0, auth=auth
            )
        )
    signer = TokenSigner(
        SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=0, activated_at=0)
    )
    clients = CachedClientLookup(store, ttl=3600)
    from authsvc.authority.client_keys import ClientKeys

    endpoint = client_credentials_endpoint(
        issuer=ISSUER,
        clients=clients,
        hasher=hasher,
        signer=lambda: signer,
        clock=SystemClock(),
        random=SystemRandom(),
    )
    endpoint.register_auth_method(
        PrivateKeyJwt(
            keys=ClientKeys(), replay=store, policy=AssertionPolicy(issuer=ISSUER), clock=SystemClock()
        )
    )
    secret_request = TokenRequest.of(
        presented_credentials([], client_id="secret", client_secret=secret),
        grant_type="client_credentials",
        scope="",
        audience=(),
    )
    parts = [
        Part("TokenEndpoint.issue, client_secret_post", per_call_us(lambda: endpoint.issue(secret_request)))
    ]
    for client_id, key, alg in (("rs", RSA, "RS256"), ("es", EC, "ES256")):
        # signed beforehand, outside the timed calls: what the server sees is a new assertion each time
        pool = iter([_signed(key, client_id, alg) for _ in range(8000)])

        def issue(pool: object = pool) -> object:
            text = next(pool)  # type: ignore[call-overload]
            credentials = presented_credentials(
                [], client_assertion=text, client_assertion_type=ASSERTION_TYPE
            )
            return endpoint.issue(
                TokenRequest.of(credentials, grant_type="client_credentials", scope="", audience=())
            )

        parts.append(Part(f"TokenEndpoint.issue, private_key_jwt {alg} (jti to SQLite)", per_call_us(issue)))
    return parts


# -- over the wire -------------------------------------------------------------------------------


class Server(ServerProcess):
    def __init__(self, data_dir: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = common.free_port()
        self.target = f"127.0.0.1:{self.port}"
        options = f"--listen {self.target} --issuer {ISSUER} --workers 1 --log-level WARNING"
        args = [*authsvc_command(), "serve", "--data-dir", str(data_dir), *options.split()]
        self.display = shlex.join(["authsvc", *args[len(authsvc_command()) :]]).replace(
            str(data_dir), "$DATA_DIR"
        )
        super().__init__(args, env, log_path, self._ready)

    def _ready(self) -> bool:
        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def register(data_dir: Path, env: dict[str, str], tmp: Path) -> str:
    base = [
        *authsvc_command(),
        "clients",
        "create",
        "--data-dir",
        str(data_dir),
        "--scope",
        SCOPE,
        "--audience",
        AUDIENCE,
    ]
    out = run_text([*base, "--client-id", "secret", "--output", "json"], env=env)
    for client_id, key, alg in (("rs", RSA, "RS256"), ("es", EC, "ES256")):
        path = tmp / f"{client_id}-jwks.json"
        path.write_text(jwks_json(key))
        run_text(
            [
                *base,
                "--client-id",
                client_id,
                "--auth-method",
                "private_key_jwt",
                "--jwks-file",
                str(path),
                "--signing-alg",
                alg,
            ],
            env=env,
        )
    return str(json.loads(out)["client_secret"])


def bodies(mode: str, secret: str, count: int) -> list[bytes]:
    if mode == "client_secret":
        one = token_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_id="secret", client_secret=secret
        )
        return [one.SerializeToString()] * count
    client_id, key, alg = ("rs", RSA, "RS256") if "RS256" in mode else ("es", EC, "ES256")
    return [
        token_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=_signed(key, client_id, alg),
        ).SerializeToString()
        for _ in range(count)
    ]


@dataclass(frozen=True)
class WireRun:
    mode: str
    round: int
    requests: int
    seconds: float
    server_cpu: float
    other_cores: float

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def server_us_per_token(self) -> float:
        return self.server_cpu / self.requests * 1e6


async def drive(target: str, payloads: list[bytes]) -> float:
    """Send every payload with CONCURRENCY calls in flight; seconds taken. Any refusal fails the run."""
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(GRPC_PATH)
        queue = iter(payloads)
        refused: list[str] = []

        async def worker() -> None:
            for payload in queue:
                try:
                    answer = await call(payload, timeout=30)
                except grpc.aio.AioRpcError as err:
                    refused.append(f"{err.code().name}: {err.details()}")
                    continue
                if not token_pb2.IssueTokenResponse.FromString(answer).access_token:
                    refused.append("an answer without a token")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - start
        if refused:
            raise BenchError(f"{len(refused)} of {len(payloads)} requests failed, e.g. {refused[0]}")
        return seconds


def wire_run(server: Server, mode: str, round_: int, payloads: list[bytes]) -> WireRun:
    server_before, machine_before, own_before = (
        sum(server.cpu_seconds().values()),
        common.machine_busy_seconds(),
        time.process_time(),
    )
    seconds = asyncio.run(drive(server.target, payloads))
    server_cpu = sum(server.cpu_seconds().values()) - server_before
    own = time.process_time() - own_before
    other = max(0.0, common.machine_busy_seconds() - machine_before - server_cpu - own) / seconds
    run = WireRun(mode, round_, len(payloads), seconds, server_cpu, other)
    print(
        f"  round {round_} {mode}: {run.req_per_s:.0f} req/s, server {run.server_us_per_token:.0f} us "
        f"CPU/token, driver {own / seconds:.2f} cores, other {other:.2f}"
    )
    return run


# -- report --------------------------------------------------------------------------------------


def render(environment: Environment, parts: list[Part], runs: list[WireRun], server_command: str) -> str:
    best = {m: max((r for r in runs if r.mode == m), key=lambda r: r.req_per_s) for m in MODES}
    cpu = {m: min(r.server_us_per_token for r in runs if r.mode == m) for m in MODES}
    base = best["client_secret"]
    rows = [
        f"| {m} | {' / '.join(f'{r.req_per_s:.0f}' for r in runs if r.mode == m)} | {best[m].req_per_s:.0f} "
        f"| {best[m].req_per_s / base.req_per_s:.2f} | {cpu[m]:.0f} | {cpu[m] / cpu['client_secret']:.2f} |"
        for m in MODES
    ]
    part_rows = [f"| {p.name} | {p.best:.1f} | {p.median:.1f} |" for p in parts]
    noise = max(r.other_cores for r in runs)
    warning = (
        []
        if noise <= NOISY_CORES
        else [
            f"WARNING: other processes used up to {noise:.2f} cores during the runs (column 'other'); the "
            "machine was busy and the figures are noisy. The ratios compare modes run in the same rounds.",
            "",
        ]
    )
    run_rows = [
        f"| {r.round} | {r.mode} | {r.requests} | {r.req_per_s:.0f} | {r.server_us_per_token:.0f} "
        f"| {r.other_cores:.2f} |"
        for r in runs
    ]
    pkjwt = cpu["private_key_jwt RS256"] - cpu["client_secret"]
    return "\n".join(
        [
            common.begin_marker(SECTION, "tests/bench/bench_client_auth.py"),
            "## IssueToken: private_key_jwt beside client_secret",
            "",
            *environment.lines(),
            "",
            f"Over the wire: `{server_command}` (one process, SQLite), an asyncio gRPC client in the "
            f"bench process with {CONCURRENCY} calls in flight, {REQUESTS} requests per mode and round "
            f"after a warm-up of {WARMUP}, {ROUNDS} rounds (each runs every mode, the order rotated). "
            "Requests are serialized and assertions signed before a run; every answer is checked to hold "
            "a token.",
            "",
            *warning,
            "| mode | req/s per round | best | **ratio to client_secret** | server CPU us/token (least) "
            "| ratio |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "| round | mode | requests | req/s | server CPU us/token | other cores |",
            "|---|---|---|---|---|---|",
            *run_rows,
            "",
            f"**What private_key_jwt (RS256) costs**: {pkjwt:.0f} us of server CPU more per token than "
            f"client_secret ({cpu['private_key_jwt RS256'] / cpu['client_secret']:.2f}x), i.e. "
            f"{best['private_key_jwt RS256'].req_per_s / base.req_per_s:.2f}x the token rate on this "
            "machine.",
            "",
            f"In-process parts (us per call; {BATCHES} batches of about {BATCH_SECONDS:.2f} s, "
            "`time.perf_counter`; best and median batch):",
            "",
            "| part | best | median |",
            "|---|---|---|",
            *part_rows,
            "",
            "Notes:",
            "",
            "- The extra work per private_key_jwt token is one signature verification and one store write "
            "(the jti, in its own transaction) on top of what every token costs (the token's RSA-2048 "
            "signature, the client lookup, the claims). The write also moves the request off the event "
            "loop into a worker thread: a client_secret request with a cached client is served on the loop.",
            "- SQLite commits with `synchronous=FULL`: each jti write waits for the WAL on disk, so its "
            "cost is this machine's disk flush. PostgreSQL's figure is a local server on the same machine.",
            "- The driver shares the machine's cores with the server: server CPU per token is the steadier "
            "figure; req/s is what one server process gave under this driver. Compare absolute figures with "
            "other sections through the reference signing cost above: this machine's speed varies between "
            "runs.",
            common.end_marker(SECTION),
            "",
        ]
    )


def main() -> int:
    common.exit_on_sigterm()
    environment = Environment.collect()
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-auth-") as tmp_name:
        tmp = Path(tmp_name)
        print("in-process parts...")
        parts = measure_parts(tmp)
        for part in parts:
            print(f"  {part.name}: {part.best:.1f} us (median {part.median:.1f})")
        env = {**os.environ, "AUTHSVC_KEK": secrets.token_hex(32)}
        data_dir = tmp / "data"
        secret = register(data_dir, env, tmp)
        server = Server(data_dir, env, tmp / "server.log")
        runs: list[WireRun] = []
        try:
            server.start()
            for mode in MODES:
                asyncio.run(drive(server.target, bodies(mode, secret, WARMUP)))
            for round_ in range(1, ROUNDS + 1):
                order = MODES[round_ - 1 :] + MODES[: round_ - 1]
                payloads = {mode: bodies(mode, secret, REQUESTS) for mode in order}
                for mode in order:
                    runs.append(wire_run(server, mode, round_, payloads[mode]))
        finally:
            server.stop()
    common.write_section(SECTION, render(environment, parts, runs, server.display))
    best = {m: max(r.req_per_s for r in runs if r.mode == m) for m in MODES}
    print("IssueToken req/s: " + ", ".join(f"{m} {best[m]:.0f}" for m in MODES))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_client_auth: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
