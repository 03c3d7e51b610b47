"""RSA-2048 keys generated once, for the tests (tests/vectors/rsa2048.txt).

Generating an RSA-2048 key costs tens to hundreds of milliseconds of CPU, and a test run used to
make hundreds of them (every server start, every rotation, every module's signing keys). The pool
file holds the two primes of each key (base64url of p || q, one key a line); rebuilding a key
from its primes takes well under a millisecond.

Each key is handed out at most once per process, so no two keys that a test run sees are equal,
as with fresh keys. When the pool runs dry it generates fresh keys and warns once, so that the
file can grow: ``python -m tests.keypool 1200 > tests/vectors/rsa2048.txt``. These keys are test
vectors in a public repository: never a secret, and never used outside the tests.

tests/conftest.py puts :meth:`KeyPool.factory` behind :func:`authsvc.core.keys.generate_rsa_key`
for the whole run (the production code's test-only seam); tests that need a key of their own
call :func:`rsa_key`.
"""

from __future__ import annotations

import base64
import sys
import threading
import warnings
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

POOL_FILE = Path(__file__).parent / "vectors" / "rsa2048.txt"
BITS = 2048
EXPONENT = 65537
_PRIME_BYTES = BITS // 16


def _encode(key: rsa.RSAPrivateKey) -> str:
    numbers = key.private_numbers()
    raw = numbers.p.to_bytes(_PRIME_BYTES, "big") + numbers.q.to_bytes(_PRIME_BYTES, "big")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(line: str) -> rsa.RSAPrivateKey:
    raw = base64.urlsafe_b64decode(line + "=" * (-len(line) % 4))
    p = int.from_bytes(raw[:_PRIME_BYTES], "big")
    q = int.from_bytes(raw[_PRIME_BYTES:], "big")
    d = pow(EXPONENT, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(EXPONENT, p * q)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), public
    )
    # no primality checks here (~45 ms a key): the vectors were made by cryptography, and every
    # signing key is checked again when the service loads it from its store
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


class KeyPool:
    """Hands out the keys of a pool file in order, each once; fresh keys when it runs dry."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lines: list[str] | None = None
        self._next = 0
        self._lock = threading.Lock()
        self.fresh = 0
        """How many keys this process had to generate because the pool ran dry."""

    def take(self) -> rsa.RSAPrivateKey:
        """An RSA-2048 key (exponent 65537) that this process has not been given before."""
        with self._lock:
            if self._lines is None:
                self._lines = self._path.read_text(encoding="ascii").split()
            line = self._lines[self._next] if self._next < len(self._lines) else None
            self._next += 1
            if line is None:
                self.fresh += 1
        if line is not None:
            return _decode(line)
        if self.fresh == 1:
            warnings.warn(
                f"the test key pool ({self._path.name}, {len(self._lines)} keys) ran dry: generating "
                "fresh RSA keys from here on; grow it (see tests/keypool.py)",
                stacklevel=2,
            )
        return rsa.generate_private_key(public_exponent=EXPONENT, key_size=BITS)

    def factory(self, bits: int) -> rsa.RSAPrivateKey:
        """An :data:`authsvc.core.keys.KeyFactory`: pooled RSA-2048 keys, other sizes fresh."""
        if bits == BITS:
            return self.take()
        return rsa.generate_private_key(public_exponent=EXPONENT, key_size=bits)


POOL = KeyPool(POOL_FILE)


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh-to-this-run RSA-2048 key from the pool (public exponent 65537)."""
    return POOL.take()


def main(argv: list[str]) -> None:
    """Print ``N`` newly generated keys in the pool file's format."""
    for _ in range(int(argv[1])):
        print(_encode(rsa.generate_private_key(public_exponent=EXPONENT, key_size=BITS)))


if __name__ == "__main__":
    main(sys.argv)
