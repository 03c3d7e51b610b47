"""The PaymentService over HTTP/JSON: routes derived at start-up from the ``google.api.http``
annotations of ``payments.proto``, each calling the same transport-free operation as the gRPC
servicer (:class:`payments_svc.service.PaymentOperations`).

A route exists only for a method that declares both an ``http`` rule and a policy: its scopes are
the method's ``required_scopes``, read through the same :class:`~authsvc.verify.MethodPolicy` as
the gRPC interceptor, so no route can skip the check. :func:`derive_routes` refuses at start-up
(ConfigurationError) what this small transcoder does not support rather than serve it wrongly:
custom verbs and methods, ``additional_bindings``, ``selector``, path variables that are not
``{field}`` of a singular string field, ``body`` other than ``"*"`` (or ``""`` for GET and
DELETE), a ``response_body`` that is not a singular message field, a method without a policy or
marked public, a method with no operation, two rules with the same verb and path, and request or
response fields of a type it cannot carry exactly (floats included: money is never a float).

Requests (``HttpRule`` semantics, https://google.aip.dev/127):

- path variables fill their fields; with ``body: "*"`` the JSON object fills every other field;
  without a body, query parameters do, once each. Unknown fields are refused; so is a field bound
  by the path repeated in the body.
- ``idempotency_key`` comes from the ``Idempotency-Key`` header, and only from there.
- Bodies are JSON (``Content-Type: application/json``, UTF-8; 415 otherwise), at most
  ``max_body_bytes`` (413), an object with no duplicate keys and no ``NaN``/``Infinity``. An
  ``amount`` may be a JSON string or a JSON number; a number is kept as its literal text and
  never goes through a float, so ``100.00`` is exactly ``"100.00"`` and
  ``0.30000000000000004`` USD is refused (INVALID_AMOUNT) rather than rounded.
- The token comes only from ``Authorization: Bearer`` (RFC 6750 §2.1): exactly one header; an
  ``access_token`` query parameter is refused (§2.3 is deliberately unsupported: URLs are logged).
  A certificate-bound token (RFC 8705 §3) is accepted only when this connection presented its
  certificate (``payments-svc serve --client-ca`` asks for one).

Answers are JSON with the proto field names; a ``response_body`` field is the whole body (the
seed's ``{"status", "transaction_id", "amount", ...}``). Enum values lose their type prefix and
are lower case (``PAYMENT_STATUS_SUCCEEDED`` is ``"succeeded"``: the domain's own vocabulary),
timestamps are RFC 3339, 64-bit integers are strings. Refusals go through
:mod:`authsvc.httpstatus`: RFC 6750 §3 for the token and scopes (401 with
``WWW-Authenticate: Bearer error="invalid_token"``, 403 ``insufficient_scope`` with ``scope``),
the error kind's status and the ErrorInfo ``reason`` for everything else (400 INVALID_AMOUNT,
404 PAYMENT_NOT_FOUND, 409 IDEMPOTENCY_KEY_REUSED, ...). Every answer says
``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from aiohttp import web
from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from multidict import CIMultiDict

from authsvc.core.errors import (
    ConfigurationError,
    InvalidRequest,
    InvalidToken,
    NotFound,
    OAuthError,
    ServiceError,
)
from authsvc.httpmetrics import HTTP_ROUTE, UNMATCHED
from authsvc.httpstatus import NO_STORE, HttpAnswer, bearer_error, service_error
from authsvc.logsafe import LogRateLimiter
from authsvc.serving import peer_certificate
from authsvc.verify import MethodPolicy, Principal, TokenVerifier
from authsvc.verify.policy import Public
from authsvc.verify.principal import bound_principal, http_bearer_token, verify_on_event_loop
from payments_svc.errors import InvalidAmount, InvalidArgument

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "PayloadTooLarge",
    "Route",
    "UnsupportedMediaType",
    "build_http_app",
    "derive_routes",
]

log = logging.getLogger("payments_svc.http")
_REFUSALS = LogRateLimiter(rate=10, burst=50)

DEFAULT_MAX_BODY_BYTES = 64 * 1024

HEADER_FIELDS: Final[Mapping[str, str]] = {"idempotency_key": "Idempotency-Key"}
"""Request fields carried by an HTTP header (and only by it), not by the body or the query."""

DECIMAL_FIELDS: Final = frozenset({"amount"})
"""String fields that also take a JSON number, kept as its literal text (never a float)."""

_VERBS = ("get", "post", "put", "delete", "patch")
_LITERAL = re.compile(r"[A-Za-z0-9._~-]+")
_VARIABLE = re.compile(r"\{([a-z][a-z0-9_]*)\}")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,18})")
_INT32 = (-(2**31), 2**31 - 1)
_REQUEST_TYPES = frozenset({FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_INT32})
_RESPONSE_SCALARS = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_ENUM,
    }
)
_AS_STRING = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64})  # proto3 JSON
_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name


class UnsupportedMediaType(ServiceError):
    """The request body is not JSON."""

    error = "unsupported_media_type"
    kind = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    """The request body is over the cap."""

    error = "payload_too_large"
    kind = "payload_too_large"


# authsvc.httpstatus has no entry for these two kinds yet; until it has, only their status is
# decided here (body and headers still come from service_error), and an entry there wins

Operation = Callable[[Any], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP binding of one RPC, checked at start-up."""

    verb: str  # upper case
    template: str  # as written in the proto, for logs
    segments: tuple[str | None, ...]  # a literal, or None where a variable is
    variables: tuple[str, ...]  # the fields the variables fill, in path order
    grpc_method: str  # /package.Service/Method
    request_type: type[Message]
    body: bool  # body "*": the JSON object fills the fields the path does not
    response_body: str  # "" (the whole response) or a field of it
    required_scopes: tuple[str, ...]
    operation: Operation
    query_fields: frozenset[str]
    body_fields: frozenset[str]
    header_fields: tuple[tuple[str, str], ...]  # (field, header)

    def match(self, verb: str, segments: Sequence[str]) -> dict[str, str] | None:
        if verb != self.verb or len(segments) != len(self.segments):
            return None
        values: list[str] = []
        for want, got in zip(self.segments, segments, strict=True):
            if want is None:
                if not got:
                    return None
                values.append(got)
            elif want != got:
                return None
        return dict(zip(self.variables, values, strict=True))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _check_response_type(message: Descriptor, where: str, seen: frozenset[str] = frozenset()) -> None:
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            assert sub is not None
            if sub.GetOptions().map_entry:
                raise ConfigurationError(f"{where}: map field {field.name} is not supported over HTTP")
            if sub.full_name != _TIMESTAMP and sub.full_name not in seen:
                _check_response_type(sub, where, seen | {message.full_name})
        elif field.type not in _RESPONSE_SCALARS:
            raise ConfigurationError(f"{where}: field {field.full_name} has a type not carried over HTTP")


def _route(
    service: ServiceDescriptor, method_name: str, operations: object, policy: MethodPolicy
) -> Route | None:
    method = service.methods_by_name[method_name]
    where = f"{service.full_name}.{method.name}"
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None  # not exposed over HTTP
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    if method.client_streaming or method.server_streaming:
        raise ConfigurationError(f"{where}: streaming methods have no HTTP route here")
    if rule.additional_bindings:
        raise ConfigurationError(f"{where}: additional_bindings are not supported")
    if rule.selector:
        raise ConfigurationError(f"{where}: a selector belongs in service configuration, not on a method")
    pattern = rule.WhichOneof("pattern")
    if pattern not in _VERBS:
        raise ConfigurationError(f"{where}: only get, post, put, delete and patch rules are supported")
    template: str = getattr(rule, pattern)
    request = method.input_type
    if not template.startswith("/") or template == "/":
        raise ConfigurationError(f"{where}: the path {template!r} must start with / and name a resource")
    segments: list[str | None] = []
    variables: list[str] = []
    for part in template[1:].split("/"):
        if _LITERAL.fullmatch(part):
            segments.append(part)
            continue
        m = _VARIABLE.fullmatch(part)
        if m is None:
            # custom verbs (":cancel"), "{name=pattern}", "*" and "**" all end up here
            raise ConfigurationError(f"{where}: path segment {part!r} is not a literal or a {{field}}")
        name = m.group(1)
        field = request.fields_by_name.get(name)
        if field is None or field.type != FieldDescriptor.TYPE_STRING or field.is_repeated:
            raise ConfigurationError(f"{where}: path variable {name} is not a string field of the request")
        if name in variables or name in HEADER_FIELDS:
            raise ConfigurationError(f"{where}: field {name} is bound twice")
        segments.append(None)
        variables.append(name)
    if rule.body not in ("", "*"):
        raise ConfigurationError(f'{where}: body must be "*" (a field as the body is not supported)')
    body = rule.body == "*"
    if body and pattern in ("get", "delete"):
        raise ConfigurationError(f"{where}: a {pattern.upper()} request has no body")
    if not body and pattern not in ("get", "delete"):
        raise ConfigurationError(f'{where}: a {pattern.upper()} rule needs body: "*"')
    for field in request.fields:
        if field.type not in _REQUEST_TYPES or field.is_repeated:
            raise ConfigurationError(f"{where}: request field {field.name} has a type not carried over HTTP")
    response = method.output_type
    if rule.response_body:
        field = response.fields_by_name.get(rule.response_body)
        if field is None or field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            raise ConfigurationError(f"{where}: response_body {rule.response_body} is not a message field")
    _check_response_type(response, where)
    grpc_method = f"/{service.full_name}/{method.name}"
    scopes = policy.rule(grpc_method)
    if scopes is None:
        raise ConfigurationError(f"{where}: declares no authorization policy, so it gets no HTTP route")
    if isinstance(scopes, Public):
        raise ConfigurationError(f"{where}: is public; this edge serves no route without a token")
    operation = getattr(operations, _snake(method.name), None)
    if not callable(operation):
        raise ConfigurationError(f"{where}: no operation {_snake(method.name)} to call")
    headers = tuple(
        (name, header) for name, header in HEADER_FIELDS.items() if name in request.fields_by_name
    )
    rest = frozenset(request.fields_by_name) - set(variables) - set(HEADER_FIELDS)
    return Route(
        verb=pattern.upper(),
        template=template,
        segments=tuple(segments),
        variables=tuple(variables),
        grpc_method=grpc_method,
        request_type=message_factory.GetMessageClass(request),
        body=body,
        response_body=rule.response_body,
        required_scopes=scopes,
        operation=operation,
        query_fields=frozenset() if body else rest,
        body_fields=rest if body else frozenset(),
        header_fields=headers,
    )


def derive_routes(
    service: ServiceDescriptor, operations: object, policy: MethodPolicy | None = None
) -> tuple[Route, ...]:
    """The HTTP routes of ``service``'s annotated methods, each bound to the coroutine of
    ``operations`` named after the method in snake case. Raises ConfigurationError for anything
    the transcoder does not support (see the module docstring)."""
    policy = policy or MethodPolicy()
    routes: list[Route] = []
    for method in service.methods:
        route = _route(service, method.name, operations, policy)
        if route is None:
            continue
        for other in routes:
            if other.verb == route.verb and other.segments == route.segments:
                raise ConfigurationError(f"{route.grpc_method} and {other.grpc_method} bind the same route")
        routes.append(route)
    if not routes:
        raise ConfigurationError(f"{service.full_name} declares no google.api.http routes")
    return tuple(routes)


# -- JSON in ------------------------------------------------------------------------------------


class _Number(str):
    """A JSON number's literal text: it is never converted to a float."""

    __slots__ = ()


def _no_constants(name: str) -> object:
    raise InvalidArgument(f"{name} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidArgument("the JSON body repeats a key")
        obj[key] = value
    return obj


def parse_json_object(data: bytes) -> dict[str, object]:
    """A JSON object from UTF-8 ``data``, numbers kept as their literal text (:class:`_Number`);
    duplicate keys, NaN and Infinity refused (InvalidArgument)."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            parse_float=_Number,
            parse_int=_Number,
            parse_constant=_no_constants,
            object_pairs_hook=_no_duplicates,
        )
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument("the body is not valid UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise InvalidArgument("the body must be a JSON object")
    return value


def _text(value: str, name: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a \ud800 escape
        raise InvalidArgument(f"{name} is not valid Unicode text") from exc
    return value


def _field_value(field: Any, value: object) -> str | int:
    """``value`` (JSON, or text from the path, the query or a header) for ``field``."""
    name = field.name
    if field.type == FieldDescriptor.TYPE_STRING:
        if name in DECIMAL_FIELDS:
            if not isinstance(value, str):
                raise InvalidAmount(f'{name} must be a decimal number or string such as "100.00"')
            return _text(str(value), name)
        if not isinstance(value, str) or isinstance(value, _Number):
            raise InvalidArgument(f"{name} must be a string")
        return _text(value, name)
    # TYPE_INT32 (derive_routes admits nothing else): a JSON integer or, as proto3 JSON allows
    # and as the query always gives, its decimal string
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be an integer")
    if not _INTEGER.fullmatch(value) or not _INT32[0] <= int(value) <= _INT32[1]:
        raise InvalidArgument(f"{name} must be a 32-bit integer")
    return int(value)


def _set(message: Message, name: str, value: object) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    setattr(message, name, _field_value(field, value))


# -- JSON out -----------------------------------------------------------------------------------


def _enum_prefix(enum_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def _json_value(field: Any, value: Any) -> object:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _TIMESTAMP:
            return str(value.ToJsonString())
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        entry = enum.values_by_number.get(value)
        if entry is None:
            return int(value)
        return entry.name.removeprefix(_enum_prefix(enum.name)).lower()
    if field.type in _AS_STRING:
        return str(value)
    return value


def message_to_json(message: Message) -> dict[str, object]:
    """Every field of ``message`` (defaults included) under its proto name."""
    out: dict[str, object] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            out[field.name] = [_json_value(field, item) for item in value]
        else:
            out[field.name] = _json_value(field, value)
    return out


def _send(answer: HttpAnswer) -> web.Response:
    return web.json_response(answer.body, status=answer.status, headers=CIMultiDict(answer.headers))


def _refusal(exc: ServiceError) -> HttpAnswer:
    return service_error(exc)


# -- the edge -----------------------------------------------------------------------------------


def _path_segments(raw_path: str) -> list[str] | None:
    """The percent-decoded segments of the request target's path; None when it is not a path or
    not UTF-8. Decoding happens after splitting, so ``%2F`` stays inside its segment."""
    path = raw_path.partition("?")[0]
    if not path.startswith("/"):
        return None
    try:
        return [unquote(part, errors="strict") for part in path[1:].split("/")]
    except UnicodeDecodeError:
        return None


class PaymentsHttpApi:
    """The aiohttp handler of every route: match, authenticate, decode, call, encode."""

    def __init__(self, routes: Sequence[Route], verifier: TokenVerifier, *, max_body_bytes: int) -> None:
        self._routes = tuple(routes)
        self._verifier = verifier
        self._max_body_bytes = max_body_bytes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request[HTTP_ROUTE] = UNMATCHED  # the one aiohttp route matches everything: say what did
        segments = _path_segments(request.raw_path)
        found = None
        if segments is not None:
            for route in self._routes:
                variables = route.match(request.method, segments)
                if variables is not None:
                    found = route, variables
                    break
        if found is None:
            return _send(service_error(NotFound("no such resource")))
        route, variables = found
        request[HTTP_ROUTE] = route.template
        try:
            principal = await self._authenticate(request, route)
        except OAuthError as exc:
            self._log_refusal(route, exc)
            sent = bool(request.headers.getall("Authorization", [])) or "access_token" in request.query
            return _send(bearer_error(exc, required_scopes=route.required_scopes, token_sent=sent))
        try:
            message = await self._decode(request, route, variables)
            with bound_principal(principal):
                response = await route.operation(message)
        except ServiceError as exc:
            self._log_refusal(route, exc)
            return _send(_refusal(exc))
        except Exception as exc:
            log.exception("%s %s failed", route.verb, route.template)
            return _send(service_error(exc))
        shown: Message = getattr(response, route.response_body) if route.response_body else response
        return web.json_response(message_to_json(shown), headers=CIMultiDict(NO_STORE))

    async def _authenticate(self, request: web.Request, route: Route) -> Principal:
        if "access_token" in request.query:
            # RFC 6750 §2.3 is not supported: a token in a URL ends up in logs and proxies
            raise InvalidRequest("send the access token in the Authorization header, never in the URL")
        token = http_bearer_token(request.headers.getall("Authorization", []))
        if token is None:
            raise InvalidToken("no access token: send Authorization: Bearer <token>")
        # a certificate-bound token (RFC 8705 §3) only with the certificate of this connection
        principal = await verify_on_event_loop(
            self._verifier, token, where=route.grpc_method, peer_certificate=peer_certificate(request)
        )
        TokenVerifier.require_scopes(principal, route.required_scopes)
        return principal

    async def _decode(self, request: web.Request, route: Route, variables: Mapping[str, str]) -> Message:
        message = route.request_type()
        for name, value in variables.items():
            _set(message, name, value)
        for name, header in route.header_fields:
            values = request.headers.getall(header, [])
            if len(values) > 1:
                raise InvalidArgument(f"send one {header} header")
            if values:
                _set(message, name, values[0])
        for key in set(request.query):
            if key not in route.query_fields:
                raise InvalidArgument("unknown query parameter")
            values = request.query.getall(key)
            if len(values) > 1:
                raise InvalidArgument(f"query parameter {key} is repeated")
            _set(message, key, values[0])
        if route.body:
            for key, item in (await self._body(request)).items():
                if key not in route.body_fields:
                    if key in HEADER_FIELDS:
                        raise InvalidArgument(f"send {key} as the {HEADER_FIELDS[key]} header")
                    raise InvalidArgument("unknown or path-bound field in the JSON body")
                _set(message, key, item)
        elif request.body_exists:
            raise InvalidArgument(f"{route.verb} {route.template} takes no body")
        return message

    async def _body(self, request: web.Request) -> dict[str, object]:
        if not request.body_exists:
            return {}  # e.g. a refund of everything that is left: no body at all
        if request.content_type != "application/json" or (request.charset or "utf-8").lower() != "utf-8":
            raise UnsupportedMediaType("the body must be Content-Type: application/json (UTF-8)")
        if request.content_length is not None and request.content_length > self._max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {self._max_body_bytes} bytes")
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:  # a chunked body over the cap
            raise PayloadTooLarge(f"the body is larger than {self._max_body_bytes} bytes") from exc
        if not data:
            return {}
        return parse_json_object(data)

    @staticmethod
    def _log_refusal(route: Route, exc: ServiceError) -> None:
        _REFUSALS.log(
            log,
            logging.INFO,
            "request refused",
            "refused %s %s: %s (%s)",
            route.verb,
            route.template,
            exc.error,
            exc.description,
        )


def build_http_app(
    service: ServiceDescriptor,
    operations: object,
    verifier: TokenVerifier,
    *,
    policy: MethodPolicy | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> web.Application:
    """The aiohttp application of ``service``'s annotated routes (ConfigurationError at once for
    an annotation the transcoder does not support). Serve it with
    :func:`authsvc.serving.start_http`."""
    api = PaymentsHttpApi(derive_routes(service, operations, policy), verifier, max_body_bytes=max_body_bytes)
    # aiohttp's own cap as well, for a body read without a Content-Length
    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_route("*", "/{path:.*}", api.handle)
    return app
