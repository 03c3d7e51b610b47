"""BearerAuthMiddleware in front of a Starlette app served by uvicorn on a free port, verifying with
keys from a real jwks_uri; real requests over real sockets with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.verify import PUBLIC, BearerAuthMiddleware, HttpJwksSource, JwksCache, TokenVerifier
from authsvc.verify import current_principal as caller
from authsvc.verify.asgi import RoutePolicy
from tests.conftest import ISSUER
from tests.keypool import rsa_key as pooled_rsa_key
from tests.security.test_token_verification_attacks import AUDIENCE, CLIENT_ID, Forge
from tests.verify.http_servers import JwksServer, serve_asgi, serving

KEY = pooled_rsa_key()
OTHER = pooled_rsa_key()
FORGE = Forge(KEY, rfc7638_thumbprint(KEY.public_key()), OTHER)
JWKS = jwks_json([public_jwk(KEY.public_key())])
TIMEOUT = 10.0

ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/items/{item_id}"): ["echo:read"],
    ("POST", "/items"): ["echo:write"],
    ("GET", "/sync"): ["echo:read"],
    ("GET", "/together/{n}"): [],
    ("GET", "/together-public/{n}"): PUBLIC,
    ("GET", "/public"): PUBLIC,
}


def caller_or_none() -> str | None:
    try:
        return caller().client_id
    except LookupError:
        return None


def token_for(client_id: str = CLIENT_ID, scope: str = "echo:read") -> str:
    return FORGE.token(claims=FORGE.claims(client_id=client_id, sub=client_id, scope=scope))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refusal(response: httpx.Response) -> tuple[int, str]:
    """The status and the RFC 6750 error code of a refused request (the JSON body's ``error``)."""
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, response.json()["error"]


def build_app(together: int = 1) -> Starlette:
    """Handlers that report the caller they see; ``/together/{n}`` waits until ``together``
    requests are inside handlers at once, then reports the caller again."""
    state: dict[str, asyncio.Barrier] = {}

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"caller": caller().client_id, "item": request.path_params["item_id"]})

    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"caller": caller().client_id}, status_code=201)

    def sync(request: Request) -> JSONResponse:  # Starlette runs it in its threadpool
        return JSONResponse({"caller": caller().client_id})

    async def public(request: Request) -> JSONResponse:
        return JSONResponse({"caller": caller_or_none()})

    async def undeclared(request: Request) -> PlainTextResponse:
        return PlainTextResponse("should never run")

    async def together_(request: Request) -> JSONResponse:
        before = caller_or_none()
        barrier = state.setdefault("barrier", asyncio.Barrier(together))
        async with asyncio.timeout(TIMEOUT):
            await barrier.wait()  # every request is in a handler now: their contexts coexist
        return JSONResponse({"before": before, "after": caller_or_none()})

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/items", create, methods=["POST"]),
            Route("/sync", sync),
            Route("/public", public),
            Route("/undeclared", undeclared),
            Route("/together/{n}", together_),
            Route("/together-public/{n}", together_),
        ]
    )


class CountingCache(JwksCache):
    """Counts key lookups: a token answered from the verifier's cache needs none."""

    finds = 0

    def find(self, kid: str, *, block: bool = True) -> Any:
        self.finds += 1
        return super().find(kid, block=block)


@dataclass
class Served:
    url: str
    http: httpx.Client
    cache: CountingCache

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(self.url + path, timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with JwksServer(serving(JWKS, **{"Cache-Control": "max-age=300"})) as jwks:
        cache = CountingCache(HttpJwksSource(jwks.url()))
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
        assert cache.refresh()
        app = BearerAuthMiddleware(build_app(together=6), verifier, routes=ROUTES)
        with serve_asgi(app) as url, httpx.Client() as http:
            yield Served(url, http, cache)


def test_a_valid_token_reaches_the_handler_with_its_caller(served: Served) -> None:
    response = served.get("/items/42", headers=bearer(token_for()))
    assert response.status_code == 200
    assert response.json() == {"caller": CLIENT_ID, "item": "42"}


def test_a_sync_handler_in_the_threadpool_sees_the_caller(served: Served) -> None:
    response = served.get("/sync", headers=bearer(token_for("sync-client")))
    assert (response.status_code, response.json()) == (200, {"caller": "sync-client"})


def test_each_route_requires_its_own_scope(served: Served) -> None:
    reader = token_for(scope="echo:read")
    refused = served.http.post(served.url + "/items", headers=bearer(reader), timeout=TIMEOUT)
    assert refusal(refused) == (403, "insufficient_scope")
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="echo:write"' in refused.headers["www-authenticate"]
    writer = token_for(scope="echo:read echo:write")
    created = served.http.post(served.url + "/items", headers=bearer(writer), timeout=TIMEOUT)
    assert (created.status_code, created.json()) == (201, {"caller": CLIENT_ID})


def test_no_token_gets_a_bare_bearer_challenge(served: Served) -> None:
    response = served.get("/items/1")
    assert refusal(response) == (401, "invalid_token")
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_bad_token_gets_invalid_token(served: Served) -> None:
    response = served.get("/items/1", headers=bearer(FORGE.token(key=OTHER)))
    assert refusal(response) == (401, "invalid_token")
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_a_route_without_a_policy_is_denied_whatever_the_token(served: Served) -> None:
    for headers in ({}, bearer(token_for(scope="echo:read echo:write"))):
        assert refusal(served.get("/undeclared", headers=headers)) == (403, "access_denied")
    # and a path the app does not serve either: never reaches the app's 404
    assert refusal(served.get("/nowhere", headers=bearer(token_for()))) == (403, "access_denied")


def test_a_public_route_needs_no_token_and_sees_no_caller(served: Served) -> None:
    response = served.get("/public", headers=bearer(token_for()))
    assert (response.status_code, response.json()) == (200, {"caller": None})
    assert served.get("/public").json() == {"caller": None}


def test_head_follows_the_get_route(served: Served) -> None:
    assert served.http.head(served.url + "/items/1", timeout=TIMEOUT).status_code == 401
    ok = served.http.head(served.url + "/items/1", headers=bearer(token_for()), timeout=TIMEOUT)
    assert ok.status_code == 200


def test_a_repeated_token_is_answered_from_the_verifiers_cache(served: Served) -> None:
    token = token_for("cached-client")
    assert served.get("/items/1", headers=bearer(token)).status_code == 200
    finds = served.cache.finds
    for _ in range(5):
        assert served.get("/items/1", headers=bearer(token)).json()["caller"] == "cached-client"
    assert served.cache.finds == finds, "a repeated token looked its key up again"


def test_concurrent_requests_never_see_each_others_caller(served: Served) -> None:
    """Six requests inside handlers at once (a barrier holds them), with three callers and a
    public route among them: each sees exactly its own caller, before and after the others ran."""
    callers = ["alpha", "beta", "gamma", "alpha", "beta", None]

    async def run() -> list[tuple[str | None, dict[str, Any]]]:
        async with httpx.AsyncClient() as http:

            async def one(i: int, who: str | None) -> tuple[str | None, dict[str, Any]]:
                if who is None:
                    response = await http.get(f"{served.url}/together-public/{i}", timeout=TIMEOUT)
                else:
                    response = await http.get(
                        f"{served.url}/together/{i}", headers=bearer(token_for(who)), timeout=TIMEOUT
                    )
                return who, {"status": response.status_code, **response.json()}

            return await asyncio.gather(*(one(i, who) for i, who in enumerate(callers)))

    for who, answer in asyncio.run(run()):
        assert answer == {"status": 200, "before": who, "after": who}


def test_lifespan_passes_through() -> None:
    started = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.set()
        yield

    app = Starlette(routes=[], lifespan=lifespan)
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=JwksCache(serving_source()))
    with serve_asgi(BearerAuthMiddleware(app, verifier, routes={})) as url:
        assert httpx.get(url + "/", timeout=TIMEOUT).status_code == 403
    assert started.is_set()


def serving_source() -> Any:
    from authsvc.verify import StaticJwksSource

    return StaticJwksSource(JWKS)


class GatedSource:
    """Answers the JWKS at once until ``hang`` is set; then each fetch waits for ``release``."""

    def __init__(self) -> None:
        self.hang = False
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def fetch(self) -> str:
        self.calls += 1
        if self.hang:
            self.started.set()
            assert self.release.wait(30)
        return JWKS


def test_a_forged_kid_during_a_slow_fetch_never_stalls_valid_requests() -> None:
    source, now = GatedSource(), [1000.0]
    cache = JwksCache(source, cooldown=5, max_age=3600, fetch_timeout=30, monotonic=lambda: now[0])
    assert cache.refresh()
    now[0] += 10  # past the cooldown: the forged kid may start a fetch, which hangs
    source.hang = True
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
    forged = FORGE.token(header=FORGE.header(kid="forged-kid"))
    try:
        with (
            serve_asgi(BearerAuthMiddleware(build_app(), verifier, routes=ROUTES)) as url,
            ThreadPoolExecutor(1) as pool,
        ):
            pending: Future[httpx.Response] = pool.submit(
                httpx.get, url + "/items/1", headers=bearer(forged), timeout=TIMEOUT * 3
            )
            assert source.started.wait(TIMEOUT), "the forged kid did not start a fetch"
            # the event loop is free: valid requests are served while the fetch hangs
            for i in range(5):
                response = httpx.get(url + "/items/1", headers=bearer(token_for(f"c{i}")), timeout=TIMEOUT)
                assert response.json()["caller"] == f"c{i}"
            # another forged kid meanwhile is refused at once rather than queued behind the fetch
            other = FORGE.token(header=FORGE.header(kid="forged-kid-2"))
            assert refusal(httpx.get(url + "/items/1", headers=bearer(other), timeout=TIMEOUT)) == (
                401,
                "invalid_token",
            )
            assert not pending.done(), "the fetch ended early: the test proved nothing"
            source.release.set()
            assert refusal(pending.result()) == (401, "invalid_token")
            assert source.calls == 2
    finally:
        source.release.set()


def test_no_key_set_ever_fetched_is_503() -> None:
    class Down:
        def fetch(self) -> str:
            raise OSError("issuer down")

    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=JwksCache(Down()))
    with serve_asgi(BearerAuthMiddleware(build_app(), verifier, routes=ROUTES)) as url:
        response = httpx.get(url + "/items/1", headers=bearer(token_for()), timeout=TIMEOUT)
        assert refusal(response) == (503, "temporarily_unavailable")


# -- the route policy, without a server -------------------------------------------------------------


def test_overlapping_routes_need_every_scope_any_of_them_requires() -> None:
    policy = RoutePolicy(
        {
            ("GET", "/items/{item_id}"): ["items:read"],
            ("GET", "/items/featured"): PUBLIC,
            ("GET", "/files/{rest:path}"): ["files:read"],
            ("GET", "/files/a/b"): ["files:admin"],
        }
    )
    assert policy.rule("GET", "/items/featured") == ("items:read",), "a public overlap opened a route"
    assert policy.rule("GET", "/items/7") == ("items:read",)
    assert policy.rule("GET", "/items/7/x") is None, "{item_id} matches one segment only"
    assert policy.rule("GET", "/items/") is None
    assert policy.rule("GET", "/files/a/b") == ("files:read", "files:admin")
    assert policy.rule("GET", "/files/a/b/c") == ("files:read",)
    assert policy.rule("POST", "/items/7") is None
    assert policy.rule("HEAD", "/items/7") == ("items:read",)


def test_a_callable_policy_that_fails_denies() -> None:
    def broken(method: str, path: str) -> list[str]:
        raise RuntimeError("bug")

    assert RoutePolicy(broken).rule("GET", "/x") is None
    assert RoutePolicy(lambda m, p: "echo:read").rule("GET", "/x") is None
    assert RoutePolicy(lambda m, p: ["echo:read"]).rule("GET", "/x") == ("echo:read",)


@pytest.mark.parametrize(
    "routes",
    [
        pytest.param({("GET", "items"): []}, id="relative_path"),
        pytest.param({("FETCH", "/items"): []}, id="unknown_method"),
        pytest.param({("GET", "/items/{bad-name}"): []}, id="malformed_parameter"),
    ],
)
def test_malformed_routes_are_refused_at_construction(routes: dict[tuple[str, str], Any]) -> None:
    with pytest.raises(ValueError):
        RoutePolicy(routes)


def test_a_string_of_scopes_is_refused_at_construction() -> None:
    with pytest.raises(TypeError):
        RoutePolicy({("GET", "/items"): "items:read"})


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        pytest.param(PUBLIC, "app", id="public_websocket_reaches_the_app"),
        pytest.param(["echo:read"], "closed", id="protected_websocket_is_refused"),
        pytest.param(None, "closed", id="undeclared_websocket_is_refused"),
    ],
)
def test_websockets_are_refused_unless_public(rule: Any, expected: str) -> None:
    """No websocket library is installed for uvicorn, so this drives the ASGI interface itself."""
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    routes = {} if rule is None else {("WEBSOCKET", "/ws"): rule}
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=JwksCache(serving_source()))
    middleware = BearerAuthMiddleware(app, verifier, routes=routes)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [(b"authorization", b"Bearer " + token_for().encode())],
    }
    asyncio.run(middleware(scope, receive, send))
    if expected == "app":
        assert (reached, sent) == (["websocket"], [])
    else:
        assert (reached, sent) == ([], [{"type": "websocket.close", "code": 1008}])
