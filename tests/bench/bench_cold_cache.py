"""What a fresh token's verification costs when the CPU's caches are cold, as in a busy server.

Run as ``.venv/bin/python tests/bench/bench_cold_cache.py`` (``make bench``). Over gRPC a fresh
token per call costs the server several times what ``verifier.verify`` costs in a loop (the
``interceptor`` and ``scale`` sections). This script measures how much of that cold caches can
account for, in process: before each timed call it does other work that pushes the verifier's code
and data out of the caches, as a server's gRPC and asyncio work between two verifications may, then
times the one call with
``time.perf_counter``. Each call is timed alone (median of ``CALLS``, in interleaved rounds), after:

- nothing (warm: calls back to back);
- ``json.dumps`` of 50 small dicts (about a bare call's worth of Python work);
- ``json.dumps`` of 200 small dicts;
- a write to every cache line of a 256 KiB buffer, then of a 1 MiB buffer (memory traffic only).

The calls: the raw RSA-2048 ``public_key.verify`` of the token's signature, the SHA-256 of its
signing input, and ``TokenVerifier.verify`` of the token with ``cache_size=0`` (every call a full
verification). The rest of a full verification (its Python part) is ``full`` minus ``raw``. It
writes its section of ``tests/bench/RESULTS.md`` and prints a summary.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from authsvc.core.jose import b64url_decode_strict
from authsvc.core.keys import jwks_json
from tests.bench import common
from tests.bench.bench_interceptor import SCOPE, make_verifier, sign_tokens
from tests.bench.common import BenchError, Environment

SECTION = "cold_cache"
ROUNDS, CALLS_PER_ROUND = 15, 21  # interleaved rounds; calls per case and condition in each
CALLS = ROUNDS * CALLS_PER_ROUND  # timed calls per case and condition (the median is reported)
_JUNK = [{"id": i, "name": f"item-{i}", "tags": [i, i + 1]} for i in range(200)]
_BUFFER = bytearray(1 << 20)


def dumps(count: int) -> Callable[[], None]:
    def work() -> None:
        for item in _JUNK[:count]:
            json.dumps(item)

    return work


def walk(size: int) -> Callable[[], None]:
    def work() -> None:
        buffer = _BUFFER
        for i in range(0, size, 64):
            buffer[i] ^= 1

    return work


def nothing() -> None:
    pass


CONDITIONS: dict[str, Callable[[], None]] = {
    "warm (back to back)": nothing,
    "after json.dumps of 50 dicts": dumps(50),
    "after json.dumps of 200 dicts": dumps(200),
    "after writing 256 KiB": walk(256 << 10),
    "after writing 1 MiB": walk(1 << 20),
}


@dataclass(frozen=True)
class Row:
    condition: str
    work_us: float  # what the work before each call takes
    us: dict[str, float]  # case: median microseconds of one call


def timed_after(work: Callable[[], None], call: Callable[[], object], count: int) -> list[float]:
    """``count`` calls, each after ``work`` and timed alone (seconds)."""
    times = []
    for _ in range(count):
        work()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure() -> list[Row]:
    key, sign = sign_tokens(1)
    token = sign(SCOPE)
    verifier = make_verifier(jwks_json([key.jwk]), "fresh")
    if verifier.verify(token).scopes != {SCOPE}:
        raise BenchError("the bench token does not verify")
    signing_input, _, signature_b64 = token.rpartition(".")
    message, signature = signing_input.encode("ascii"), b64url_decode_strict(signature_b64)
    public_key = verifier.keys.get(next(iter(verifier.keys.kids)))
    assert public_key is not None
    pkcs1v15, sha256 = padding.PKCS1v15(), hashes.SHA256()
    cases: dict[str, Callable[[], object]] = {
        "raw": lambda: public_key.verify(signature, message, pkcs1v15, sha256),
        "sha256": lambda: hashlib.sha256(message).digest(),
        "full": lambda: verifier.verify(token),
    }
    work_us = {}
    for condition, work in CONDITIONS.items():
        start = time.perf_counter()
        for _ in range(50):
            work()
        work_us[condition] = (time.perf_counter() - start) / 50 * 1e6
    # interleaved: every round times every case after every condition, so that a change in what
    # the machine does meanwhile falls on all of them alike
    times: dict[tuple[str, str], list[float]] = {(c, n): [] for c in CONDITIONS for n in cases}
    for _ in range(ROUNDS):
        for condition, work in CONDITIONS.items():
            for name, call in cases.items():
                times[condition, name] += timed_after(work, call, CALLS_PER_ROUND)
    rows = []
    for condition in CONDITIONS:
        us = {name: statistics.median(times[condition, name]) * 1e6 for name in cases}
        rows.append(Row(condition, work_us[condition], us))
        print(f"  {condition}: " + ", ".join(f"{name} {t:.1f} us" for name, t in us.items()))
    return rows


def render(environment: Environment, rows: list[Row]) -> str:
    warm = rows[0].us
    table = []
    for row in rows:
        raw, full = row.us["raw"], row.us["full"]
        python_part, warm_python = full - raw, warm["full"] - warm["raw"]
        table.append(
            f"| {row.condition} | {row.work_us:.0f} | {raw:.1f} ({raw / warm['raw']:.2f}) | "
            f"{row.us['sha256']:.1f} | {full:.1f} ({full / warm['full']:.2f}) | "
            f"{python_part:.1f} ({python_part / warm_python:.2f}) | {full / raw:.2f} |"
        )
    lines = [
        common.begin_marker(SECTION, "tests/bench/bench_cold_cache.py"),
        "## Fresh verification with cold caches",
        "",
        *environment.lines(),
        "",
        "| before each call | that work, us | raw RSA verify, us (to warm) | SHA-256 of the input, us | "
        "full verify, us (to warm) | full - raw: the Python part, us (to warm) | full / raw |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
        f"Each figure is the median of {CALLS} calls timed one at a time, each after the work in the first "
        f"column (the work itself is not timed), in {ROUNDS} rounds that each time every case after every "
        "condition. 'raw' is `public_key.verify(sig, input, PKCS1v15(), "
        "SHA256())` of an RSA-2048 token; 'full' is `TokenVerifier.verify(token)` with `cache_size=0`. "
        "Run with `.venv/bin/python tests/bench/bench_cold_cache.py`.",
        "",
        "Why it is measured: the in-process ratios elsewhere in this file time calls back to back, with "
        "the verifier's code and data in the CPU's caches, while a server does gRPC and asyncio work "
        "between two verifications, and a fresh token per call costs the server several times the "
        "in-process figure (the `interceptor` and `scale` sections). The ratios to warm above say how "
        "much of that other work between calls accounts for in this run; on this shared machine they "
        "have differed widely between runs (full verify after the 1 MiB write: from 0.72x to 3.7x warm "
        "in the first three runs, before the rounds were interleaved), so compare them within a run only.",
        common.end_marker(SECTION),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    environment = Environment.collect()
    print("fresh verification after other work...")
    rows = measure()
    common.write_section(SECTION, render(environment, rows))
    warm, cold = rows[0].us, rows[-1].us
    print(
        f"full verify {warm['full']:.1f} us warm, {cold['full']:.1f} us {rows[-1].condition}; "
        f"raw RSA {warm['raw']:.1f} -> {cold['raw']:.1f} us"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_cold_cache: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
