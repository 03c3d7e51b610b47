"""Scope strings, RFC 6749 §3.3.

    scope       = scope-token *( SP scope-token )
    scope-token = 1*( %x21 / %x23-5B / %x5D-7E )

Scope tokens are compared exactly: case-sensitive, no wildcards, no prefixes. A scope string is
strict: tokens are separated by exactly one space, with none leading or trailing; anything else
is malformed and refused rather than guessed at.
"""

from __future__ import annotations

import re

from authsvc.core.errors import InvalidScope

__all__ = ["MAX_SCOPE_LENGTH", "format_scope", "parse_scope", "validate_scope_token"]

MAX_SCOPE_LENGTH = 2048
"""Longest scope string accepted, in characters."""

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# the whole §3.3 grammar in one match: tokens separated by exactly one space (no backtracking:
# a space can only end a token)
_SCOPE_STRING = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")


def validate_scope_token(token: str) -> str:
    """Return ``token`` if it is one RFC 6749 §3.3 scope-token, else raise :class:`InvalidScope`."""
    if not _SCOPE_TOKEN.fullmatch(token):
        raise InvalidScope("scope tokens are printable ASCII without spaces, quotes or backslashes")
    return token


def parse_scope(scope: str) -> tuple[str, ...]:
    """Split a scope string into its tokens, in order, without duplicates.

    An empty string yields ``()``. Raises :class:`InvalidScope` for anything that is not a
    well-formed RFC 6749 §3.3 scope string.
    """
    if scope == "":
        return ()
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidScope(f"scope is longer than {MAX_SCOPE_LENGTH} characters")
    tokens = scope.split(" ")
    if _SCOPE_STRING.fullmatch(scope) is None:  # refused: say which token is wrong, and how
        for token in tokens:
            if token == "":
                raise InvalidScope("scope tokens are separated by exactly one space")
            validate_scope_token(token)
        raise InvalidScope("the scope is malformed")  # never reached: the two checks agree
    return tuple(dict.fromkeys(tokens))


def format_scope(tokens: tuple[str, ...] | list[str]) -> str:
    """Join scope tokens into an RFC 6749 §3.3 scope string."""
    return " ".join(tokens)
