"""The agent the examples run: a real model, or a scripted echo for tests and trying out.

``PGSESSIONS_EXAMPLE_MODEL=scripted`` answers ``re: <message>`` without any API key (CI
runs the examples that way); otherwise the agent uses the SDK's default OpenAI model.
"""

from __future__ import annotations

import os
from typing import Any

from agents import Agent, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message

SCRIPTED = os.environ.get("PGSESSIONS_EXAMPLE_MODEL") == "scripted"
if SCRIPTED:
    set_tracing_disabled(True)


def make_agent(message: str) -> Agent[Any]:
    """The agent for one turn that answers ``message``."""
    if SCRIPTED:
        model = ScriptedModel([[assistant_message(f"re: {message}")]])
        return Agent(name="assistant", instructions="Answer briefly.", model=model)
    return Agent(name="assistant", instructions="Answer briefly.")
