"""What both HTTP APIs share (agent/protocol/httpapi.py): the Bearer header, an error answer's
one line, and the listing query turned into a 400 that names the parameter."""

from __future__ import annotations

import json

import pytest

from agent.protocol.httpapi import ApiError, bearer_token, explain, list_query, unknown_cursor


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer envk_abc", "envk_abc"),
        ("bearer envk_abc", "envk_abc"),
        ("BEARER\tenvk_abc", "envk_abc"),
        ("Bearer   envk_abc  ", "envk_abc"),
        ("Bearer two words", "two words"),  # kept whole: it then matches no key
    ],
)
def test_the_bearer_token_is_taken_with_the_scheme_in_any_case(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    ["", "envk_abc", "Bearer", "Bearer   ", "Basic envk_abc", "Bearerenvk_abc", "Token envk_abc"],
)
def test_anything_but_a_bearer_header_has_no_token(header: str) -> None:
    assert bearer_token(header) is None


def test_an_error_answer_is_explained_by_its_own_message() -> None:
    body = json.dumps({"error": "forbidden", "message": "only user u1 may steer it"}).encode()
    assert explain(body, 403) == "only user u1 may steer it"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>502 Bad Gateway</html>",
        b'{"error": "forbidden"}',  # no message
        b'{"message": 7, "error": "x"}',
        b"[" * 5000 + b"]" * 5000,  # nesting past any recursive parser's stack
        b'{"error": "x", "message": NaN}',
    ],
    ids=["empty", "html", "no-message", "message-not-text", "deep", "nan"],
)
def test_an_answer_that_is_no_error_reply_is_explained_by_its_status(body: bytes) -> None:
    assert explain(body, 502) == "HTTP 502"


def test_a_bad_listing_query_is_a_400_naming_the_parameter() -> None:
    with pytest.raises(ApiError) as raised:
        list_query({"limit": "101"})
    refusal = raised.value
    assert (refusal.status, refusal.error) == (400, "invalid_query")
    assert refusal.message == "limit must be a whole number from 1 to 100, got '101'"
    assert str(refusal) == refusal.message


def test_an_unknown_cursor_names_the_id_it_was_given() -> None:
    refusal = unknown_cursor("env-of-another-org")
    assert (refusal.status, refusal.error) == (400, "invalid_query")
    assert refusal.message == "after: no row with id 'env-of-another-org'"
