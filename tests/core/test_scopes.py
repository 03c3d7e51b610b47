"""RFC 6749 §3.3 scope strings: strict parsing and the format/parse round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.core.errors import InvalidScope
from authsvc.core.scopes import MAX_SCOPE_LENGTH, format_scope, parse_scope, validate_scope_token

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
ALLOWED = frozenset([chr(0x21), *map(chr, range(0x23, 0x5C)), *map(chr, range(0x5D, 0x7F))])

scope_tokens = st.text(alphabet=sorted(ALLOWED), min_size=1, max_size=24)
token_lists = st.lists(scope_tokens, max_size=20)  # at most 20 * 25 characters, under MAX_SCOPE_LENGTH
bad_chars = st.characters().filter(lambda c: c not in ALLOWED and c != " ")


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("", ()),
        ("a", ("a",)),
        ("payments:read payments:write", ("payments:read", "payments:write")),
        ("b a", ("b", "a")),
        ("a b a", ("a", "b")),
        ("!#[]~", ("!#[]~",)),
        ("https://api.example/x?y=1&z", ("https://api.example/x?y=1&z",)),
        ("x" * MAX_SCOPE_LENGTH, ("x" * MAX_SCOPE_LENGTH,)),
    ],
    ids=["empty", "one", "two", "order-kept", "duplicates-dropped", "edge-chars", "uri-like", "max-length"],
)
def test_parse_scope_valid(scope: str, expected: tuple[str, ...]) -> None:
    assert parse_scope(scope) == expected


@pytest.mark.parametrize(
    "scope",
    [
        " ",
        " a",
        "a ",
        "a  b",
        "a\tb",
        "a\nb",
        "a\rb",
        'a"b',
        "a\\b",
        "\x00",
        "\x7f",
        "caf\u00e9",
        "a\u00a0b",
        "read\u200b",
        "x" * (MAX_SCOPE_LENGTH + 1),
    ],
    ids=[
        "only-space",
        "leading-space",
        "trailing-space",
        "double-space",
        "tab",
        "newline",
        "carriage-return",
        "double-quote",
        "backslash",
        "nul",
        "del",
        "non-ascii",
        "nbsp",
        "zero-width-space",
        "too-long",
    ],
)
def test_parse_scope_invalid(scope: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scope(scope)


@pytest.mark.parametrize(
    "token", ["", "a b", 'a"', "\\", "\u00e9"], ids=["empty", "space", "quote", "backslash", "non-ascii"]
)
def test_validate_scope_token_refuses(token: str) -> None:
    with pytest.raises(InvalidScope):
        validate_scope_token(token)


@given(token_lists)
def test_format_then_parse_round_trips(tokens: list[str]) -> None:
    assert parse_scope(format_scope(tokens)) == tuple(dict.fromkeys(tokens))


@given(token_lists)
def test_parse_is_idempotent(tokens: list[str]) -> None:
    parsed = parse_scope(format_scope(tokens))
    assert parse_scope(format_scope(parsed)) == parsed


@given(token_lists, bad_chars, st.data())
def test_any_character_outside_the_grammar_is_refused(
    tokens: list[str], bad: str, data: st.DataObject
) -> None:
    base = format_scope(tokens)
    at = data.draw(st.integers(min_value=0, max_value=len(base)), label="position")
    with pytest.raises(InvalidScope):
        parse_scope(base[:at] + bad + base[at:])


@given(
    st.lists(scope_tokens, min_size=1, max_size=20),
    st.sampled_from(["leading", "trailing", "double"]),
    st.data(),
)
def test_spaces_other_than_single_separators_are_refused(
    tokens: list[str], where: str, data: st.DataObject
) -> None:
    if where == "leading":
        scope = " " + format_scope(tokens)
    elif where == "trailing":
        scope = format_scope(tokens) + " "
    else:
        at = data.draw(st.integers(min_value=0, max_value=len(tokens)), label="gap")
        scope = " ".join(tokens[:at]) + "  " + " ".join(tokens[at:])
    with pytest.raises(InvalidScope):
        parse_scope(scope)


def _reference_parse_scope(scope: str) -> tuple[str, ...]:
    """parse_scope as it was before it matched the whole string at once: split on spaces, then
    check every token on its own. The one-match version must agree with it on every input."""
    if scope == "":
        return ()
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidScope("too long")
    tokens = scope.split(" ")
    for token in tokens:
        if token == "":
            raise InvalidScope("spacing")
        validate_scope_token(token)
    return tuple(dict.fromkeys(tokens))


def _outcome(scope: str) -> tuple[str, ...] | str:
    try:
        return parse_scope(scope)
    except InvalidScope:
        return "refused"


def _reference_outcome(scope: str) -> tuple[str, ...] | str:
    try:
        return _reference_parse_scope(scope)
    except InvalidScope:
        return "refused"


# hostile scope strings: allowed characters mixed with spaces, tabs, newlines, quotes,
# backslashes, NUL, DEL, non-ASCII look-alikes (NBSP, zero-width space, fullwidth letters)
hostile_scopes = st.text(
    alphabet=st.sampled_from(
        [*"ab:/!~#[]", " ", "\t", "\n", "\r", '"', "\\", "\x00", "\x7f", "\xa0", "\u200b", "\uff41"]
    ),
    max_size=40,
) | st.text(max_size=40)


@given(hostile_scopes)
def test_one_match_parse_agrees_with_the_token_by_token_parse(scope: str) -> None:
    assert _outcome(scope) == _reference_outcome(scope)


@given(token_lists, st.sampled_from(["", " ", "  ", "\t", "\n", '"', "\\", "\xa0"]), st.integers(0, 20))
def test_one_match_parse_agrees_on_a_corrupted_valid_scope(tokens: list[str], insert: str, at: int) -> None:
    scope = format_scope(tokens)
    corrupted = scope[:at] + insert + scope[at:]
    assert _outcome(corrupted) == _reference_outcome(corrupted)
