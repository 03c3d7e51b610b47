"""The core stays free of gRPC, SQL, storage, the environment and the wall clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import authsvc.core

CORE_DIR = Path(authsvc.core.__file__).parent
FORBIDDEN_MODULES = ("grpc", "sqlite3", "authsvc.server", "authsvc.store", "authsvc.authority")
FORBIDDEN_TEXT = ("os.environ", "getenv", "time.time(", "time.monotonic(", "datetime.now(", "os.urandom(")

_PROBE = """
import importlib, json, pkgutil, sys
import authsvc.core
names = ["authsvc.core"]
for info in pkgutil.iter_modules(authsvc.core.__path__, "authsvc.core."):
    importlib.import_module(info.name)
    names.append(info.name)
forbidden = json.loads(sys.argv[1])
loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
print(json.dumps({"imported": names, "forbidden_loaded": loaded}))
"""


def test_importing_the_core_loads_no_transport_or_storage() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(FORBIDDEN_MODULES)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert len(result["imported"]) > 1
    assert result["forbidden_loaded"] == []


CORE_SOURCES = sorted(p for p in CORE_DIR.glob("*.py") if p.name != "ports.py")


@pytest.mark.parametrize("path", CORE_SOURCES, ids=[p.name for p in CORE_SOURCES])
def test_core_module_reads_no_environment_or_clock(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    found = [needle for needle in FORBIDDEN_TEXT if needle in source]
    assert found == [], f"{path.name} mentions {found}; inject it through authsvc.core.ports instead"


def test_ports_module_is_where_the_clock_lives() -> None:
    assert (CORE_DIR / "ports.py").exists()
    assert "time.time(" in (CORE_DIR / "ports.py").read_text(encoding="utf-8")
