"""Admin actions are audit events on ``authsvc.audit`` (issue 12): who was created, disabled,
re-keyed or revoked, and never a secret."""

from __future__ import annotations

import logging

import pytest

from authsvc.authority import Authority, Deployment
from authsvc.core.keys import KeyEncryptionKey
from authsvc.core.ports import SystemRandom
from authsvc.store.memory import MemoryStore
from tests.core.fakes import FrozenClock


def test_admin_actions_are_audit_events_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    authority = Authority(
        Deployment(MemoryStore(), KeyEncryptionKey(b"\x22" * 32), clock=FrozenClock(), random=SystemRandom())
    )
    caplog.set_level(logging.INFO, logger="authsvc.audit")
    _, secret = authority.clients.create_client(client_id="shop", scopes=["a"], audiences=["b"])
    authority.clients.set_enabled("shop", False)
    authority.clients.set_enabled("shop", True)
    _, rotated = authority.clients.rotate_secret("shop", grace=60)
    authority.revocations.revoke_token("jti-1")
    authority.revocations.revoke_client("shop")
    authority.keys.ensure_signing_key()
    kid = authority.keys.rotate().kid
    authority.keys.revoke(kid)
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "authsvc.audit"]
    assert events == [
        "client.created",
        "client.disabled",
        "client.enabled",
        "client.secret_rotated",
        "token.revoked",
        "client.tokens_revoked",
        "key.rotated",
        "key.revoked",
    ]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in text and rotated not in text
