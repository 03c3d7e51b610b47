"""IssueToken throughput on the PostgreSQL store against the SQLite store, in one run.

Run as ``.venv/bin/python tests/bench/bench_store.py`` (``make bench``). The token endpoint reads a
client on every request, from a per-process cache that lives 2 s: with the cache the database
should barely matter, and the two stores should issue at nearly the same rate. The script starts
``authsvc serve --workers $(nproc)`` on each store in turn (SQLite in a temporary data directory;
PostgreSQL in a database created for the run at ``AUTHSVC_BENCH_POSTGRES``, default the local
server), twice each, interleaved, drives it with h2load exactly as ``bench_issue_token.py`` does
(every response checked to be a token), and writes its section of ``tests/bench/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

import psycopg

from tests.bench import common
from tests.bench.bench_issue_token import (
    AUDIENCE,
    CLIENT_ID,
    SCOPE,
    WorkersResult,
    authsvc_command,
    bench_workers,
)
from tests.bench.common import BenchError, Environment, run_text

SECTION = "store"
ADMIN_URL = os.environ.get("AUTHSVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ROUNDS = 2


def register(data_dir: Path, env: dict[str, str]) -> str:
    create = f"clients create --client-id {CLIENT_ID} --scope {SCOPE} --audience {AUDIENCE} --output json"
    out = run_text([*authsvc_command(), *create.split(), "--data-dir", str(data_dir)], env=env)
    return str(json.loads(out)["client_secret"])


def render(environment: Environment, results: dict[str, list[WorkersResult]]) -> str:
    best = {kind: max(r.best.req_per_s for r in runs) for kind, runs in results.items()}
    ratio = best["postgresql"] / best["sqlite"]
    rows = [
        f"| {kind} | {' / '.join(f'{r.best.req_per_s:.0f}' for r in runs)} | {best[kind]:.0f} | "
        f"{max(runs, key=lambda r: r.best.req_per_s).best.server_cores:.2f} |"
        for kind, runs in results.items()
    ]
    prefix = {"sqlite": "", "postgresql": "AUTHSVC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DB "}
    commands = [
        prefix[kind] + re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT", runs[0].server_command)
        for kind, runs in results.items()
    ]
    lines = [
        common.begin_marker(SECTION, "tests/bench/bench_store.py"),
        "## IssueToken: PostgreSQL store against SQLite store",
        "",
        *environment.lines(),
        "",
        "| store | best req/s per round | best | server cores in the best run |",
        "|---|---|---|---|",
        *rows,
        f"| **ratio PostgreSQL / SQLite** | | **{ratio:.2f}** | |",
        "",
        f"Each round: `authsvc serve --workers {environment.nproc}` on the store, warm-up, then h2load at "
        "-c 16 -m 4, -c 64 -m 1 and -c 128 -m 1 (the best is kept); rounds alternate the stores. "
        "Every run is checked to carry one token per request. Commands (`$DATA_DIR` a temporary "
        "directory; PostgreSQL selected with `AUTHSVC_DATABASE_URL` on a database created for the run):",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "The client cache (2 s per entry) keeps the database off the hot path: the figures should be "
        "nearly equal, and what remains is noise of a shared 2-core machine.",
        common.end_marker(SECTION),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    common.exit_on_sigterm()
    environment = Environment.collect()
    name = f"authsvc_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp:
            kek = secrets.token_hex(32)
            envs = {
                "sqlite": {**os.environ, "AUTHSVC_KEK": kek},
                "postgresql": {
                    **os.environ,
                    "AUTHSVC_KEK": kek,
                    "AUTHSVC_DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
                },
            }
            dirs = {kind: Path(tmp) / kind / "data" for kind in envs}
            for path in dirs.values():
                path.parent.mkdir(parents=True)  # the work dir of body files and logs, for both stores
            secrets_by_kind = {kind: register(dirs[kind], envs[kind]) for kind in envs}
            results: dict[str, list[WorkersResult]] = {kind: [] for kind in envs}
            for round_ in range(ROUNDS):
                for kind in envs if round_ % 2 == 0 else reversed(list(envs)):
                    print(f"round {round_ + 1}: IssueToken on {kind}...")
                    results[kind].append(
                        bench_workers(
                            environment.nproc, dirs[kind], envs[kind], CLIENT_ID, secrets_by_kind[kind]
                        )
                    )
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    common.write_section(SECTION, render(environment, results))
    best = {kind: max(r.best.req_per_s for r in runs) for kind, runs in results.items()}
    print(
        f"IssueToken req/s: sqlite {best['sqlite']:.0f}, postgresql {best['postgresql']:.0f}; "
        f"ratio {best['postgresql'] / best['sqlite']:.2f}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_store: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
