"""Suite-wide fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

import pytest

from bridge.sim import netns


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # WebRTC cannot pair over loopback; without the namespace harness these tests cannot pass.
    if netns.inside():
        return
    skip = pytest.mark.skip(reason="needs the network namespace: run through `make test`")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
