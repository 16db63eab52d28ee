"""streaming-message: a real-time message hub over Server-Sent Events.

Controllers publish over HTTP; every message is committed to SQLite, then fanned out to
the players subscribed to its room. The two hot routes (the event stream and publish) are
served by a small ASGI layer in front of Quart; Quart serves the rest.

The module is in layers, in the order data flows; each section uses only what is above
it (a type annotation aside: the app names the relay it holds):

    Config          Settings, read from the environment (and .env)
    Core            JSON, errors and the reply envelope, log redaction, metrics
    Storage         SQLite: every SQL statement of the app
    Broker          rooms in memory (rings of encoded frames), streams, the hub and its
                    brokers (one process, or several over Redis)
    Auth            who a request acts as and what it may do; users, sessions, API tokens
    HTTP            the hot path (stream, publish) and the Quart routes
    Relay           the AI chat
    Server          the adaptations of Hypercorn and h11, installed at start
    App factory     create_app(settings) builds and wires everything
    Global objects  `app`, what `hypercorn app:app` serves
    Entry point     `python app.py` and its commands

Nothing is applied at import: building the app reads the environment; the server
adaptations are installed when the app starts serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import gc
import getpass
import hashlib
import hmac
import inspect
import ipaddress
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
import textwrap
import time
import types
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import aiosqlite
import h11._readers  # binds h11 too
import httpx
import hypercorn
import hypercorn.asyncio.run
import hypercorn.asyncio.tcp_server
import hypercorn.asyncio.worker_context
import jwt
import orjson
import prometheus_client.values
import redis.asyncio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from httpx_sse import SSEError, aconnect_sse
from hypercorn.middleware import ProxyFixMiddleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from quart import Blueprint, Quart, Request, Response, current_app, request, send_from_directory
from quart_schema import (
    QuartSchema,
    RequestSchemaValidationError,
    document_headers,
    document_querystring,
    document_request,
    document_response,
    hide,
    validate_querystring,
    validate_request,
    validate_response,
)
from quart_schema.openapi import OpenAPIProvider
from redis.exceptions import RedisError, ResponseError
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.http import dump_cookie
from werkzeug.routing import BaseConverter
from werkzeug.sansio.http import parse_cookie

try:  # the fastest event loop where it exists (not on Windows, where OBS users often are)
    import uvloop
except ImportError:
    uvloop = None

# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent
DIST = ROOT / "frontend" / "dist"
API_VERSION = "1"
ROOM_ID = re.compile(r"[a-zA-Z0-9]{1,64}")

log = logging.getLogger("streaming-message")


class ConfigError(SystemExit):
    """A setting, or something of the environment, the hub cannot run with. Uncaught, it
    ends the program with its one line (exit status 1) instead of a traceback."""


MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS = 8, 1024
SECRET_SETTINGS = {"SSE_TOKEN", "TEMP_AVAILABLE_TOKEN", "LLM_API_KEY", "SECRET_KEY"}
SECRET_SETTINGS |= {"ADMIN_PASSWORD", "BROKER_URL"}
Seconds = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]


class Settings(BaseSettings):
    """Every setting is an environment variable, named as the field in capitals (a `.env`
    file is read too; the environment wins). Durations are seconds and accept fractions
    (`HEARTBEAT_S=0.5`); sizes are bytes."""

    model_config = SettingsConfigDict(
        env_file=ROOT / ".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        validate_by_name=True,  # Settings(shutdown_timeout_s=...) as well as SHUTDOWN_TIMEOUT
    )

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = ROOT / "data"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    default_room: Annotated[str, Field(pattern=f"^{ROOM_ID.pattern}$")] = "lobby"
    sse_token: str = Field(
        "",
        max_length=512,
        repr=False,
        validation_alias=AliasChoices("SSE_TOKEN", "TEMP_AVAILABLE_TOKEN"),
    )
    history_size: Count = 1000
    keepalive_s: Seconds = 15
    retry_ms: Annotated[int, Field(ge=0)] = 3000
    max_message_bytes: Count = 65536
    max_body_bytes: Count = 1_048_576
    max_json_depth: Count = 32
    subscriber_queue: Count = 1024
    replay_page_bytes: Count = 262_144
    replay_write_timeout_s: Seconds = 10
    coalesce_ms: Annotated[float, Field(ge=0)] = 2
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ("*",)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    shutdown_timeout_s: Seconds = Field(5, validation_alias="SHUTDOWN_TIMEOUT")
    heartbeat_s: Seconds = 5
    presence_interval_s: Seconds = 1
    hitokoto_url: str = "https://v1.hitokoto.cn/?encode=json"
    fallback_poll_s: Seconds = 10
    fallback_timeout_s: Seconds = 3
    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: str = Field("", repr=False)  # a secret: never in a log line
    llm_model: str = "gpt-4o-mini"
    llm_system_prompt: str = ""
    llm_max_tokens: Annotated[int, Field(ge=0)] = 1024
    llm_connect_timeout_s: Seconds = 10
    llm_read_timeout_s: Seconds = 60
    llm_timeout_s: Seconds = 300
    demo_delay_s: Annotated[float, Field(ge=0)] = 0.05
    max_prompt_chars: Count = 16000
    max_messages: Count = 50
    publish_rate_limit: Annotated[int, Field(ge=0)] = 0
    publish_rate_limit_per_user: Annotated[int, Field(ge=0)] = 0
    publish_rate_window_s: Seconds = 60
    chat_rate_limit: Annotated[int, Field(ge=0)] = 20
    chat_rate_window_s: Seconds = 60
    chat_max_per_client: Count = 3
    chat_max_total: Count = 50
    room_ai_max_total: Count = 10
    chat_require_login: bool = False
    chat_ttl_s: Seconds = 300
    chat_idle_s: Seconds = 30
    clock_interval_s: Seconds = 1
    secret_key: str = Field("", repr=False)
    admin_username: str = ""
    admin_password: str = Field("", repr=False)
    cookie_secure: bool = False
    access_token_ttl_s: Seconds = 6 * 3600
    refresh_token_ttl_s: Seconds = 14 * 86400
    login_max_failures: Annotated[int, Field(ge=0)] = 10
    login_max_failures_per_address: Annotated[int, Field(ge=0)] = 30
    login_window_s: Seconds = 900
    login_delay_s: Annotated[float, Field(ge=0)] = 1
    login_delay_max_s: Seconds = 30
    max_header_bytes: Count = 16384
    max_rooms_per_user: Annotated[int, Field(ge=0)] = 100
    max_upload_bytes: Count = 262_144
    max_uploads_per_room: Annotated[int, Field(ge=0)] = 100
    body_timeout_s: Seconds = 10
    trust_proxy: Annotated[int, Field(ge=0)] = 0
    access_log: bool = True
    frame_ancestors: str = "*"
    broker_url: str = Field("", repr=False)  # may hold Redis's password
    idempotency_window_s: Seconds = 86400
    max_schedule_ahead_s: Seconds = 7 * 86400
    max_scheduled_per_room: Annotated[int, Field(ge=0)] = 100
    presence_ttl_s: Seconds = 30
    max_stream_rooms: Count = 16

    @field_validator("default_room", mode="after")
    @classmethod
    def _canonical_room(cls, value: str) -> str:
        return value.lower()

    @field_validator("log_level", "sqlite_synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @model_validator(mode="after")
    def _first_admin(self) -> Settings:
        if self.admin_password and not self.admin_username:
            raise ValueError("ADMIN_PASSWORD is set without ADMIN_USERNAME")
        if self.admin_password and len(self.admin_password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"ADMIN_PASSWORD must be at least {MIN_PASSWORD_CHARS} characters")
        if self.secret_key and len(self.secret_key) < 32:
            raise ValueError("SECRET_KEY must be at least 32 characters")
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The settings of the environment (and .env), or ConfigError naming each bad one."""
        try:
            return cls(**overrides)
        except ValidationError as error:
            problems = []
            for problem in error.errors(include_url=False):
                name = str(problem["loc"][0]).upper() if problem["loc"] else ""
                shown = name and name not in SECRET_SETTINGS and "input" in problem
                given = f" (got {problem['input']!r})" if shown else ""
                msg = problem["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {msg}{given}" if name else msg)
            raise ConfigError("config: " + "; ".join(problems)) from None

    @property
    def database(self) -> Path:
        return self.data_dir / "streaming-message.db"

    def secrets(self) -> tuple[str, ...]:
        """The configured secrets, which no log line may show."""
        return tuple(s for s in (self.sse_token, self.llm_api_key, self.admin_password) if s)


# ---------------------------------------------------------------------------------------
# Core: JSON, errors and the reply envelope, log redaction, request models, metrics
# ---------------------------------------------------------------------------------------

MAX_SPEAKER_CHARS = 64
MAX_EXPIRES_IN_S = 10 * 365 * 86400  # a message's expires_in: ten years
MAX_HISTORY_PAGE = 1000  # messages in a page of GET /api/v1/rooms/<room>/messages


def normalize_room(room_id: str) -> str | None:
    """Canonical (lower-case) room id, or None when it is not a valid id."""
    return room_id.lower() if ROOM_ID.fullmatch(room_id) else None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def compact_json(value: Any) -> str:
    """Compact JSON, non-ASCII as itself (UTF-8 on the wire), keys in their order. orjson:
    the hot path encodes several times a publish, and Python's json is most of its cost."""
    return orjson.dumps(value).decode()


def parse_json(text: bytes | str) -> Any:
    """JSON from outside (a request body, an upstream reply), or ValueError unless it can be
    stored and sent on as UTF-8 JSON. orjson reads RFC 8259 strictly: it refuses NaN,
    Infinity, numbers too large for a double (1e400), lone surrogates ("\\ud800") and
    nesting past 1024 levels; integers past 64 bits are read as doubles, as browsers read them."""
    return orjson.loads(text)


# Logs: every line of the app's logger (and, from main(), of every other one) goes through
# a Redactor, so no call site can leak a credential: query and JSON fields named like
# secrets, Bearer values, API tokens and JWTs by their shape, and the configured secrets.
SECRET_SHAPES = (
    r"""(?P<name>(?:access_|refresh_)?token|password|api_key|secret)"""
    r"""(?P<sep>["']?\s*[=:]\s*["']?)[^&\s"',}]+"""  # a field: keep its name
    r"|bearer\s+\S+|smt_[\w-]+|eyJ[\w-]*\.[\w-]+\.[\w-]*"  # API tokens, JWTs
)
SECRET_HINTS = ("token", "password", "api_key", "secret", "bearer", "smt_", "eyj")


class Redactor(logging.Filter):
    """Redacts a record's message and traceback before any handler formats it (once: a
    record may pass the app's logger and a handler of the root logger)."""

    def __init__(self, configured_secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.configured = tuple(configured_secrets)
        alternatives = "".join("|" + re.escape(secret) for secret in self.configured)
        self.pattern = re.compile(SECRET_SHAPES + alternatives, re.IGNORECASE)

    def redact(self, text: str) -> str:
        folded = text.lower()  # most lines have no hint of a secret: no regex for them
        if any(hint in folded for hint in SECRET_HINTS) or any(s in text for s in self.configured):
            text = self.pattern.sub(
                lambda m: f"{m['name']}{m['sep']}[redacted]" if m["name"] else "[redacted]", text
            )
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "redacted", False):
            record.msg, record.args = self.redact(record.getMessage()), None
            record.redacted = True
            if record.exc_info and not record.exc_text:
                trace = logging.Formatter().formatException(record.exc_info)
                record.exc_text = self.redact(trace)
        return True

    def install(self, *loggers: logging.Logger | logging.Handler) -> None:
        """Filter these loggers or handlers through this redactor (instead of an earlier one)."""
        for target in loggers:
            for old in [f for f in target.filters if isinstance(f, Redactor)]:
                target.removeFilter(old)
            target.addFilter(self)


# Errors and the reply envelope. Every reply, success or error, is the envelope
# {"success", "code", "msg", ...}; an error is an ApiError wherever it is raised, and is
# answered by the hot path or Quart's error handler alike.


def envelope(code: int, msg: str, **fields: Any) -> dict[str, Any]:
    """The JSON body of every reply."""
    return {"success": code < 400, "code": code, "msg": msg, **fields}


class ApiError(Exception):
    """An error answered as the envelope; `extra` fields go in it too. `allow` (405) and
    `retry_after` (429, 503) are also sent as their headers."""

    def __init__(self, status: int, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status, self.msg, self.extra = status, msg, extra

    def body(self) -> dict[str, Any]:
        return envelope(self.status, self.msg, **self.extra)

    def headers(self) -> list[tuple[str, str]]:
        names = {"allow": "Allow", "retry_after": "Retry-After"}
        return [(names[key], str(self.extra[key])) for key in names if key in self.extra]


# The catalogue of errors raised in more than one place, each worded once.


def shutting_down() -> ApiError:
    return ApiError(503, "Server is shutting down")


def broker_unavailable() -> ApiError:
    return ApiError(503, "Message broker unavailable, try again")


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large (max {limit} bytes)")


def body_too_slow(limit_s: float) -> ApiError:
    return ApiError(408, f"Request body not received within {limit_s:g} s")


def rate_limited(msg: str, wait_s: float) -> ApiError:
    """429 with Retry-After: the whole seconds to wait (at least 1), also `{retry}` in msg."""
    retry = max(1, math.ceil(wait_s))
    return ApiError(429, msg.format(retry=retry), retry_after=retry)


def invalid_json(error: ValueError) -> ApiError:
    return ApiError(400, "Invalid JSON body", detail=str(error))


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, f"Method not allowed: use {method}", allow=method)


# The models of the OpenAPI document (/openapi.json). Requests are validated by them, as
# are the Quart routes' replies; the hot path's replies are built to match theirs.


class Body(BaseModel):
    """A request body: JSON types as they are (no "1" for 1), no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Reply(BaseModel):
    """The JSON envelope of every reply."""

    model_config = ConfigDict(extra="forbid")
    success: bool
    code: int
    msg: str


class ErrorReply(Reply):
    """An error: `msg` says what is wrong; `detail` and other fields may tell more."""

    model_config = ConfigDict(extra="allow")
    detail: Any = None


def matching(pattern: str, words: str) -> Any:
    """A string type that must match `pattern` as a whole (fullmatch: with search, `$` also
    matches before a final newline, so "abc\\n" passed for `^[a-z]+$`); a string that does
    not is refused as "<field> must be <words>"."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise PydanticCustomError("format", words)
        return value

    schema = {"pattern": f"^(?:{pattern})$"}  # a JSON Schema pattern is searched for
    return Annotated[str, AfterValidator(check), Field(json_schema_extra=schema)]


EXPECTED_TYPES = {
    "model_type": "a JSON object",
    "dict_type": "a JSON object",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
}


def invalid_body(error: ValidationError) -> ApiError:
    """A 400 naming the first problem of a body; `detail` lists them all."""
    problems = []
    for problem in error.errors(include_url=False, include_context=False, include_input=False):
        # a path like `settings.theme` or `messages[0].role`; pydantic also puts the
        # names of union members (`list[str]`) in it
        path = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}"
            for part in problem["loc"]
            if not (isinstance(part, str) and "[" in part)
        ).lstrip(".")
        kind = problem["type"]
        if kind == "extra_forbidden":
            msg = f"Unknown field: {path}"
        elif kind in EXPECTED_TYPES:
            msg = f"{path or 'Body'} must be {EXPECTED_TYPES[kind]}"
        elif kind == "format":
            msg = f"{path} must be {problem['msg']}"
        elif kind == "missing":
            msg = f"{path} is required"
        else:
            msg = f"{path}: {problem['msg']}"
        problems.append({"field": path, "msg": msg, "type": kind})
    return ApiError(400, problems[0]["msg"], detail=problems)


class Metrics:
    """Prometheus metrics (GET /metrics), in a registry of our own. A process counts its own,
    unless it is one of the workers of one server (`hypercorn -w N`): they count in files
    of a directory they share (prometheus-client's multiprocess mode, see share()), so the
    worker a scrape reaches reports them all."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self._define()

    def _define(self) -> None:
        self.registry = CollectorRegistry()  # this process's own values (/healthz)
        self.exposed = self.registry  # what /metrics reports

        def counter(name: str, documentation: str) -> Counter:
            return Counter(name, documentation, namespace="sm", registry=self.registry)

        self.subscribers = Gauge(
            "subscribers",
            "Open event streams",
            ["role"],
            namespace="sm",
            registry=self.registry,
            multiprocess_mode="livesum",  # shared: the sum over the workers alive
        )
        for role in ("player", "controller"):  # reported from the start, at 0
            self.subscribers.labels(role)
        self.published = counter("messages_published", "Messages stored and sent to their room")
        self.commits = counter("commits", "Publish batches committed together (group commit)")
        self.deliveries = counter("deliveries", "Writes of frames to subscribers")
        self.slow_consumer_disconnects = counter(
            "slow_consumer_disconnects", "Subscribers dropped for falling a whole ring behind"
        )
        self.publish_latency = Histogram(
            "publish_latency_seconds",
            "From a publish entering the hub to its commit",
            namespace="sm",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.relay_streams = counter("relay_streams", "AI chat relay streams started")
        self.relay_upstream_errors = counter(
            "relay_upstream_errors", "AI chat relay streams the upstream failed"
        )
        self.fallback_polls = counter("fallback_polls", "Polls of the quote feed of unknown rooms")

    def share(self, directory: Path) -> None:
        """Count from now on in `directory`, with the other workers of this server, and
        report them all. prometheus-client chooses its multiprocess mode (values in mmapped
        files, one per process and kind) when it is imported, from PROMETHEUS_MULTIPROC_DIR;
        a worker knows it is one only once it serves, so this sets both, for this process,
        and defines the metrics again (nothing is counted before serving)."""
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        prometheus_client.values.ValueClass = prometheus_client.values.MultiProcessValue()
        self.directory = directory
        self._define()
        if not any(directory.glob(f"*_{os.getpid()}.db")):
            raise RuntimeError("prometheus-client no longer keeps values in its ValueClass")
        self.exposed = CollectorRegistry()
        MultiProcessCollector(self.exposed, path=str(directory))

    def retire(self) -> None:
        """This worker stops: its open streams leave the shared gauges (its counts stay)."""
        if self.directory is not None:
            mark_process_dead(os.getpid(), str(self.directory))

    def value(self, name: str, **labels: str) -> float:
        """This process's own value of a metric."""
        return self.registry.get_sample_value(f"sm_{name}", labels) or 0.0


# ---------------------------------------------------------------------------------------
# Storage: rooms, recent messages and accounts in SQLite (WAL). Every SQL statement of the
# app is here; rows come back as aiosqlite.Row and leave as the records below. One writer
# task (the hub's) commits every pending publish in one statement (group commit) before
# anyone sees it; every other write is a transaction of its own. All writes take
# `Storage.lock`, so none interleave.
# ---------------------------------------------------------------------------------------

TokenRight = Literal["publish", "subscribe"]
Role = Literal["admin", "user"]


@dataclass
class RoomRecord:
    id: str
    owner: str | None
    title: str
    private: bool
    history_size: int | None
    settings: dict[str, Any]
    last_id: int
    created_at: int
    max_age_s: int | None = None  # messages older are not replayed, and are trimmed

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> RoomRecord:
        fields = dict(row)
        fields.update(private=bool(row["private"]), settings=orjson.loads(row["settings"]))
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class User:
    id: str
    username: str
    role: Role
    disabled: bool
    created_at: int

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> User:
        return cls(
            row["id"], row["username"], row["role"], bool(row["disabled"]), row["created_at"]
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ApiToken:
    """An API token without its secret: whose it is and what it may do."""

    id: str
    user_id: str
    name: str
    rooms: frozenset[str] | None  # None: every room its user may use
    rights: frozenset[TokenRight]
    expires_at: int | None  # epoch ms
    created_at: int

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> ApiToken:
        rooms = None if row["rooms"] is None else frozenset(orjson.loads(row["rooms"]))
        rights = frozenset(orjson.loads(row["rights"]))
        fields = (row["id"], row["user_id"], row["name"], rooms, rights)
        return cls(*fields, row["expires_at"], row["created_at"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "name": self.name,
            "rooms": "*" if self.rooms is None else sorted(self.rooms),
            "rights": sorted(self.rights),
            "expires_at": self.expires_at,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Upload:
    """A room's uploaded file, without its bytes."""

    room: str
    name: str
    type: str  # a MIME type of UPLOAD_SIGNATURES
    size: int
    etag: str
    created_at: int

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Upload:
        return cls(*(row[name] for name in ("room", "name", "type", "size", "etag", "created_at")))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScheduledMessage:
    """A message published with `at` or `delay`, waiting to be delivered."""

    id: str
    room: str
    message: dict[str, Any]  # speaker, data, meta (and expires_in), as validated
    due_at: int  # epoch ms
    created_at: int

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> ScheduledMessage:
        fields = dict(row) | {"message": orjson.loads(row["message"])}
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room,
            "due_at": self.due_at,
            **self.message,
            "expires_in": self.message.get("expires_in"),
            "created_at": self.created_at,
        }


ROOM_COLUMNS = "id, owner, title, private, history_size, settings, last_id, created_at, max_age_s"
USER_COLUMNS = "id, username, role, disabled, created_at"
API_TOKEN_COLUMNS = "hash, id, user_id, name, rooms, rights, expires_at, created_at"
SCHEDULED_COLUMNS = "id, room, message, due_at, created_at"
UPLOAD_COLUMNS = "room, name, type, length(data) AS size, etag, created_at"
# A message's id, and its payload unless it is not to be served (see Storage.history); a
# payload is parsed only for a room with a max age.
SERVED_MESSAGE_COLUMNS = (
    "id, CASE WHEN payload = ? OR expires_at <= ? OR (? > 0 AND payload ->> 'time' < ?)"
    " THEN NULL ELSE payload END AS payload"
)

# Columns added to tables after their first release: (table, column, type). schema.sql has
# them too; Storage.open adds them to a database made before them.
ADDED_COLUMNS = (("rooms", "max_age_s", "INTEGER"), ("messages", "expires_at", "INTEGER"))

# On the write connection only (TEMP, as it calls a function of this process): storing a
# message advances its room's last id (MAX: other processes may be ahead) and trims the
# room's history, within the INSERT itself. So a group commit is one statement: one trip
# to the database thread.
MESSAGE_STORED_TRIGGER = """
CREATE TEMP TRIGGER IF NOT EXISTS message_stored AFTER INSERT ON main.messages BEGIN
    UPDATE rooms SET last_id = MAX(last_id, NEW.id) WHERE id = NEW.room;
    DELETE FROM messages WHERE room = NEW.room AND id <= NEW.id - (
        SELECT COALESCE(history_size, server_history_size()) FROM rooms
        WHERE id = NEW.room
    );
END
"""


# The payload of a retracted message. Its row stays, as a tombstone: a replay checks that
# the ids it reads follow each other (a missing one means the history was trimmed).
RETRACTED = ""


class Storage:
    """The SQLite file: a write connection (used by the writer and admin changes) and a
    read connection, so a replay never sees a transaction that is not committed yet."""

    def __init__(self, path: Path, history_size: int, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.history_size = history_size  # a room's, unless it has its own
        self.synchronous = synchronous
        self.write: aiosqlite.Connection
        self.read: aiosqlite.Connection
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write = await self._connect()
        await self.write.executescript((ROOT / "schema.sql").read_text())
        await self.write.commit()
        await self._add_columns()
        await self.write.create_function(
            "server_history_size", 0, lambda: self.history_size, deterministic=True
        )
        await self.write.execute(MESSAGE_STORED_TRIGGER)
        self.read = await self._connect()

    async def _add_columns(self) -> None:
        """Bring a database made by an earlier release up to schema.sql: ADDED_COLUMNS. In
        one transaction, so processes starting together add each column once."""
        async with self.transaction() as db:
            for table, column, kind in ADDED_COLUMNS:
                async with db.execute("SELECT name FROM pragma_table_info(?)", (table,)) as cursor:
                    columns = {row["name"] for row in await cursor.fetchall()}
                if column not in columns:
                    log.info("database: adding %s.%s", table, column)
                    await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    async def _connect(self) -> aiosqlite.Connection:
        # Autocommit: a statement outside `transaction()` is a transaction of its own.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        # First, so that processes starting together wait for each other's locks.
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={self.synchronous}")
        await db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The write connection for one transaction: committed at the end, rolled back on
        an error. Transactions take turns, so one never commits half of another."""
        async with self.lock, self.locked_transaction() as db:
            yield db

    @contextlib.asynccontextmanager
    async def locked_transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """`transaction`, for a caller that holds `lock` already."""
        await self.write.execute("BEGIN IMMEDIATE")
        try:
            yield self.write
            await self.write.commit()
        except BaseException:
            await self.write.rollback()
            raise

    async def close(self) -> None:
        await self.read.close()
        await self.write.close()

    async def check_writable(self) -> None:
        """Commit a write (the one row of `readiness`): raises sqlite3.Error when SQLite
        cannot take one (disk full, read-only file, a lock held past busy_timeout)."""
        async with self.transaction() as db:
            await db.execute("REPLACE INTO readiness (id, checked_at) VALUES (1, ?)", (now_ms(),))

    async def _rows(self, sql: str, parameters: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.read.execute(sql, parameters) as cursor:
            return list(await cursor.fetchall())

    # Rooms and messages

    async def load_rooms(self) -> list[RoomRecord]:
        return [
            RoomRecord.from_row(row)
            for row in await self._rows(f"SELECT {ROOM_COLUMNS} FROM rooms")
        ]

    async def insert_room(self, room: RoomRecord, max_owned: int = 0) -> int | None:
        """Store a new room; returns its last id: 0, or for the id of a deleted room, that
        room's (see deleted_rooms in schema.sql). None, storing nothing, when its owner has
        `max_owned` rooms already (0: no limit): counted in the transaction, so processes
        creating rooms at once cannot pass the limit together."""
        async with self.transaction() as db:
            if max_owned and room.owner is not None:
                async with db.execute(
                    "SELECT COUNT(*) FROM rooms WHERE owner = ?", (room.owner,)
                ) as cursor:
                    (owned,) = await cursor.fetchone()
                if owned >= max_owned:
                    return None
            async with db.execute(
                "SELECT last_id FROM deleted_rooms WHERE id = ?", (room.id,)
            ) as cursor:
                deleted = await cursor.fetchone()
            values = asdict(room) | {
                "private": int(room.private),
                "settings": compact_json(room.settings),
                "last_id": deleted["last_id"] if deleted else 0,
            }
            await db.execute(
                f"INSERT INTO rooms ({ROOM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [values[column] for column in ROOM_COLUMNS.split(", ")],
            )
        return values["last_id"]

    async def update_room(self, room: RoomRecord) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE rooms SET title = ?, private = ?, history_size = ?, settings = ?,"
                " max_age_s = ? WHERE id = ?",
                (
                    room.title,
                    int(room.private),
                    room.history_size,
                    compact_json(room.settings),
                    room.max_age_s,
                    room.id,
                ),
            )

    async def delete_room(self, room_id: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO deleted_rooms (id, last_id)"
                " SELECT id, last_id FROM rooms WHERE id = ?",
                (room_id,),
            )
            await db.execute("DELETE FROM messages WHERE room = ?", (room_id,))
            await db.execute("DELETE FROM rooms WHERE id = ?", (room_id,))

    async def history(
        self,
        room: str,
        after: int,
        before: int = sys.maxsize,
        limit: int | None = None,
        newest_first: bool = False,
        now: int = 0,
        born_after: int = 0,
    ) -> list[tuple[int, str | None]]:
        """Stored messages of a room with after < id < before, oldest first (or newest
        first), at most `limit` (None: all): (id, payload). A retracted message (its
        tombstone), one expired at `now` or one published before `born_after` (epoch ms: the
        room's max age) is (id, None): its id kept, its payload not to be served."""
        parameters = (RETRACTED, now, born_after, born_after, room, after, before)
        parameters += (-1 if limit is None else limit,)
        if newest_first:
            rows = await self._rows(
                f"SELECT {SERVED_MESSAGE_COLUMNS} FROM messages"
                " WHERE room = ? AND id > ? AND id < ? ORDER BY id DESC LIMIT ?",
                parameters,
            )
        else:
            rows = await self._rows(
                f"SELECT {SERVED_MESSAGE_COLUMNS} FROM messages"
                " WHERE room = ? AND id > ? AND id < ? ORDER BY id LIMIT ?",
                parameters,
            )
        return [(row["id"], row["payload"]) for row in rows]

    async def kept_message(self, room: str, message_id: int) -> str | None:
        """A kept message's payload; None when the room does not keep it or it was
        retracted. Within the caller's transaction."""
        async with self.write.execute(
            "SELECT payload FROM messages WHERE room = ? AND id = ? AND payload != ?",
            (room, message_id, RETRACTED),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row["payload"]

    async def replace_message(self, room: str, message_id: int, payload: str) -> None:
        """Store a kept message's new payload (RETRACTED: its tombstone). Within the
        caller's transaction."""
        await self.write.execute(
            "UPDATE messages SET payload = ? WHERE room = ? AND id = ?",
            (payload, room, message_id),
        )

    async def last_ids(self, rooms: set[str]) -> dict[str, int]:
        rows = await self._rows(
            "SELECT id, last_id FROM rooms WHERE id IN (SELECT value FROM json_each(?))",
            (compact_json(sorted(rooms)),),
        )
        return {row["id"]: row["last_id"] for row in rows}

    async def write_messages(self, rows: list[tuple[str, int, str, int | None]]) -> None:
        """Store the messages (room, id, payload, expires_at), all or none: one statement, so
        one transaction and one trip to the database thread whatever their number. The
        caller holds `lock`. The trigger `message_stored` advances each room's last id and
        trims its history."""
        await self.write.execute(
            "INSERT INTO messages (room, id, payload, expires_at)"
            " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3"
            " FROM json_each(?) ORDER BY key",
            (compact_json(rows),),
        )

    async def trim_aged(self, born_after: dict[str, int]) -> dict[str, int]:
        """Delete each room's messages up to its newest one published before the room's
        `born_after` (epoch ms: its max age); returns {room: the last id deleted}."""
        cuts = {}
        async with self.transaction() as db:
            for room_id, oldest in born_after.items():
                async with db.execute(
                    "DELETE FROM messages WHERE room = ?1 AND id <= (SELECT MAX(id)"
                    " FROM messages WHERE room = ?1 AND payload ->> 'time' < ?2) RETURNING id",
                    (room_id, oldest),
                ) as cursor:
                    if deleted := [row["id"] for row in await cursor.fetchall()]:
                        cuts[room_id] = max(deleted)
        return cuts

    # Scheduled messages

    async def insert_scheduled(self, scheduled: ScheduledMessage, max_per_room: int) -> bool:
        """Store a scheduled message, unless its room has `max_per_room` already (counted
        in the transaction, so processes scheduling at once cannot pass the limit together).
        Raises sqlite3.IntegrityError when the room is gone (deleted meanwhile); deleting a
        room deletes its scheduled messages (ON DELETE CASCADE)."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT COUNT(*) FROM scheduled_messages WHERE room = ?", (scheduled.room,)
            ) as cursor:
                (count,) = await cursor.fetchone()
            if count >= max_per_room:
                return False
            await db.execute(
                f"INSERT INTO scheduled_messages ({SCHEDULED_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (
                    scheduled.id,
                    scheduled.room,
                    compact_json(scheduled.message),
                    scheduled.due_at,
                    scheduled.created_at,
                ),
            )
        return True

    async def scheduled(self, room_id: str) -> list[ScheduledMessage]:
        """A room's scheduled messages, the soonest first."""
        rows = await self._rows(
            f"SELECT {SCHEDULED_COLUMNS} FROM scheduled_messages WHERE room = ?"
            " ORDER BY due_at, created_at",
            (room_id,),
        )
        return [ScheduledMessage.from_row(row) for row in rows]

    async def due_scheduled(self, now: int, limit: int) -> list[ScheduledMessage]:
        """Scheduled messages due at `now` (epoch ms), the soonest first, at most `limit`."""
        rows = await self._rows(
            f"SELECT {SCHEDULED_COLUMNS} FROM scheduled_messages WHERE due_at <= ?"
            " ORDER BY due_at, created_at LIMIT ?",
            (now, limit),
        )
        return [ScheduledMessage.from_row(row) for row in rows]

    async def next_due(self) -> int | None:
        """When the soonest scheduled message is due (epoch ms); None: there is none."""
        (row,) = await self._rows("SELECT MIN(due_at) AS due_at FROM scheduled_messages")
        return row["due_at"]

    async def claim_scheduled(self, scheduled_ids: list[str]) -> set[str]:
        """Delete these scheduled messages; returns the ids of those that were there (not
        delivered or cancelled meanwhile). Within the caller's transaction, which stores
        the messages: a message is claimed by the one commit that stores it."""
        async with self.write.execute(
            "DELETE FROM scheduled_messages WHERE id IN (SELECT value FROM json_each(?))"
            " RETURNING id",
            (compact_json(scheduled_ids),),
        ) as cursor:
            return {row["id"] for row in await cursor.fetchall()}

    async def cancel_scheduled(self, room_id: str, scheduled_id: str) -> bool:
        """Delete a room's scheduled message; whether it was there."""
        async with (
            self.transaction() as db,
            db.execute(
                "DELETE FROM scheduled_messages WHERE room = ? AND id = ? RETURNING id",
                (room_id, scheduled_id),
            ) as cursor,
        ):
            return await cursor.fetchone() is not None

    async def idempotent_publishes(
        self, keys: list[tuple[str, str]], since: int
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """The publishes stored with these (scope, key) after `since` (epoch ms): (scope,
        key) -> (fingerprint, payloads). Within the caller's transaction."""
        async with self.write.execute(
            "SELECT scope, key, fingerprint, payloads FROM idempotency_keys"
            " WHERE (scope, key) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))"
            " AND created_at > ?",
            (compact_json(keys), since),
        ) as cursor:
            rows = await cursor.fetchall()
        return {(row["scope"], row["key"]): (row["fingerprint"], row["payloads"]) for row in rows}

    async def write_idempotency_keys(
        self, rows: list[tuple[str, str, str, str, int]], expired: int
    ) -> None:
        """Store keys (scope, key, fingerprint, payloads, created_at) and forget those
        created at `expired` (epoch ms) or before. Within the caller's transaction."""
        await self.write.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (expired,))
        await self.write.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, payloads, created_at)"
            " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4"
            " FROM json_each(?)",
            (compact_json(rows),),
        )

    async def raise_last_ids(self, last_ids: dict[str, int]) -> None:
        """Advance rooms' last ids to at least these ({room: id}). The caller holds `lock`."""
        await self.write.execute(
            "UPDATE rooms SET last_id = MAX(rooms.last_id, ids.value)"
            " FROM json_each(?) AS ids WHERE rooms.id = ids.key",
            (compact_json(last_ids),),
        )

    # Uploads

    async def insert_upload(self, upload: Upload, data: bytes, max_count: int = 0) -> bool:
        """Store an upload, replacing the room's file of that name; False, storing nothing,
        when the room has `max_count` other uploads already (0: no limit)."""
        async with self.transaction() as db:
            if max_count:
                async with db.execute(
                    "SELECT COUNT(*) FROM uploads WHERE room = ? AND name != ?",
                    (upload.room, upload.name),
                ) as cursor:
                    (count,) = await cursor.fetchone()
                if count >= max_count:
                    return False
            await db.execute(
                "REPLACE INTO uploads (room, name, type, data, etag, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (upload.room, upload.name, upload.type, data, upload.etag, upload.created_at),
            )
        return True

    async def uploads(self, room: str) -> list[Upload]:
        rows = await self._rows(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE room = ? ORDER BY name", (room,)
        )
        return [Upload.from_row(row) for row in rows]

    async def upload(self, room: str, name: str) -> tuple[Upload, bytes] | None:
        rows = await self._rows(
            f"SELECT {UPLOAD_COLUMNS}, data FROM uploads WHERE room = ? AND name = ?",
            (room, name),
        )
        return (Upload.from_row(rows[0]), rows[0]["data"]) if rows else None

    async def delete_upload(self, room: str, name: str) -> bool:
        """Whether there was such an upload."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM uploads WHERE room = ? AND name = ?", (room, name)
            )
            return cursor.rowcount > 0

    # Accounts

    async def load_users(self) -> dict[str, User]:
        rows = await self._rows(f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at")
        return {row["id"]: User.from_row(row) for row in rows}

    async def live_sessions(self, now: int) -> dict[str, tuple[str, int]]:
        """Sessions not revoked with a refresh token not expired: id -> (user id, expiry)."""
        rows = await self._rows(
            "SELECT s.id, s.user_id, MAX(r.expires_at) AS expiry FROM sessions s"
            " JOIN refresh_tokens r ON r.session_id = s.id WHERE s.revoked_at IS NULL"
            " GROUP BY s.id HAVING MAX(r.expires_at) > ?",
            (now,),
        )
        return {row["id"]: (row["user_id"], row["expiry"]) for row in rows}

    async def load_api_tokens(self) -> dict[str, ApiToken]:
        """Every API token, by the hash of its secret."""
        rows = await self._rows(f"SELECT {API_TOKEN_COLUMNS} FROM api_tokens")
        return {row["hash"]: ApiToken.from_row(row) for row in rows}

    async def find_user(self, user_id: str) -> User | None:
        rows = await self._rows(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return User.from_row(rows[0]) if rows else None

    async def user_login(self, username: str) -> tuple[User, str] | None:
        """The user of this username (any case) with their password hash."""
        rows = await self._rows(
            f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = ?", (username,)
        )
        return (User.from_row(rows[0]), rows[0]["password_hash"]) if rows else None

    async def insert_user(self, user: User, password_hash: str) -> None:
        """Raises sqlite3.IntegrityError when the username is taken."""
        async with self.transaction() as db:
            await db.execute(
                f"INSERT INTO users ({USER_COLUMNS}, password_hash) VALUES (?, ?, ?, ?, ?, ?)",
                (user.id, user.username, user.role, 0, user.created_at, password_hash),
            )

    async def update_user(self, user: User, password_hash: str | None, end_sessions: bool) -> None:
        """Role and disabled as in `user`; the password hash unless None; `end_sessions`
        revokes every session of the user."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE users SET role = ?, disabled = ?,"
                " password_hash = COALESCE(?, password_hash) WHERE id = ?",
                (user.role, int(user.disabled), password_hash, user.id),
            )
            if end_sessions:
                await self._revoke_sessions(db, user_id=user.id)

    async def delete_user(self, user_id: str) -> None:
        """The user, their sessions and tokens (cascade); their rooms lose their owner."""
        async with self.transaction() as db:
            await db.execute("UPDATE rooms SET owner = NULL WHERE owner = ?", (user_id,))
            await db.execute("DELETE FROM users WHERE id = ?", (user_id,))

    async def insert_session(
        self, session_id: str, user_id: str, refresh_hash: str, expiry: int, now: int
    ) -> None:
        async with self.transaction() as db:
            # forget what can no longer be used: expired refresh tokens, then their sessions
            await db.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?", (now,))
            await db.execute(
                "DELETE FROM sessions WHERE id NOT IN (SELECT session_id FROM refresh_tokens)"
            )
            await db.execute(
                "INSERT INTO sessions (id, user_id, created_at) VALUES (?, ?, ?)",
                (session_id, user_id, now),
            )
            await db.execute(
                "INSERT INTO refresh_tokens (hash, session_id, expires_at) VALUES (?, ?, ?)",
                (refresh_hash, session_id, expiry),
            )

    async def rotate_refresh_token(
        self, used_hash: str, new_hash: str, expiry: int, now: int
    ) -> tuple[str, aiosqlite.Row | None]:
        """Exchange a refresh token for a new one, in one transaction. Returns the outcome
        ("rotated", "unknown" or expired, "ended" session, "reused": the token had been
        exchanged already, so its session is revoked) and the token's row (session_id,
        user_id)."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT r.session_id, r.expires_at, r.rotated_at, s.user_id, s.revoked_at"
                " FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.hash = ?",
                (used_hash,),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None or row["expires_at"] <= now:
                return "unknown", row
            if row["revoked_at"] is not None:
                return "ended", row
            if row["rotated_at"] is not None:
                await self._revoke_sessions(db, session_id=row["session_id"])
                return "reused", row
            await db.execute(
                "UPDATE refresh_tokens SET rotated_at = ? WHERE hash = ?", (now, used_hash)
            )
            await db.execute(
                "INSERT INTO refresh_tokens (hash, session_id, expires_at) VALUES (?, ?, ?)",
                (new_hash, row["session_id"], expiry),
            )
            return "rotated", row

    async def end_session(self, *, session_id: str | None, refresh_hash: str | None) -> str | None:
        """Revoke a session, given by its id or the hash of one of its refresh tokens; returns
        its id (None: no such session)."""
        async with self.transaction() as db:
            if refresh_hash is not None:
                async with db.execute(
                    "SELECT session_id FROM refresh_tokens WHERE hash = ?", (refresh_hash,)
                ) as cursor:
                    row = await cursor.fetchone()
                session_id = row["session_id"] if row is not None else None
            if session_id is not None:
                await self._revoke_sessions(db, session_id=session_id)
            return session_id

    @staticmethod
    async def _revoke_sessions(
        db: aiosqlite.Connection, *, session_id: str | None = None, user_id: str | None = None
    ) -> None:
        """Within a transaction: revoke one session, or every session of a user."""
        await db.execute(
            "UPDATE sessions SET revoked_at = ?"
            " WHERE revoked_at IS NULL AND (id = ? OR user_id = ?)",
            (now_ms(), session_id, user_id),
        )

    async def insert_api_token(self, token_hash: str, token: ApiToken) -> None:
        rooms = None if token.rooms is None else compact_json(sorted(token.rooms))
        async with self.transaction() as db:
            await db.execute(
                f"INSERT INTO api_tokens ({API_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token_hash,
                    token.id,
                    token.user_id,
                    token.name,
                    rooms,
                    compact_json(sorted(token.rights)),
                    token.expires_at,
                    token.created_at,
                ),
            )

    async def delete_api_token(self, token_id: str) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,))


# ---------------------------------------------------------------------------------------
# Broker: live rooms in memory, their streams, and the hub. Each room keeps one ring of
# encoded SSE frames shared by all its subscribers (a subscriber is only a cursor into it).
# A publish appends a frame
# and arms one short timer; when it fires, every subscriber behind the end gets all its
# pending frames in one write, WAKE_SLICE subscribers per turn of the event loop so that
# publishes go on meanwhile. A subscriber that falls a whole ring behind is dropped
# (it resumes by Last-Event-ID) instead of growing the server's memory.
# Presence and heartbeat frames go through the same ring, as does the quote feed that
# invalid and unknown rooms get (FallbackFeed). A stream's whole life (hello, replay, live
# frames, its end) is `Hub.serve_stream`.
# Where ids, history, fan-out and presence across processes come from is the hub's
# `broker`: the LocalBroker (one process, SQLite) or, with BROKER_URL, the RedisBroker.
# ---------------------------------------------------------------------------------------


def message_frame(message_id: int | None, payload: str) -> bytes:
    """An unnamed event. Without an id (the quote feed) the client keeps its Last-Event-ID."""
    if message_id is None:
        return b"data: %s\n\n" % payload.encode()
    return b"id: %d\ndata: %s\n\n" % (message_id, payload.encode())


def event_frame(event: str, data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


# Every message payload's `status`: the Bun project's pages show it in a column.
MESSAGE_STATUS = "✔ success"


def payload_with_id(message_id: int, body: str) -> str:
    """A message's wire payload: its body (compact JSON without the id) with the id spliced
    in first, so a message is encoded once, before any process knows its id."""
    return f'{{"id":{message_id},{body[1:]}'


KEEPALIVE_FRAME = b":\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
WAKE_SLICE = 8  # subscribers a room's wake-up writes to per turn of the event loop
WAKE_BYTES = 262_144  # and bytes: fewer subscribers a turn when the frames are big
REPLAY_PAGE_ROWS = 64  # stored messages a replay reads at a time
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


@types.coroutine
def resume(coroutine: Coroutine, waiting_on: Any) -> Generator[Any, Any, Any]:
    """Go on, inside the running task, with a coroutine that was stepped by hand and is
    suspended on `waiting_on` (what it yielded): the loop an asyncio Task runs."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as error:  # the task was cancelled: the coroutine gets it
            step = functools.partial(coroutine.throw, error)
        else:
            step = functools.partial(coroutine.send, sent)
        try:
            waiting_on = step()
        except StopIteration as finished:
            return finished.value


class Subscriber:
    __slots__ = (
        "send",
        "role",
        "task",
        "cursor",
        "replayed_through",
        "flushing",
        "ending",
        "live",
        "sent",
    )

    def __init__(self, send: ASGISend, role: str, cursor: int) -> None:
        self.send = send
        self.role = role
        self.task = asyncio.current_task()  # the stream's handler, waiting for disconnect
        self.cursor = cursor  # ring position of the next frame to send
        self.replayed_through = 0  # message ids up to this were sent by the replay
        self.flushing: asyncio.Task | None = None
        self.ending: bytes | None = None  # set when the server finishes the stream
        self.live = False  # frames are flushed to it only after its hello (and replay)
        self.sent = 0  # bytes, for the log

    def finish(self, final_frame: bytes, room_gone: bool = False) -> None:
        """The server finishes the stream: with a final event (shutdown, room deleted or made
        private) after the frames still due to it (see Hub.serve_stream); without one (it
        fell too far behind) at once. (`room_gone`: the room was deleted, which ends a
        stream of that room alone, but only that room of a RoomsStream.)"""
        self.ending = final_frame  # the room writes no more to it
        if not final_frame and self.flushing is not None:
            self.flushing.cancel()
        self.task.cancel()


class Room:
    """A live room: its record, its subscribers and its ring of encoded frames."""

    def __init__(self, record: RoomRecord, settings: Settings, metrics: Metrics) -> None:
        self.record = record
        self.settings, self.metrics = settings, metrics
        self.subscribers: set[Subscriber] = set()
        self.controllers = 0  # subscribers with role "controller"
        self.previews = 0  # with role "preview": players presence leaves out (the admin's)
        self.remote = {"players": 0, "controllers": 0}  # in other processes (the broker's)
        self._heartbeat: asyncio.TimerHandle | None = None  # armed while controllers > 0
        self._presence_armed = False
        self._presence_sent = {"players": 0, "controllers": 0}
        self.frames: list[bytes] = []  # ring: frames[i] is at position base + i
        self.frame_ids: list[int] = []  # message id of each frame, 0 for other frames
        self.base = 0
        self._joined: tuple[int, int, bytes] = (0, 0, b"")  # (start, end, frames joined)
        self._wake_armed = False
        self._busy_until = 0.0  # time.monotonic(): a window after the room's last wake

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def head(self) -> int:
        """The ring position of the next frame appended."""
        return self.base + len(self.frames)

    @property
    def history_size(self) -> int:
        return self.record.history_size or self.settings.history_size

    def served_window(self) -> tuple[int, int]:
        """(now, born_after), epoch ms: a stored message expired at `now`, or published
        before `born_after` (the room's max age; 0: none), is no longer served."""
        now = now_ms()
        return now, now - self.record.max_age_s * 1000 if self.record.max_age_s else 0

    def local_presence(self) -> dict[str, int]:
        """This process's subscribers of the room, by role."""
        return {
            "players": len(self.subscribers) - self.controllers - self.previews,
            "controllers": self.controllers,
        }

    def presence(self) -> dict[str, int]:
        """The room's subscribers by role, in every process that serves it (the others'
        as the broker last told, while this process has subscribers here)."""
        local = self.local_presence()
        return {role: local[role] + self.remote[role] for role in local}

    def opening(self, retry_ms: int, hello: dict[str, Any]) -> bytes:
        """What a stream of the room starts with: `retry:` and the hello (`event: meta`)."""
        return b"retry: %d\n" % retry_ms + event_frame("meta", hello)

    def hello(self) -> dict[str, Any]:
        """The `event: meta` a new stream starts with (before its replay)."""
        return {
            "api": {"version": API_VERSION},
            "room": self.id,
            "fallback": False,
            "last_id": self.record.last_id,
            "keepalive_s": self.settings.keepalive_s,
            "heartbeat_s": self.settings.heartbeat_s,
            "presence": self.presence(),
            "gap": False,
        }

    def join(self, subscriber: Subscriber) -> None:
        before = self.presence()
        self.subscribers.add(subscriber)
        self.controllers += subscriber.role == "controller"
        self.previews += subscriber.role == "preview"
        self.metrics.subscribers.labels(subscriber.role).inc()
        self._presence_changed(before)

    def leave(self, subscriber: Subscriber) -> None:
        before = self.presence()
        self.subscribers.remove(subscriber)
        self.controllers -= subscriber.role == "controller"
        self.previews -= subscriber.role == "preview"
        self.metrics.subscribers.labels(subscriber.role).dec()
        self._presence_changed(before)

    def set_remote(self, counts: dict[str, int]) -> None:
        """The broker's news of the room's subscribers in other processes."""
        before = self.presence()
        self.remote = counts
        self._presence_changed(before)

    def _beat(self) -> None:
        """One heartbeat frame for the whole room (controllers get it too and ignore it);
        repeats every HEARTBEAT_S while a controller is connected. Players count three
        missed intervals as the controller being offline."""
        controllers = self.presence()["controllers"]
        heartbeat = {
            "room": self.id,
            "controllers": controllers,
            "interval_s": self.settings.heartbeat_s,
            "time": now_ms(),
        }
        self.append(event_frame("heartbeat", heartbeat))
        self._heartbeat = None
        if controllers:
            loop = asyncio.get_running_loop()
            self._heartbeat = loop.call_later(self.settings.heartbeat_s, self._beat)

    def _presence_changed(self, before: dict[str, int]) -> None:
        """The first controller came or the last one left: a heartbeat at once (players
        learn it without waiting for the next beat). Presence events are coalesced: at most
        one per PRESENCE_INTERVAL_S, with the counts as they are when it is sent, and only
        if they differ from the last one sent."""
        if (before["controllers"] == 0) != (self.presence()["controllers"] == 0):
            if self._heartbeat is not None:
                self._heartbeat.cancel()
            self._beat()
        if not self._presence_armed:
            self._presence_armed = True
            loop = asyncio.get_running_loop()
            loop.call_later(self.settings.presence_interval_s, self._send_presence)

    def _send_presence(self) -> None:
        self._presence_armed = False
        presence = self.presence()
        if presence != self._presence_sent:
            self._presence_sent = presence
            self.append(event_frame("presence", {"room": self.id, **presence}))

    def append(self, frame: bytes, message_id: int = 0) -> None:
        self.frames.append(frame)
        self.frame_ids.append(message_id)
        if len(self.frames) >= 2 * self.settings.subscriber_queue:
            self._trim()
        if not self._wake_armed and self.subscribers:
            self._arm_wake()

    def _arm_wake(self) -> None:
        """Frames of a busy room wait COALESCE_MS to share a write; the first frame after a
        quiet window (low load) waits for nothing."""
        self._wake_armed = True
        delay = self.settings.coalesce_ms / 1000 if time.monotonic() < self._busy_until else 0
        asyncio.get_running_loop().call_later(delay, self._wake)

    def _trim(self) -> None:
        """Forget old frames, keeping the newest SUBSCRIBER_QUEUE. A subscriber that would
        miss some while still blocked on an earlier write, or still having its replay, is a
        slow consumer: it is dropped (it resumes by Last-Event-ID). One that was not woken
        yet (one commit can append more than the queue) keeps its frames until its next
        write."""
        cut = self.head - self.settings.subscriber_queue
        for subscriber in list(self.subscribers):
            if subscriber.cursor >= cut or subscriber.ending is not None:
                continue
            if subscriber.live and subscriber.flushing is None:
                cut = subscriber.cursor
            else:
                self.drop_slow_consumer(subscriber)
        del self.frames[: cut - self.base], self.frame_ids[: cut - self.base]
        self.base = cut

    def drop_slow_consumer(self, subscriber: Subscriber) -> None:
        log.info("slow consumer dropped room=%s role=%s", self.id, subscriber.role)
        self.metrics.slow_consumer_disconnects.inc()
        subscriber.finish(b"")

    def _wake(self) -> None:
        self._write_slice(list(self.subscribers), 0, self.head)

    def _write_slice(self, subscribers: list[Subscriber], start: int, end_at_wake: int) -> None:
        """One turn of a wake: WAKE_SLICE subscribers get what they have not had. Between
        turns the event loop serves everything else (one turn for a thousand subscribers
        held it for 35 ms), and what is published meanwhile joins the later writes: more
        frames per write. W1 against the peer: 4.5x in one turn, 6.5x with 64 subscribers a
        turn, 16x with 8, 19x with 4, 25x with 1 but at twice the latency. One wake at a
        time: frames that came during it wake the room again at its end, for the
        subscribers it had passed. A turn also ends after WAKE_BYTES: a 1 MB batch costs a
        copy or two of 1 MB per subscriber in Hypercorn, 8 MB a turn."""
        writes = written = 0
        index = start
        try:
            while index < min(len(subscribers), start + WAKE_SLICE) and written < WAKE_BYTES:
                subscriber = subscribers[index]
                index += 1
                if (
                    subscriber.live
                    and subscriber.ending is None
                    and subscriber.cursor < self.head
                    and subscriber.flushing is None
                    and subscriber in self.subscribers  # it may have left since the wake began
                ):
                    chunk = self.due(subscriber)
                    written += len(chunk)
                    writes += self._write(subscriber, chunk)
        finally:  # a send that raised must not leave the room's wake unfinished
            # Counted once per turn: the counter's lock, taken per write, was 5 % of a fan-out.
            self.metrics.deliveries.inc(writes)
            if index < len(subscribers):
                loop = asyncio.get_running_loop()
                loop.call_soon(self._write_slice, subscribers, index, end_at_wake)
            else:
                self._wake_armed = False
                self._busy_until = time.monotonic() + self.settings.coalesce_ms / 1000
                if self.head != end_at_wake and self.subscribers:
                    self._arm_wake()

    def catch_up(self, subscriber: Subscriber) -> None:
        """A stream that has had its hello and replay goes live: it gets what came meanwhile
        (written to it alone, not by waking the whole room)."""
        subscriber.live = subscriber.ending is None
        if subscriber.live and subscriber.cursor < self.head:
            self.metrics.deliveries.inc(self._write(subscriber, self.due(subscriber)))

    def _write(self, subscriber: Subscriber, chunk: bytes) -> bool:
        """Hand a chunk to the subscriber's connection; whether there was one. Hypercorn's
        send completes at once unless the socket's buffer is full, so it is stepped here by
        hand: no task per subscriber per wake-up (that was most of the fan-out's cost). Only
        a send that must wait goes on in a task, which then also writes whatever arrives
        meanwhile."""
        if not chunk:
            return False
        subscriber.sent += len(chunk)
        sending = subscriber.send({"type": "http.response.body", "body": chunk, "more_body": True})
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            return True
        subscriber.flushing = asyncio.create_task(self._flush(subscriber, sending, waiting_on))
        return True

    def due(self, subscriber: Subscriber) -> bytes:
        """Every frame from the subscriber's cursor to the end, joined; advances the cursor.
        Most subscribers share a cursor, so the join is cached for the next one."""
        start, end = subscriber.cursor, self.head
        subscriber.cursor = end
        offset = start - self.base
        if subscriber.replayed_through:  # skip what the replay already sent
            through, subscriber.replayed_through = subscriber.replayed_through, 0
            frames = zip(self.frames[offset:], self.frame_ids[offset:], strict=True)
            return b"".join(frame for frame, message_id in frames if not 0 < message_id <= through)
        if self._joined[:2] != (start, end):
            self._joined = (start, end, b"".join(self.frames[offset:]))
        return self._joined[2]

    async def _flush(self, subscriber: Subscriber, sending: Coroutine, waiting_on: Any) -> None:
        try:
            await resume(sending, waiting_on)
            while subscriber.ending is None and subscriber.cursor < self.head:
                chunk = self.due(subscriber)
                if chunk:
                    await subscriber.send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
                    subscriber.sent += len(chunk)
                    self.metrics.deliveries.inc()
        finally:
            subscriber.flushing = None

    def write_final(self, subscriber: Subscriber) -> None:
        """The room ends for a subscriber whose connection goes on (a RoomsStream's): what
        is due to it, then its final event."""
        chunk = self.due(subscriber) + subscriber.ending
        self.metrics.deliveries.inc(self._write(subscriber, chunk))

    def finish_streams(self, final_frame: bytes, room_gone: bool = False) -> None:
        for subscriber in list(self.subscribers):
            subscriber.finish(final_frame, room_gone)


MESSAGE_ID_LINE = re.compile(rb"^id: ([0-9]+)$", re.MULTILINE)  # a ring frame's id line


class RoomsStream:
    """One stream of several rooms (`GET /api/v1/events?rooms=a,b`): a subscriber in each
    room (a RoomsStreamMember, with its own cursor into that room's ring) sharing one
    connection. Rooms write to it as to any subscriber, but one write at a time: while a
    write waits, the other rooms leave their frames in their rings, and `drain` writes
    them once it is done. Its `id:` lines say each room's cursor, "a:12,b:7" (the last
    message id of each room sent, in the stream's order): a message frame's `id: 12` is
    rewritten so as it is handed to the connection (the rings' frames are shared: this
    costs a multi-room stream one regex pass per write, and single-room streams nothing).
    It ends as a whole (shutdown, a room made private, too slow in any room), except
    when a room is deleted: that room's `deleted` event, and the others go on."""

    def __init__(self, send: ASGISend, left: Callable[[Room], None]) -> None:
        self.send, self.left = send, left  # left: the broker's, when a room ends for it
        self.task = asyncio.current_task()  # the stream's handler, waiting for disconnect
        self.members: list[RoomsStreamMember] = []
        self.cursors: dict[str, int] = {}  # room id -> last message id sent, in order
        self.flushing: asyncio.Task | None = None  # a write that had to wait, any room's
        self.live = False  # the hellos and replays are sent
        self.ended = False  # the server ends the stream: the finals, then the end
        self.dropped = False  # it ends at once (a slow consumer)

    def last_event_id(self) -> bytes:
        return b",".join(b"%s:%d" % (room.encode(), n) for room, n in self.cursors.items())

    def with_ids(self, room_id: str, chunk: bytes) -> bytes:
        """A chunk of a room's frames with each message id line saying every room's cursor
        (this room's advanced to that message)."""
        if b"id: " not in chunk:
            return chunk
        rooms = list(self.cursors)
        at = rooms.index(room_id)
        parts = [b"%s:%d" % (room.encode(), self.cursors[room]) for room in rooms]
        prefix = b"id: " + b"".join(part + b"," for part in parts[:at]) + b"%s:" % room_id.encode()
        suffix = b"".join(b"," + part for part in parts[at + 1 :])
        last = b""

        def composed(match: re.Match) -> bytes:
            nonlocal last
            last = match[1]
            return prefix + last + suffix

        chunk = MESSAGE_ID_LINE.sub(composed, chunk)
        if last:
            self.cursors[room_id] = int(last)
        return chunk

    def finish(self, member: RoomsStreamMember, final_frame: bytes, room_gone: bool) -> None:
        """A room finishes its subscriber (see Subscriber.finish). Deleted: that room ends
        (with its final event, written by `drain`); otherwise the whole stream does: every
        room's due frames and final events (several rooms' at shutdown), or, for a slow
        consumer, nothing more."""
        if self.dropped:
            return
        if not final_frame:
            self.dropped = True
            if self.flushing is not None:
                self.flushing.cancel()
            self.task.cancel()
            return
        member.ending = final_frame
        if room_gone and not self.ended:
            if self.live:
                asyncio.get_running_loop().call_soon(self.drain)
            return
        for other in self.members:
            if other.ending is None:
                other.ending = b""  # the rooms write no more to it: the handler does
        if not self.ended:
            self.ended = True
            self.task.cancel()

    def go_live(self) -> None:
        self.live = True
        self.drain()

    def drain(self) -> None:
        """Each room writes what is due to the stream, while no write waits; a deleted
        room writes its final event, and the stream leaves it (with none left, it ends)."""
        for member in list(self.members):
            if self.flushing is not None or self.ended or self.dropped:
                return
            room = member.room
            if member.ending is None:
                room.catch_up(member)
                continue
            room.write_final(member)
            self.members.remove(member)
            del self.cursors[room.id]
            room.leave(member)
            self.left(room)
        if not self.members and not self.ended:
            self.ended = True
            self.task.cancel()

    def due_but(self, member: RoomsStreamMember) -> bytes:
        """What the rooms other than `member`'s have due to the stream (their cursors move on:
        their wakes pass it by)."""
        others = (other for other in self.members if other is not member)
        return b"".join(
            self.with_ids(other.room.id, other.room.due(other))
            for other in others
            if other.live and other.ending is None and other.cursor < other.room.head
        )

    def finals(self) -> bytes:
        """The end of a stream the server finishes: each room's due frames (unless the ring
        forgot some: resuming by id brings them) and final event."""
        chunks = []
        for member in self.members:
            room = member.room
            due = room.due(member) if member.live and member.cursor >= room.base else b""
            chunks.append(self.with_ids(room.id, due) + member.ending)
        return b"".join(chunks)


class RoomsStreamMember(Subscriber):
    """A RoomsStream's subscriber in one of its rooms: a cursor of its own; the connection
    and the write in progress are the stream's (a write that ends drains the others)."""

    __slots__ = ("stream", "room")

    def __init__(self, stream: RoomsStream, room: Room, role: str) -> None:
        self.stream, self.room = stream, room
        super().__init__(self._send, role, room.head)

    def _send(self, message: dict[str, Any]) -> Coroutine:
        """A write of this room's frames, with what the stream's other rooms have due (once
        live): one write where there would be one per room (W6: 5.5 → 4.7 µs a delivery)."""
        body = self.stream.with_ids(self.room.id, message["body"])
        if self.stream.live:
            body += self.stream.due_but(self)
        return self.stream.send({**message, "body": body})

    @property
    def flushing(self) -> asyncio.Task | None:
        return self.stream.flushing

    @flushing.setter
    def flushing(self, task: asyncio.Task | None) -> None:
        self.stream.flushing = task
        if task is None and self.stream.live:  # the rooms that waited write now
            asyncio.get_running_loop().call_soon(self.stream.drain)

    def finish(self, final_frame: bytes, room_gone: bool = False) -> None:
        self.stream.finish(self, final_frame, room_gone)


def quote_message(quote: Any) -> dict[str, Any]:
    """A Hitokoto quote (`{"hitokoto", "from", "from_who", ...}`) as a message's speaker
    and data. ValueError when it is not one."""
    if not isinstance(quote, dict):
        raise ValueError("a quote must be a JSON object")
    text, source, author = quote.get("hitokoto"), quote.get("from"), quote.get("from_who")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a quote needs a non-empty hitokoto string")
    if not isinstance(source, str | None) or not isinstance(author, str | None):
        raise ValueError("a quote's from and from_who must be strings or null")
    speaker = (author or source or "一言")[:MAX_SPEAKER_CHARS]
    return {"speaker": speaker, "data": {"message": text, "from": source, "from_who": author}}


@functools.cache
def bundled_quotes() -> list[dict[str, Any]]:
    """quotes.json, for when the quote API fails."""
    return [quote_message(quote) for quote in orjson.loads((ROOT / "quotes.json").read_bytes())]


MAX_QUOTE_BYTES = 65536  # a Hitokoto reply is well under 1 KB


class Feed(Room):
    """A pseudo-room (not in the hub's rooms) whose frames one task makes for all its
    streams, and only while someone listens. No presence or heartbeat: its listeners are
    strangers in different rooms."""

    def __init__(self, feed_id: str, settings: Settings, metrics: Metrics) -> None:
        super().__init__(RoomRecord(feed_id, None, "", False, None, {}, 0, 0), settings, metrics)
        self._feeding: asyncio.Task | None = None

    def join(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        if self._feeding is None:
            self._feeding = asyncio.create_task(self._feed())

    def leave(self, subscriber: Subscriber) -> None:
        self.subscribers.remove(subscriber)
        if not self.subscribers:
            self._feeding.cancel()
            self._feeding = None

    async def _feed(self) -> None:
        raise NotImplementedError


class FallbackFeed(Feed):
    """What a stream of an invalid or unknown room gets instead: quotes from the Hitokoto
    API, or from quotes.json when the API fails. One feed shared by every such stream, so
    one poller serves them all, at most one request per FALLBACK_POLL_S."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__("fallback", settings, metrics)
        self._ids = itertools.count(1)  # quote ids are not stored, and not sent as `id:`
        self._next_poll = 0.0  # loop time; kept across poller restarts
        self._failing = False

    def hello(self) -> dict[str, Any]:
        return {
            "api": {"version": API_VERSION},
            "room": self.id,
            "fallback": True,
            "keepalive_s": self.settings.keepalive_s,
        }

    async def _feed(self) -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=self.settings.fallback_timeout_s) as client:
            while True:
                await asyncio.sleep(self._next_poll - loop.time())
                self._next_poll = loop.time() + self.settings.fallback_poll_s
                self.metrics.fallback_polls.inc()
                message = await self._fetch(client)
                payload = {"id": next(self._ids), "room": self.id, **message}
                payload.update(meta="fallback", time=now_ms(), status=MESSAGE_STATUS)
                self.append(message_frame(None, compact_json(payload)))

    async def _fetch(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """A quote from the API, else a bundled one; one warning per failure streak."""
        try:
            # httpx's timeouts bound each network step; this bounds the whole request
            async with asyncio.timeout(self.settings.fallback_timeout_s):
                async with client.stream("GET", self.settings.hitokoto_url) as response:
                    response.raise_for_status()
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_QUOTE_BYTES:
                            raise ValueError(f"reply larger than {MAX_QUOTE_BYTES} bytes")
            message = quote_message(parse_json(body))
        except Exception as error:  # down, slow or garbage: the feed keeps flowing
            if not self._failing:
                self._failing = True
                log.warning(
                    "quote API failed (%s: %s); serving bundled quotes until it answers",
                    type(error).__name__,
                    error,
                )
            return random.choice(bundled_quotes())
        if self._failing:
            self._failing = False
            log.info("quote API answers again")
        return message


class ClockFeed(Feed):
    """`/api/v1/clock`, the seed tutorial's sample: the server time every CLOCK_INTERVAL_S.
    One ticker for every clock stream (a task per stream cost a core at 2000 streams)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__("clock", settings, metrics)

    def opening(self, retry_ms: int, hello: dict[str, Any]) -> bytes:
        return KEEPALIVE_FRAME  # as it always began: the EventSource opens before a tick

    def hello(self) -> dict[str, Any]:
        return {}

    async def _feed(self) -> None:
        while True:
            ms = now_ms()
            iso = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
            self.append(message_frame(ms, compact_json({"time": ms, "iso": iso})))
            await asyncio.sleep(self.settings.clock_interval_s)


IDLE_TURN_S = 50e-6  # a turn of the event loop that ran nothing else takes a few µs


class Bucket(NamedTuple):
    """A token bucket of a `holder` ("token" or "user"): `size` messages at once, refilled
    at `size` per `window_s`. Brokers keep buckets as GCRA does: as the time each is full
    again. Taking n messages moves that time n × window_s / size later; it may not end up
    more than window_s ahead (the bucket would hold less than nothing)."""

    holder: str
    id: str
    size: int
    window_s: float

    @property
    def key(self) -> str:
        return f"{self.holder}:{self.id}"


class LocalBroker:
    """One process: ids continue each room's last id, SQLite keeps the history, and a
    commit is fanned out at once."""

    name = "local"

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.full_at: dict[str, float] = {}  # token buckets: when each is full (monotonic s)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def assign(
        self, messages: list[tuple[Room, str]], expiries: list[int | None]
    ) -> list[int]:
        """The ids of (room, body) messages about to be committed, in order."""
        ids, last_ids = [], {}
        for room, _ in messages:
            last_ids[room.id] = last_ids.get(room.id, room.record.last_id) + 1
            ids.append(last_ids[room.id])
        return ids

    def committed(self, messages: list[tuple[Room, str]], ids: list[int], payloads: list[str]):
        """They are stored: fan them out."""
        for (room, _), message_id, payload in zip(messages, ids, payloads, strict=True):
            room.record.last_id = message_id
            room.append(message_frame(message_id, payload), message_id)

    async def not_stored(self, messages: list[tuple[Room, str]], ids: list[int]) -> None:
        """Their commit failed. Nothing was delivered: the next commit takes their ids."""

    async def message_changed(self, room: Room, message_id: int, payload: str, frame: bytes):
        """A kept message was edited or retracted (its new payload is stored): send the
        event `frame` to the room."""
        room.append(frame)

    async def history(
        self,
        room: Room,
        after: int,
        before: int = sys.maxsize,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[tuple[int, str | None]]:
        """The room's kept messages with after < id < before, oldest first (or newest
        first), at most `limit` (None: all): (id, payload), or (id, None) for one expired
        or older than the room's max age: not to be served (its id keeps a replay's check
        for a gap exact)."""
        window = room.served_window()
        return await self.storage.history(room.id, after, before, limit, newest_first, *window)

    async def trimmed(self, cuts: dict[str, int]) -> None:
        """Rooms' messages up to these ids ({room: id}) were trimmed from SQLite (max age)."""

    async def joined(self, room: Room) -> None:
        """A subscriber of this process joined the room: deliver the room's messages here."""

    def left(self, room: Room) -> None:
        """A subscriber of this process left the room."""

    async def presence_counts(self, room: Room) -> dict[str, int]:
        return room.presence()

    async def room_changed(self, record: RoomRecord) -> None:
        """Tell the other processes about a new or changed room (none here)."""

    async def room_deleted(self, room_id: str) -> None:
        """Tell the other processes that a room is gone."""

    async def accounts_changed(self) -> None:
        """Tell the other processes that users, sessions or API tokens changed."""

    async def readiness(self) -> dict[str, str]:
        """What the broker depends on, each "ok" or what is wrong: nothing here."""
        return {}

    async def take(self, costs: dict[Bucket, int]) -> tuple[Bucket, float] | None:
        """Take `cost` messages from each bucket, all or none: None, or a bucket that has
        not enough and the seconds until it has."""
        now = time.monotonic()
        # a wait under a microsecond is rounding (now + window - window - now), not a wait:
        # a bucket taken to exactly its size must not refuse at random
        full_at, refused, longest = {}, None, 1e-6
        for bucket, cost in costs.items():
            start = max(self.full_at.get(bucket.key, now), now)
            full_at[bucket.key] = start + cost * bucket.window_s / bucket.size
            if (wait := full_at[bucket.key] - bucket.window_s - now) > longest:
                refused, longest = bucket, wait
        if refused is not None:
            return refused, longest
        self.full_at.update(full_at)
        if len(self.full_at) > 10_000:  # forget the buckets that are full
            self.full_at = {key: full for key, full in self.full_at.items() if full > now}
        return None


@dataclass(frozen=True)
class BrokerChanges:
    """What a broker of several processes applies here when another process changed rooms
    or accounts."""

    room_changed: Callable[[RoomRecord], None]
    room_deleted: Callable[[str], None]
    accounts_changed: Callable[[], Awaitable[None]]


# Redis keys, per room (sm:room:<room>:...): `seq` the message counter, `stream` the
# recent messages (entry id "<message id>-0", field p = the body), `presence` a hash of
# each process's subscriber counts, `presence-changed` a stream that says they changed.
# `edits` a hash of the edited messages still in the stream (message id -> the payload
# now, RETRACTED when retracted). CHANGES_STREAM tells of changed rooms, accounts and
# messages; per process a stream wakes its reader.
CHANGES_STREAM = "sm:changes"
CHANGES_KEPT = 1000  # entries of CHANGES_STREAM kept (approximately)
READ_BLOCK_MS = 10_000  # a reader's XREAD returns at least this often, to pick up changes
READY_TIMEOUT_S = 2  # a readiness check of Redis: well within a health checker's timeout

# Publish a batch atomically: per message, the next id of its room and a stream entry with
# that id, so each stream is in id order whichever process publishes. KEYS: per message,
# its room's counter and stream. ARGV: per message, the body, the room's last id in SQLite
# ('' when the caller did not read it), the room's history size and the message's expiry
# (epoch ms, '' for none: then the entry has no field e).
PUBLISH_SCRIPT = """
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    -- no counter (a new room, or Redis lost its data): go on after the newest id known
    local floor = tonumber(ARGV[(i - 1) / 2 * 4 + 2])
    local top = redis.call('XREVRANGE', KEYS[i + 1], '+', '-', 'COUNT', 1)[1]
    if top then floor = math.max(floor or 0, tonumber(string.match(top[1], '^%d+'))) end
    if not floor then return redis.error_reply('NOSEQ') end
    redis.call('SET', KEYS[i], floor)
  end
end
local ids = {}
for i = 1, #KEYS, 2 do
  local arg = (i - 1) / 2 * 4
  local id = redis.call('INCR', KEYS[i])
  if ARGV[arg + 4] == '' then
    redis.call('XADD', KEYS[i + 1], 'MAXLEN', '~', ARGV[arg + 3], id .. '-0', 'p', ARGV[arg + 1])
  else
    redis.call(
      'XADD', KEYS[i + 1], 'MAXLEN', '~', ARGV[arg + 3], id .. '-0',
      'p', ARGV[arg + 1], 'e', ARGV[arg + 4]
    )
  end
  ids[#ids + 1] = id
end
return ids
"""


# Edit or retract a message: if its room's stream holds it, its payload from now on goes in
# the room's `edits` hash (which forgets messages the stream no longer has); and every
# process is told, with the event frame for the room's subscribers. KEYS: the room's stream,
# its edits, CHANGES_STREAM. ARGV: the message id, its payload, the announcing process, the
# room, the frame, CHANGES_KEPT.
CHANGE_MESSAGE_SCRIPT = """
local entry = ARGV[1] .. '-0'
if redis.call('XRANGE', KEYS[1], entry, entry)[1] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
  oldest = tonumber(string.match(oldest, '^%d+'))
  for _, edited in ipairs(redis.call('HKEYS', KEYS[2])) do
    if tonumber(edited) < oldest then redis.call('HDEL', KEYS[2], edited) end
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*',
  'by', ARGV[3], 'edited', ARGV[4], 'message', ARGV[1], 'frame', ARGV[5])
"""


# Take from token buckets, all or none (see Bucket): KEYS are the buckets, ARGV each one's
# cost then window, in ms. Redis's clock, so every process counts on one. Returns the
# position of a bucket that has not enough (0: taken) and the ms until it has.
TAKE_SCRIPT = """
local time = redis.call('TIME')
local now = time[1] * 1000 + time[2] / 1000
local full_at, refused, longest = {}, 0, 0.001  -- under a microsecond (ms here): rounding
for i, key in ipairs(KEYS) do
  local cost, window = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  full_at[i] = math.max(tonumber(redis.call('GET', key)) or 0, now) + cost
  local wait = full_at[i] - window - now
  if wait > longest then refused, longest = i, wait end
end
if refused > 0 then return {refused, math.ceil(longest)} end
for i, key in ipairs(KEYS) do
  local ttl = math.max(1, math.ceil(full_at[i] - now))  -- a cost under a double's precision adds 0
  redis.call('SET', key, string.format('%.3f', full_at[i]), 'PX', ttl)
end
return {0, 0}
"""


def room_key(room_id: str, part: str) -> str:
    return f"sm:room:{room_id}:{part}"


def entry_number(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def entry_row(
    entry_id: str, fields: dict[str, str], edits: dict[str, str], now: int, born_after: int
):
    """A stream entry as a row of `history`: (id, payload), its payload as edited since
    (`edits`: the room's), or (id, None) when it was retracted, expired at `now` or was
    published before `born_after` (see Room.served_window)."""
    number = entry_number(entry_id)
    edited = edits.get(str(number))
    expired = "e" in fields and int(fields["e"]) <= now
    if edited == RETRACTED or expired:
        return number, None
    if born_after and orjson.loads(fields["p"])["time"] < born_after:
        return number, None
    return number, edited or payload_with_id(number, fields["p"])


class RedisBroker:
    """Several processes, one Redis: Redis gives ids (a counter per room) and keeps each
    room's recent messages in a stream in id order. Each process has one reader task that
    follows the streams of the rooms it has subscribers in and appends their messages to
    its local rings, so local fan-out and the slow-consumer rule stay as they are. Every
    message is also committed to SQLite (the durable store, with rooms, users and tokens)
    before its publish is acknowledged. Presence: each process keeps its subscriber counts
    per room in Redis and tells the others when they change; a room's heartbeat and
    presence events count the subscribers of every process."""

    name = "redis"

    def __init__(
        self,
        url: str,
        storage: Storage,
        settings: Settings,
        rooms: dict[str, Room],
        changes: BrokerChanges,
    ) -> None:
        self.url, self.storage, self.settings = url, storage, settings
        self.rooms = rooms  # the hub's live rooms, which the reader delivers to
        self.changes = changes
        self.process_id = uuid.uuid4().hex
        self.wake_key = f"sm:wake:{self.process_id}"
        self.followed: dict[str, int] = {}  # room -> id of the last message read for it
        # room -> changes (message id, event frame) of messages not read yet (see _apply)
        self.deferred: dict[str, list[tuple[int, str]]] = {}
        self.notices: dict[str, str] = {}  # room -> position in its presence-changed stream
        self.changes_seen = "0-0"  # position in CHANGES_STREAM
        self.woken = "0-0"  # position in our wake stream
        self.shared: set[str] = set()  # rooms whose counts of ours are in Redis
        self.changed: set[str] = set()  # rooms whose counts of ours changed since
        self._counts_changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._running = False  # redis-py may swallow a cancellation: the loops check this too

    async def start(self) -> None:
        self.redis = redis.asyncio.Redis.from_url(self.url, decode_responses=True)
        # The reader's own connection: its XREAD blocks up to READ_BLOCK_MS.
        self.reader = redis.asyncio.Redis.from_url(
            self.url,
            decode_responses=True,
            single_connection_client=True,
            socket_timeout=READ_BLOCK_MS / 1000 + 10,
        )
        self.publish_script = self.redis.register_script(PUBLISH_SCRIPT)
        self.change_message_script = self.redis.register_script(CHANGE_MESSAGE_SCRIPT)
        self.take_script = self.redis.register_script(TAKE_SCRIPT)
        newest = await self.redis.xrevrange(CHANGES_STREAM, count=1)
        self.changes_seen = newest[0][0] if newest else "0-0"
        self._counts_changed = asyncio.Event()
        self._running = True
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._share())]

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError):  # our counts go at once, not after PRESENCE_TTL_S
            async with self.redis.pipeline(transaction=False) as pipe:
                for room_id in self.shared:
                    pipe.hdel(room_key(room_id, "presence"), self.process_id)
                    self._announce_counts(pipe, room_id)
                pipe.delete(self.wake_key)
                await pipe.execute()
        await self.reader.aclose()
        await self.redis.aclose()

    async def assign(
        self, messages: list[tuple[Room, str]], expiries: list[int | None]
    ) -> list[int]:
        """Give (room, body) messages their ids and append them (with their expiries, epoch
        ms or None) to their rooms' streams, in one step: from here on every process
        delivers them (they are in Redis before SQLite has them: if the commit that follows
        fails, the publisher is told 500 although they were delivered; see not_stored)."""
        try:
            try:
                return await self._append(messages, expiries, {})
            except ResponseError as error:
                if "NOSEQ" not in str(error):
                    raise
                stored = await self.storage.last_ids({room.id for room, _ in messages})
                floors = {  # and this process's, which may be past SQLite's (see not_stored)
                    room.id: max(stored[room.id], room.record.last_id)
                    for room, _ in messages
                    if room.id in stored
                }
                return await self._append(messages, expiries, floors)
        except RedisError as error:
            log.warning("broker publish failed: %s", error)
            raise broker_unavailable() from error

    def committed(self, messages: list[tuple[Room, str]], ids: list[int], payloads: list[str]):
        """They are stored; the readers deliver them."""
        for (room, _), message_id in zip(messages, ids, strict=True):
            room.record.last_id = max(room.record.last_id, message_id)

    async def not_stored(self, messages: list[tuple[Room, str]], ids: list[int]) -> None:
        """Their commit failed after `assign` delivered them: their ids must never be given
        again (subscribers that saw one would skip the next message with it). Redis may
        lose its counters (a restart without persistence), and a lost counter goes on from
        the room's last id in SQLite (PUBLISH_SCRIPT): so that last id is raised past them,
        in SQLite and in this process (which also counts, should SQLite fail this too)."""
        last_ids = {}
        for (room, _), message_id in zip(messages, ids, strict=True):
            room.record.last_id = max(room.record.last_id, message_id)
            last_ids[room.id] = room.record.last_id
        try:
            await self.storage.raise_last_ids(last_ids)
        except Exception:
            log.exception("could not record the ids of messages delivered but not stored")

    async def message_changed(self, room: Room, message_id: int, payload: str, frame: bytes):
        """A kept message was edited or retracted (its new payload is in SQLite): the
        room's stream history shows the new payload, and every process's reader sends the
        event `frame` to its subscribers of the room (this one's too: in order after the
        message, see _apply)."""
        keys = [room_key(room.id, part) for part in ("stream", "edits")] + [CHANGES_STREAM]
        args = [message_id, payload, self.process_id, room.id, frame, CHANGES_KEPT]
        try:
            await self.change_message_script(keys=keys, args=args)
        except RedisError as error:
            log.warning("broker could not change message %d of %s: %s", message_id, room.id, error)
            raise broker_unavailable() from error

    async def _append(
        self, messages: list[tuple[Room, str]], expiries: list[int | None], floors: dict[str, int]
    ) -> list:
        keys, args = [], []
        for (room, body), expires_at in zip(messages, expiries, strict=True):
            keys += [room_key(room.id, "seq"), room_key(room.id, "stream")]
            args += [body, floors.get(room.id, ""), room.history_size, expires_at or ""]
        return await self.publish_script(keys=keys, args=args)

    async def history(
        self,
        room: Room,
        after: int,
        before: int = sys.maxsize,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[tuple[int, str | None]]:
        """The room's kept messages with after < id < before, oldest first (or newest
        first), at most `limit` (None: all), as LocalBroker.history: the stream's (as edited
        since), and SQLite's older than the stream's oldest (when Redis has lost or trimmed
        them)."""
        key, low, high = room_key(room.id, "stream"), f"({after}-0", f"({before}-0"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if newest_first:
                    pipe.xrevrange(key, high, low, count=limit)
                else:
                    pipe.xrange(key, low, high, count=limit)
                pipe.hgetall(room_key(room.id, "edits"))
                entries, edits = await pipe.execute()
        except RedisError as error:
            raise broker_unavailable() from error
        window = room.served_window()
        rows = [entry_row(entry_id, fields, edits, *window) for entry_id, fields in entries]
        if newest_first:
            if limit is None or len(rows) < limit:  # the stream ran out: older ones after it
                below = rows[-1][0] if rows else before
                rest = None if limit is None else limit - len(rows)
                rows += await self.storage.history(room.id, after, below, rest, True, *window)
        elif not rows or rows[0][0] > after + 1:
            below = rows[0][0] if rows else before
            older = await self.storage.history(room.id, after, below, limit, False, *window)
            rows = (older + rows)[:limit]
        return rows

    async def trimmed(self, cuts: dict[str, int]) -> None:
        """Rooms' messages up to these ids ({room: id}) were trimmed from SQLite (max age):
        from their streams too."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room_id, last_trimmed in cuts.items():
                    key, minid = room_key(room_id, "stream"), f"{last_trimmed + 1}-0"
                    pipe.xtrim(key, minid=minid, approximate=False)
                await pipe.execute()
        except RedisError as error:  # they are not served anyway, and MAXLEN trims them later
            log.warning("broker could not trim aged messages: %s", error)

    async def joined(self, room: Room) -> None:
        """If this process does not follow the room yet: follow its stream from the newest
        entry (a replay read after this covers everything before the reader's first entry)
        and learn its subscribers elsewhere."""
        self._count_changed(room)
        if room.id in self.followed:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xrevrange(room_key(room.id, "stream"), count=1)
                pipe.xrevrange(room_key(room.id, "presence-changed"), count=1)
                pipe.hgetall(room_key(room.id, "presence"))
                newest, notice, counts = await pipe.execute()
            newest_id = entry_number(newest[0][0]) if newest else 0
            self.followed.setdefault(room.id, newest_id)
            self.notices.setdefault(room.id, notice[0][0] if notice else "0-0")
            room.record.last_id = max(room.record.last_id, newest_id)
            room.set_remote(self._others(counts))
            # The reader adds the room when this wakes it.
            await self.redis.xadd(self.wake_key, {"w": 1}, maxlen=1, approximate=False)
        except RedisError as error:
            raise broker_unavailable() from error

    def left(self, room: Room) -> None:
        self._count_changed(room)  # the reader stops following a room nobody here watches

    async def room_changed(self, record: RoomRecord) -> None:
        await self._announce(room=compact_json(record.as_dict()))

    async def room_deleted(self, room_id: str) -> None:
        parts = ("seq", "stream", "edits", "presence", "presence-changed")
        # A room made again with this id goes on from the last id SQLite kept of this one.
        with contextlib.suppress(RedisError):
            await self.redis.delete(*(room_key(room_id, part) for part in parts))
        await self._announce(deleted=room_id)

    async def accounts_changed(self) -> None:
        await self._announce(accounts="")

    async def _announce(self, **change: str) -> None:
        if not self._running:  # the create-user command: nobody to tell
            return
        try:
            change = {"by": self.process_id, **change}
            await self.redis.xadd(CHANGES_STREAM, change, maxlen=CHANGES_KEPT)
        except RedisError as error:  # it is stored: the others see it when they restart
            log.warning("broker could not announce a change (%s): %s", ", ".join(change), error)

    async def _apply(self, changes: list) -> None:
        """Another process changed rooms or accounts: take the change here too. A changed
        message (from any process) goes to the room's subscribers here, after the message
        itself: a change of one this reader has not read yet waits for it (_deliver)."""
        reload_accounts = False
        for entry_id, fields in changes:
            self.changes_seen = entry_id
            if "edited" in fields:
                self._message_changed(fields["edited"], int(fields["message"]), fields["frame"])
            elif fields["by"] == self.process_id:
                continue
            elif "room" in fields:
                self.changes.room_changed(RoomRecord(**orjson.loads(fields["room"])))
            elif "deleted" in fields:
                self.changes.room_deleted(fields["deleted"])
            else:
                reload_accounts = True
        if reload_accounts:
            await self.changes.accounts_changed()

    def _message_changed(self, room_id: str, message_id: int, frame: str) -> None:
        last, room = self.followed.get(room_id), self.rooms.get(room_id)
        if last is None or room is None:  # nobody here: a replay reads the change
            return
        if message_id > last:
            self.deferred.setdefault(room_id, []).append((message_id, frame))
        else:
            room.append(frame.encode())

    async def readiness(self) -> dict[str, str]:
        """Redis answers a PING within READY_TIMEOUT_S (redis-py would retry a refused
        connection for seconds)."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.redis.ping()
        except TimeoutError:
            return {"redis": f"no answer within {READY_TIMEOUT_S} s"}
        except (RedisError, OSError) as error:
            return {"redis": f"unreachable ({error})"}
        return {"redis": "ok"}

    async def take(self, costs: dict[Bucket, int]) -> tuple[Bucket, float] | None:
        """LocalBroker.take, with the buckets in Redis: one round trip."""
        buckets = list(costs)
        args = []
        for bucket in buckets:
            args += [costs[bucket] * bucket.window_s * 1000 / bucket.size, bucket.window_s * 1000]
        try:
            refused, wait_ms = await self.take_script(
                keys=[f"sm:rate:{bucket.key}" for bucket in buckets], args=args
            )
        except RedisError as error:
            log.warning("broker rate limit failed: %s", error)
            raise broker_unavailable() from error
        return (buckets[refused - 1], wait_ms / 1000) if refused else None

    async def presence_counts(self, room: Room) -> dict[str, int]:
        try:
            others = self._others(await self.redis.hgetall(room_key(room.id, "presence")))
        except RedisError as error:
            raise broker_unavailable() from error
        local = room.local_presence()
        return {role: local[role] + others[role] for role in local}

    def _others(self, counts: dict[str, str]) -> dict[str, int]:
        """The sum of the other processes' live counts in a room's presence hash, whose
        values are "players,controllers,expires" (epoch seconds)."""
        others = {"players": 0, "controllers": 0}
        now = time.time()
        for process_id, value in counts.items():
            players, controllers, expires = value.split(",")
            if process_id != self.process_id and float(expires) > now:
                others["players"] += int(players)
                others["controllers"] += int(controllers)
        return others

    async def _recount(self, room_ids: Iterable[str]) -> None:
        """Read the other processes' counts of followed rooms again."""
        room_ids = [room_id for room_id in room_ids if room_id in self.followed]
        async with self.redis.pipeline(transaction=False) as pipe:
            for room_id in room_ids:
                pipe.hgetall(room_key(room_id, "presence"))
            for room_id, counts in zip(room_ids, await pipe.execute(), strict=True):
                if (room := self.rooms.get(room_id)) is not None:
                    room.set_remote(self._others(counts))

    async def _read(self) -> None:
        """Wait for new entries in the followed rooms' message and presence-changed
        streams, the room changes and our wake stream; append each message to its room's
        ring, in order."""
        while self._running:
            for room_id in list(self.followed):  # stop following rooms nobody here watches
                room = self.rooms.get(room_id)
                if room is None or not room.subscribers:
                    del self.followed[room_id], self.notices[room_id]
                    self.deferred.pop(room_id, None)
                if room is not None and not room.subscribers:
                    room.set_remote({"players": 0, "controllers": 0})
            streams = {CHANGES_STREAM: self.changes_seen, self.wake_key: self.woken}
            for room_id, last in self.followed.items():
                streams[room_key(room_id, "stream")] = f"{last}-0"
                streams[room_key(room_id, "presence-changed")] = self.notices[room_id]
            try:
                reply = await self.reader.xread(
                    streams, count=self.settings.subscriber_queue, block=READ_BLOCK_MS
                )
                recount = set()
                # the changes last: a message's change comes after the message (see _apply)
                for stream, entries in sorted(reply, key=lambda item: item[0] == CHANGES_STREAM):
                    if stream == self.wake_key:
                        self.woken = entries[-1][0]
                    elif stream == CHANGES_STREAM:
                        await self._apply(entries)
                    elif stream.endswith(":stream"):
                        self._deliver(stream.split(":")[2], entries)
                    else:  # a room's presence-changed stream
                        room_id = stream.split(":")[2]
                        self.notices[room_id] = entries[-1][0]
                        if any(fields["by"] != self.process_id for _, fields in entries):
                            recount.add(room_id)
                if recount:
                    await self._recount(recount)
            except RedisError as error:
                log.warning("broker read failed, retrying: %s", error)
                await asyncio.sleep(1)
            except Exception:  # a bug: keep delivering the other rooms
                log.exception("broker reader failed")
                await asyncio.sleep(1)

    def _deliver(self, room_id: str, entries: list) -> None:
        last, room = self.followed.get(room_id), self.rooms.get(room_id)
        if last is None or room is None:  # no longer followed, or deleted
            return
        for entry_id, fields in entries:
            message_id = entry_number(entry_id)
            if last and message_id > last + 1:  # trimmed before we read them
                log.warning("room %s: missed messages %d-%d", room_id, last + 1, message_id - 1)
                room.finish_streams(b"")  # its subscribers resume by Last-Event-ID
            frame = message_frame(message_id, payload_with_id(message_id, fields["p"]))
            room.append(frame, message_id)
            last = message_id
        self.followed[room_id] = last
        room.record.last_id = max(room.record.last_id, last)
        for message_id, change in self.deferred.pop(room_id, ()):
            self._message_changed(room_id, message_id, change)

    def _count_changed(self, room: Room) -> None:
        self.changed.add(room.id)
        self._counts_changed.set()

    def _announce_counts(self, pipe: redis.asyncio.client.Pipeline, room_id: str) -> None:
        key = room_key(room_id, "presence-changed")
        pipe.xadd(key, {"by": self.process_id}, maxlen=1, approximate=False)

    async def _share(self) -> None:
        """Keep our subscriber counts per room in Redis and tell the processes following
        the room when they change. Every third of PRESENCE_TTL_S, renew them and read the
        others' again: a count not renewed within PRESENCE_TTL_S (its process died) is not
        counted."""
        refresh_s = self.settings.presence_ttl_s / 3
        next_refresh = time.monotonic()
        while self._running:
            with contextlib.suppress(TimeoutError):  # (wait_for would swallow a cancellation)
                async with asyncio.timeout(next_refresh - time.monotonic()):
                    await self._counts_changed.wait()
            self._counts_changed.clear()
            changed, self.changed = self.changed, set()
            refresh = time.monotonic() >= next_refresh
            if refresh:
                next_refresh = time.monotonic() + refresh_s
            rooms = changed | self.shared if refresh else changed
            nobody = {"players": 0, "controllers": 0}
            counts = {
                room_id: room.local_presence() if (room := self.rooms.get(room_id)) else nobody
                for room_id in rooms
            }
            present = {room_id for room_id, c in counts.items() if c["players"] or c["controllers"]}
            expires = time.time() + self.settings.presence_ttl_s
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for room_id, c in counts.items():
                        key = room_key(room_id, "presence")
                        if room_id in present:
                            value = f"{c['players']},{c['controllers']},{expires}"
                            pipe.hset(key, self.process_id, value)
                            pipe.pexpire(key, int(self.settings.presence_ttl_s * 1000))
                        else:
                            pipe.hdel(key, self.process_id)
                        if room_id in changed:
                            self._announce_counts(pipe, room_id)
                    await pipe.execute()
                if refresh:
                    await self._recount(list(self.followed))
            except RedisError as error:
                log.warning("broker presence update failed: %s", error)
                self.changed |= changed
                continue
            self.shared = (self.shared - rooms) | present


@dataclass(frozen=True)
class IdempotencyKey:
    """A publish's Idempotency-Key: a retry with it gets the first publish's messages."""

    scope: str  # who publishes (user ids, or "root"): one's keys are not another's
    key: str
    fingerprint: str  # of the messages: the same key with others is refused


def idempotency_key_reused() -> ApiError:
    return ApiError(422, "Idempotency-Key already used with other messages")


def same_outcome(follower: asyncio.Future, leader: asyncio.Future) -> None:
    """A done callback of `leader`: `follower` gets its result, or its error."""
    if leader.exception() is not None:
        follower.set_exception(leader.exception())
    else:
        follower.set_result(leader.result())


SCHEDULE_POLL_S = 1  # how often a process looks for messages scheduled by the others
MAX_AGE_TRIM_S = 60  # how often rooms are trimmed to their max age (at most)
DUE_PAGE = 1000  # scheduled messages delivered in one go


def message_payload(room: Room, message: dict[str, Any], time_ms: int) -> dict[str, Any]:
    """A message as stored and sent, but its id: `time` is when it is committed, an
    `expires_in` (seconds) becomes `expires_at` (epoch ms), and `status` is what the Bun
    project's pages show."""
    payload = {"room": room.id, **message, "time": time_ms}
    if (expires_in := payload.pop("expires_in", None)) is not None:
        payload["expires_at"] = time_ms + round(expires_in * 1000)
    payload["status"] = MESSAGE_STATUS
    return payload


@dataclass
class PendingPublish:
    messages: list[tuple[Room, dict[str, Any]]]  # (room, {speaker, data, meta[, expires_in]})
    key: IdempotencyKey | None = None
    scheduled_id: str | None = None  # a scheduled message's delivery: claims it, or is void
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Hub:
    """The live rooms and their streams, the group-commit writer, the keepalive ticker and
    the broker. `accounts_changed` is called when another process changed the accounts."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        storage: Storage,
        accounts_changed: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings, self.metrics, self.storage = settings, metrics, storage
        self.rooms: dict[str, Room] = {}
        self.broker: LocalBroker | RedisBroker = LocalBroker(storage)
        if settings.broker_url:
            changes = BrokerChanges(self.apply_room, self.forget_room, accounts_changed)
            self.broker = RedisBroker(settings.broker_url, storage, settings, self.rooms, changes)
        self.fallback = FallbackFeed(settings, metrics)
        self.clock = ClockFeed(settings, metrics)
        self.pending: list[PendingPublish] = []
        self._pending_ready = asyncio.Event()
        self._writing: asyncio.Task
        self._keeping_alive: asyncio.Task
        self._scheduling: asyncio.Task
        self._schedules_changed = asyncio.Event()
        self.closing = False

    async def start(self) -> None:
        """Open the storage, then serve: rooms, writer, keepalives."""
        self._pending_ready = asyncio.Event()
        await self.storage.open()
        await self.broker.start()  # from here on, rooms changed by other processes are applied
        await self._load_rooms()
        if self.settings.default_room not in self.rooms:
            try:
                await self.create_room(self.settings.default_room, None)
            except sqlite3.IntegrityError:  # another process, starting with this one, made it
                await self._load_rooms()
        self._writing = asyncio.create_task(self._writer())
        self._keeping_alive = asyncio.create_task(self._keepalive())
        self._schedules_changed = asyncio.Event()
        self._scheduling = asyncio.create_task(self._deliver_scheduled())

    async def _load_rooms(self) -> None:
        for record in await self.storage.load_rooms():
            self.apply_room(record)

    async def create_room(
        self, room_id: str, owner: str | None, max_owned: int = 0, **fields: Any
    ) -> RoomRecord:
        """Create a room; 403 when its owner has `max_owned` rooms already (0: no limit)."""
        record = RoomRecord(
            id=room_id,
            owner=owner,
            title=fields.get("title", ""),
            private=fields.get("private", False),
            history_size=fields.get("history_size"),
            settings=fields.get("settings", {}),
            last_id=0,
            created_at=now_ms(),
            max_age_s=fields.get("max_age_s"),
        )
        last_id = await self.storage.insert_room(record, max_owned)
        if last_id is None:
            raise ApiError(
                403,
                f"Room limit reached: a user may own {max_owned} rooms; delete one first",
                limit=max_owned,
            )
        record.last_id = last_id
        self.rooms[room_id] = Room(record, self.settings, self.metrics)
        await self.broker.room_changed(record)
        return record

    async def update_room(self, room: Room, changes: dict[str, Any]) -> None:
        """Apply validated changes (title, private, history_size, max_age_s, settings)."""
        record = replace(room.record, **changes)
        await self.storage.update_room(record)
        self.apply_room(record)
        await self.broker.room_changed(record)

    def apply_room(self, record: RoomRecord) -> None:
        """Add a room, or take a changed record of one (made here or by another process). A
        room turning private ends its streams: subscribers with a right to it reconnect and
        resume. Changed player settings reach its streams at once (`event: settings`)."""
        room = self.rooms.get(record.id)
        if room is None:
            self.rooms[record.id] = Room(record, self.settings, self.metrics)
            return
        turns_private = record.private and not room.record.private
        if record.settings != room.record.settings:
            room.append(event_frame("settings", {"room": room.id, "settings": record.settings}))
        for name, value in asdict(record).items():  # in place: the writer advances last_id
            if name != "last_id":
                setattr(room.record, name, value)
        if turns_private:
            room.finish_streams(event_frame("private", {"room": room.id}))

    def find_room(self, room_id: str | None) -> Room:
        """A live room by id (any case; None: the default room), or 400 (not a room id) or
        404 (no such room)."""
        canonical = normalize_room(room_id) if room_id is not None else self.settings.default_room
        if canonical is None:
            raise ApiError(400, "Invalid room id: use 1-64 letters or digits", room=room_id)
        room = self.rooms.get(canonical)
        if room is None:
            raise ApiError(404, f"Unknown room: {canonical}", room=canonical)
        return room

    def disown_rooms(self, user_id: str) -> None:
        """A deleted user's rooms stay, without an owner (admins manage them)."""
        for room in self.rooms.values():
            if room.record.owner == user_id:
                room.record.owner = None

    async def delete_room(self, room: Room) -> None:
        """Remove the room and its history, then end its streams with a final event."""
        del self.rooms[room.id]  # publishes still queued for it are refused by _commit
        try:
            await self.storage.delete_room(room.id)
        except BaseException:
            self.rooms[room.id] = room
            raise
        room.finish_streams(event_frame("deleted", {"room": room.id}), room_gone=True)
        await self.broker.room_deleted(room.id)

    def forget_room(self, room_id: str) -> None:
        """Another process deleted the room: end its streams here too."""
        if (room := self.rooms.pop(room_id, None)) is not None:
            room.finish_streams(event_frame("deleted", {"room": room_id}), room_gone=True)

    async def publish(
        self, messages: list[tuple[Room, dict[str, Any]]], key: IdempotencyKey | None = None
    ) -> list[dict[str, Any]]:
        """Commit messages (all or none) and fan them out; returns their payloads. With a
        key, a publish that retries one committed within IDEMPOTENCY_WINDOW_S stores
        nothing and returns that one's payloads."""
        if self.closing:
            raise shutting_down()
        started = time.perf_counter()
        item = PendingPublish(messages, key)
        self.pending.append(item)
        self._pending_ready.set()
        payloads = await asyncio.shield(item.done)  # a client hanging up can't undo a commit
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        return payloads

    async def schedule(self, room: Room, message: dict[str, Any], due_at: int) -> ScheduledMessage:
        """Store a message to deliver at `due_at` (epoch ms); 403 when its room has
        MAX_SCHEDULED_PER_ROOM already."""
        if self.closing:
            raise shutting_down()
        scheduled = ScheduledMessage(secrets.token_hex(8), room.id, message, due_at, now_ms())
        limit = self.settings.max_scheduled_per_room
        try:
            stored = await self.storage.insert_scheduled(scheduled, limit)
        except sqlite3.IntegrityError:  # deleted meanwhile
            raise ApiError(404, "Room deleted") from None
        if not stored:
            raise ApiError(
                403,
                f"Schedule limit reached: a room may have {limit} scheduled messages;"
                " cancel one first",
                limit=limit,
            )
        self._schedules_changed.set()
        return scheduled

    async def _deliver_scheduled(self) -> None:
        """Deliver scheduled messages when due, and trim rooms to their max age. Wakes when
        the soonest is due, when one is scheduled here, and every SCHEDULE_POLL_S (for those
        scheduled by other processes)."""
        trimmed_at = -math.inf
        while True:
            self._schedules_changed.clear()
            wait_s = SCHEDULE_POLL_S
            try:
                max_ages = [room.record.max_age_s for room in self.rooms.values()]
                # every MAX_AGE_TRIM_S, or sooner for a shorter max age
                trim_every_s = max(SCHEDULE_POLL_S, min([MAX_AGE_TRIM_S, *filter(None, max_ages)]))
                if time.monotonic() >= trimmed_at + trim_every_s:
                    trimmed_at = time.monotonic()
                    await self._trim_aged()
                await self._deliver_due()
                next_due, now = await self.storage.next_due(), now_ms()
                if next_due is not None and next_due > now:  # (one still due: retry later)
                    wait_s = min(wait_s, (next_due - now) / 1000)
            except Exception:
                log.exception("delivering scheduled messages failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._schedules_changed.wait()

    async def _deliver_due(self) -> None:
        """Publish the scheduled messages due now, each claiming its schedule (see _claim):
        a message gets the id and time of its delivery, and of several processes one
        delivers it. One whose room is not known here yet waits for the next round."""
        due = await self.storage.due_scheduled(now_ms(), DUE_PAGE)
        deliveries = [
            PendingPublish([(room, scheduled.message)], scheduled_id=scheduled.id)
            for scheduled in due
            if (room := self.rooms.get(scheduled.room)) is not None
        ]
        if not deliveries:
            return
        self.pending += deliveries
        self._pending_ready.set()
        outcomes = await asyncio.gather(*(item.done for item in deliveries), return_exceptions=True)
        for item, outcome in zip(deliveries, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("scheduled message %s not delivered: %s", item.scheduled_id, outcome)

    async def _trim_aged(self) -> None:
        """Delete the messages older than their room's max age (no longer served already)."""
        born_after = {
            room.id: room.served_window()[1]
            for room in self.rooms.values()
            if room.record.max_age_s
        }
        if born_after and (cuts := await self.storage.trim_aged(born_after)):
            await self.broker.trimmed(cuts)

    async def _writer(self) -> None:
        """Commits what is pending, batch after batch; once closing, what is left, then ends."""
        while self.pending or not self.closing:
            await self._pending_ready.wait()
            await self._while_busy()
            self._pending_ready.clear()
            batch, self.pending = self.pending, []
            if batch:
                await self._commit(batch)

    async def _while_busy(self) -> None:
        """Let publishes on their way join the commit: yield to the event loop until a turn
        of it comes back at once (it had nothing else to do) or COALESCE_MS has passed. At
        low load that is one turn; under load a commit takes several publishes and they
        share its cost."""
        started = time.perf_counter()
        while True:
            turn = time.perf_counter()
            await asyncio.sleep(0)
            now = time.perf_counter()
            if now - turn < IDLE_TURN_S or now - started >= self.settings.coalesce_ms / 1000:
                return

    async def _commit(self, batch: list[PendingPublish]) -> None:
        time_ms = now_ms()
        bodies: list[tuple[Room, str]] = []
        ids: list[int] = []
        try:
            async with self.storage.lock:
                # Checked under the lock: a room deleted meanwhile (gone from self.rooms,
                # its rows deleted in an earlier transaction) takes nothing.
                for item in batch:
                    if any(self.rooms.get(room.id) is not room for room, _ in item.messages):
                        item.done.set_exception(ApiError(404, "Room deleted"))
                batch = [item for item in batch if not item.done.done()]
                # Publishes with an idempotency key: their keys are read and written in the
                # transaction that stores the messages, so that of two retries (in any
                # process) one stores and the other gets its messages. So are deliveries of
                # scheduled messages claimed: of several processes delivering one, one
                # stores it. Without either: one statement, as fast as it was.
                keyed = any(item.key is not None for item in batch)
                claiming = any(item.scheduled_id is not None for item in batch)
                try:
                    async with (
                        self.storage.locked_transaction()
                        if keyed or claiming
                        else contextlib.nullcontext()
                    ):
                        if claiming:
                            batch = await self._claim(batch)
                        if keyed:
                            batch = await self._answer_retries(batch, time_ms)
                        messages = [message for item in batch for message in item.messages]
                        unnumbered = [  # the payloads but their ids, which the broker gives
                            message_payload(room, message, time_ms) for room, message in messages
                        ]
                        bodies = [
                            (room, compact_json(payload))
                            for (room, _), payload in zip(messages, unnumbered, strict=True)
                        ]
                        expiries = [payload.get("expires_at") for payload in unnumbered]
                        ids = await self.broker.assign(bodies, expiries) if bodies else []
                        rows = [
                            (room.id, message_id, payload_with_id(message_id, body), expires_at)
                            for (room, body), message_id, expires_at in zip(
                                bodies, ids, expiries, strict=True
                            )
                        ]
                        results = iter(
                            {"id": message_id, **payload}
                            for payload, message_id in zip(unnumbered, ids, strict=True)
                        )
                        per_item = [[next(results) for _ in item.messages] for item in batch]
                        if rows:
                            await self.storage.write_messages(rows)
                        if keyed:
                            await self._store_keys(batch, per_item, time_ms)
                except Exception:
                    if ids:  # delivered (with Redis) but not stored
                        await self.broker.not_stored(bodies, ids)
                    raise
        except Exception as error:
            if not isinstance(error, ApiError):
                log.exception("commit failed")
                error = ApiError(500, "Could not store the message")
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(error)
            return
        if ids:
            self.broker.committed(bodies, ids, [row[2] for row in rows])
            self.metrics.commits.inc()
            self.metrics.published.inc(len(ids))
        for item, payloads in zip(batch, per_item, strict=True):
            item.done.set_result(payloads)

    async def _claim(self, batch: list[PendingPublish]) -> list[PendingPublish]:
        """Within the commit's transaction: claim the scheduled messages this batch delivers.
        One delivered or cancelled meanwhile (by any process) is void: it stores nothing
        and its publish gets no payloads. Returns the publishes to store."""
        scheduled_ids = [item.scheduled_id for item in batch if item.scheduled_id is not None]
        claimed = await self.storage.claim_scheduled(scheduled_ids)
        for item in batch:
            if item.scheduled_id is not None and item.scheduled_id not in claimed:
                item.done.set_result([])
        return [item for item in batch if not item.done.done()]

    async def _answer_retries(
        self, batch: list[PendingPublish], time_ms: int
    ) -> list[PendingPublish]:
        """Within the commit's transaction: a publish whose key was stored within
        IDEMPOTENCY_WINDOW_S, or is taken by a publish before it in this batch, gets that
        publish's payloads (422 if its messages differ). Returns the publishes to store."""
        keys = [(item.key.scope, item.key.key) for item in batch if item.key is not None]
        since = time_ms - int(self.settings.idempotency_window_s * 1000)
        stored = await self.storage.idempotent_publishes(keys, since)
        firsts: dict[tuple[str, str], PendingPublish] = {}
        to_store = []
        for item in batch:
            key = item.key
            if key is None:
                to_store.append(item)
                continue
            named = (key.scope, key.key)
            if named in stored:
                fingerprint, payloads = stored[named]
                if fingerprint != key.fingerprint:
                    item.done.set_exception(idempotency_key_reused())
                else:
                    item.done.set_result(orjson.loads(payloads))
            elif named in firsts:
                if firsts[named].key.fingerprint != key.fingerprint:
                    item.done.set_exception(idempotency_key_reused())
                else:
                    firsts[named].done.add_done_callback(functools.partial(same_outcome, item.done))
            else:
                firsts[named] = item
                to_store.append(item)
        return to_store

    async def _store_keys(
        self, batch: list[PendingPublish], per_item: list[list[dict[str, Any]]], time_ms: int
    ) -> None:
        rows = [
            (item.key.scope, item.key.key, item.key.fingerprint, compact_json(payloads), time_ms)
            for item, payloads in zip(batch, per_item, strict=True)
            if item.key is not None
        ]
        expired = time_ms - int(self.settings.idempotency_window_s * 1000)
        await self.storage.write_idempotency_keys(rows, expired)

    async def edit_message(
        self,
        room: Room,
        message_id: int,
        changes: dict[str, Any],
        check: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """Replace fields (speaker, data, meta) of a kept message and send the room
        `event: edit` with its new payload (which also has `edited`, epoch ms); returns it.
        `check` validates the message as edited, as a publish is (raises ApiError). 404 when
        the room does not keep the message (or it was retracted)."""
        async with self.storage.lock, self.storage.locked_transaction():
            payload = orjson.loads(await self._kept_message(room, message_id))
            edited = {name: payload[name] for name in ("speaker", "data", "meta")} | changes
            payload |= check(edited) | {"edited": now_ms()}
            encoded = compact_json(payload)
            await self.storage.replace_message(room.id, message_id, encoded)
        await self.broker.message_changed(room, message_id, encoded, event_frame("edit", payload))
        return payload

    async def retract_message(self, room: Room, message_id: int) -> None:
        """Retract a kept message: history and replays leave it out from now on, and the
        room gets `event: retract` with its id. 404 as for edit_message."""
        async with self.storage.lock, self.storage.locked_transaction():
            await self._kept_message(room, message_id)
            await self.storage.replace_message(room.id, message_id, RETRACTED)
        frame = event_frame("retract", {"id": message_id, "room": room.id})
        await self.broker.message_changed(room, message_id, RETRACTED, frame)

    async def _kept_message(self, room: Room, message_id: int) -> str:
        payload = await self.storage.kept_message(room.id, message_id)
        if payload is None:
            raise ApiError(404, f"Unknown message: {message_id}", room=room.id, id=message_id)
        return payload

    async def serve_stream(
        self,
        start: ASGISend,
        write: ASGISend,
        receive: Callable[[], Awaitable[dict]],
        room: Room,
        role: str,
        last_id: int | None = None,
        client: str = "-",
        **hello_extra: Any,
    ) -> None:
        """A stream of a room (or of the fallback feed), from its response's `start` until the
        client leaves or the server finishes the stream; frames go out through `write`. The
        hello is made after joining, so its presence counts this subscriber."""
        await start({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        shared = not isinstance(room, Feed)  # a feed is each process's own
        subscriber = Subscriber(write, role, room.head)
        room.join(subscriber)
        log.info("stream open room=%s role=%s client=%s", room.id, role, client)
        opened = time.monotonic()
        try:
            if shared:
                await self.broker.joined(room)
            await self._send_hello_and_replay(subscriber, room, last_id, hello_extra)
            room.catch_up(subscriber)
            while (await receive())["type"] != "http.disconnect":
                pass
        except ApiError as error:  # the broker failed: end the stream, the client reconnects
            log.warning("stream of room %s ended: %s", room.id, error.msg)
        except asyncio.CancelledError:
            if subscriber.ending is None:
                raise
            asyncio.current_task().uncancel()
            if subscriber.ending:  # the frames still due to it, then the final event
                # within SHUTDOWN_TIMEOUT: a client that does not read must not hold a
                # shutdown (its connection is then aborted: see abort_connections_left_open)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.shutdown_timeout_s):
                        await self._send_final(subscriber, room, write)
        finally:
            room.leave(subscriber)
            if shared:
                self.broker.left(room)
            if subscriber.flushing is not None:
                subscriber.flushing.cancel()
            log.info(
                "stream close room=%s role=%s client=%s s=%.1f bytes=%d",
                room.id,
                role,
                client,
                time.monotonic() - opened,
                subscriber.sent,
            )

    async def serve_rooms(
        self,
        start: ASGISend,
        write: ASGISend,
        receive: Callable[[], Awaitable[dict]],
        rooms: list[Room],
        role: str,
        cursors: dict[str, int],
        client: str = "-",
    ) -> None:
        """A stream of several rooms (see RoomsStream): per room, in order, its hello and its
        replay after its cursor (the one in `cursors`, else its last id now: so the hellos'
        ids resume exactly even before a message came), then each room's live frames."""
        await start({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        stream = RoomsStream(write, self.broker.left)
        members = [RoomsStreamMember(stream, room, role) for room in rooms]
        stream.members = list(members)  # (the rooms it still streams)
        for member in members:
            member.room.join(member)
        names = [room.id for room in rooms]
        log.info("stream open rooms=%s role=%s client=%s", ",".join(names), role, client)
        opened = time.monotonic()
        try:
            for room in rooms:
                await self.broker.joined(room)
                stream.cursors[room.id] = cursors.get(room.id, room.record.last_id)
            for member in list(stream.members):
                room = member.room
                # the ring's frames up to the cursor are the client's already
                member.replayed_through = cursor = stream.cursors[room.id]
                hello_id = stream.last_event_id()
                await self._send_hello_and_replay(member, room, cursor, {"rooms": names}, hello_id)
            stream.go_live()
            while (await receive())["type"] != "http.disconnect":
                pass
        except ApiError as error:  # the broker failed: end the stream, the client reconnects
            log.warning("stream of rooms %s ended: %s", ",".join(names), error.msg)
        except asyncio.CancelledError:
            if not (stream.ended or stream.dropped):
                raise
            asyncio.current_task().uncancel()
            if stream.dropped:
                return
            with contextlib.suppress(TimeoutError):  # as serve_stream's final write
                async with asyncio.timeout(self.settings.shutdown_timeout_s):
                    while stream.flushing is not None:
                        await stream.flushing
                    await write({"type": "http.response.body", "body": stream.finals()})
        finally:
            for member in stream.members:
                member.room.leave(member)
                self.broker.left(member.room)
            if stream.flushing is not None:
                stream.flushing.cancel()
            log.info(
                "stream close rooms=%s role=%s client=%s s=%.1f bytes=%d",
                ",".join(names),
                role,
                client,
                time.monotonic() - opened,
                sum(member.sent for member in members),
            )

    @staticmethod
    async def _send_final(subscriber: Subscriber, room: Room, write: ASGISend) -> None:
        if subscriber.flushing is not None:  # a write in progress; then the flush stops
            await subscriber.flushing
        # (unless the ring forgot some meanwhile: then resuming by id brings them all)
        has_all = subscriber.live and subscriber.cursor >= room.base
        due = room.due(subscriber) if has_all else b""
        await write({"type": "http.response.body", "body": due + subscriber.ending})

    async def _send_hello_and_replay(
        self,
        subscriber: Subscriber,
        room: Room,
        last_id: int | None,
        hello_extra: dict[str, Any],
        hello_id: bytes = b"",
    ) -> None:
        """A stream's first writes: `retry:`, the hello and the messages after last_id. The
        replay is read REPLAY_PAGE_ROWS messages at a time and written REPLAY_PAGE_BYTES at
        a time, each write within REPLAY_WRITE_TIMEOUT_S: a client that does not read it
        holds one page, and is dropped as a slow consumer (as it is when the ring moves a
        whole SUBSCRIBER_QUEUE on meanwhile). Messages the ring also brings during the replay
        are skipped there (`replayed_through`). (A function of its own so the replay is not
        kept alive for the life of the stream.) `hello_id`: the hello's `id:` (a RoomsStream's
        cursors)."""
        hello = {**room.hello(), **hello_extra}
        rows: list[tuple[int, str | None]] = []
        if last_id is not None:
            rows = await self.broker.history(room, last_id, limit=REPLAY_PAGE_ROWS)
            # The first id after last_id is missing (trimmed, or everything up to last_id is),
            # or the client is ahead of the room: it has ids the room has not (from another
            # server, or whose commit failed when even its id could not be recorded).
            hello["gap"] = (rows[0][0] if rows else room.record.last_id + 1) != last_id + 1
        opening = room.opening(self.settings.retry_ms, hello)
        chunk = [b"id: %s\n%s" % (hello_id, opening) if hello_id else opening]
        size = len(chunk[0])
        while True:
            for message_id, payload in rows:
                subscriber.replayed_through = message_id
                if payload is None:  # retracted, expired, or older than the room's max age
                    continue
                frame = message_frame(message_id, payload)
                if size and size + len(frame) > self.settings.replay_page_bytes:
                    await self._replay_write(subscriber, room, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(frame)
                size += len(frame)
            if len(rows) < REPLAY_PAGE_ROWS:
                break
            rows = await self.broker.history(
                room, subscriber.replayed_through, limit=REPLAY_PAGE_ROWS
            )
            if rows and rows[0][0] != subscriber.replayed_through + 1:
                # Trimmed from the history while this replay read it: the client resumes
                # from the last id it has, and is told of the gap.
                room.drop_slow_consumer(subscriber)
                break
        await self._replay_write(subscriber, room, b"".join(chunk))

    async def _replay_write(self, subscriber: Subscriber, room: Room, chunk: bytes) -> None:
        loop = asyncio.get_running_loop()
        timeout_s = self.settings.replay_write_timeout_s
        deadline = loop.call_later(timeout_s, room.drop_slow_consumer, subscriber)
        try:
            await subscriber.send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            deadline.cancel()
        subscriber.sent += len(chunk)

    async def readiness(self) -> dict[str, str]:
        """What serving depends on, each "ok" or what is wrong: SQLite takes a write, and
        the broker's own (Redis answers, with BROKER_URL)."""
        try:
            await self.storage.check_writable()
            checks = {"sqlite": "ok"}
        except sqlite3.Error as error:
            checks = {"sqlite": f"not writable ({error})"}
        return checks | await self.broker.readiness()

    async def presence_counts(self, room: Room) -> dict[str, int]:
        """The room's subscribers by role, summed over every process serving it."""
        return await self.broker.presence_counts(room)

    def streams(self) -> list[Room]:
        """Everything streams are served from: the rooms and the feeds."""
        return [*self.rooms.values(), self.fallback, self.clock]

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive_s)
            for room in self.streams():
                if room.subscribers:
                    room.append(KEEPALIVE_FRAME)

    async def close(self) -> None:
        """Graceful shutdown: new publishes get 503; the writer commits what is pending (a
        commit in progress is let finish: cancelled, its publishers would never get an
        answer); then every stream ends with a final event. The storage stays open (the app
        closes it last)."""
        if self.closing:
            return
        self.closing = True
        self._scheduling.cancel()  # its deliveries still pending are committed
        await asyncio.gather(self._scheduling, return_exceptions=True)
        self._pending_ready.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._writing, self.settings.shutdown_timeout_s)
        farewell = {"reconnect": True, "retry": self.settings.retry_ms}
        for room in self.streams():
            room.finish_streams(event_frame("shutdown", {"room": room.id, **farewell}))
        self._keeping_alive.cancel()
        await asyncio.gather(self._keeping_alive, return_exceptions=True)
        await self.broker.stop()


# ---------------------------------------------------------------------------------------
# Auth: who a request acts as and what it may do. Credentials: the static root token
# (SSE_TOKEN), API tokens ("smt_…") and users' access JWTs (HS256, valid while their
# login session lives). SQLite holds the accounts; what a check reads (users, live
# sessions, API tokens by hash) is mirrored in memory, so a publish costs no database
# round trip. Changes write SQLite first, then the mirror.
# ---------------------------------------------------------------------------------------

API_TOKEN_PREFIX = "smt_"
JWT_ISSUER = "streaming-message"
JWT_AUDIENCE = "streaming-message/api"
REFRESH_COOKIE = "sm_refresh"  # path /api/v1/auth: only refresh and logout see it
SESSION_COOKIE = "sm_session"  # path /api/v1/events: the access JWT, for EventSource
USERNAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_TOKEN_CHARS = 512  # ours are under 400 (a JWT); longer ones are refused before any work


def bearer_token(headers: dict[bytes, bytes]) -> str | None:
    """The token of an `Authorization: Bearer ...` header; the scheme is case-insensitive."""
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def session_cookie(headers: dict[bytes, bytes]) -> str | None:
    """The access JWT of the same-origin session cookie (sent by EventSource). Parsed as
    Quart parses `request.cookies` (werkzeug, sans-IO: werkzeug.http's wrapper raises on
    bytes that are not UTF-8), which skips the cookies it cannot read, where SimpleCookie
    gave up on the whole header for one other cookie with a space or JSON in its value."""
    return parse_cookie(headers.get(b"cookie", b"").decode("latin-1")).get(SESSION_COOKIE)


def sha256_hex(secret: str) -> str:
    """How tokens are stored and looked up: they are random and long, so a fast hash is
    enough (passwords get argon2id)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_username(value: Any) -> str:
    if not isinstance(value, str) or not USERNAME.fullmatch(value):
        raise ApiError(400, "username must be 1-32 letters, digits, '.', '_' or '-'")
    return value


def check_password(value: Any, name: str = "password") -> str:
    if not isinstance(value, str) or not MIN_PASSWORD_CHARS <= len(value) <= MAX_PASSWORD_CHARS:
        limits = f"{MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS}"
        raise ApiError(400, f"{name} must be a string of {limits} characters")
    return value


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: "root" (SSE_TOKEN), "session" (a user's access JWT) or
    "token" (an API token, held to its rooms and rights)."""

    kind: str
    name: str
    role: str
    user_id: str | None = None
    session_id: str | None = None
    token: ApiToken | None = None

    def may(self, room: Room | None, right: str) -> bool:
        """Rights: "publish" and "subscribe" on a room (anyone may subscribe to a public
        one); "manage" a room (settings, delete); "account" (a logged-in user's own tokens
        and password); "admin" (users, every room). With room None (no particular room)
        any credential will do, but "manage" (creating rooms) is not for API tokens."""
        if right == "admin":
            return self.role == "admin" and self.kind != "token"
        if right == "account":
            return self.kind == "session"
        if room is None:
            return right != "manage" or self.token is None
        if right == "subscribe" and not room.record.private:
            return True
        owner = room.record.owner
        uses_room = self.role == "admin" or (owner is not None and owner == self.user_id)
        if self.token is None:
            return uses_room
        in_scope = self.token.rooms is None or room.id in self.token.rooms
        return uses_room and in_scope and right in self.token.rights

    def as_dict(self) -> dict[str, Any]:
        token = self.token.as_dict() if self.token is not None else None
        return {
            "kind": self.kind,
            "name": self.name,
            "role": self.role,
            "user_id": self.user_id,
            "token": token,
        }


ROOT_PRINCIPAL = Principal("root", "root", "admin")
REFRESH_FAILURES = {
    "unknown": "Invalid or expired refresh token",
    "ended": "Session ended: log in again",
    "reused": "Refresh token reused: the session is revoked, log in again",
}


def load_secret_key(settings: Settings) -> str:
    """SECRET_KEY, else the key generated on the first start and kept in DATA_DIR (0600)."""
    key = settings.secret_key
    if not key:
        path = settings.data_dir / "secret_key"
        if not path.exists():  # written whole, then linked: processes starting together
            draft = path.with_name(f"secret_key.{os.getpid()}")  # all read the winner's
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(64))
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
            draft.unlink()
        key = path.read_text().strip()
    if len(key) < 32:
        raise ConfigError(f"{path} must hold a key of at least 32 characters")
    return key


def client_key(address: str) -> str:
    """What a client's limits are counted under: its address; for IPv6, its /64 (a host
    gets a whole /64 from its provider and may send from any address in it)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is IPv4 a.b.c.d
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Limit(NamedTuple):
    """What a RateLimiter allows a key: at most `events` in the window (0: any number), and,
    with `delay_s`, after n events in the window the next only `delay_s * 2**(n-1)` (at most
    `max_delay_s`) after the last."""

    events: int
    delay_s: float = 0
    max_delay_s: float = 0

    def wait(self, window: deque[float], window_s: float, now: float) -> float:
        """Seconds until the key's next event is allowed (0 or less: now)."""
        wait = window[0] + window_s - now if 0 < self.events <= len(window) else 0.0
        if self.delay_s and window:
            delay = min(self.delay_s * 2 ** min(len(window) - 1, 32), self.max_delay_s)
            wait = max(wait, window[-1] + delay - now)
        return wait


class RateLimiter:
    """Events per key (a client address, a username at an address) in a sliding window,
    each key held to its Limit: an event it does not allow yet is refused with 429 and
    Retry-After."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.events: dict[str, deque[float]] = {}

    def take(self, limits: dict[str, Limit], msg: str) -> float:
        """Count an event for every key, or, when a key's limit does not allow it yet, none:
        raise 429 with `msg` ({retry} is the seconds to wait). Returns the event's stamp."""
        now = time.monotonic()
        wait = 0.0
        for key, limit in limits.items():
            window = self.events.setdefault(key, deque())
            while window and window[0] <= now - self.window_s:
                window.popleft()
            wait = max(wait, limit.wait(window, self.window_s, now))
        if wait > 0:
            raise rate_limited(msg, wait)
        for key in limits:
            self.events[key].append(now)
        if len(self.events) > 10_000:  # forget keys without recent events
            recent = now - self.window_s
            self.events = {k: w for k, w in self.events.items() if w and w[-1] > recent}
        return now

    def give_back(self, key: str, stamp: float) -> None:
        """Uncount an event."""
        window = self.events.get(key)
        if window is not None and stamp in window:
            window.remove(stamp)

    def forget(self, key: str) -> None:
        """Uncount every event of a key."""
        self.events.pop(key, None)


def publish_buckets(settings: Settings, principal: Principal) -> list[Bucket]:
    """The token buckets each message `principal` publishes takes from: its credential's
    (PUBLISH_RATE_LIMIT: an API token, a login session, the root token) and its user's
    (PUBLISH_RATE_LIMIT_PER_USER: all of theirs together); none when they are 0."""
    buckets, window_s = [], settings.publish_rate_window_s
    if size := settings.publish_rate_limit:
        if principal.token is not None:
            credential = f"api:{principal.token.id}"
        elif principal.session_id is not None:
            credential = f"session:{principal.session_id}"
        else:
            credential = principal.kind
        buckets.append(Bucket("token", credential, size, window_s))
    if (size := settings.publish_rate_limit_per_user) and principal.user_id is not None:
        buckets.append(Bucket("user", principal.user_id, size, window_s))
    return buckets


class Accounts:
    """Users, login sessions and API tokens: checks from the mirror in memory, changes
    through Storage. `announce` tells the other processes (with BROKER_URL) that the
    accounts changed."""

    def __init__(
        self, settings: Settings, storage: Storage, announce: Callable[[], Awaitable[None]]
    ) -> None:
        self.settings, self.storage, self.announce = settings, storage, announce
        self.secret_key = ""
        self.hasher = PasswordHasher()  # argon2id
        self.dummy_hash = ""  # verified for unknown usernames: they cost what known ones do
        self.hashing = asyncio.Semaphore(os.cpu_count() or 1)  # each hash takes 64 MiB
        self.users: dict[str, User] = {}
        self.sessions: dict[str, tuple[str, int]] = {}  # live: id -> (user id, expiry ms)
        self.api_tokens: dict[str, ApiToken] = {}  # by SHA-256 of the secret
        # a login attempt counts when it starts (parallel guesses count too); one that
        # succeeds is given back, and clears its username's failures at that address
        self.logins = RateLimiter(settings.login_window_s)
        self.started = False

    async def start(self) -> None:
        """Load the accounts (the storage is open) and make the first admin."""
        self.secret_key = load_secret_key(self.settings)
        self.dummy_hash = await self.hash_password(secrets.token_urlsafe(16))
        await self.load()
        self.started = True
        await self.create_first_admin()

    async def load(self) -> None:
        """Users, live sessions and API tokens from SQLite."""
        self.users = await self.storage.load_users()
        self.sessions = await self.storage.live_sessions(now_ms())
        self.api_tokens = await self.storage.load_api_tokens()

    async def reload(self) -> None:
        """Another process changed the accounts: load them again (before start(), which
        loads them, there is nothing to do)."""
        if self.started:
            await self.load()

    async def create_first_admin(self) -> None:
        """ADMIN_USERNAME/ADMIN_PASSWORD create an admin if that user does not exist yet."""
        name, password = self.settings.admin_username, self.settings.admin_password
        if name and not any(user.username.lower() == name.lower() for user in self.users.values()):
            if not password:
                raise ConfigError(f"set ADMIN_PASSWORD to create {name}: no default password")
            await self.create_user(name, password, "admin")
            log.info("created admin user %s", name)
        if not any(user.role == "admin" for user in self.users.values()):
            log.warning(
                "no admin user: set ADMIN_USERNAME and ADMIN_PASSWORD, "
                "or run `make user NAME=... ADMIN=1`"
            )

    # Credentials

    def authenticate(self, token: str | None) -> Principal:
        """The principal a credential stands for. Raises 401 when it is missing or not valid."""
        if not token:
            raise ApiError(
                401, "Missing token: send Authorization: Bearer <token> or a token field"
            )
        if len(token) > MAX_TOKEN_CHARS:
            raise ApiError(401, f"Invalid token: longer than {MAX_TOKEN_CHARS} characters")
        root = self.settings.sse_token
        if root and hmac.compare_digest(token.encode(), root.encode()):
            return ROOT_PRINCIPAL
        if token.startswith(API_TOKEN_PREFIX):
            return self.api_token_principal(token)
        return self.session_principal(token)

    def authorize(self, token: str | None, room: Room | None, right: str) -> Principal:
        """The principal a token stands for, if it has `right` on `room` (see Principal.may;
        room None: no particular room). Raises 401 (no or bad credentials) or 403 (valid
        credentials without that right)."""
        principal = self.authenticate(token)
        if principal.may(room, right):
            return principal
        if right == "admin":
            raise ApiError(403, "Admin rights required")
        if right == "account":
            raise ApiError(403, "Log in as a user: API tokens and the root token cannot do this")
        if room is None:
            raise ApiError(403, "API tokens cannot create rooms")
        raise ApiError(403, f"No {right} right on room {room.id}", room=room.id)

    # Passwords: argon2 runs in a thread (it would stall every stream), a few at a time.

    async def hash_password(self, password: str) -> str:
        async with self.hashing:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify_password(self, password_hash: str, password: str) -> bool:
        async with self.hashing:
            try:
                return await asyncio.to_thread(self.hasher.verify, password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    async def verify_login(self, username: str, password: str, address: str) -> User | None:
        """The enabled user with this username and password, else None. Failed attempts are
        counted per username at a client address (see client_key), so guesses from one
        address never lock the user out at another: each failure doubles the wait before
        the next attempt there (LOGIN_DELAY_S up to LOGIN_DELAY_MAX_S), LOGIN_MAX_FAILURES
        ends them for the window; and per address (LOGIN_MAX_FAILURES_PER_ADDRESS, any
        username). Refused: 429. An unknown username costs the same argon2 verification as
        a wrong password."""
        settings = self.settings
        client = client_key(address)
        at_address = f"user:{username.lower()} address:{client}"
        from_address = f"address:{client}"
        limits = {
            at_address: Limit(
                settings.login_max_failures, settings.login_delay_s, settings.login_delay_max_s
            ),
            from_address: Limit(settings.login_max_failures_per_address),
        }
        stamp = self.logins.take(limits, "Too many failed logins: try again in {retry} s")
        found = await self.storage.user_login(username)
        user, password_hash = found if found else (None, self.dummy_hash)
        valid = await self.verify_password(password_hash, password)
        if user is None or not valid or user.disabled:
            log.warning(
                "failed login for %s from %s", user.username if user else "an unknown user", address
            )
            return None
        self.logins.forget(at_address)
        self.logins.give_back(from_address, stamp)
        self.users[user.id] = user  # a user made by the CLI while the server runs
        return user

    # Users

    async def create_user(self, username: str, password: str, role: Role) -> User:
        user = User(secrets.token_hex(8), check_username(username), role, False, now_ms())
        password_hash = await self.hash_password(check_password(password))
        try:
            await self.storage.insert_user(user, password_hash)
        except sqlite3.IntegrityError:
            raise ApiError(409, f"Username already taken: {username}") from None
        self.users[user.id] = user
        await self.announce()
        return user

    async def find_user(self, user_id: str) -> User:
        user = await self.storage.find_user(user_id)
        if user is None:
            raise ApiError(404, f"Unknown user: {user_id}")
        return user

    async def update_user(self, user_id: str, changes: dict[str, Any]) -> User:
        """Apply validated changes (disabled, role, password). A new password or disabling
        ends every session of the user."""
        user = await self.find_user(user_id)
        password = changes.get("password")
        password_hash = await self.hash_password(password) if password is not None else None
        updated = replace(user, **{k: v for k, v in changes.items() if k != "password"})
        end_sessions = password_hash is not None or updated.disabled
        await self.storage.update_user(updated, password_hash, end_sessions)
        if end_sessions:
            self.sessions = {id_: s for id_, s in self.sessions.items() if s[0] != user_id}
        self.users[user_id] = updated
        await self.announce()
        return updated

    async def delete_user(self, user_id: str) -> None:
        """Delete a user with their sessions and API tokens."""
        await self.find_user(user_id)
        await self.storage.delete_user(user_id)
        self.users.pop(user_id, None)
        self.sessions = {id_: s for id_, s in self.sessions.items() if s[0] != user_id}
        self.api_tokens = {h: t for h, t in self.api_tokens.items() if t.user_id != user_id}
        await self.announce()

    # Sessions: an access JWT (short) and a refresh token (long, rotated on every use).

    def access_token(self, user: User, session_id: str) -> str:
        now = int(time.time())
        claims = {
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "sub": user.id,
            "role": user.role,
            "sid": session_id,
            "iat": now,
            "exp": now + int(self.settings.access_token_ttl_s),
            "jti": secrets.token_hex(16),
        }
        return jwt.encode(claims, self.secret_key, algorithm="HS256")

    async def start_session(self, user: User) -> tuple[str, str]:
        """A new login session: (access token, refresh token)."""
        session_id, refresh = secrets.token_hex(16), secrets.token_urlsafe(32)
        now = now_ms()
        expiry = now + int(self.settings.refresh_token_ttl_s * 1000)
        await self.storage.insert_session(session_id, user.id, sha256_hex(refresh), expiry, now)
        self.sessions = {id_: s for id_, s in self.sessions.items() if s[1] > now}
        self.sessions[session_id] = (user.id, expiry)
        await self.announce()
        return self.access_token(user, session_id), refresh

    async def refresh_session(self, refresh_token: str) -> tuple[User, str, str]:
        """New tokens for a refresh token, which is used up. Presenting a used one again
        means someone else has it too: the whole session is revoked."""
        now = now_ms()
        refresh = secrets.token_urlsafe(32)
        expiry = now + int(self.settings.refresh_token_ttl_s * 1000)
        outcome, row = await self.storage.rotate_refresh_token(
            sha256_hex(refresh_token), sha256_hex(refresh), expiry, now
        )
        if outcome == "reused":
            log.warning("refresh token reused: revoked a session of %s", row["user_id"])
            self.sessions.pop(row["session_id"], None)
            await self.announce()
        if outcome != "rotated":
            raise ApiError(401, REFRESH_FAILURES[outcome])
        session_id, user = row["session_id"], self.users[row["user_id"]]
        self.sessions[session_id] = (user.id, expiry)
        await self.announce()
        return user, self.access_token(user, session_id), refresh

    async def end_session(
        self, *, session_id: str | None = None, refresh_token: str | None = None
    ) -> None:
        """Logout: revoke a session, given by its id or one of its refresh tokens."""
        refresh_hash = sha256_hex(refresh_token) if refresh_token is not None else None
        ended = await self.storage.end_session(session_id=session_id, refresh_hash=refresh_hash)
        if ended is not None:
            self.sessions.pop(ended, None)
        await self.announce()

    def session_principal(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self.secret_key,
                algorithms=["HS256"],
                audience=JWT_AUDIENCE,
                issuer=JWT_ISSUER,
                options={"require": ["iss", "aud", "sub", "sid", "iat", "exp", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "Token expired") from None
        except jwt.InvalidTokenError:
            raise ApiError(401, "Invalid token") from None
        user = self.users.get(claims["sub"])
        session = self.sessions.get(claims["sid"])
        if user is None or session is None or session[0] != user.id:
            raise ApiError(401, "Session ended: log in again")
        if user.disabled:
            raise ApiError(401, "Account disabled")
        return Principal("session", user.username, user.role, user.id, session_id=claims["sid"])

    # API tokens

    def api_token_principal(self, token: str) -> Principal:
        record = self.api_tokens.get(sha256_hex(token))
        if record is None:
            raise ApiError(401, "Invalid token")
        if record.expires_at is not None and record.expires_at <= now_ms():
            raise ApiError(401, "Token expired")
        user = self.users[record.user_id]
        if user.disabled:
            raise ApiError(401, "Account disabled")
        return Principal("token", user.username, user.role, user.id, token=record)

    async def create_api_token(
        self,
        user_id: str,
        name: str,
        rooms: frozenset[str] | None,
        rights: frozenset[TokenRight],
        expires_at: int | None,
    ) -> tuple[str, ApiToken]:
        """A new token: (the secret, shown this once; the record)."""
        secret = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = ApiToken(secrets.token_hex(8), user_id, name, rooms, rights, expires_at, now_ms())
        await self.storage.insert_api_token(sha256_hex(secret), token)
        self.api_tokens[sha256_hex(secret)] = token
        await self.announce()
        return secret, token

    def user_api_tokens(self, user_id: str) -> list[ApiToken]:
        tokens = [token for token in self.api_tokens.values() if token.user_id == user_id]
        return sorted(tokens, key=lambda token: token.created_at)

    async def revoke_api_token(self, principal: Principal, token_id: str) -> None:
        """Delete an API token of the principal's user (an admin: anyone's)."""
        found = [
            digest
            for digest, token in self.api_tokens.items()
            if token.id == token_id
            and (principal.role == "admin" or token.user_id == principal.user_id)
        ]
        if not found:
            raise ApiError(404, f"Unknown API token: {token_id}")
        await self.storage.delete_api_token(token_id)
        del self.api_tokens[found[0]]
        await self.announce()


# ---------------------------------------------------------------------------------------
# HTTP: the hot path and the Quart routes. The event stream and publish are served as
# plain ASGI in front of Quart (StreamingMessage.__call__, from the HOT_ROUTES table): each
# costs one Hypercorn request and none of Quart's. Everything else is a Quart route. Both
# reach the app's settings, hub, accounts and relay through the app: the hot path is given
# it, a Quart route has it as `current_app`.
# ---------------------------------------------------------------------------------------

JSON_HEADERS = [(b"content-type", b"application/json")]


def cors_headers(
    origins: tuple[str, ...], headers: dict[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    """CORS_ORIGINS: a listed origin is echoed and may send credentials (cookies); with
    "*", any other origin may read replies, but never with credentials."""
    origin = headers.get(b"origin")
    if origin is None:
        return []
    if origin.decode("latin-1") in origins:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Origin"),
        ]
    if "*" in origins:
        return [(b"access-control-allow-origin", b"*")]
    return []


def preflight_headers(
    origins: tuple[str, ...], headers: dict[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    """What a preflight's answer adds to cors_headers (which the hot path adds to every reply)."""
    if not cors_headers(origins, headers):
        return []
    return [
        (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        (
            b"access-control-allow-headers",
            headers.get(b"access-control-request-headers", b"authorization, content-type"),
        ),
        (b"access-control-max-age", b"86400"),
    ]


# Security headers, on every response (added in StreamingMessage). HTML pages get a strict CSP:
# nothing inline, nothing from elsewhere; only pages that say so (the player, for OBS and
# stream sites: FRAME_ANCESTORS) may be framed by other sites.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000")  # https only: see TRUST_PROXY
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)
EMBEDDABLE = "embeddable"  # a scope key: set by a page that other sites may frame


def page_policy(scope: dict[str, Any], frame_ancestors: str) -> tuple[bytes, bytes]:
    ancestors = frame_ancestors if scope.get(EMBEDDABLE) else "'self'"
    policy = f"{CONTENT_SECURITY_POLICY}; frame-ancestors {ancestors}"
    return b"content-security-policy", policy.encode()


async def send_json(
    send: ASGISend, status: int, body: dict[str, Any], extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    data = orjson.dumps(body)
    headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(data)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def read_body(receive: Callable[[], Awaitable[dict]], settings: Settings) -> bytes:
    """The request body, within MAX_BODY_BYTES (413) and BODY_TIMEOUT_S (408)."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ApiError(400, "Client disconnected")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > settings.max_body_bytes:
                    raise body_too_large(settings.max_body_bytes)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise body_too_slow(settings.body_timeout_s) from None


def request_json(body: bytes) -> Any:
    try:
        return parse_json(body)
    except ValueError as error:  # UnicodeDecodeError is one too
        raise invalid_json(error) from None


def query_params(scope: dict[str, Any]) -> dict[str, str]:
    if not scope["query_string"]:
        return {}
    parsed = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


Speaker = Annotated[
    matching(r"\s*\S[\s\S]*", "a non-blank string"),
    Field(min_length=1, max_length=MAX_SPEAKER_CHARS),
]


class PublishMessage(BaseModel):
    """A message to publish. Fields it does not know are ignored, as the seed did."""

    model_config = ConfigDict(strict=True)
    speaker: Speaker
    data: dict[str, Any] = Field(description="what players show: `data.message`, a string")
    meta: Any = Field(default=None, description="any JSON, passed on as it is")
    room: str | None = Field(default=None, description="a room id; default: DEFAULT_ROOM")
    token: str | None = Field(default=None, description="if not sent as Bearer")
    idempotency_key: str | None = Field(
        default=None,
        description="if not sent as the Idempotency-Key header (a batch: the header only)",
    )
    at: int | None = Field(
        default=None,
        ge=0,
        description="deliver it at this time (epoch ms, as `time`), in the future and within"
        " MAX_SCHEDULE_AHEAD_S: the reply is its schedule; not in a batch",
    )
    delay: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="deliver it in this many seconds (instead of `at`)",
    )
    expires_in: float | None = Field(
        default=None,
        gt=0,
        le=MAX_EXPIRES_IN_S,
        allow_inf_nan=False,
        description="seconds after its delivery from which it is no longer replayed (nor"
        " in the history API); its payload then has `expires_at`",
    )


class PublishBody(RootModel[PublishMessage | Annotated[list[PublishMessage], Field(min_length=1)]]):
    """One message, or a batch: all stored and delivered in order, or none."""


class MessagePayload(BaseModel):
    """A message as stored and streamed (the `data:` of its SSE event)."""

    id: int
    room: str
    speaker: str
    data: dict[str, Any]
    time: int = Field(description="epoch ms at publish (a scheduled message: at delivery)")
    meta: Any = None
    expires_at: int | None = Field(
        default=None,
        exclude_if=lambda value: value is None,  # as streamed: only a message that expires
        description="epoch ms: not replayed from then on (only if it expires)",
    )

    status: Literal["✔ success"] = Field(
        default=MESSAGE_STATUS, description="always this: the Bun project's pages show it"
    )
    edited: int | None = Field(
        default=None,
        description="epoch ms of its last edit (absent if never edited)",
        exclude_if=lambda value: value is None,
    )


class ScheduledOut(BaseModel):
    """A scheduled message, until it is delivered."""

    id: str = Field(description="the schedule's id: cancel it by it")
    room: str
    due_at: int = Field(description="epoch ms")
    speaker: str
    data: dict[str, Any]
    meta: Any = None
    expires_in: float | None = None
    created_at: int


class ScheduledReply(Reply):
    target: dict[Literal["room"], str]
    scheduled: ScheduledOut


class SentReply(Reply):
    target: dict[Literal["room"], str]
    event: MessagePayload
    id: int


class BatchSentReply(Reply):
    target: dict[Literal["rooms"], list[str]]
    events: list[MessagePayload]
    ids: list[int]


class PublishReply(RootModel[SentReply | BatchSentReply | ScheduledReply]):
    pass


class SendReply(RootModel[SentReply | ScheduledReply]):
    """The GET form's reply: one message, sent or scheduled."""


class SendQuery(BaseModel):
    msg: str = Field(description="the message: data.message")
    room: str | None = Field(default=None, description="default: DEFAULT_ROOM")
    token: str | None = None
    at: int | None = Field(default=None, description="as in the POST body")
    delay: float | None = Field(default=None, description="as in the POST body")
    expires_in: float | None = Field(default=None, description="as in the POST body")


class PublishHeaders(BaseModel):
    idempotency_key: str | None = Field(
        default=None,
        description="Idempotency-Key: a retry with it within IDEMPOTENCY_WINDOW_S answers the"
        " first reply and stores nothing; with other messages, 422",
    )


class ResumeQuery(BaseModel):
    lastEventId: str | None = Field(  # the query parameter's name
        default=None, description="resume after this id (or the Last-Event-ID header)"
    )


class EventsQuery(ResumeQuery):
    role: Literal["player", "controller", "preview"] = Field(
        default="player",
        description="a controller needs the publish and subscribe rights (token or cookie);"
        " a preview is a player that presence does not count (the admin page's)",
    )
    token: str | None = Field(default=None, description="for a controller or a private room")
    rooms: str | None = Field(
        default=None,
        description="several rooms in one stream (GET /api/v1/events only): comma-separated"
        " room ids, at most MAX_STREAM_ROOMS, each authorized as its own stream would be."
        " Each event says its room; `id:` lines say every room's cursor (`a:12,b:7`), which"
        " Last-Event-ID gives back to resume each room exactly",
    )


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest: 0 for a scalar, 1 for {} or [1, 2], and so on.
    Level by level rather than recursive: a body may nest 1024 levels (orjson's limit),
    deeper than Python recurses."""
    depth, level = 0, [value]
    while containers := [node for node in level if isinstance(node, dict | list)]:
        depth += 1
        level = [*itertools.chain(*(c.values() if isinstance(c, dict) else c for c in containers))]
    return depth


def validate_message(
    item: Any, settings: Settings
) -> tuple[dict[str, Any], str | None, str | None, int | None]:
    """A publish body object -> (message, room id, token, when it is due: epoch ms, or None
    for now). Raises 400/413."""
    if not isinstance(item, dict):
        raise ApiError(400, "Each message must be a JSON object")
    try:
        fields = PublishMessage.model_validate(item)
    except ValidationError as error:
        raise invalid_body(error) from None
    message = {"speaker": fields.speaker, "data": fields.data, "meta": fields.meta}
    for name in ("data", "meta"):  # players parse these; past some depth, parsers give up
        if json_depth(message[name]) > settings.max_json_depth:
            raise ApiError(400, f"{name} is nested deeper than {settings.max_json_depth} levels")
    if len(orjson.dumps(message)) > settings.max_message_bytes:
        raise ApiError(413, f"Message too large (max {settings.max_message_bytes} bytes)")
    if fields.expires_in is not None:
        message["expires_in"] = fields.expires_in
    due_at = None
    if fields.at is not None or fields.delay is not None:
        due_at = due_time(fields.at, fields.delay, settings.max_schedule_ahead_s)
    return message, fields.room, fields.token, due_at


def due_time(at: int | None, delay: float | None, max_ahead_s: float) -> int:
    """When a scheduled message is due (epoch ms), from its `at` or `delay`. Raises 400."""
    now = now_ms()
    if at is not None and delay is not None:
        raise ApiError(400, "Give at or delay, not both")
    too_far = ApiError(400, f"A message can be scheduled at most {max_ahead_s:g} s ahead")
    if delay is not None and delay > max_ahead_s:  # (before 1e308 s become milliseconds)
        raise too_far
    due_at = at if at is not None else now + max(1, round(delay * 1000))
    if due_at <= now:
        raise ApiError(400, "at is not in the future (it is epoch ms, as `time`)", at=at)
    if due_at > now + max_ahead_s * 1000:
        raise too_far
    return due_at


async def publish(
    app: StreamingMessage, headers: dict[bytes, bytes], body: Any, query_token: str | None
) -> dict[str, Any]:
    """Publish one message, or a batch (all or none): the 202 reply."""
    batch = isinstance(body, list)
    items = body if batch else [body]
    if not items:
        raise ApiError(400, "Empty batch")
    header_token = bearer_token(headers)
    messages, publishers, costs = [], set(), {}
    for item in items:
        message, room_id, body_token, due_at = validate_message(item, app.settings)
        if due_at is not None and batch:
            raise ApiError(400, "A batch cannot be scheduled: schedule its messages one by one")
        room = app.hub.find_room(room_id)
        token = header_token or body_token or query_token
        principal = app.accounts.authorize(token, room, "publish")
        publishers.add(principal.user_id or principal.kind)
        for bucket in publish_buckets(app.settings, principal):
            costs[bucket] = costs.get(bucket, 0) + 1
        messages.append((room, message))
    key = None
    body_keys = [item["idempotency_key"] for item in items if item.get("idempotency_key")]
    if (header := headers.get(b"idempotency-key")) is not None or body_keys:
        if due_at is not None:
            raise ApiError(400, "A scheduled message takes no idempotency key")
        key = idempotency_key(header, body_keys, batch, messages, publishers)
    if costs:
        await limit_rate(app.hub.broker, costs)
    if due_at is not None:
        ((room, message),) = messages
        scheduled = await app.hub.schedule(room, message, due_at)
        target = {"room": room.id}
        return envelope(202, "Message Scheduled", target=target, scheduled=scheduled.as_dict())
    payloads = await app.hub.publish(messages, key)
    return sent_reply(payloads, batch)


async def limit_rate(broker: LocalBroker | RedisBroker, costs: dict[Bucket, int]) -> None:
    """Take a publish's messages from their token buckets (a batch: its number of
    messages), or refuse it: 413 when it is more than a bucket holds, 429 with Retry-After
    when a bucket has not enough yet."""
    for bucket, cost in costs.items():
        if cost > bucket.size:
            raise ApiError(
                413,
                f"Too many messages at once: this {bucket.holder} may publish {bucket.size}"
                f" per {bucket.window_s:g} s",
                limit=bucket.size,
            )
    if refused := await broker.take(costs):
        bucket, wait = refused
        msg = f"Publish rate limit: this {bucket.holder} may publish {bucket.size} messages"
        raise rate_limited(msg + f" per {bucket.window_s:g} s; try again in {{retry}} s", wait)


IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def idempotency_key(
    header: bytes | None,
    body_keys: list[str],
    batch: bool,
    messages: list[tuple[Room, dict[str, Any]]],
    publishers: set[str],
) -> IdempotencyKey:
    """A publish's key, from the Idempotency-Key header or a single message's
    `idempotency_key`, with the fingerprint of its messages. Raises 400."""
    if batch and body_keys:
        raise ApiError(400, "A batch's idempotency key goes in the Idempotency-Key header")
    value = header.decode("latin-1").strip() if header is not None else body_keys[0]
    if body_keys and body_keys[0] != value:
        raise ApiError(400, "The Idempotency-Key header and idempotency_key differ")
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise ApiError(400, "Idempotency-Key must be 1-255 printable ASCII characters")
    published = [batch, [[room.id, message] for room, message in messages]]
    # json's form, not orjson's: the fingerprints stored before orjson must still match
    fingerprint = sha256_hex(json.dumps(published, sort_keys=True, separators=(",", ":")))
    return IdempotencyKey(",".join(sorted(publishers)), value, fingerprint)


def sent_reply(payloads: list[dict[str, Any]], batch: bool) -> dict[str, Any]:
    if not batch:
        (payload,) = payloads
        target = {"room": payload["room"]}
        return envelope(202, "Message Event Sent", target=target, event=payload, id=payload["id"])
    rooms = sorted({payload["room"] for payload in payloads})
    ids = [payload["id"] for payload in payloads]
    return envelope(202, "Message Events Sent", target={"rooms": rooms}, events=payloads, ids=ids)


LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and it fits SQLite's INTEGER


def parse_last_event_id(headers: dict[bytes, bytes], params: dict[str, str]) -> int | None:
    """Our ids are decimal; any other value is no Last-Event-ID at all."""
    raw = headers.get(b"last-event-id", b"").decode("latin-1") or params.get("lastEventId", "")
    return int(raw) if LAST_EVENT_ID.fullmatch(raw) else None


# A RoomsStream's id: room:last message id, comma-separated. Case-insensitive, as room ids.
STREAM_CURSORS = re.compile(r"[a-z0-9]{1,64}:[0-9]{1,18}(?:,[a-z0-9]{1,64}:[0-9]{1,18})*", re.I)


def parse_stream_cursors(headers: dict[bytes, bytes], params: dict[str, str]) -> dict[str, int]:
    """The rooms' cursors of a RoomsStream's Last-Event-ID; any other value is none at all
    (a room it does not name starts from its last id)."""
    raw = headers.get(b"last-event-id", b"").decode("latin-1") or params.get("lastEventId", "")
    if not STREAM_CURSORS.fullmatch(raw):
        return {}
    return {room.lower(): int(n) for room, _, n in (part.partition(":") for part in raw.split(","))}


EVENT_STREAM = "_event_stream"  # an attribute: the route's 200 reply is an SSE stream


def event_stream(description: str, others: dict[int, str] | None = None) -> Callable:
    """Documents a route's 200 reply as text/event-stream, and `others` (status:
    description) as replies without a body."""

    def document(func: Callable) -> Callable:
        setattr(func, EVENT_STREAM, (description, others or {}))
        return func

    return document


# The hot path's views: (app, scope, receive, send, headers, the path's match) -> the
# coroutine that answers. Plain functions returning it, so a stream keeps one coroutine
# frame less alive for its whole life. Their decorators document them in /openapi.json.


def authorize_stream(app: StreamingMessage, headers, params, room: Room, role: str) -> None:
    """A controller needs the publish and subscribe rights, a private room's player the
    subscribe right: 401 or 403 otherwise."""
    if role == "controller" or room.record.private:
        token = bearer_token(headers) or params.get("token") or session_cookie(headers)
        if role == "controller":  # it may publish here; and it reads the room as players do
            app.accounts.authorize(token, room, "publish")
        app.accounts.authorize(token, room, "subscribe")


@document_querystring(EventsQuery)
@event_stream("`event: meta` (the hello), the replay, then messages as they come")
def stream_events(app: StreamingMessage, scope, receive, send, headers, match) -> Awaitable[None]:
    """Subscribe to a room's events: hello, replay after Last-Event-ID, then live
    messages. An invalid or unknown room id is not an error: it streams the quote feed.
    With ?rooms=a,b: several rooms in one stream (a hello and a replay per room)."""
    segment = match.group(1) if match.re.groups else None  # b"": the default room too
    room_id = unquote(segment.decode("ascii")) if segment else None
    params = query_params(scope)
    client = scope["client"][0] if scope.get("client") else "-"
    role = params.get("role") if params.get("role") in ("controller", "preview") else "player"
    hub = app.hub
    if "rooms" in params:
        if segment:
            raise ApiError(400, "rooms= is for /api/v1/events: the path names no room then")
        return stream_rooms(app, receive, send, headers, params, role, client)
    try:
        room = hub.find_room(room_id)
    except ApiError as error:
        reason = "invalid room id" if error.status == 400 else "unknown room"
        fallback = hub.fallback
        return hub.serve_stream(
            send,
            send.raw,
            receive,
            fallback,
            "player",
            None,
            client,
            reason=reason,
            requested=room_id,
        )
    authorize_stream(app, headers, params, room, role)
    last_id = parse_last_event_id(headers, params)
    return hub.serve_stream(send, send.raw, receive, room, role, last_id, client)


def stream_rooms(
    app: StreamingMessage, receive, send, headers, params, role: str, client: str
) -> Awaitable[None]:
    """Several rooms in one stream. Unlike one room's stream, each room must exist (400 or
    404: no quote feed) and be readable (401 or 403): the whole request is refused."""
    limit = app.settings.max_stream_rooms
    names = params["rooms"].split(",")
    if len(names) > limit:
        raise ApiError(400, f"Too many rooms: at most {limit} in one stream", limit=limit)
    rooms = list({room.id: room for room in map(app.hub.find_room, names)}.values())
    for room in rooms:
        authorize_stream(app, headers, params, room, role)
    cursors = parse_stream_cursors(headers, params)
    return app.hub.serve_rooms(send, send.raw, receive, rooms, role, cursors, client)


@event_stream("a message with the time every CLOCK_INTERVAL_S")
def clock(app: StreamingMessage, scope, receive, send, headers, match) -> Awaitable[None]:
    """The seed tutorial's sample: the server time every CLOCK_INTERVAL_S"""
    client = scope["client"][0] if scope.get("client") else "-"
    return app.hub.serve_stream(send, send.raw, receive, app.hub.clock, "player", None, client)


@document_request(PublishBody)
@document_headers(PublishHeaders)
@document_response(PublishReply, 202)
async def publish_post(app: StreamingMessage, scope, receive, send, headers, match) -> None:
    """Publish one message, or a batch (all or none)"""
    body = request_json(await read_body(receive, app.settings))
    reply = await publish(app, headers, body, query_params(scope).get("token"))
    await send_json(send, 202, reply)


@document_querystring(SendQuery)
@document_headers(PublishHeaders)
@document_response(SendReply, 202)
async def publish_get(app: StreamingMessage, scope, receive, send, headers, match) -> None:
    """Publish a message: the seed's form, ?token=&msg=[&room=]"""
    params = query_params(scope)
    if "msg" not in params:
        raise ApiError(400, "Missing msg parameter")
    message = {
        "speaker": unquote(match.group(1).decode("latin-1"), errors="replace"),
        "data": {"message": params["msg"]},
        "meta": "message",
        "room": params.get("room"),
        "token": params.get("token"),
    }
    for name, kind in (("at", int), ("delay", float), ("expires_in", float)):
        if name in params:  # numbers in a query are text
            try:
                message[name] = kind(params[name])
            except ValueError:
                raise ApiError(400, f"{name} must be a number", **{name: params[name]}) from None
    await send_json(send, 202, await publish(app, headers, message, None))


@dataclass(frozen=True)
class HotRoute:
    rule: str  # as Quart writes it: for the OpenAPI document
    method: str
    path: re.Pattern[bytes]  # matched on the raw path: %2F is no "/"
    view: Callable[..., Awaitable[None]]


# One table, for dispatch and for the OpenAPI document.
HOT_ROUTES = (
    HotRoute("/api/v1/events", "GET", re.compile(rb"/api/v1/events/?"), stream_events),
    HotRoute(
        "/api/v1/events/<room>", "GET", re.compile(rb"/api/v1/events/([^/]*)/?"), stream_events
    ),
    HotRoute("/api/v1/send", "POST", re.compile(rb"/api/v1/send/?"), publish_post),
    HotRoute("/api/v1/clock", "GET", re.compile(rb"/api/v1/clock"), clock),
    HotRoute("/api/v1/send/<speaker>", "GET", re.compile(rb"/api/v1/send/(.+?)/*"), publish_get),
)


class HeaderedSend:
    """The hot path's ASGI send: adds its headers to the response's start (and the CSP to an
    HTML page's) and keeps the status for the log. A stream writes its frames with `raw`,
    which saves a call per frame."""

    __slots__ = ("raw", "scope", "extra", "frame_ancestors", "status")

    def __init__(
        self,
        raw: ASGISend,
        scope: dict[str, Any],
        extra: list[tuple[bytes, bytes]],
        frame_ancestors: str,
    ) -> None:
        self.raw, self.scope, self.extra, self.status = raw, scope, extra, 0
        self.frame_ancestors = frame_ancestors

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = [*message["headers"], *self.extra]
            if any(
                name == b"content-type" and value.startswith(b"text/html")
                for name, value in message["headers"]
            ):
                headers.append(page_policy(self.scope, self.frame_ancestors))
            message = {**message, "headers": headers}
        await self.raw(message)


class ApiRequest(Request):
    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True):
        """Every body is read as JSON whatever its Content-Type (`curl -d` says it is a
        form) and as strictly as the hot path reads it; an empty body is {} (a body whose
        fields are all optional may be left out)."""
        try:
            body = await self.get_data(cache=cache)
        except RequestEntityTooLarge:  # as the hot path words them
            raise body_too_large(current_app.settings.max_body_bytes) from None
        except RequestTimeout:
            raise body_too_slow(current_app.settings.body_timeout_s) from None
        return request_json(body) if body else {}


def oversized_head(scope: dict[str, Any], limit: int) -> ApiError | None:
    """The error for a request whose target (414) or target and headers (431) are over
    MAX_HEADER_BYTES. Hypercorn bounds what it buffers of a head still arriving, but not a
    head that arrives at once (60 KB request lines were accepted)."""
    target = len(scope["raw_path"]) + len(scope["query_string"])
    if target > limit:
        return ApiError(414, f"Request target too long (max {limit} bytes)")
    if target + sum(len(name) + len(value) for name, value in scope["headers"]) > limit:
        return ApiError(431, f"Request headers too large (max {limit} bytes)")
    return None


class StreamingMessage(Quart):
    """Quart with the hot path in front: streams, publishes and API preflights are served
    as plain ASGI (one Hypercorn request and none of Quart's); the rest goes on to Quart.
    Every request comes through here, so it is also where every response gets its CORS
    and security headers and where each request is logged (ACCESS_LOG). It holds what the
    routes serve: settings, hub, accounts, relay (see create_app)."""

    request_class = ApiRequest
    settings: Settings
    metrics: Metrics
    hub: Hub
    accounts: Accounts
    relay: Relay

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.asgi_app(scope, receive, send)
        settings = self.settings
        started = time.perf_counter()
        headers = dict(scope["headers"])
        extra = cors_headers(settings.cors_origins, headers) + SECURITY_HEADERS
        if scope["scheme"] == "https":
            extra.append(HSTS)
        send_with_headers = HeaderedSend(send, scope, extra, settings.frame_ancestors)
        try:
            if oversized := oversized_head(scope, settings.max_header_bytes):
                await send_error(send_with_headers, oversized)
            elif scope["path"].startswith("/api/v1/"):
                try:
                    await self.hot_route(scope, receive, send_with_headers, headers)
                except ApiError as error:
                    await send_error(send_with_headers, error)
            else:
                await self.asgi_app(scope, receive, send_with_headers)
        finally:
            if settings.access_log:
                query = scope["query_string"].decode("latin-1")
                log.info(
                    "request method=%s path=%s%s status=%d ms=%.1f client=%s",
                    scope["method"],
                    scope["raw_path"].decode("latin-1"),
                    "?" + query if query else "",
                    send_with_headers.status,
                    (time.perf_counter() - started) * 1000,
                    scope["client"][0] if scope.get("client") else "-",
                )

    def hot_route(self, scope, receive, send, headers: dict[bytes, bytes]) -> Awaitable[None]:
        """The coroutine that answers an /api/v1/ request, or ApiError. (A plain function,
        so a stream keeps one coroutine frame less alive for its whole life.)"""
        method = scope["method"]
        if method == "OPTIONS":
            return send_preflight(send, preflight_headers(self.settings.cors_origins, headers))
        for route in HOT_ROUTES:
            if match := route.path.fullmatch(scope["raw_path"]):
                if method != route.method:
                    raise method_not_allowed(route.method)
                return route.view(self, scope, receive, send, headers, match)
        return self.asgi_app(scope, receive, send)

    async def end_streams(self) -> None:
        """Shutdown: new publishes and chats get 503, pending publishes are committed and
        every stream ends with its final event (`event: shutdown`). Once: later calls wait
        for nothing."""
        if not self.hub.closing:
            log.info("shutting down")
        await self.relay.close()
        await self.hub.close()


async def send_error(send: ASGISend, error: ApiError) -> None:
    headers = [(name.lower().encode(), value.encode()) for name, value in error.headers()]
    await send_json(send, error.status, error.body(), headers)


async def send_preflight(send: ASGISend, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


class ApiDocs(OpenAPIProvider):
    """quart-schema's OpenAPI document of the Quart routes, plus what it cannot see: the
    hot path's routes (from HOT_ROUTES), event-stream replies, and the error envelope that
    any operation may answer."""

    def schema(self) -> dict[str, Any]:
        spec = super().schema()
        hot_path_routes = Quart("hot_path", static_folder=None)  # documented, never served
        hot_path_routes.config.update(
            QUART_SCHEMA_CONVERSION_PREFERENCE=None, QUART_SCHEMA_CONVERT_CASING=False
        )
        for route in HOT_ROUTES:
            hot_path_routes.add_url_rule(route.rule, route.rule, route.view, methods=[route.method])
        hot_path = ApiDocs(hot_path_routes, self._extension)
        for rule in hot_path.generate_rules():  # as super().schema() does for Quart's
            paths, components = hot_path.build_paths(rule)
            for path, operations in paths.items():
                spec["paths"][path].update(operations)
            spec["components"]["schemas"].update(components)
        error = ErrorReply.model_json_schema(ref_template="#/components/schemas/{model}")
        spec["components"]["schemas"]["ErrorReply"] = error
        return spec

    def build_paths(self, rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        stream = getattr(self._app.view_functions[rule.endpoint], EVENT_STREAM, None)
        for operations in paths.values():
            for operation in operations.values():
                responses = {str(status): reply for status, reply in operation["responses"].items()}
                if stream is not None:
                    description, others = stream
                    responses["200"] = {
                        "description": description,
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                    responses |= {str(status): {"description": d} for status, d in others.items()}
                responses["default"] = {
                    "description": "An error, in the JSON envelope",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorReply"}}
                    },
                }
                operation["responses"] = responses
        return paths, components

    def operation_id(self, method: str, path: str, func: Callable) -> str:
        """From the path: a hot path function serves several paths."""
        return method.lower() + re.sub(r"[^a-z0-9]+", "_", path.lower()).rstrip("_")


# The Quart routes, on one blueprint that create_app registers.
routes = Blueprint("routes", __name__)


@routes.app_errorhandler(ApiError)
async def api_error(error: ApiError):
    return error.body(), error.status, error.headers()


@routes.app_errorhandler(RequestSchemaValidationError)
async def schema_error(error: RequestSchemaValidationError):
    cause = error.validation_error
    if isinstance(cause, ValidationError):
        return await api_error(invalid_body(cause))
    return await api_error(ApiError(400, "Invalid request", detail=str(cause)))


@routes.app_errorhandler(HTTPException)
async def http_error(error: HTTPException):
    """Quart's own errors (404, 405, 413, 408...) in the envelope, with their headers."""
    headers = [(name, value) for name, value in error.get_headers() if name != "Content-Type"]
    return envelope(error.code, error.description), error.code, headers


def ok(msg: str = "OK", code: int = 200, **fields: Any) -> tuple[dict[str, Any], int]:
    return envelope(code, msg, **fields), code


def request_token(body_token: str | None = None) -> str | None:
    """A Quart request's token: Bearer header, then the body's `token`, then `?token=`."""
    token = bearer_token(dict(request.scope["headers"])) or body_token
    return token or request.args.get("token")


class HealthReply(Reply):
    broker: str
    pid: int
    rooms: int
    subscribers: int
    fallback_subscribers: int
    published: int
    commits: int
    deliveries: int
    slow_consumer_disconnects: int


@routes.get("/healthz")
@validate_response(HealthReply)
async def healthz():
    """Liveness: this process answers; with its counters (each process of a multi-process
    hub has its own). Whether it can serve is /readyz."""
    return ok(
        broker=current_app.hub.broker.name,
        pid=os.getpid(),
        rooms=len(current_app.hub.rooms),
        subscribers=sum(len(room.subscribers) for room in current_app.hub.rooms.values()),
        fallback_subscribers=len(current_app.hub.fallback.subscribers),
        published=int(current_app.metrics.value("messages_published_total")),
        commits=int(current_app.metrics.value("commits_total")),
        deliveries=int(current_app.metrics.value("deliveries_total")),
        slow_consumer_disconnects=int(current_app.metrics.value("slow_consumer_disconnects_total")),
    )


class ReadyReply(Reply):
    checks: dict[str, str] = Field(description='each dependency: "ok", or what is wrong')


@routes.get("/readyz")
@validate_response(ReadyReply)
async def readyz():
    """Readiness: 200 when this process can serve (SQLite takes a write; with BROKER_URL,
    Redis answers), else 503 naming what failed. /healthz only says it is alive."""
    checks = await current_app.hub.readiness()
    failed = [f"{name} {problem}" for name, problem in checks.items() if problem != "ok"]
    if failed:
        raise ApiError(503, "Not ready: " + "; ".join(failed), checks=checks)
    return ok("Ready", checks=checks)


@routes.get("/metrics")
@hide  # Prometheus text, not JSON: for scrapers, not in the OpenAPI document
async def prometheus_metrics():
    """The server's metrics (all its workers' under `hypercorn -w N`), in the format the
    scraper asks for (Prometheus text 0.0.4 by default, or OpenMetrics)."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(current_app.metrics.exposed), content_type=content_type)


# Auth: login answers an access JWT and a refresh token in JSON and as HttpOnly cookies:
# the refresh token for /api/v1/auth (refresh, logout), the access JWT for /api/v1/events
# (EventSource cannot send a header; the admin page sends it as Bearer everywhere else).


class UserOut(BaseModel):
    id: str
    username: str
    role: str
    disabled: bool
    created_at: int


class SessionReply(Reply):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_expires_in: int
    user: UserOut


def session_reply(user: User, access: str, refresh: str, msg: str):
    """The tokens in JSON, and as cookies (Set-Cookie headers)."""
    reply, status = ok(
        msg,
        access_token=access,
        refresh_token=refresh,
        token_type="Bearer",
        expires_in=int(current_app.settings.access_token_ttl_s),
        refresh_expires_in=int(current_app.settings.refresh_token_ttl_s),
        user=user.as_dict(),
    )
    return reply, status, session_cookies((refresh, access))


def session_cookies(values: tuple[str, str] | None) -> Headers:
    """Headers setting (refresh token, access token) as cookies, or clearing them (None)."""
    cookies = [
        (REFRESH_COOKIE, "/api/v1/auth", current_app.settings.refresh_token_ttl_s),
        (SESSION_COOKIE, "/api/v1/events", current_app.settings.access_token_ttl_s),
    ]
    headers = Headers([("Cache-Control", "no-store")])  # not a list: it keeps both cookies
    for index, (name, path, ttl) in enumerate(cookies):
        cookie = dump_cookie(
            name,
            values[index] if values else "",
            max_age=int(ttl) if values else 0,
            path=path,
            secure=current_app.settings.cookie_secure or request.scheme == "https",
            httponly=True,
            samesite="Strict",
        )
        headers.add("Set-Cookie", cookie)
    return headers


def cookie_credential(name: str) -> str | None:
    """A credential from a cookie, for a state-changing request (CSRF): only when its
    Origin is this site's or listed in CORS_ORIGINS. SameSite=Strict already keeps other
    sites' requests from carrying the cookie; this also covers sibling subdomains and old
    browsers. The host is compared, not the scheme: behind a TLS proxy the server may not
    know it (TRUST_PROXY)."""
    value = request.cookies.get(name)
    origin = request.headers.get("Origin")
    if (
        value
        and origin not in current_app.settings.cors_origins
        and urlsplit(origin).netloc != request.host
    ):
        raise ApiError(403, "Cookie credentials need an Origin header of this site (CSRF)")
    return value


Password = Annotated[str, Field(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)]


class LoginRequest(Body):
    username: str
    password: str


@routes.post("/api/v1/auth/login")
@validate_request(LoginRequest)
@validate_response(SessionReply)
async def login(data: LoginRequest):
    """Log in: an access JWT and a refresh token (also set as HttpOnly cookies)"""
    user = await current_app.accounts.verify_login(
        data.username, data.password, request.remote_addr or ""
    )
    if user is None:
        raise ApiError(401, "Invalid username or password")
    return session_reply(user, *await current_app.accounts.start_session(user), "Logged In")


class RefreshRequest(Body):
    refresh_token: str | None = Field(default=None, max_length=MAX_TOKEN_CHARS)


@routes.post("/api/v1/auth/refresh")
@validate_request(RefreshRequest)
@validate_response(SessionReply)
async def refresh(data: RefreshRequest):
    """New tokens for a refresh token (the body's or the cookie's), which is used up"""
    token = data.refresh_token or cookie_credential(REFRESH_COOKIE)
    if not token:
        raise ApiError(401, "Missing refresh token: send refresh_token or the cookie")
    user, access, refresh_token = await current_app.accounts.refresh_session(token)
    return session_reply(user, access, refresh_token, "Token Refreshed")


@routes.post("/api/v1/auth/logout")
@validate_request(RefreshRequest)
@validate_response(Reply)
async def logout(data: RefreshRequest):
    """Log out: revokes the session of the refresh token (body or cookie), else of the
    Bearer access token, and clears the cookies."""
    token = data.refresh_token or cookie_credential(REFRESH_COOKIE)
    if token:
        await current_app.accounts.end_session(refresh_token=token)
    else:
        await current_app.accounts.end_session(
            session_id=current_app.accounts.authenticate(request_token()).session_id
        )
    return *ok("Logged Out"), session_cookies(None)


class ApiTokenOut(BaseModel):
    id: str
    user_id: str
    name: str
    rooms: list[str] | Literal["*"]
    rights: list[str]
    expires_at: int | None
    created_at: int


class PrincipalOut(BaseModel):
    kind: Literal["root", "session", "token"]
    name: str
    role: str
    user_id: str | None
    token: ApiTokenOut | None


class MeReply(Reply):
    principal: PrincipalOut


@routes.get("/api/v1/auth/me")
@validate_response(MeReply)
async def me():
    """Who the credential is"""
    return ok(principal=current_app.accounts.authenticate(request_token()).as_dict())


class PasswordRequest(Body):
    current_password: str
    new_password: Password


@routes.post("/api/v1/auth/password")
@validate_request(PasswordRequest)
@validate_response(SessionReply)
async def change_password(data: PasswordRequest):
    """Change one's password: ends every session, starts a new one"""
    principal = current_app.accounts.authorize(request_token(), None, "account")
    address = request.remote_addr or ""
    if (
        await current_app.accounts.verify_login(principal.name, data.current_password, address)
        is None
    ):
        raise ApiError(401, "current_password is wrong")
    user = await current_app.accounts.update_user(
        principal.user_id, {"password": data.new_password}
    )
    return session_reply(user, *await current_app.accounts.start_session(user), "Password Changed")


# Rooms


UPLOAD_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_PROFILES = 100


class SpeakerProfile(Body):
    """How a speaker looks and sounds in the player: a message whose speaker (or
    `data.profile`) is the profile's name gets it."""

    color: matching(r"#[0-9a-fA-F]{6}", "#rrggbb") | None = Field(
        default=None, description="the name plate's colour"
    )
    avatar: matching(UPLOAD_NAME.pattern, "an upload's name") | None = Field(
        default=None, description="an image of the room's uploads"
    )
    speed: float | None = Field(default=None, ge=1, le=1000, description="characters per second")
    sound: matching(UPLOAD_NAME.pattern, "blip, soft, none or an upload's name") | None = Field(
        default=None,
        description="the typing sound: blip (the default) or soft (bundled), none (silent), or"
        " the name of a sound of the room's uploads",
    )
    pitch: float | None = Field(
        default=None, ge=0.25, le=4, description="the typing sound's playback rate"
    )


class RoomSettings(Body):
    """Player settings; null removes one."""

    typewriter_speed: float | None = Field(
        default=None, ge=1, le=1000, description="characters per second"
    )
    theme: str | None = Field(default=None, min_length=1, max_length=64)
    profiles: (
        dict[
            Annotated[str, Field(min_length=1, max_length=MAX_SPEAKER_CHARS)],
            SpeakerProfile,
        ]
        | None
    ) = Field(
        default=None,
        max_length=MAX_PROFILES,
        description="speaker profiles by name (replaced as a whole)",
    )


class RoomChanges(Body):
    token: str | None = None
    title: str = Field(default="", max_length=200)
    private: bool = False
    history_size: int | None = Field(
        default=None, ge=1, le=1_000_000, description="messages kept; null: HISTORY_SIZE"
    )
    max_age_s: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EXPIRES_IN_S,
        description="seconds: older messages are not replayed, and are trimmed; null: no limit",
    )
    settings: RoomSettings = Field(default_factory=RoomSettings)

    def fields(self, current: dict[str, Any]) -> dict[str, Any]:
        """The room fields sent, for RoomRecord; settings merged into `current`."""
        fields = self.model_dump(exclude_unset=True, exclude={"id", "token", "settings"})
        if "settings" in self.model_fields_set:
            merged = {**current, **self.settings.model_dump(exclude_unset=True)}
            fields["settings"] = {
                name: value for name, value in merged.items() if value is not None
            }
        return fields


class RoomCreate(RoomChanges):
    id: matching(ROOM_ID.pattern, "1-64 letters or digits (any case)")


class Presence(BaseModel):
    players: int
    controllers: int


@dataclass
class RoomOut(RoomRecord):
    subscribers: Presence = field(kw_only=True)  # (after RoomRecord's fields with defaults)


ROOMS_PAGE, MAX_ROOMS_PAGE = 100, 1000


class RoomsQuery(BaseModel):
    limit: int = Field(default=ROOMS_PAGE, ge=1, le=MAX_ROOMS_PAGE, description="rooms per page")
    after: matching(ROOM_ID.pattern, "a room id") | None = Field(
        default=None, description="the `next` of the previous page: the rooms after this id"
    )
    token: str | None = Field(default=None, description="for the private rooms one may read")


class RoomsReply(Reply):
    rooms: list[RoomOut]
    next: str | None = Field(description="`after` for the next page; null: this was the last")


class RoomReply(Reply):
    room: RoomOut


class RoomCreatedReply(Reply):
    room: RoomRecord


class PresenceReply(Reply, Presence):
    room: str


class RoomDeletedReply(Reply):
    room: str


async def room_summary(room: Room) -> dict[str, Any]:
    return {**room.record.as_dict(), "subscribers": await current_app.hub.presence_counts(room)}


@routes.get("/api/v1/rooms")
@validate_querystring(RoomsQuery)
@validate_response(RoomsReply)
async def list_rooms(query_args: RoomsQuery):
    """Public rooms, and the private ones the caller may subscribe to, a page at a time

    By id; the reply's `next` is the `after` of the next page (null: none)."""
    token = request_token()
    principal = current_app.accounts.authenticate(token) if token else None
    after = query_args.after.lower() if query_args.after is not None else ""
    rooms = current_app.hub.rooms
    page = []
    for room_id in sorted(room_id for room_id in rooms if room_id > after):
        room = rooms[room_id]
        if not room.record.private or (principal and principal.may(room, "subscribe")):
            if len(page) == query_args.limit:
                return ok(rooms=page, next=page[-1]["id"])
            page.append(await room_summary(room))
    return ok(rooms=page, next=None)


@routes.post("/api/v1/rooms")
@validate_request(RoomCreate)
@validate_response(RoomCreatedReply, 201)
async def create_room(data: RoomCreate):
    """Create a room (owned by the caller; a user may own MAX_ROOMS_PER_USER, admins any
    number)"""
    principal = current_app.accounts.authorize(request_token(data.token), None, "manage")
    canonical = data.id.lower()
    conflict = ApiError(409, f"Room already exists: {canonical}", room=canonical)
    if canonical in current_app.hub.rooms:
        raise conflict
    fields = data.fields({})
    # admins (and the root token) are trusted with any number of rooms
    max_owned = 0 if principal.role == "admin" else current_app.settings.max_rooms_per_user
    try:
        record = await current_app.hub.create_room(
            canonical, principal.user_id, max_owned, **fields
        )
    except sqlite3.IntegrityError:
        raise conflict from None
    return ok("Room Created", 201, room=record.as_dict())


def readable_room(room_id: str) -> Room:
    """A room the request may read: public, or private with a subscribe right."""
    room = current_app.hub.find_room(room_id)
    if room.record.private:
        current_app.accounts.authorize(request_token(), room, "subscribe")
    return room


@routes.get("/api/v1/rooms/<room_id>")
@validate_response(RoomReply)
async def get_room(room_id: str):
    """A room, with its presence"""
    return ok(room=await room_summary(readable_room(room_id)))


@routes.get("/api/v1/rooms/<room_id>/presence")
@validate_response(PresenceReply)
async def get_presence(room_id: str):
    """How many players and controllers are connected"""
    room = readable_room(room_id)
    return ok(room=room.id, **await current_app.hub.presence_counts(room))


@routes.patch("/api/v1/rooms/<room_id>")
@validate_request(RoomChanges)
@validate_response(RoomReply)
async def update_room(room_id: str, data: RoomChanges):
    """Room settings: title, private, history_size, max_age_s, settings (typewriter_speed,
    theme, profiles); a change of settings reaches the room's streams as `event: settings`"""
    room = current_app.hub.find_room(room_id)
    current_app.accounts.authorize(request_token(data.token), room, "manage")
    await current_app.hub.update_room(room, data.fields(room.record.settings))
    return ok("Room Updated", room=await room_summary(room))


@routes.delete("/api/v1/rooms/<room_id>")
@validate_response(RoomDeletedReply)
async def delete_room(room_id: str):
    """Delete a room: its streams end with `event: deleted`, its history goes"""
    room = current_app.hub.find_room(room_id)
    current_app.accounts.authorize(request_token(), room, "manage")
    if room.id == current_app.settings.default_room:
        raise ApiError(409, "The default room cannot be deleted", room=room.id)
    await current_app.hub.delete_room(room)
    return ok("Room Deleted", room=room.id)


class HistoryQuery(BaseModel):
    after: int = Field(default=0, ge=0, le=2**63 - 1, description="ids above this only")
    before: int | None = Field(default=None, ge=1, le=2**63 - 1, description="ids below this only")
    limit: int = Field(default=50, ge=1, le=MAX_HISTORY_PAGE, description="messages per page")
    order: Literal["desc", "asc"] = Field(default="desc", description="desc: newest first")
    token: str | None = Field(default=None, description="for a private room")


class MessagesReply(Reply):
    room: str
    messages: list[MessagePayload]
    next: str | None = Field(description="the URL of the next page; null: none (yet)")


@routes.get("/api/v1/rooms/<room_id>/messages")
@validate_querystring(HistoryQuery)
@validate_response(MessagesReply)
async def room_messages(room_id: str, query_args: HistoryQuery):
    """A room's kept messages, paged by id: newest first, or oldest first (`order=asc`).
    Who may read them: who may subscribe to the room"""
    room = readable_room(room_id)
    newest_first = query_args.order == "desc"
    after, before, limit = query_args.after, query_args.before or sys.maxsize, query_args.limit
    rows: list[tuple[int, str]] = []
    while len(rows) <= limit:  # one more than asked: is there a next page?
        wanted = limit + 1 - len(rows)  # (more when some are not served)
        read = await current_app.hub.broker.history(room, after, before, wanted, newest_first)
        rows += [row for row in read if row[1] is not None]  # retracted, expired or too old
        if len(read) < wanted:
            break
        if newest_first:
            before = read[-1][0]
        else:
            after = read[-1][0]
    page, next_page = rows[:limit], None
    if len(rows) > limit:
        cursor = {"before" if newest_first else "after": page[-1][0]}
        params = query_args.model_dump(exclude_defaults=True, exclude={"token"}) | cursor
        next_page = f"/api/v1/rooms/{room.id}/messages?{urlencode(params)}"
    messages = [orjson.loads(payload) for _, payload in page]
    return ok(room=room.id, messages=messages, next=next_page)


class IdReply(Reply):
    id: str


class ScheduledListReply(Reply):
    room: str
    scheduled: list[ScheduledOut] = Field(description="the soonest first")


def publishable_room(room_id: str, body_token: str | None = None) -> Room:
    """A room the request may publish to."""
    room = current_app.hub.find_room(room_id)
    current_app.accounts.authorize(request_token(body_token), room, "publish")
    return room


@routes.get("/api/v1/rooms/<room_id>/scheduled")
@validate_response(ScheduledListReply)
async def list_scheduled(room_id: str):
    """A room's scheduled messages (published with `at` or `delay`), until delivered. Who
    may see them: who may publish to the room"""
    room = publishable_room(room_id)
    scheduled = await current_app.hub.storage.scheduled(room.id)
    return ok(room=room.id, scheduled=[item.as_dict() for item in scheduled])


@routes.delete("/api/v1/rooms/<room_id>/scheduled/<scheduled_id>")
@validate_response(IdReply)
async def cancel_scheduled(room_id: str, scheduled_id: str):
    """Cancel a scheduled message: it is never delivered. 404 once it has been (or was
    cancelled)"""
    room = publishable_room(room_id)
    if not await current_app.hub.storage.cancel_scheduled(room.id, scheduled_id):
        raise ApiError(404, "No such scheduled message (delivered or cancelled?)", id=scheduled_id)
    return ok("Scheduled Message Cancelled", id=scheduled_id)


class MessageEdit(Body):
    """What changes in the message: any of speaker, data and meta (as in a publish)."""

    token: str | None = None
    speaker: Speaker | None = None
    data: dict[str, Any] | None = Field(default=None, description="replaces the message's data")
    meta: Any = Field(default=None, description="replaces its meta (sent as null: null)")


class EditedReply(Reply):
    target: dict[Literal["room"], str]
    event: MessagePayload
    id: int


class RetractedReply(Reply):
    target: dict[Literal["room"], str]
    id: int


def message_id_of(room: Room, value: str) -> int:
    """A message id in a path: a decimal id of ours, else 404."""
    if not LAST_EVENT_ID.fullmatch(value):
        raise ApiError(404, f"Unknown message: {value}", room=room.id, id=value)
    return int(value)


@routes.patch("/api/v1/rooms/<room_id>/messages/<message_id>")
@validate_request(MessageEdit)
@validate_response(EditedReply)
async def edit_message(room_id: str, message_id: str, data: MessageEdit):
    """Edit a kept message (publish rights): its stream sends `event: edit` with the new
    payload; history and replays show it from now on"""
    room = publishable_room(room_id, data.token)
    changes = data.model_dump(include={"speaker", "data", "meta"} & data.model_fields_set)
    if not changes:
        raise ApiError(400, "Nothing to change: send speaker, data or meta")
    if "speaker" in changes and changes["speaker"] is None:
        raise ApiError(400, "speaker must be a string")
    if "data" in changes and changes["data"] is None:
        raise ApiError(400, "data must be a JSON object")

    def check(message: dict[str, Any]) -> dict[str, Any]:
        return validate_message(message, current_app.settings)[0]

    message_id = message_id_of(room, message_id)
    payload = await current_app.hub.edit_message(room, message_id, changes, check)
    return ok("Message Edited", target={"room": room.id}, event=payload, id=message_id)


@routes.delete("/api/v1/rooms/<room_id>/messages/<message_id>")
@validate_response(RetractedReply)
async def retract_message(room_id: str, message_id: str):
    """Retract a kept message (publish rights): its stream sends `event: retract`
    (`{"id", "room"}`); history and replays leave it out from now on"""
    room = publishable_room(room_id)
    message_id = message_id_of(room, message_id)
    await current_app.hub.retract_message(room, message_id)
    return ok("Message Retracted", target={"room": room.id}, id=message_id)


# Uploads: a room's images (speaker avatars, the `@{name}` code) and sounds (a speaker's
# typing voice), served from this origin.

# The types a player may show or play, known by their first bytes (the Content-Type sent
# is not trusted). Never SVG: an SVG opened as a page runs its script.
UPLOAD_SIGNATURES = (
    (re.compile(rb"\x89PNG\r\n\x1a\n"), "image/png"),
    (re.compile(rb"\xff\xd8\xff"), "image/jpeg"),
    (re.compile(rb"GIF8[79]a"), "image/gif"),
    (re.compile(rb"RIFF....WEBP", re.DOTALL), "image/webp"),
    (re.compile(rb"RIFF....WAVE", re.DOTALL), "audio/wav"),
    (re.compile(rb"OggS"), "audio/ogg"),
    (re.compile(rb"ID3|\xff[\xfb\xf3\xf2]"), "audio/mpeg"),
)
# An upload is served as what it is, never as a page: no script, no plug-in, even if opened.
UPLOAD_HEADERS = {"Content-Security-Policy": "default-src 'none'; sandbox"}
UPLOAD_MAX_AGE_S = 300  # a replaced image reaches players within this (they revalidate)


def upload_type(data: bytes) -> str | None:
    return next((kind for magic, kind in UPLOAD_SIGNATURES if magic.match(data)), None)


def upload_name(name: str) -> str:
    if not UPLOAD_NAME.fullmatch(name):
        raise ApiError(400, "Invalid upload name: use 1-64 letters, digits, '_' or '-'")
    return name.lower()


def upload_url(upload: Upload) -> str:
    return f"/api/v1/rooms/{upload.room}/uploads/{upload.name}"


class UploadOut(BaseModel):
    room: str
    name: str
    type: str
    size: int
    etag: str
    created_at: int
    url: str


class UploadReply(Reply):
    upload: UploadOut


class UploadsReply(Reply):
    room: str
    uploads: list[UploadOut]


class UploadDeletedReply(Reply):
    room: str
    name: str


@routes.put("/api/v1/rooms/<room_id>/uploads/<name>")
@validate_response(UploadReply, 201)
async def put_upload(room_id: str, name: str):
    """Upload an image or a sound, replacing the room's file of that name

    The raw bytes as the body: PNG, JPEG, WebP, GIF, WAV, OGG or MP3 (known by their first
    bytes), at most MAX_UPLOAD_BYTES; publish rights."""
    room = publishable_room(room_id)
    name = upload_name(name)
    limit = current_app.settings.max_upload_bytes
    too_large = ApiError(413, f"Upload too large (max {limit} bytes)", limit=limit)
    if (request.content_length or 0) > limit:
        raise too_large
    try:
        data = await request.get_data()
    except RequestEntityTooLarge:
        raise too_large from None
    except RequestTimeout:
        raise body_too_slow(current_app.settings.body_timeout_s) from None
    if len(data) > limit:
        raise too_large
    kind = upload_type(data)
    if kind is None:
        raise ApiError(
            415, "Unsupported upload: send a PNG, JPEG, WebP or GIF image, or a WAV, OGG or MP3"
        )
    upload = Upload(room.id, name, kind, len(data), hashlib.sha256(data).hexdigest(), now_ms())
    maximum = current_app.settings.max_uploads_per_room
    if not await current_app.storage.insert_upload(upload, data, maximum):
        raise ApiError(
            403, f"Upload limit reached: a room may hold {maximum}; delete one first", limit=maximum
        )
    return ok("Upload Stored", 201, upload=upload.as_dict() | {"url": upload_url(upload)})


@routes.get("/api/v1/rooms/<room_id>/uploads")
@validate_response(UploadsReply)
async def list_uploads(room_id: str):
    """A room's uploads, without their bytes (who may subscribe may read)"""
    room = readable_room(room_id)
    uploads = await current_app.storage.uploads(room.id)
    return ok(room=room.id, uploads=[u.as_dict() | {"url": upload_url(u)} for u in uploads])


@routes.get("/api/v1/rooms/<room_id>/uploads/<name>")
@hide  # the image itself, not JSON
async def get_upload(room_id: str, name: str):
    """An uploaded file, with its type, an ETag and a short cache life."""
    room = readable_room(room_id)
    found = await current_app.storage.upload(room.id, upload_name(name))
    if found is None:
        raise ApiError(404, f"Unknown upload: {name.lower()}", room=room.id)
    upload, data = found
    response = Response(data, content_type=upload.type, headers=UPLOAD_HEADERS)
    response.set_etag(upload.etag)
    response.cache_control.max_age = UPLOAD_MAX_AGE_S
    if room.record.private:  # only who has the room's token may see it: no shared caches
        response.cache_control.private = True
    else:
        response.cache_control.public = True
    return await response.make_conditional(request)


@routes.delete("/api/v1/rooms/<room_id>/uploads/<name>")
@validate_response(UploadDeletedReply)
async def delete_upload(room_id: str, name: str):
    """Delete an upload (publish rights)"""
    room = publishable_room(room_id)
    name = upload_name(name)
    if not await current_app.storage.delete_upload(room.id, name):
        raise ApiError(404, f"Unknown upload: {name}", room=room.id)
    return ok("Upload Deleted", room=room.id, name=name)


# API tokens: a user's tokens for scripts, bots and OBS.


MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400  # ten years


class TokenCreate(Body):
    name: str = Field(min_length=1, max_length=100)
    rooms: Annotated[list[str], Field(min_length=1)] | Literal["*"] = Field(
        description='room ids, or "*": every room of the user'
    )
    rights: list[TokenRight] = Field(min_length=1)
    expires_in: float | None = Field(  # bounded: epoch ms past 2^63 overflow SQLite's INTEGER
        default=None, gt=0, le=MAX_TOKEN_LIFETIME_S, description="seconds; null: never"
    )


class TokensReply(Reply):
    tokens: list[ApiTokenOut]


class TokenCreatedReply(Reply):
    token: str = Field(description="the secret: shown in this reply only")
    api_token: ApiTokenOut


@routes.get("/api/v1/tokens")
@validate_response(TokensReply)
async def list_api_tokens():
    """The caller's API tokens"""
    principal = current_app.accounts.authorize(request_token(), None, "account")
    tokens = [token.as_dict() for token in current_app.accounts.user_api_tokens(principal.user_id)]
    return ok(tokens=tokens)


@routes.post("/api/v1/tokens")
@validate_request(TokenCreate)
@validate_response(TokenCreatedReply, 201)
async def create_api_token(data: TokenCreate):
    """Create an API token; its secret is in this reply only"""
    principal = current_app.accounts.authorize(request_token(), None, "account")
    rooms = None
    if data.rooms != "*":
        rooms = frozenset(authorize_room(principal, room_id) for room_id in data.rooms)
    expires_at = None if data.expires_in is None else now_ms() + int(data.expires_in * 1000)
    secret, token = await current_app.accounts.create_api_token(
        principal.user_id, data.name, rooms, frozenset(data.rights), expires_at
    )
    return ok("Token Created", 201, token=secret, api_token=token.as_dict())


def authorize_room(principal: Principal, room_id: str) -> str:
    """A room a user may put in a token's scope: one they may publish to."""
    room = current_app.hub.find_room(room_id)
    if not principal.may(room, "publish"):
        raise ApiError(403, f"Not your room: {room.id}", room=room.id)
    return room.id


@routes.delete("/api/v1/tokens/<token_id>")
@validate_response(IdReply)
async def revoke_api_token(token_id: str):
    """Revoke an API token"""
    principal = current_app.accounts.authorize(request_token(), None, "account")
    await current_app.accounts.revoke_api_token(principal, token_id)
    return ok("Token Revoked", id=token_id)


# Users (admins)


class UserCreate(Body):
    token: str | None = None
    username: matching(USERNAME.pattern, "1-32 letters, digits, '.', '_' or '-'")
    password: Password
    role: Role = "user"


class UserChanges(Body):
    token: str | None = None
    disabled: bool = False
    role: Role = "user"
    password: Password | None = None


class UsersReply(Reply):
    users: list[UserOut]


class UserReply(Reply):
    user: UserOut


@routes.get("/api/v1/users")
@validate_response(UsersReply)
async def list_users():
    """Every user (admins)"""
    current_app.accounts.authorize(request_token(), None, "admin")
    users = await current_app.storage.load_users()
    return ok(users=[user.as_dict() for user in users.values()])


@routes.post("/api/v1/users")
@validate_request(UserCreate)
@validate_response(UserReply, 201)
async def create_user(data: UserCreate):
    """Create a user (admins)"""
    current_app.accounts.authorize(request_token(data.token), None, "admin")
    user = await current_app.accounts.create_user(data.username, data.password, data.role)
    return ok("User Created", 201, user=user.as_dict())


@routes.patch("/api/v1/users/<user_id>")
@validate_request(UserChanges)
@validate_response(UserReply)
async def update_user(user_id: str, data: UserChanges):
    """Disable or enable a user, change the role, reset the password (admins). Disabling
    or a new password ends the user's sessions."""
    principal = current_app.accounts.authorize(request_token(data.token), None, "admin")
    changes = data.model_dump(exclude_unset=True, exclude={"token"})
    if user_id == principal.user_id and (changes.get("disabled") or changes.get("role") == "user"):
        raise ApiError(400, "You cannot disable or demote your own account")
    user = await current_app.accounts.update_user(user_id, changes)
    return ok("User Updated", user=user.as_dict())


@routes.delete("/api/v1/users/<user_id>")
@validate_response(IdReply)
async def delete_user(user_id: str):
    """Delete a user (admins); their rooms stay, without an owner"""
    principal = current_app.accounts.authorize(request_token(), None, "admin")
    if user_id == principal.user_id:
        raise ApiError(400, "You cannot delete your own account")
    await current_app.accounts.delete_user(user_id)
    current_app.hub.disown_rooms(user_id)
    return ok("User Deleted", id=user_id)


# The pages: prebuilt files of frontend/dist (see frontend/README.md), under the strict CSP
# that StreamingMessage gives every HTML page. They load sse-client.js and assets/ relatively, so
# dist/ also works as a static site. Static files: not in the OpenAPI document.


SSE_CLIENT_FILES = (
    "any('sse-client.js', 'sse-client.js.map', 'sse-client.min.js', 'sse-client.min.js.map')"
)


class PageName(BaseConverter):
    """A path segment naming a room's page: any room id, as the stream takes any (one that
    is not a room shows the quote feed), but no name with a dot: that is a file this site
    does not have (favicon.ico, robots.txt), and sse-client.js is one it has."""

    regex = r"[^/.]+"


@routes.get(f"/static/js/<{SSE_CLIENT_FILES}:name>")  # the Bun project's path
@routes.get(f"/<{SSE_CLIENT_FILES}:name>")  # the pages' (relative) path
@routes.get(f"/<page:room_id>/<{SSE_CLIENT_FILES}:name>")  # ...from /<room>/history
@hide
async def sse_client_js(name: str, room_id: str = ""):
    """The client library, minified or not, with its source maps (developer tools ask)."""
    mimetype = "application/json" if name.endswith(".map") else "text/javascript"
    return await send_from_directory(DIST, name, mimetype=mimetype)


@routes.get("/assets/<path:name>")
@routes.get("/<page:room_id>/assets/<path:name>")  # the relative path from /<room>/history
@hide
async def assets(name: str, room_id: str = ""):
    return await send_from_directory(DIST / "assets", name)


@routes.get("/admin")
@routes.get("/chat")
@hide
async def app_page():
    """dist/admin.html or dist/chat.html."""
    return await send_from_directory(DIST, f"{request.path[1:]}.html")


@routes.get("/")
@routes.get("/<page:room_id>")
@hide
async def player_page(room_id: str | None = None):
    return await embeddable_page("player.html")


@routes.get("/<page:room_id>/history")
@hide
async def history_page(room_id: str):
    """The room's last lines as a log: a second OBS source beside the player."""
    return await embeddable_page("history.html")


async def embeddable_page(page: str):
    request.scope[EMBEDDABLE] = True  # OBS and stream sites frame it: FRAME_ANCESTORS
    return await send_from_directory(DIST, page)


# ---------------------------------------------------------------------------------------
# Relay: the AI chat. The server holds the key and streams a completion from an OpenAI-
# compatible API (or, with no key, from a built-in demo model). Each chat keeps its events
# in memory as numbered, encoded SSE frames, so a browser that connects late, resumes by
# Last-Event-ID or opens a second tab replays them and then follows live.
# ---------------------------------------------------------------------------------------

CHAT_UID = re.compile(r"[A-Za-z0-9_-]{1,64}")
BUSY_RETRY_AFTER_S = 5  # a cap frees up when some chat ends, which nothing predicts
DEMO_ANSWER = (
    "[Demo model] Hello! This server has no LLM_API_KEY, so this answer comes from its "
    "built-in demo model, word by word, with no AI service involved. You wrote: “{prompt}”. "
    "Set LLM_API_KEY (and LLM_BASE_URL, LLM_MODEL) to talk to a real model."
)


class ChatMessage(Body):
    role: Literal["user", "assistant"]
    content: str


class ChatRequest(Body):
    """A prompt, or a conversation: `messages` (at most MAX_MESSAGES, MAX_PROMPT_CHARS in
    all, else 413)."""

    token: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class ChatStart(ChatRequest):
    uid: matching(CHAT_UID.pattern, "1-64 letters, digits, '-' or '_'") | None = None


class RoomAiRequest(ChatRequest):
    speaker: Speaker = "AI"


class ChatReply(Reply):
    uid: str


class RoomTarget(BaseModel):
    room: str


class RoomAiReply(ChatReply):
    target: RoomTarget


def sse_response(frames: AsyncIterator[bytes]) -> Response:
    """A streaming Quart response with the hot path's SSE headers. It opens with a comment,
    so the headers go out (and an EventSource opens) before the first event is ready."""

    async def body() -> AsyncIterator[bytes]:
        yield KEEPALIVE_FRAME
        async for frame in frames:
            yield frame

    return Response(body(), headers={name.decode(): value.decode() for name, value in SSE_HEADERS})


def chat_messages(data: ChatRequest, settings: Settings) -> list[dict[str, str]]:
    """The conversation of a chat request: `prompt` or `messages`. Raises 400, or 413 past
    MAX_MESSAGES/MAX_PROMPT_CHARS."""
    if (data.prompt is None) == (data.messages is None):
        raise ApiError(400, "Send either prompt (a string) or messages (a list)")
    if data.prompt is not None:
        if not data.prompt.strip():
            raise ApiError(400, "prompt must be a non-empty string")
        conversation = [{"role": "user", "content": data.prompt}]
    else:
        conversation = [message.model_dump() for message in data.messages]
    if not conversation:
        raise ApiError(400, "messages must be a non-empty list")
    if len(conversation) > settings.max_messages:
        raise ApiError(413, f"Too many messages (max {settings.max_messages})")
    if sum(len(message["content"]) for message in conversation) > settings.max_prompt_chars:
        raise ApiError(413, f"Prompt too long (max {settings.max_prompt_chars} characters)")
    return conversation


USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def known_usage(usage: Any) -> dict[str, int] | None:
    """What the relay passes on of an upstream's `usage`: the known counts, when they are
    integers (0 or more). Anything else a service sends there (nested details, costs, its
    own fields) stays here; None when nothing is left."""
    if not isinstance(usage, dict):
        return None
    counts = {name: usage.get(name) for name in USAGE_FIELDS}
    return {name: n for name, n in counts.items() if type(n) is int and n >= 0} or None


async def upstream_refusal(response: httpx.Response) -> ApiError:
    """The error for a non-200 answer. Its body goes to the log (without the key), never to
    the client."""
    await response.aread()
    status = response.status_code
    log.warning("AI service answered %d: %s", status, response.text[:300])
    if status == 429:
        return ApiError(502, "The AI service is over its rate limit (429); try again later")
    if status >= 500:
        return ApiError(502, f"The AI service failed ({status})")
    return ApiError(502, f"The AI service rejected the request ({status})")


class Chat:
    """One answer: its frames so far (ids 1..n), its task, who follows it. In a room (the AI
    speaker) the answer is also streamed there live and stored there once complete."""

    def __init__(self, relay: Relay, uid: str, client: str, room: Room | None, speaker: str):
        self.relay = relay
        self.uid, self.client, self.room, self.speaker = uid, client, room, speaker
        self.frames: list[bytes] = []
        self.text: list[str] = []
        self.state = "running"  # then "done" or "error"
        self.ended_at = 0.0
        self.listeners = 0
        self.last_listened = time.monotonic()  # a new chat's browser gets CHAT_IDLE_S to come
        self.task: asyncio.Task
        self._grown = asyncio.Event()  # set and replaced on every new frame

    async def answer(self, messages: list[dict[str, str]]) -> None:
        try:
            done = await self.relay.complete(messages, self.delta)
            if self.room is not None:
                data = {"message": "".join(self.text), "stream": self.uid}
                message, *_ = validate_message(
                    {"speaker": self.speaker, "data": data, "meta": "ai"}, self.relay.settings
                )
                (payload,) = await self.relay.hub.publish([(self.room, message)])
                done["id"] = payload["id"]
            self.end("done", done)
        except ApiError as error:
            log.warning("chat %s failed: %s", self.uid, error.msg)
            self.fail(error)
        except asyncio.CancelledError:
            if self.relay.closing.is_set():
                self.fail(shutting_down())
            else:
                self.fail(ApiError(499, "Chat cancelled"))
            raise

    def delta(self, text: str) -> None:
        self.text.append(text)
        self.emit("delta", {"content": text})
        if self.room is not None:
            delta = {"stream": self.uid, "speaker": self.speaker, "content": text}
            self.room.append(event_frame("delta", delta))

    def fail(self, error: ApiError) -> None:
        if self.room is not None:  # players drop the live text: nothing is stored
            delta = {"stream": self.uid, "speaker": self.speaker, "error": error.msg}
            self.room.append(event_frame("delta", delta))
        self.end("error", error.body())

    def emit(self, event: str, data: Any) -> None:
        self.frames.append(b"id: %d\n" % (len(self.frames) + 1) + event_frame(event, data))
        self._grown.set()
        self._grown = asyncio.Event()

    def end(self, event: str, data: Any) -> None:
        self.emit(event, data)
        self.state = "done" if event == "done" else "error"
        self.ended_at = time.monotonic()

    def cancel(self) -> None:
        if self.state == "running":
            self.task.cancel()

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        """The frames after id `after`, then new ones as they come, until the end."""
        after = min(after, len(self.frames))
        self.listeners += 1
        try:
            while True:
                if after < len(self.frames):
                    frames, after = self.frames[after:], len(self.frames)
                    yield b"".join(frames)
                elif self.state != "running":
                    return
                else:
                    try:
                        async with asyncio.timeout(self.relay.settings.keepalive_s):
                            await self._grown.wait()
                    except TimeoutError:
                        yield KEEPALIVE_FRAME
        finally:
            self.listeners -= 1
            self.last_listened = time.monotonic()


class Relay:
    """The chats in memory, the one upstream HTTP client, the limits and the reaper. A room's
    AI speaker publishes its answer through the hub."""

    def __init__(self, settings: Settings, metrics: Metrics, hub: Hub) -> None:
        self.settings, self.metrics, self.hub = settings, metrics, hub
        self.chats: dict[str, Chat] = {}
        # chat starts per client (its address, or IPv6 /64: client_key)
        self.starts = RateLimiter(self.settings.chat_rate_window_s)
        self.client: httpx.AsyncClient
        self.closing = asyncio.Event()
        self._reaper: asyncio.Task

    async def start(self) -> None:
        self.closing = asyncio.Event()
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                self.settings.llm_read_timeout_s, connect=self.settings.llm_connect_timeout_s
            ),
            limits=httpx.Limits(
                max_connections=self.settings.chat_max_total + self.settings.room_ai_max_total
            ),
        )
        self._reaper = asyncio.create_task(self._reap())
        if self.settings.llm_api_key:
            log.info("AI relay: %s at %s", self.settings.llm_model, self.settings.llm_base_url)
        else:
            log.info("AI relay: demo model (LLM_API_KEY is not set)")

    def start_chat(
        self,
        address: str,
        messages: list[dict[str, str]],
        uid: str | None = None,
        room: Room | None = None,
        speaker: str = "",
    ) -> Chat:
        """A chat for the client at `address`; in `room`, the AI speaker (the caller checked
        the publish right)."""
        if self.closing.is_set():
            raise shutting_down()
        if uid in self.chats:
            raise ApiError(409, f"Chat already exists: {uid}", uid=uid)
        client = client_key(address)
        self.admit(client, room is not None)
        chat = Chat(self, uid or uuid.uuid4().hex, client, room, speaker)
        self.chats[chat.uid] = chat
        chat.task = asyncio.create_task(chat.answer(messages))
        self.metrics.relay_streams.inc()
        return chat

    def admit(self, client: str, in_room: bool) -> None:
        """Count a chat start for `client`, or raise 429 when a limit says no. The rooms' AI
        speakers (publish rights) have a capacity of their own, which chats anyone may
        start cannot take."""
        running = [chat for chat in self.chats.values() if chat.state == "running"]
        if in_room:
            capacity, busy = self.settings.room_ai_max_total, "other AI answers in rooms"
        else:
            capacity, busy = self.settings.chat_max_total, "other chats"
        if sum((chat.room is not None) == in_room for chat in running) >= capacity:
            raise ApiError(429, f"The server is busy with {busy}", retry_after=BUSY_RETRY_AFTER_S)
        if sum(chat.client == client for chat in running) >= self.settings.chat_max_per_client:
            raise ApiError(
                429,
                f"Too many chats at once (max {self.settings.chat_max_per_client}): "
                "wait for one to end",
                retry_after=BUSY_RETRY_AFTER_S,
            )
        limit, window = self.settings.chat_rate_limit, self.settings.chat_rate_window_s
        self.starts.take(
            {client: Limit(limit)}, f"Rate limited: at most {limit} chats per {window:g} s"
        )

    def find(self, uid: str) -> Chat:
        chat = self.chats.get(uid)
        if chat is None:
            raise ApiError(404, f"Unknown or expired chat: {uid}", uid=uid)
        return chat

    async def _reap(self) -> None:
        """Free ended chats after CHAT_TTL_S; cancel running ones (but a room's, which the
        room's players follow) that nobody has followed for CHAT_IDLE_S."""
        while True:
            await asyncio.sleep(min(self.settings.chat_ttl_s, self.settings.chat_idle_s) / 2)
            now = time.monotonic()
            for chat in list(self.chats.values()):
                if chat.state != "running":
                    if now - chat.ended_at >= self.settings.chat_ttl_s:
                        del self.chats[chat.uid]
                elif (
                    chat.room is None
                    and not chat.listeners
                    and now - chat.last_listened >= self.settings.chat_idle_s
                ):
                    log.info("chat %s: nobody is listening, cancelled", chat.uid)
                    chat.cancel()

    async def close(self) -> None:
        """Shutdown: cancel running chats (followers get the error event and end)."""
        if self.closing.is_set():
            return
        self.closing.set()
        tasks = [chat.task for chat in self.chats.values() if chat.state == "running"]
        for task in [*tasks, self._reaper]:
            task.cancel()
        await asyncio.gather(*tasks, self._reaper, return_exceptions=True)
        await self.client.aclose()

    async def complete(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> dict:
        """Stream an answer, calling on_delta(text) for each piece; returns the `done` event's
        data. Any failure is an ApiError whose msg is safe to show: no key, no upstream body."""
        model = self._openai_answer if self.settings.llm_api_key else self._demo_answer
        try:
            async with asyncio.timeout(self.settings.llm_timeout_s):
                return await model(messages, on_delta)
        except (TimeoutError, ApiError) as error:
            self.metrics.relay_upstream_errors.inc()
            if isinstance(error, ApiError):
                raise
            raise ApiError(504, "The AI service timed out") from None

    async def _demo_answer(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> dict:
        prompt = textwrap.shorten(messages[-1]["content"], 200, placeholder=" …")
        for index, word in enumerate(DEMO_ANSWER.format(prompt=prompt).split(" ")):
            await asyncio.sleep(self.settings.demo_delay_s)
            on_delta(word if index == 0 else " " + word)
        return {"finish_reason": "stop", "usage": None, "model": "demo"}

    async def _openai_answer(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> dict:
        """POST {LLM_BASE_URL}/chat/completions with stream: true and read its SSE chunks."""
        system = [{"role": "system", "content": self.settings.llm_system_prompt}]
        body: dict[str, Any] = {
            "model": self.settings.llm_model,
            "messages": (system if self.settings.llm_system_prompt else []) + messages,
            "stream": True,
            "stream_options": {"include_usage": True},  # the usage chunk, where supported
        }
        if self.settings.llm_max_tokens:
            body["max_tokens"] = self.settings.llm_max_tokens
        done: dict[str, Any] = {
            "finish_reason": None,
            "usage": None,
            "model": self.settings.llm_model,
        }
        try:
            async with aconnect_sse(
                self.client,
                "POST",
                self.settings.llm_base_url.rstrip("/") + "/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {self.settings.llm_api_key}"},
            ) as source:
                if source.response.status_code != 200:
                    raise await upstream_refusal(source.response)
                async for event in source.aiter_sse():
                    if event.data == "[DONE]":
                        return done
                    chunk = parse_json(event.data)
                    if chunk.get("error"):
                        log.warning("AI service error in stream: %s", event.data[:300])
                        raise ApiError(502, "The AI service reported an error")
                    done["usage"] = known_usage(chunk.get("usage")) or done["usage"]
                    for choice in chunk.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if not isinstance(content, str | None):
                            raise ValueError("delta content is not a string")
                        if content:
                            on_delta(content)
                        done["finish_reason"] = choice.get("finish_reason") or done["finish_reason"]
        except httpx.TimeoutException:
            raise ApiError(504, "The AI service timed out") from None
        except httpx.ConnectError as error:
            log.warning("AI service unreachable: %s", error)
            raise ApiError(502, "Could not reach the AI service") from None
        except (SSEError, ValueError, AttributeError, TypeError) as error:  # not the format we know
            log.warning("AI service sent an invalid response: %s", type(error).__name__)
            raise ApiError(502, "The AI service sent an invalid response") from None
        except httpx.HTTPError as error:
            log.warning("AI service connection lost: %s: %s", type(error).__name__, error)
            raise ApiError(502, "The connection to the AI service was lost") from None
        if done["finish_reason"] is None:  # the body ended cleanly but the answer did not
            raise ApiError(502, "The AI service ended the answer early")
        return done


class ChatEventsQuery(ResumeQuery):
    token: str | None = Field(
        default=None, description="the AI speaker's chat: publish rights on its room"
    )


def require_chat_login(data: ChatRequest) -> None:
    if current_app.settings.chat_require_login:
        current_app.accounts.authorize(request_token(data.token), None, "subscribe")


@routes.post("/api/v1/chat")
@validate_request(ChatStart)
@validate_response(ChatReply, 202)
async def start_chat(data: ChatStart):
    """Start an answer (two-step flow); the browser follows /api/v1/chat/{uid}/events"""
    require_chat_login(data)
    chat = current_app.relay.start_chat(
        request.remote_addr, chat_messages(data, current_app.settings), data.uid
    )
    return ok("Chat Started", 202, uid=chat.uid)


def controlled_chat(uid: str) -> Chat:
    """A chat the request may follow or cancel. A two-step chat's uid is its key: whoever
    knows it may. The AI speaker's is not a secret (its room's players see it in every
    delta): it takes the publish right on the room, as starting it did."""
    chat = current_app.relay.find(uid)
    if chat.room is not None:
        current_app.accounts.authorize(request_token(), chat.room, "publish")
    return chat


@routes.get("/api/v1/chat/<uid>/events")
@document_querystring(ChatEventsQuery)
@event_stream("`event: delta`s, then `event: done` or `error`", {204: "Over, all sent"})
async def chat_events(uid: str):
    """Follow an answer (two-step flow; the AI speaker's: with publish rights on its room);
    resumes by Last-Event-ID"""
    chat = controlled_chat(uid)
    headers = dict(request.scope["headers"])
    after = parse_last_event_id(headers, query_params(request.scope)) or 0
    if chat.state != "running" and after >= len(chat.frames):
        return "", 204  # over, and the client has it all: an EventSource stops reconnecting
    return sse_response(chat.follow(after))


@routes.delete("/api/v1/chat/<uid>")
@validate_response(ChatReply)
async def cancel_chat(uid: str):
    """Cancel an answer (the AI speaker's: with publish rights on its room)"""
    controlled_chat(uid).cancel()
    return ok("Chat Cancelled", uid=uid)


@routes.post("/api/v1/chat/stream")
@validate_request(ChatRequest)
@event_stream("`event: delta`s, then `event: done` or `error`")
async def chat_stream(data: ChatRequest):
    """An answer as the reply itself (one-step flow); cancelled when the client leaves"""
    require_chat_login(data)
    chat = current_app.relay.start_chat(
        request.remote_addr, chat_messages(data, current_app.settings)
    )

    async def follow_alone() -> AsyncIterator[bytes]:
        try:
            async for frames in chat.follow(0):
                yield frames
        finally:
            chat.cancel()  # nobody else knows this chat

    return sse_response(follow_alone())


@routes.post("/api/v1/rooms/<room_id>/ai")
@validate_request(RoomAiRequest)
@validate_response(RoomAiReply, 202)
async def room_ai(room_id: str, data: RoomAiRequest):
    """The AI speaker: streams an answer into the room (`event: delta` keyed by `stream`),
    then stores it as one normal message with the same `stream` key."""
    room = current_app.hub.find_room(room_id)
    current_app.accounts.authorize(request_token(data.token), room, "publish")
    messages = chat_messages(data, current_app.settings)
    chat = current_app.relay.start_chat(
        request.remote_addr, messages, room=room, speaker=data.speaker
    )
    return ok("AI Answer Started", 202, uid=chat.uid, target={"room": room.id})


# ---------------------------------------------------------------------------------------
# Server: four adaptations of Hypercorn and h11, each for a reason told below, all in
# this section. install() puts them in place when the app starts serving (never at
# import). Each was written for h11 0.16.0 and Hypercorn 0.18.0 (both pinned in
# requirements.txt) and first checks that the code it adapts is still as it was then: if
# not, the hub refuses to start and says which one (tests/unit/test_server.py checks them
# against the installed versions too).
# ---------------------------------------------------------------------------------------


class AdaptationError(RuntimeError):
    """A dependency changed under one of the server adaptations."""


def require_source(code: Any, lines: Iterable[str], otherwise: str) -> None:
    """AdaptationError(`otherwise`) unless the source of `code` has each of these lines."""
    source = inspect.getsource(code)
    if not all(line in source for line in lines):
        raise AdaptationError(otherwise)


def accept_utf8_request_targets() -> None:
    """h11 answers 400 to raw UTF-8 in a request line; curl sends it as typed (the Bun
    project's README does: `msg=冲！冲刺！`). Accept it, as nginx, Node and Bun do, and
    percent-encode those bytes so everything after the parser sees a valid ASCII target.
    h11 only calls `fullmatch(line).groupdict()` on its request-line regex, so a stand-in
    with that interface is the whole shim."""
    readers = h11._readers
    if getattr(readers.request_line_re, "utf8", False):
        return  # installed already
    visible = rb"\x21-\x7e"  # what h11 accepts in a target: visible ASCII only
    if not isinstance(readers.request_line_re, re.Pattern) or (
        visible not in readers.request_line_re.pattern
    ):
        raise AdaptationError("h11._readers.request_line_re is not the regex the shim edits")
    utf8_request_line = re.compile(
        readers.request_line_re.pattern.replace(visible, visible + rb"\x80-\xff")
    )
    visible_ascii = bytes(range(0x21, 0x7F))

    class RequestLine:
        utf8 = True

        @staticmethod
        def fullmatch(line: bytes) -> SimpleNamespace | None:
            match = utf8_request_line.fullmatch(line)
            if match is None:
                return None
            groups = match.groupdict()
            if not groups["target"].isascii():
                groups["target"] = quote(groups["target"], safe=visible_ascii).encode()
            return SimpleNamespace(groupdict=lambda: groups)

    readers.request_line_re = RequestLine
    # h11 must now read a UTF-8 target through the stand-in, percent-encoded
    parser = h11.Connection(h11.SERVER)
    parser.receive_data("GET /?msg=冲 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    event = parser.next_event()
    if not isinstance(event, h11.Request) or event.target != b"/?msg=%E5%86%B2":
        raise AdaptationError("h11 no longer parses request lines with request_line_re")


class KeepAliveTimer:
    """Hypercorn's keep-alive timeout, cheaper. Hypercorn's own (an `AsyncioSingleTask` that
    `hypercorn.asyncio.tcp_server.TCPServer` restarts with its `_idle_timeout`) starts a task,
    and `wait_for` a second one, each time a connection goes idle, and cancels both when the
    next request comes: about 35 µs of every request. This one keeps one watcher per idle
    connection, which a request only marks busy; it closes a connection idle for
    KEEP_ALIVE_TIMEOUT, or at once when the server shuts down, as Hypercorn's does."""

    def __init__(self) -> None:
        self.idle_since: float | None = None
        self.watching = False

    async def restart(self, task_group: Any, action: Callable) -> None:
        """The connection went idle: `action` is its TCPServer's `_idle_timeout`."""
        self.idle_since = asyncio.get_running_loop().time()
        if not self.watching:
            self.watching = True
            task_group._task_group.create_task(self._watch(action.__self__))

    async def stop(self) -> None:
        """A request came (or the connection closes): the watcher ends when it next wakes."""
        self.idle_since = None

    async def _watch(self, server: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.idle_since is not None:
                remaining = self.idle_since + server.config.keep_alive_timeout - loop.time()
                if remaining <= 0 or server.context.terminated.is_set():
                    await server._initiate_server_close()
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.context.terminated.wait(), remaining)
        finally:
            self.watching = False


def use_keep_alive_timer() -> None:
    tcp_server = hypercorn.asyncio.tcp_server
    if tcp_server.AsyncioSingleTask is KeepAliveTimer:
        return
    expected = (
        "self.idle_task = AsyncioSingleTask()",
        "self.idle_task.restart(task_group, self._idle_timeout)",
        "self.context.terminated.wait()",
        "async def _initiate_server_close(self)",
    )
    require_source(
        tcp_server.TCPServer,
        expected,
        "hypercorn's TCPServer no longer uses AsyncioSingleTask as written",
    )
    tcp_server.AsyncioSingleTask = KeepAliveTimer


class StreamsEnd(hypercorn.asyncio.worker_context.EventWrapper):
    """A Hypercorn worker's `terminated` event, set when the worker stops (SIGTERM or SIGINT
    under `hypercorn app:app`, where Hypercorn owns the signals). Before it is set, the app
    ends its streams (`end_streams`: new publishes get 503, every stream ends with a final
    event, the writer commits what is pending), so Hypercorn has no open stream to wait
    out its graceful timeout for. (`python app.py` ends them by its shutdown trigger.)"""

    def __init__(self, end_streams: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.end_streams = end_streams

    async def set(self) -> None:
        if not self.is_set():
            await self.end_streams()
        await super().set()


class StreamsEndingContext(hypercorn.asyncio.worker_context.WorkerContext):
    """Also: a worker of `hypercorn -w N` stops gracefully on SIGTERM. Hypercorn stops its
    workers by an event and leaves SIGTERM to the OS there, but once the first worker has
    exited it SIGTERMs the others, which died mid-shutdown: their streams without their
    final event, their share of the metrics left behind."""

    def __init__(self, end_streams: Callable[[], Awaitable[None]], max_requests: int | None):
        super().__init__(max_requests)
        self.terminated = StreamsEnd(end_streams)
        self.stopping: asyncio.Future | None = None
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            with contextlib.suppress(NotImplementedError):  # Windows: no such handlers
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stop)

    def stop(self) -> None:
        self.stopping = self.stopping or asyncio.ensure_future(self.terminate.set())


def end_streams_when_workers_stop(end_streams: Callable[[], Awaitable[None]]) -> None:
    run = hypercorn.asyncio.run
    require_source(
        run.worker_serve,
        ("context = WorkerContext(", "await context.terminated.set()"),
        "hypercorn's worker_serve no longer makes its WorkerContext so",
    )
    run.WorkerContext = functools.partial(StreamsEndingContext, end_streams)


CLOSE_GRACE_S = 1  # for a connection closing during shutdown to hand its last bytes over


def abort_connections_left_open() -> None:
    """Hypercorn closes a connection with `writer.close()` then `await writer.wait_closed()`,
    which returns once every byte written was taken by the client: never, for a client that
    does not read. Cancelling it does not help (`TCPServer._close` swallows the cancellation,
    and the connection's task awaits the close again). So one non-reading stream held a
    SIGTERM until the client went (40-90 s). The streams have had SHUTDOWN_TIMEOUT to send
    their last frames (Hub.serve_stream); a connection that closes while the worker stops
    and is still open CLOSE_GRACE_S later is aborted: its unsent bytes are dropped."""
    tcp_server = hypercorn.asyncio.tcp_server
    close = tcp_server.TCPServer._close
    if getattr(close, "aborts", False):
        return
    expected = (
        "self.context = context",
        "self.writer = writer",
        "async def _close(self)",
        "await self.writer.wait_closed()",
    )
    require_source(
        tcp_server.TCPServer,
        expected,
        "hypercorn's TCPServer no longer closes its writer as written",
    )

    async def close_or_abort(server: Any) -> None:
        if server.context.terminated.is_set():
            # a no-op if the connection is closed by then
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, server.writer.transport.abort)
        await close(server)

    close_or_abort.aborts = True
    tcp_server.TCPServer._close = close_or_abort


def install(end_streams: Callable[[], Awaitable[None]]) -> None:
    """Put the four adaptations in place (again: the last app's `end_streams` wins)."""
    accept_utf8_request_targets()
    use_keep_alive_timer()
    end_streams_when_workers_stop(end_streams)
    abort_connections_left_open()


# ---------------------------------------------------------------------------------------
# App factory: builds the app from its settings and wires its parts, each given what it
# uses. Building does no I/O; starting to serve opens the storage and starts the rest.
# ---------------------------------------------------------------------------------------

# Tokens from READMEs and examples: fine on a laptop, an open door on a public address.
PLACEHOLDER_TOKENS = {"your_super_secret_token_here", "changeme", "change-me", "secret", "token"}


class BehindProxy(ProxyFixMiddleware):
    """The app behind a trusted proxy (TRUST_PROXY): the client's address and scheme come
    from the proxy's headers. The fix must come before everything (security headers, logs,
    cookies), so it wraps the finished app; its attributes are the app's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


def check_data_dir(settings: Settings) -> None:
    """DATA_DIR must be a directory this process can write (a volume mounted with root's
    ownership, say, is not): ConfigError naming it and the uid otherwise."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        uid = os.getuid() if hasattr(os, "getuid") else "?"
        raise ConfigError(
            f"DATA_DIR {settings.data_dir} is not writable by uid {uid} ({error.strerror})"
        ) from None


def shared_metrics_dir(data_dir: Path) -> Path | None:
    """Where this process counts its metrics with the other workers of its server, made
    here: DATA_DIR/metrics/<server pid>-<run>; None for a process of its own (`python
    app.py`). Hypercorn's workers are processes its master spawns with multiprocessing,
    which hands each the master's random authkey: its hash names the run, so a run never
    counts on from an earlier one (nor from one whose master had the same pid). The
    directories of earlier runs, whose master is gone, are removed."""
    server = multiprocessing.parent_process()
    if server is None:
        return None
    run = sha256_hex(multiprocessing.current_process().authkey.hex())[:16]
    directory = data_dir / "metrics" / f"{server.pid}-{run}"
    for other in directory.parent.glob("*-*"):
        pid = other.name.partition("-")[0]
        if other == directory or not pid.isdigit():
            continue
        if pid == str(server.pid) or not process_alive(int(pid)):
            shutil.rmtree(other, ignore_errors=True)  # another worker may be removing it
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: keep the directory
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


GC_YOUNG_THRESHOLD = 7000  # container allocations between young collections (Python's: 700)


def create_app(settings: Settings) -> StreamingMessage:
    metrics = Metrics()
    storage = Storage(settings.database, settings.history_size, settings.sqlite_synchronous)
    hub = Hub(settings, metrics, storage, accounts_changed=lambda: accounts.reload())
    accounts = Accounts(settings, storage, announce=hub.broker.accounts_changed)
    relay = Relay(settings, metrics, hub)

    app = StreamingMessage(__name__, static_folder=None)
    app.url_map.converters["page"] = PageName  # before the routes that use it
    app.settings, app.metrics, app.storage = settings, metrics, storage
    app.hub, app.accounts, app.relay = hub, accounts, relay
    app.config.update(
        RESPONSE_TIMEOUT=None,  # SSE responses last for hours
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        BODY_TIMEOUT=settings.body_timeout_s,
    )
    app.register_blueprint(routes)
    QuartSchema(
        app,
        info={"title": "streaming-message", "version": API_VERSION},
        swagger_ui_path=None,  # the UIs load scripts from CDNs: not under this site's CSP
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={
            "bearer": {"type": "http", "scheme": "bearer"},
            "query_token": {"type": "apiKey", "in_": "query", "name": "token"},
        },
        security=[{"bearer": []}, {"query_token": []}, {}],  # {}: some routes need none
        openapi_provider_class=ApiDocs,
    )
    Redactor(settings.secrets()).install(log)

    @app.before_serving
    async def start() -> None:
        log.debug("settings: %r", settings)  # the secrets are fields with repr=False
        check_data_dir(settings)
        if (directory := shared_metrics_dir(settings.data_dir)) is not None:
            metrics.share(directory)
        install(app.end_streams)
        if settings.sse_token in PLACEHOLDER_TOKENS and not is_loopback(settings.host):
            log.warning(
                "SSE_TOKEN is a well-known placeholder and the hub listens on %s: "
                "anyone can publish; set a secret of your own",
                settings.host,
            )
        await hub.start()
        try:
            await accounts.start()
            await relay.start()
        except BaseException:  # e.g. no ADMIN_PASSWORD: stop, or the database's threads linger
            await stop()
            raise
        # What start-up made (Quart, pydantic, this module) lives as long as the process:
        # frozen, full collections no longer traverse it; and young collections run a tenth
        # as often. Together 2.7 % fewer instructions a publish (bench/instructions.py).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)

    @app.after_serving
    async def stop() -> None:
        await app.end_streams()
        await storage.close()
        metrics.retire()

    return app


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def served(app: StreamingMessage) -> StreamingMessage | BehindProxy:
    """What Hypercorn serves: the app, behind the proxy fix with TRUST_PROXY."""
    if app.settings.trust_proxy:
        return BehindProxy(app, trusted_hops=app.settings.trust_proxy)
    return app


# ---------------------------------------------------------------------------------------
# Global objects: the one app of `hypercorn app:app`, built from the environment
# ---------------------------------------------------------------------------------------

app = served(create_app(Settings.from_env()))


# ---------------------------------------------------------------------------------------
# Entry point: `python app.py` serves the same app; `python app.py create-user` adds a user;
# `python app.py send` and `tail` are a small client of a running hub (SM_URL, SM_TOKEN)
# ---------------------------------------------------------------------------------------


def check_port(host: str, port: int) -> None:
    """Refuse at once, in one line, when the port is taken (Hypercorn would find out only
    after the app has started, and hang)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} is in use; set PORT") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None


async def serve(app: StreamingMessage | BehindProxy) -> None:
    """Serve under Hypercorn until SIGTERM or SIGINT. Hypercorn's documented shutdown
    trigger ends the streams first (app.end_streams), so Hypercorn has none to wait for."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    settings = app.settings
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None  # StreamingMessage.__call__ logs each request (ACCESS_LOG), redacted
    config.include_server_header = False  # nobody needs to know
    config.backlog = 4096  # a restart makes every client reconnect at once (Hypercorn's: 100)
    config.errorlog = log  # so Hypercorn's lines are redacted too
    config.h11_max_incomplete_size = settings.max_header_bytes  # request line + headers
    config.h2_max_header_list_size = settings.max_header_bytes
    # after the streams' last frames (SHUTDOWN_TIMEOUT) and their connections' close: the
    # app has ended every connection by then (Hypercorn cancelling them logs tracebacks)
    config.graceful_timeout = settings.shutdown_timeout_s + 2 * CLOSE_GRACE_S

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for name in ("SIGINT", "SIGTERM"):
        try:
            loop.add_signal_handler(getattr(signal, name), stopping.set)
        except NotImplementedError:  # Windows
            signal.signal(getattr(signal, name), lambda *_: loop.call_soon_threadsafe(stopping.set))

    async def shutdown_trigger() -> None:
        await stopping.wait()
        await app.end_streams()

    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)


def create_user_command(app: StreamingMessage, username: str, admin: bool) -> None:
    """`create-user`: the password comes from a prompt (a terminal) or the first line of
    stdin; nothing secret is printed. Safe while the server runs (SQLite WAL)."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            sys.exit("create-user: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")

    async def create() -> User:
        await app.storage.open()
        try:
            return await app.accounts.create_user(username, password, "admin" if admin else "user")
        finally:
            await app.storage.close()

    try:
        check_data_dir(app.settings)
        user = asyncio.run(create())
    except ApiError as error:
        sys.exit(f"create-user: {error.msg}")
    print(f"created {user.role} {user.username}")


def hub_client() -> tuple[str, httpx.AsyncClient]:
    """The hub the client commands talk to (SM_URL) and an HTTP client sending SM_TOKEN."""
    url = os.environ.get("SM_URL", "http://127.0.0.1:8000").rstrip("/")
    token = os.environ.get("SM_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return url, httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(10, read=None))


def refusal(command: str, response: httpx.Response) -> str:
    """The hub's error reply as one line: its envelope's msg, or the status."""
    try:
        msg = response.json()["msg"]
    except (ValueError, KeyError, TypeError):
        msg = response.reason_phrase
    return f"{command}: {response.status_code} {msg}"


async def send_command(room: str, message: str, speaker: str) -> None:
    """`send`: publish a message; prints its id."""
    url, client = hub_client()
    body = {"room": room, "speaker": speaker, "data": {"message": message}}
    async with client:
        try:
            response = await client.post(f"{url}/api/v1/send", json=body)
        except httpx.HTTPError as error:
            sys.exit(f"send: cannot reach {url}: {error}")
    if response.status_code != 202:
        sys.exit(refusal("send", response))
    print(response.json()["id"])


async def tail_command(room: str) -> None:
    """`tail`: print a room's messages as they come, one JSON payload a line (the stream's
    `data:`), until interrupted. Reconnects as EventSource does, resuming by Last-Event-ID,
    so a restart of the hub loses nothing; a refusal (401, 403, ...) ends it."""
    url, client = hub_client()
    last_id, retry_s = None, 3.0
    async with client:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with aconnect_sse(
                    client, "GET", f"{url}/api/v1/events/{room}", headers=headers
                ) as source:
                    if source.response.status_code != 200:
                        await source.response.aread()
                        sys.exit(refusal("tail", source.response))
                    async for event in source.aiter_sse():
                        retry_s = event.retry / 1000 if event.retry is not None else retry_s
                        if event.event == "meta":
                            print(f"tail: following {room} on {url}", file=sys.stderr, flush=True)
                        elif event.event == "message" and event.data:
                            print(event.data, flush=True)
                            last_id = event.id or last_id  # the quote feed sends no id
            except (httpx.HTTPError, SSEError) as error:
                print(f"tail: {str(error) or type(error).__name__}; reconnecting", file=sys.stderr)
            await asyncio.sleep(retry_s)


def main(app: StreamingMessage | BehindProxy, argv: list[str]) -> None:
    logging.basicConfig(
        level=app.settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiosqlite").setLevel(logging.INFO)  # its debug lines show SQL values
    # Quart's and Hypercorn's lines too
    Redactor(app.settings.secrets()).install(*logging.getLogger().handlers)
    parser = argparse.ArgumentParser(prog="app.py", description="Run the hub, or a command.")
    commands = parser.add_subparsers(dest="command")
    user_command = commands.add_parser("create-user", help="create a user (asks the password)")
    user_command.add_argument("username")
    user_command.add_argument("--admin", action="store_true", help="with the admin role")
    send = commands.add_parser("send", help="publish a message to a hub (SM_URL, SM_TOKEN)")
    send.add_argument("room")
    send.add_argument("message")
    send.add_argument("--speaker", default="cli", help="who speaks (default: cli)")
    tail = commands.add_parser("tail", help="print a room's messages as they come (SM_URL)")
    tail.add_argument("room")
    args = parser.parse_args(argv)
    if args.command == "create-user":
        create_user_command(app, args.username, args.admin)
        return
    if args.command in ("send", "tail"):  # a client: its output is the hub's replies only
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "send":
        asyncio.run(send_command(args.room, args.message, args.speaker))
        return
    if args.command == "tail":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(tail_command(args.room))
        return
    check_data_dir(app.settings)
    check_port(app.settings.host, app.settings.port)
    if uvloop is not None:
        uvloop.run(serve(app))  # `hypercorn -k uvloop app:app` is the same loop
    else:
        asyncio.run(serve(app))


if __name__ == "__main__":
    main(app, sys.argv[1:])
