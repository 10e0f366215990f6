"""Without Element's SDK or a Node ≥ 22, its end-to-end tests skip with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import element_sdk


def fake_node(directory: Path, version: str) -> Path:
    node = directory / "node"
    node.write_text(f"#!/bin/sh\necho {version}\n")
    node.chmod(0o755)
    return node


def installed_sdk(monkeypatch, tmp_path: Path) -> None:
    package = tmp_path / "matrix-js-sdk" / "package.json"
    package.parent.mkdir()
    package.write_text('{"name": "matrix-js-sdk", "version": "43.0.0"}')
    monkeypatch.setattr(element_sdk, "SDK_PACKAGE", package)


def test_without_the_sdk_the_tests_skip_saying_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(element_sdk, "SDK_PACKAGE", tmp_path / "node_modules" / "package.json")
    with pytest.raises(pytest.skip.Exception, match=r"matrix-js-sdk is not installed.*npm ci"):
        element_sdk.runtime()


def test_with_an_old_node_only_the_tests_skip_naming_the_version_needed(monkeypatch, tmp_path):
    installed_sdk(monkeypatch, tmp_path)
    monkeypatch.setattr(element_sdk, "LOCAL_NODE", fake_node(tmp_path, "v20.20.2"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_node(bin_dir, "v18.19.0")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(pytest.skip.Exception, match="no Node ≥ 22"):
        element_sdk.runtime()


def test_a_node_22_on_the_path_is_used_when_tests_js_has_none(monkeypatch, tmp_path):
    installed_sdk(monkeypatch, tmp_path)
    monkeypatch.setattr(element_sdk, "LOCAL_NODE", tmp_path / "missing" / "node")
    node = fake_node(tmp_path, "v22.23.3")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = element_sdk.runtime()
    assert found.node == str(node) and found.sdk_version == "43.0.0"
