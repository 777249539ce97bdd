"""Multi-step agent tasks on small models: LangChain's own `create_agent` loop with deterministic tools, scored
on the final answer. The same GGUF through ChatLlamaCpp with tool-call recovery off and on, and through
llama.cpp's `llama-server --jinja` reached with `ChatOpenAI` (where langchain-openai is installed).

    .venv/bin/python benchmarks/agents.py                       # qwen (0.5B) and qwen15 (1.5B), all three sides
    .venv/bin/python benchmarks/agents.py --models qwen --sides off on
    ./dev bench --only agents                                   # the same, as a section of run.py

Greedy (temperature 0), so a run is repeatable; each task is one conversation of at most `MAX_STEPS` graph
steps. A task passes when the agent's last message contains one of the expected answers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import BaseTool, tool  # noqa: E402

from benchmarks.common import llama_server  # noqa: E402
from langchain_llamacpp import ChatLlamaCpp  # noqa: E402
from tests.models import get  # noqa: E402

MAX_STEPS = 16  # graph steps: a model turn and a tool turn are one each
MAX_TOKENS = 192
N_CTX = 4096
SYSTEM = "Use the tools to find what you need, one step at a time. When you have the result, answer briefly."

_COUNTRY = {"lyon": "France", "porto": "Portugal", "osaka": "Japan", "munich": "Germany"}
_CAPITAL = {"france": "Paris", "portugal": "Lisbon", "japan": "Tokyo", "germany": "Berlin"}
_WEATHER = {
    "paris": "rainy, 12 degrees C",
    "lisbon": "sunny, 24 degrees C",
    "tokyo": "cloudy, 18 degrees C",
    "berlin": "snowing, -3 degrees C",
}
_POPULATION = {"france": 68.4, "portugal": 10.4, "japan": 124.5, "germany": 84.5}


def _key(name: str) -> str:
    return name.strip().lower()


@tool
def get_country(city: str) -> str:
    """Get the country that a city is in."""
    return _COUNTRY.get(_key(city), "unknown city")


@tool
def get_capital(country: str) -> str:
    """Get the capital city of a country."""
    return _CAPITAL.get(_key(country), "unknown country")


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return _WEATHER.get(_key(city), "unknown city")


@tool
def get_population(country: str) -> float:
    """Get the population of a country, in millions."""
    return _POPULATION.get(_key(country), 0.0)


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return round(a + b, 6)


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return round(a * b, 6)


TOOLS: list[BaseTool] = [get_country, get_capital, get_weather, get_population, add, multiply]


@dataclass(frozen=True)
class Task:
    question: str
    answers: tuple[str, ...]  # any of these in the final message (case-insensitive) passes
    calls: int  # tool calls a direct solution makes


TASKS = (
    Task("What is the weather in Lisbon right now?", ("sunny", "24"), 1),
    Task("Which country is Osaka in, and what is the capital of that country?", ("tokyo",), 2),
    Task("What is (17 + 25) * 3? Use the tools for each operation.", ("126",), 2),
    Task("What is the weather in the capital of the country that Munich is in?", ("snow", "-3"), 3),
    Task("What is the population of the country that Porto is in, times 2? Answer in millions.", ("20.8",), 3),
    Task("What are the populations of France and Japan added together, in millions?", ("192.9",), 3),
)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    tool_calls: int  # tools the agent ran
    recovered: int  # replies whose calls were read from text (ChatLlamaCpp's response_metadata)
    answer: str
    seconds: float


def run_task(model: BaseChatModel, task: Task) -> Outcome:
    """One conversation of the agent loop on `task`."""
    from langchain.agents import create_agent
    from langgraph.errors import GraphRecursionError

    agent = create_agent(model, tools=TOOLS, system_prompt=SYSTEM)
    start = time.perf_counter()
    try:
        state = agent.invoke({"messages": [HumanMessage(task.question)]}, {"recursion_limit": MAX_STEPS})
        messages = state["messages"]
    except GraphRecursionError:
        return Outcome(False, -1, 0, "(no answer within the step limit)", time.perf_counter() - start)
    last = messages[-1]
    answer = str(last.content) if isinstance(last, AIMessage) and not last.tool_calls else ""
    passed = any(a in answer.lower() for a in task.answers)
    recovered = sum(1 for m in messages if isinstance(m, AIMessage) and m.response_metadata.get("tool_calls_recovered"))
    calls = sum(1 for m in messages if isinstance(m, ToolMessage))
    return Outcome(passed, calls, recovered, answer, time.perf_counter() - start)


def ours(path: str, threads: int, recovery: bool) -> ChatLlamaCpp:
    # batch_invariant: a cached prompt gives the tokens a fresh one would, so off and on differ only by recovery
    # (the default kernels round differently at another batch size: near ties then go another way).
    return ChatLlamaCpp(
        model_path=path,
        temperature=0,
        max_tokens=MAX_TOKENS,
        n_ctx=N_CTX,
        n_threads=threads,
        batch_invariant=True,
        tool_call_recovery=recovery,
    )


def through_server(base_url: str) -> BaseChatModel:
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    model: BaseChatModel = ChatOpenAI(
        base_url=base_url,
        api_key=SecretStr("none"),
        model="local",
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=600,
    )
    return model


def score(model: BaseChatModel, label: str, tasks: list[int]) -> list[Outcome]:
    outcomes = []
    for i in tasks:
        task = TASKS[i]
        outcome = run_task(model, task)
        outcomes.append(outcome)
        mark = "pass" if outcome.passed else "FAIL"
        print(
            f"  {label} task {i + 1}: {mark}, {outcome.tool_calls} tool calls, {outcome.recovered} recovered, "
            f"{outcome.seconds:.0f} s: {outcome.answer[:150]!r}",
            flush=True,
        )
    return outcomes


MODELS = {"qwen": "Qwen2.5-Coder 0.5B Q4_K_M", "qwen15": "Qwen2.5-Coder 1.5B Q4_K_M"}
SIDES = ("off", "on", "server")


def _server_available() -> bool:
    try:
        import langchain_openai  # noqa: F401
    except ImportError:
        print("langchain-openai is not installed: the llama-server side is skipped")
        return False
    return True


def measure(
    models: list[str], sides: list[str], threads: int, tasks: list[int]
) -> dict[tuple[str, str], list[Outcome]]:
    results: dict[tuple[str, str], list[Outcome]] = {}
    for name in models:
        path = str(get(name))
        for side in sides:
            print(f"{name}, {side}:", flush=True)
            if side == "server":
                if not _server_available():
                    continue
                with llama_server(path, threads, N_CTX) as url:
                    results[name, side] = score(through_server(url), f"{name}/{side}", tasks)
            else:
                results[name, side] = score(ours(path, threads, side == "on"), f"{name}/{side}", tasks)
    return results


def table(results: dict[tuple[str, str], list[Outcome]], models: list[str], sides: list[str]) -> list[str]:
    heads = {"off": "recovery off", "on": "recovery on (default)", "server": "llama-server --jinja + ChatOpenAI"}
    shown = [s for s in sides if any((m, s) in results for m in models)]
    lines = [
        "| model | " + " | ".join(heads[s] for s in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for name in models:
        cells = []
        for side in shown:
            outcomes = results.get((name, side))
            if outcomes is None:
                cells.append("n/a")
                continue
            passed = "".join("x" if o.passed else "." for o in outcomes)
            recovered = sum(o.recovered for o in outcomes)
            extra = f", {recovered} replies recovered" if side == "on" else ""
            cells.append(f"**{sum(o.passed for o in outcomes)}/{len(outcomes)}** (`{passed}`{extra})")
        lines.append(f"| {MODELS.get(name, name)} | " + " | ".join(cells) + " |")
    return lines


def section_agents(threads: int, lines: list[str]) -> None:
    """The section for benchmarks/run.py."""
    models, sides = list(MODELS), list(SIDES)
    results = measure(models, sides, threads, list(range(len(TASKS))))
    lines.append("\n## Agent tasks on small models: tool-call recovery (benchmarks/agents.py)\n")
    lines.append(_description())
    lines.extend(table(results, models, sides))


def _description() -> str:
    tasks = "; ".join(
        f"{i + 1}. {t.question} ({t.calls} call{'s' if t.calls > 1 else ''})" for i, t in enumerate(TASKS)
    )
    return (
        f"`langchain.agents.create_agent` with six deterministic tools, greedy, at most {MAX_STEPS} graph steps, "
        f"passed when the final answer holds the expected value. Tasks: {tasks}. In each cell, one mark per task "
        "(x passed).\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tasks", nargs="+", type=int, default=list(range(1, len(TASKS) + 1)), help="numbers, from 1")
    args = parser.parse_args()
    results = measure(args.models, args.sides, args.threads, [t - 1 for t in args.tasks])
    print()
    print(_description())
    print("\n".join(table(results, args.models, args.sides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
