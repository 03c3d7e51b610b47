"""Which scopes each RPC requires: read from the proto method options, or given explicitly.

A service declares its policy in its own proto file::

    rpc CreatePayment(...) returns (...) { option (authsvc.v1.required_scopes) = "payments:write"; }
    rpc Ping(...) returns (...) { option (authsvc.v1.public) = true; }

Deny by default: a method that declares neither, or both, has no usable policy and is refused.
The exact health-check and server-reflection methods are public.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Final

from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pool import DescriptorPool

from authsvc.v1 import options_pb2

__all__ = ["DEFAULT_PUBLIC_METHODS", "PUBLIC", "MethodPolicy", "Public", "Rule"]

log = logging.getLogger("authsvc.verify.policy")


class Public:
    """The rule of a method callable without a token."""

    _instance: Public | None = None

    def __new__(cls) -> Public:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PUBLIC"


PUBLIC: Final = Public()

Rule = tuple[str, ...] | Public
"""A method's rule: the scopes it requires (all of them; empty means any valid token), or PUBLIC."""

DEFAULT_PUBLIC_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
"""The exact methods that are public by default: health checks and server reflection, and no other
method of those services (a generic handler registered under such a service's name is not)."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MethodPolicy:
    """Maps a gRPC method path (``/package.Service/Method``) to its :data:`Rule`, or None (deny).

    ``explicit`` entries win over the descriptors; values are a sequence of scopes or
    :data:`PUBLIC`. ``use_descriptors`` reads the ``authsvc.v1`` options from ``pool`` (the
    default pool, where generated ``_pb2`` modules register).
    """

    def __init__(
        self,
        explicit: Mapping[str, Sequence[str] | Public] | None = None,
        *,
        use_descriptors: bool = True,
        pool: DescriptorPool | None = None,
        public_methods: Sequence[str] = DEFAULT_PUBLIC_METHODS,
    ) -> None:
        self._explicit: dict[str, Rule] = {}
        for method, rule in (explicit or {}).items():
            if not method.startswith("/") or method.count("/") != 2:
                raise ValueError(f"policy keys are method paths like /pkg.Service/Method, not {method!r}")
            if isinstance(rule, str):
                raise TypeError(f"the policy of {method} must be a list of scopes, not a string")
            self._explicit[method] = rule if isinstance(rule, Public) else tuple(rule)
        self._use_descriptors = use_descriptors
        self._pool = pool
        self._public_methods = frozenset(public_methods)
        self._cache: dict[str, Rule | None] = {}
        self._lock = threading.Lock()

    def rule(self, method: str) -> Rule | None:
        cached = self._cache.get(method, self)
        if cached is not self:
            return cached  # type: ignore[return-value]
        rule = self._resolve(method)
        with self._lock:
            if len(self._cache) < 10_000:  # method names come from the wire: bound what we remember
                self._cache[method] = rule
        return rule

    def _resolve(self, method: str) -> Rule | None:
        """The rule of exactly ``method``: ``/package.Service/Method``, where ``Method`` is one
        identifier (so ``/a.b/C.D`` is not ``/a.b.C/D``) declared by exactly that service."""
        if method in self._explicit:
            return self._explicit[method]
        if method in self._public_methods:
            return PUBLIC
        if not self._use_descriptors:
            return None
        _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", "")
        if not _IDENT.fullmatch(name) or not all(_IDENT.fullmatch(part) for part in service.split(".")):
            return None
        pool = self._pool or descriptor_pool.Default()
        try:
            descriptor = pool.FindServiceByName(service).methods_by_name.get(name)
        except KeyError:
            return None
        if descriptor is None:
            return None
        options = descriptor.GetOptions()
        scopes = tuple(options.Extensions[options_pb2.required_scopes])
        public = bool(options.Extensions[options_pb2.public])
        if public and scopes:
            log.error("%s is marked public and requires scopes; refusing it until the proto is fixed", method)
            return None
        if public:
            return PUBLIC
        return scopes or None
