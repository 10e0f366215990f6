"""A Matrix user on Element's own SDK: matrix-js-sdk with its Rust crypto, run by Node.

`tests/js/element-client.mjs` is the driver; this module starts it as a subprocess and talks
to it one JSON line at a time (the protocol is described at the top of the driver). The SDK
and a Node ≥ 22 come from `tests/js` (`npm ci` there; `scripts/test` runs it when npm is
present). Without them the tests that use `ElementClient` are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

JS_DIR = Path(__file__).resolve().parents[1] / "js"
DRIVER = JS_DIR / "element-client.mjs"
SDK_PACKAGE = JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json"
LOCAL_NODE = JS_DIR / "node_modules" / ".bin" / "node"
SDK_MAJOR = 43
NODE_MAJOR = 22
INSTALL_HINT = "npm ci --prefix tests/js (./scripts/test runs it when npm is present)"

# Slack over the driver's own timeout, so that its error (which says what it saw) comes first.
_SLACK = 10.0


class DriverError(RuntimeError):
    """The driver answered a command with an error, or died."""


@dataclass(frozen=True)
class Runtime:
    node: str
    sdk_version: str


def _node_major(node: str) -> int | None:
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", version.strip())
    return int(match.group(1)) if match else None


def runtime() -> Runtime:
    """Node and matrix-js-sdk as installed in tests/js, or the test skipped with why."""
    if not SDK_PACKAGE.is_file():
        pytest.skip(
            f"matrix-js-sdk is not installed in tests/js: Element SDK tests skipped "
            f"({INSTALL_HINT})"
        )
    sdk_version = json.loads(SDK_PACKAGE.read_text())["version"]
    if int(sdk_version.split(".")[0]) != SDK_MAJOR:
        pytest.skip(
            f"tests/js has matrix-js-sdk {sdk_version}, not {SDK_MAJOR}.x ({INSTALL_HINT})"
        )
    for node in (str(LOCAL_NODE), shutil.which("node")):
        if node and (major := _node_major(node)) is not None and major >= NODE_MAJOR:
            return Runtime(node=node, sdk_version=sdk_version)
    pytest.skip(
        f"no Node ≥ {NODE_MAJOR} (tests/js installs the npm package node@22): "
        f"Element SDK tests skipped ({INSTALL_HINT})"
    )


class ElementClient:
    """One user on one new device, in Element's crypto modes.

    `isolation`: "all" (Element's default) or "only_signed" ("exclude insecure devices",
    `OnlySignedDevicesIsolationMode`); `blacklist_unverified`: "never send encrypted messages
    to unverified sessions" (`globalBlacklistUnverifiedDevices`); `cross_sign`: the user sets
    up their own cross-signing on this device first, as Element does.
    """

    def __init__(self, process: asyncio.subprocess.Process, log: IO[bytes], log_path: Path):
        self._process = process
        self._log = log
        self.log_path = log_path
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self.user_id = ""
        self.device_id = ""
        self.master_key: str | None = None

    @classmethod
    async def start(
        cls,
        homeserver: str,
        user_id: str,
        password: str,
        *,
        log_path: Path,
        isolation: str = "all",
        blacklist_unverified: bool = False,
        cross_sign: bool = False,
    ) -> ElementClient:
        found = runtime()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            found.node,
            str(DRIVER),
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=16 * 1024 * 1024,
        )
        client = cls(process, log, log_path)
        try:
            started = await client.request(
                "start",
                timeout=60,
                homeserver=homeserver,
                user_id=user_id,
                password=password,
                isolation=isolation,
                blacklist_unverified=blacklist_unverified,
                cross_sign=cross_sign,
            )
        except BaseException:
            await client.close()
            raise
        client.user_id = started["user_id"]
        client.device_id = started["device_id"]
        client.master_key = started["master_key"]
        if cross_sign and not started["cross_signing_ready"]:
            await client.close()
            raise DriverError(f"cross-signing of {user_id} is not ready: {started}")
        return client

    async def request(self, cmd: str, *, timeout: float = 30, **args: Any) -> Any:
        async with self._lock:
            if self._process.returncode is not None or self._process.stdin is None:
                raise DriverError(f"the driver has exited:\n{self.log_tail()}")
            request_id = next(self._ids)
            line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
            self._process.stdin.write(line.encode())
            await self._process.stdin.drain()
            assert self._process.stdout is not None
            raw = await asyncio.wait_for(self._process.stdout.readline(), timeout)
            if not raw:
                await asyncio.wait_for(self._process.wait(), 10)
                raise DriverError(
                    f"the driver exited ({self._process.returncode}) during {cmd}:\n"
                    + self.log_tail()
                )
            answer = json.loads(raw)
            if answer.get("id") != request_id:
                raise DriverError(f"answer to another request: {answer}")
            if not answer["ok"]:
                raise DriverError(f"{cmd}: {answer['error']}")
            return answer["result"]

    async def create_dm(self, invite: str, timeout: float = 30) -> str:
        created = await self.request(
            "create_dm", timeout=timeout + _SLACK, invite=invite, timeout_ms=int(timeout * 1000)
        )
        return created["room_id"]

    async def send(self, room_id: str, text: str) -> str:
        sent = await self.request("send", room_id=room_id, text=text)
        return sent["event_id"]

    async def wait_for(
        self, room_id: str, sender: str, *contains: str, timeout: float = 30
    ) -> dict[str, Any]:
        """The next message of `sender` not yet returned whose text contains every part."""
        return await self.request(
            "wait_for",
            timeout=timeout + _SLACK,
            room_id=room_id,
            sender=sender,
            contains=list(contains),
            timeout_ms=int(timeout * 1000),
        )

    async def messages(self, room_id: str, sender: str) -> list[dict[str, Any]]:
        """Every message of `sender` in the room as this user sees it now."""
        return await self.request("messages", room_id=room_id, sender=sender)

    async def identity(self, user_id: str) -> dict[str, Any]:
        """`user_id`'s cross-signing identity and devices, as this client sees them."""
        return await self.request("identity", timeout=60, user_id=user_id)

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def close(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(DriverError, TimeoutError, OSError, ConnectionError):
                await self.request("stop", timeout=10)
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._log.close()
