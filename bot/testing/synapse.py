"""A throwaway Synapse homeserver for tests, `support-bot demo` and benchmarks.

Synapse runs as a subprocess of the current Python interpreter (`python -m
synapse.app.homeserver`), so `matrix-synapse` must be installed in the same environment. Nothing
here imports Synapse itself: importing this module is cheap and safe without it.

The generated `homeserver.yaml` is kept as Synapse wrote it (it has no final newline, so keys
appended to it would be glued to a comment); everything we need is in a second file,
`override.yaml`, passed with a second `-c`. Top-level keys of the later file replace those of
the earlier one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import aiohttp

from bot.testing.net import free_port

log = logging.getLogger(__name__)

GENERATED_CONFIG = "homeserver.yaml"
OVERRIDE_CONFIG = "override.yaml"
LOG_CONFIG = "log.config.yaml"
CONSOLE_LOG = "synapse.console.log"

START_TIMEOUT = 60.0
STOP_GRACE = 10.0

# Every client-facing rate limiter of Synapse 1.163 (synapse/config/ratelimiting.py). Defaults
# such as rc_message 0.2/s with a burst of 10 would make every multi-message test measure the
# limiter instead of the bot (matrix-nio retries 429s silently, so it only looks slow).
_UNLIMITED = {"per_second": 100_000, "burst_count": 1_000_000}
RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {
        "address": _UNLIMITED,
        "account": _UNLIMITED,
        "failed_attempts": _UNLIMITED,
    },
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {
        "per_room": _UNLIMITED,
        "per_user": _UNLIMITED,
        "per_issuer": _UNLIMITED,
    },
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}


# Loopback only: never route the readiness probe through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SynapseError(RuntimeError):
    """Synapse could not be configured or started; the message carries the log tail."""


class RegistrationError(RuntimeError):
    """The homeserver refused to register or log in a user."""


def synapse_available() -> bool:
    """Whether `matrix-synapse` is importable by this interpreter."""
    return importlib.util.find_spec("synapse") is not None


class Synapse:
    """A running Synapse subprocess. Build it with `Synapse.start(...)`; stop with `.stop()`.

    Also a context manager: `with Synapse.start(tmp) as hs: ...`.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        server_name: str,
        port: int,
        shared_secret: str,
        log_path: Path,
        process: subprocess.Popen[bytes],
        console: IO[bytes],
    ) -> None:
        self.data_dir = data_dir
        self.server_name = server_name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.shared_secret = shared_secret
        self.log_path = log_path
        self.process = process
        self._console = console
        atexit.register(self.stop)

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        port: int | None = None,
        server_name: str = "localhost",
        log_to: Path | None = None,
        timeout: float = START_TIMEOUT,
        access_log: bool = False,
    ) -> Synapse:
        """Configure (once per `data_dir`) and start Synapse; return when it answers.

        Blocking (about 2-3 s): call it from a thread (`astart`) inside an event loop.
        `port=None` picks a free port, retrying if another process takes it first.
        `access_log`: also log every request with its timings (the benchmark reads them).
        """
        if not synapse_available():
            raise SynapseError("matrix-synapse is not installed in this Python environment")
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = Path(log_to).resolve() if log_to is not None else data_dir / "homeserver.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)

        generate_config(data_dir, server_name)
        shared_secret = _shared_secret(data_dir)
        _write_log_config(data_dir, log_path, access_log=access_log)

        attempts = 1 if port is not None else 3
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            _write_override(data_dir, port=chosen, shared_secret=shared_secret)
            process, console = _spawn(data_dir)
            server = cls(
                data_dir=data_dir,
                server_name=server_name,
                port=chosen,
                shared_secret=shared_secret,
                log_path=log_path,
                process=process,
                console=console,
            )
            try:
                server._wait_ready(timeout)
            except SynapseError:
                tail = server.log_tail()
                server.stop()
                if attempt < attempts and "Address already in use" in tail:
                    log.warning("port %d was taken before Synapse bound it; retrying", chosen)
                    continue
                raise
            except BaseException:
                server.stop()
                raise
            return server
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    async def astart(cls, data_dir: Path, **kwargs: Any) -> Synapse:
        """`start` run in a thread, for callers inside an event loop."""
        return await asyncio.to_thread(cls.start, data_dir, **kwargs)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 10 s. Idempotent."""
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("Synapse did not stop within %.0f s; killing it", STOP_GRACE)
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait()
        if not self._console.closed:
            self._console.close()

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"<Synapse {self.server_name} at {self.base_url} ({state})>"

    # -- conveniences ----------------------------------------------------------------------

    def user_id(self, localpart: str) -> str:
        return f"@{localpart.lower()}:{self.server_name}"

    async def register(
        self, localpart: str, password: str, *, admin: bool = False
    ) -> tuple[str, str]:
        return await register(self.base_url, self.shared_secret, localpart, password, admin=admin)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Synapse's console output and of its log file."""
        parts = []
        for path in (self.data_dir / CONSOLE_LOG, self.log_path):
            text = _tail(path, lines)
            if text:
                parts.append(f"--- {path} ---\n{text}")
        return "\n".join(parts) or "(no log output)"

    def _wait_ready(self, timeout: float) -> None:
        url = f"{self.base_url}/_matrix/client/versions"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise SynapseError(
                    f"Synapse exited with code {self.process.returncode} during startup "
                    f"(data dir {self.data_dir}).\n{self.log_tail()}"
                )
            try:
                with _NO_PROXY.open(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise SynapseError(
                    f"Synapse did not answer {url} within {timeout:.0f} s "
                    f"(data dir {self.data_dir}).\n{self.log_tail()}"
                )
            time.sleep(0.05)


# -- configuration -------------------------------------------------------------------------


def generate_config(data_dir: Path, server_name: str) -> None:
    """Run Synapse's own generator once; a data dir that already has a config is reused."""
    generated = data_dir / GENERATED_CONFIG
    if generated.exists():
        existing = _generated_server_name(generated)
        if existing is not None and existing != server_name:
            raise SynapseError(
                f"{generated} was generated for server name {existing!r}, not "
                f"{server_name!r}: use another data dir"
            )
        return
    command = [
        sys.executable,
        "-m",
        "synapse.app.homeserver",
        "--generate-config",
        "--server-name",
        server_name,
        "--config-path",
        str(generated),
        "--config-directory",
        str(data_dir),
        "--data-directory",
        str(data_dir),
        "--report-stats=no",
    ]
    result = subprocess.run(command, cwd=data_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not generated.exists():
        generated.unlink(missing_ok=True)  # never reuse a half-written config
        raise SynapseError(
            f"synapse --generate-config failed with code {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )


def _generated_server_name(path: Path) -> str | None:
    match = re.search(r'^server_name:\s*"?([^"\s]+)"?\s*$', path.read_text(), re.MULTILINE)
    return match.group(1) if match else None


def _shared_secret(data_dir: Path) -> str:
    """The registration secret: the one already in our override file, else a new one."""
    override = data_dir / OVERRIDE_CONFIG
    if override.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            secret = json.loads(override.read_text())["registration_shared_secret"]
            if isinstance(secret, str) and secret:
                return secret
    return secrets.token_urlsafe(32)


def override_config(data_dir: Path, *, port: int, shared_secret: str) -> dict[str, Any]:
    """The settings layered over the generated config (exposed for inspection in tests)."""
    return {
        "public_baseurl": f"http://127.0.0.1:{port}/",
        # One plain-HTTP listener on loopback, client (and admin) API only: no federation.
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {
            "name": "sqlite3",
            "args": {"database": str(data_dir / "homeserver.db")},
        },
        "media_store_path": str(data_dir / "media_store"),
        "pid_file": str(data_dir / "homeserver.pid"),
        "log_config": str(data_dir / LOG_CONFIG),
        "enable_registration": False,
        "registration_shared_secret": shared_secret,
        # 12 rounds cost ~0.1 s per password; tests register many users.
        "bcrypt_rounds": 4,
        "federation_domain_whitelist": [],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        "report_stats": False,
        "enable_metrics": False,
        **RATE_LIMITS,
    }


def _write_override(data_dir: Path, *, port: int, shared_secret: str) -> None:
    # JSON is valid YAML, and a JSON writer cannot produce the "glued line" problem.
    config = override_config(data_dir, port=port, shared_secret=shared_secret)
    (data_dir / OVERRIDE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _write_log_config(data_dir: Path, log_path: Path, *, access_log: bool = False) -> None:
    config = {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_path),
                "encoding": "utf8",
            }
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
        # "Processed request: <real>sec/… ru=(…) db=(…) … "PUT /…"" per request, at INFO.
        "loggers": {"synapse.access.http": {"level": "INFO"}} if access_log else {},
        "disable_existing_loggers": False,
    }
    (data_dir / LOG_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _spawn(data_dir: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    command = [
        sys.executable,
        "-m",
        "synapse.app.homeserver",
        "-c",
        str(data_dir / GENERATED_CONFIG),
        "-c",
        str(data_dir / OVERRIDE_CONFIG),
    ]
    console = (data_dir / CONSOLE_LOG).open("ab")
    try:
        process = subprocess.Popen(
            command,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            # Own process group: a Ctrl-C in the terminal does not reach it half-way through a
            # test, and stop() can signal the whole group.
            start_new_session=True,
        )
    except BaseException:
        console.close()
        raise
    return process, console


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            data = handle.read().decode("utf8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# -- users ---------------------------------------------------------------------------------


def registration_mac(
    shared_secret: str, nonce: str, localpart: str, password: str, *, admin: bool
) -> str:
    """HMAC-SHA1 over `nonce NUL user NUL password NUL admin|notadmin` (Synapse admin API)."""
    mac = hmac.new(shared_secret.encode("utf8"), digestmod=hashlib.sha1)
    mac.update(nonce.encode("utf8"))
    mac.update(b"\x00")
    mac.update(localpart.encode("utf8"))
    mac.update(b"\x00")
    mac.update(password.encode("utf8"))
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


async def register(
    base_url: str,
    shared_secret: str,
    localpart: str,
    password: str,
    *,
    admin: bool = False,
    session: aiohttp.ClientSession | None = None,
) -> tuple[str, str]:
    """Register `localpart` with the shared-secret admin API; return (user_id, access_token).

    If the user already exists, log in with `password` instead (each call then makes a new
    device and token).
    """
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await register(
                base_url, shared_secret, localpart, password, admin=admin, session=own
            )
    url = f"{base_url.rstrip('/')}/_synapse/admin/v1/register"
    async with session.get(url) as response:
        body = await _json(response)
        if response.status != 200 or "nonce" not in body:
            raise RegistrationError(f"GET {url}: {response.status} {body}")
        nonce = body["nonce"]
    payload = {
        "nonce": nonce,
        "username": localpart,
        "password": password,
        "admin": admin,
        "mac": registration_mac(shared_secret, nonce, localpart, password, admin=admin),
    }
    async with session.post(url, json=payload) as response:
        body = await _json(response)
        if response.status == 200:
            return body["user_id"], body["access_token"]
        if body.get("errcode") != "M_USER_IN_USE":
            raise RegistrationError(f"registering {localpart!r}: {response.status} {body}")
    return await login(base_url, localpart, password, session=session)


async def login(
    base_url: str,
    localpart: str,
    password: str,
    *,
    session: aiohttp.ClientSession,
) -> tuple[str, str]:
    """Password login; return (user_id, access_token)."""
    url = f"{base_url.rstrip('/')}/_matrix/client/v3/login"
    payload = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": localpart},
        "password": password,
    }
    async with session.post(url, json=payload) as response:
        body = await _json(response)
        if response.status != 200:
            raise RegistrationError(
                f"{localpart!r} exists and logging in failed: {response.status} {body}"
            )
        return body["user_id"], body["access_token"]


async def register_many(
    base_url: str,
    shared_secret: str,
    accounts: Iterable[tuple[str, str]],
    *,
    admin: bool = False,
    concurrency: int = 16,
) -> list[tuple[str, str]]:
    """Register (localpart, password) pairs concurrently; results in the input order."""
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(localpart: str, password: str) -> tuple[str, str]:
            async with limit:
                return await register(
                    base_url, shared_secret, localpart, password, admin=admin, session=session
                )

        # A TaskGroup cancels the other registrations as soon as one fails.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(name, pw)) for name, pw in accounts]
        return [task.result() for task in tasks]


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {"raw": (await response.text())[:500]}
    return body if isinstance(body, dict) else {"raw": body}
