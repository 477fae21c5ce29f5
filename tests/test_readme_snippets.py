"""Every Python block of the README is a complete program, and runs as written.

Each block runs in its own interpreter against the FakeGateway over loopback, the way a
reader would point it at their own gateway: ``LIMPET_BASE_URL`` names the gateway, and
``OPENROUTER_API_KEY`` and ``LIMPET_HMAC_KEY`` hold the secrets. The one thing changed in
a block is its cache address: ``redis://localhost:6379/0`` becomes a private
redis-server of this test's, and ``memcached://localhost:11211`` the tests' memcached.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from limpet.testing import FakeGateway
from tests.redis_servers import RedisServer

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = str(README.parent / "src")
REDIS_IN_README = "redis://localhost:6379/0"
MEMCACHED_IN_README = "memcached://localhost:11211"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Each ```python block of ``text`` with the line it starts on."""
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture
async def readme_gateway() -> AsyncIterator[FakeGateway]:
    """The gateway a README block calls at ``LIMPET_BASE_URL``: one endpoint, "readme"."""
    async with FakeGateway(endpoints=("readme",)) as gw:
        yield gw


def test_the_readme_has_python_blocks_and_each_is_a_whole_program() -> None:
    assert len(BLOCKS) >= 8
    for line, code in BLOCKS:
        compile(code, f"README.md:{line}", "exec")  # no top-level await, no fragments
        assert "asyncio.run(" in code or "async def" not in code, f"README.md:{line}"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line {line}" for line, _ in BLOCKS])
async def test_each_python_block_runs_as_written(
    line: int,
    code: str,
    readme_gateway: FakeGateway,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if REDIS_IN_README in code:
        server: RedisServer = request.getfixturevalue("redis_server")
        code = code.replace(REDIS_IN_README, server.url)
    if MEMCACHED_IN_README in code:
        code = code.replace(MEMCACHED_IN_README, request.getfixturevalue("memcached_url"))
    script = tmp_path / f"readme_{line}.py"
    script.write_text(code, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "LIMPET_BASE_URL": readme_gateway.base_url("readme"),
        "OPENROUTER_API_KEY": "sk-or-v1-readme-example",
        "LIMPET_HMAC_KEY": "readme-example-hmac-key",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, f"README.md:{line} failed:\n{err.decode()}"
    assert b"Traceback" not in err
    sent = readme_gateway.total_calls + readme_gateway.embeddings.calls
    assert sent >= 1 or "FakeGateway(" in code, f"README.md:{line} sent nothing"
