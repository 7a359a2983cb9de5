"""`pytest bench/`: the benchmark suite (pytest-benchmark). Its models and references live in _suite.py.

Kept out of the CI test command: pyproject's testpaths is ["tests"], so a bare `pytest` never collects this.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "heavy: seconds per model call on a 2-core CPU (SPAN, Real-CUGAN)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # the heavy models last, so that `-x` stops early on the quick ones
    order = {"espcn-x3": 0, "realesr-animevideov3": 1, "realesrgan-x4plus": 2}
    items.sort(key=lambda item: next((v for k, v in order.items() if k in item.nodeid), 9))
