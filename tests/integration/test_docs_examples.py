"""Every ```python block in README.md and docs/**/*.md runs against the test cluster, so the
docs cannot drift from the code.

A block is one of:
- a program (it imports what it uses, opens its own router with ``RouterConfig.from_env()``,
  ends in ``asyncio.run(...)`` or needs no loop): run as it is, in a thread of its own, with
  PGSESSIONS_HOSTS and PGSESSIONS_SCHEMA pointed at the test cluster;
- a fragment (it uses ``router``, ``config`` or ``agent`` without defining them, and may
  ``await`` at top level): run inside a coroutine that provides them: ``config`` the test
  cluster's RouterConfig, ``router`` an open, migrated SessionRouter on it, ``agent`` an
  Agent with an offline scripted model, and the public pgsessions names and ``Runner``;
- marked ``# docs: not run (needs ...)`` on its first line, for what needs an external system
  (a certificate, a real deployment): only compiled.

Blocks with the same code (the README's example is also on the docs site) run once.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgsessions import RouterConfig

ROOT = Path(__file__).resolve().parent.parent.parent
NOT_RUN = "# docs: not run"
# names a fragment may use without defining them
PROVIDED = {"router", "config", "agent"}
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    where: str  # file:line
    code: str

    @property
    def run(self) -> bool:
        return not self.code.lstrip().startswith(NOT_RUN)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks() -> list[Block]:
    found: dict[str, Block] = {}
    for path in doc_files():
        text = path.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            code = m.group(1)
            found.setdefault(code, Block(f"{path.relative_to(ROOT)}:{line}", code))
    return list(found.values())


def free_names(code: str) -> set[str]:
    """Names the block reads but never binds (roughly: any binding anywhere counts)."""
    tree = ast.parse(code)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound


def compile_block(block: Block) -> Any:
    return compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


ALL = blocks()


def test_the_docs_have_examples_and_each_one_is_run_or_marked() -> None:
    assert len(ALL) >= 8, [b.where for b in ALL]
    for block in ALL:
        code = compile_block(block)  # every block is valid Python
        if block.run:
            missing = free_names(block.code) - PROVIDED - set(dir(builtins))
            fragment = bool(code.co_flags & inspect.CO_COROUTINE) or bool(
                free_names(block.code) & PROVIDED
            )
            # a fragment may lean on the public names the runner provides, a program may not
            assert fragment or not missing, f"{block.where} uses {missing} without importing"


def _in_thread(fn: Any) -> None:
    """Run ``fn`` in a thread of its own (no event loop there, as in a plain script)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, name="docs-example")
    t.start()
    t.join(240)
    assert not t.is_alive(), "the example did not finish in 240 s"
    if errors:
        raise errors[0]


async def _run_fragment(code: Any, config: RouterConfig) -> None:
    from agents import Agent, Runner, set_tracing_disabled
    from agents.testing import ModelStep, ScriptedModel, assistant_message

    import pgsessions

    set_tracing_disabled(True)
    model = ScriptedModel([ModelStep(output=[assistant_message(f"reply {i}")]) for i in range(20)])
    namespace: dict[str, Any] = {name: getattr(pgsessions, name) for name in pgsessions.__all__}
    namespace.update(config=config, agent=Agent(name="assistant", model=model), Runner=Runner)
    async with pgsessions.SessionRouter(config) as router:
        await pgsessions.migrate(router)
        namespace["router"] = router
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result


@pytest.mark.parametrize("block", [b for b in ALL if b.run], ids=lambda b: b.where)
def test_example_runs(
    block: Block, router_config: RouterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    monkeypatch.setenv("PGSESSIONS_HOSTS", ",".join(router_config.host_list))
    monkeypatch.setenv("PGSESSIONS_SCHEMA", router_config.schema)
    monkeypatch.setenv("HISTORY_KEY", Fernet.generate_key().decode())  # EncryptedSession's key
    code = compile_block(block)
    if code.co_flags & inspect.CO_COROUTINE or free_names(block.code) & PROVIDED:
        _in_thread(lambda: asyncio.run(_run_fragment(code, router_config)))
    else:
        _in_thread(lambda: exec(code, {"__name__": "__main__"}))
