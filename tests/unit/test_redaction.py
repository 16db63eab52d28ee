"""Log redaction: credentials by name and by shape, and the configured secrets."""

from __future__ import annotations

import logging

import pytest

from app import Redactor


@pytest.mark.parametrize(
    "text",
    [
        "GET /x?token=SECRETVALUE&msg=1",
        '{"password": "SECRETVALUE"}',
        "Authorization: Bearer SECRETVALUE",
        "refresh_token=SECRETVALUE",
        "api_key: SECRETVALUE",
        "a JWT eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJTRUNSRVRWQUxVRSJ9.SECRETVALUE",
    ],
)
def test_credentials_by_name_and_shape(text):
    redacted = Redactor().redact(text)
    assert "SECRETVALUE" not in redacted and "[redacted]" in redacted


def test_tokens_configured_secrets_and_harmless_lines():
    redactor = Redactor(["plain-secret-42"])
    assert redactor.redact("a token smt_abc-DEF_123 in text") == "a token [redacted] in text"
    assert redactor.redact("upstream said plain-secret-42!") == "upstream said [redacted]!"
    assert redactor.redact("max_tokens=5 msg=hello") == "max_tokens=5 msg=hello"


def test_records_and_tracebacks_are_redacted_once(caplog):
    logger = logging.getLogger("redaction-test")
    Redactor(["hunter2-secret"]).install(logger)
    Redactor(["hunter2-secret"]).install(logger)  # installing again replaces, never stacks
    assert sum(isinstance(f, Redactor) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="redaction-test"):
        logger.info("login with %s", "password=hunter2-secret")
        try:
            raise ValueError("token=abcdef leaked into an exception")
        except ValueError:
            logger.exception("failed")
    text = caplog.text
    assert "hunter2-secret" not in text and "abcdef" not in text
    assert "password=[redacted]" in text and "token=[redacted]" in text
