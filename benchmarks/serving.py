"""Sections on serving settings: the default constructor (defaults) and speculative decoding (speculative)."""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

from benchmarks.common import interleave, llama_bench, sequential_and_batched
from benchmarks.community import STORY, first_token_seconds, stream_rate  # shared by both sides
from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native
from tests.llama_tools import reference_tool
from tests.models import get
from tests.texts import CODE, chatml, code_edit


def section_defaults(threads: int, lines: list[str]) -> None:
    """What the default constructor gives, against the old default (one slot, KV cache per slot)."""
    lines.append("\n## Defaults that serve many: `LlamaCpp(model_path=..., n_ctx=4096)` as constructed\n")
    lines.append(
        "New default: 8 slots sharing one KV pool of n_ctx cells (llama.cpp's unified KV cache). Old: one slot. "
        "gemma3, 8 prompts of 64 tokens each; chat on qwen.\n"
    )
    model = str(get("gemma3"))
    old = {"n_seq": 1, "model_kwargs": {"kv_unified": 0}}
    prompts = [f"{STORY} (variant {i})" for i in range(8)]

    def batch_figures(**settings: Any) -> tuple[float, float, int]:
        llm = LlamaCpp(model_path=model, n_threads=threads, n_ctx=4096, temperature=0, repeat_penalty=1.0,
                       max_tokens=64, ignore_eos=True, **settings)  # fmt: skip
        llm.invoke(prompts[0], max_tokens=1)  # load
        return *sequential_and_batched(llm, prompts), llm.load().n_ctx_total

    seq_new, bat_new, cells_new = batch_figures()
    seq_old, bat_old, cells_old = batch_figures(**old)
    lines.append("| measure | default | old default (n_seq=1) | new vs old |\n|---|---|---|---|")
    lines.append(f"| 8 calls one after another | {seq_new:.2f} s | {seq_old:.2f} s | {seq_new / seq_old:.2f} |")
    lines.append(f"| batch() of the same 8 | {bat_new:.2f} s | {bat_old:.2f} s | {bat_new / bat_old:.2f} |")
    lines.append(f"| batch() speed-up | **{seq_new / bat_new:.2f}x** | {seq_old / bat_old:.2f}x | |")
    lines.append(
        f"| KV cells of the full-attention layers | {cells_new} | {cells_old} | **{cells_new / cells_old:.2f}** |"
    )
    # gemma3's sliding-window layers keep a window per slot that may run at once (llama.cpp's log): 4096
    # cells (60 MiB) with 8 slots against 1024 (15 MiB) with one; the whole cache 72 MiB against 27.

    # One stream alone, against llama-bench in the same run.
    new_llm = LlamaCpp(model_path=model, n_threads=threads, n_ctx=4096, temperature=0, repeat_penalty=1.0)
    old_llm = LlamaCpp(model_path=model, n_threads=threads, n_ctx=4096, temperature=0, repeat_penalty=1.0, **old)
    for llm in (new_llm, old_llm):
        llm.invoke(STORY, max_tokens=4)

    def fresh(llm: LlamaCpp) -> float:
        llm.load().clear_cache()  # no other conversation cached in the pool
        return stream_rate(llm, STORY, 128, ignore_eos=True)

    def beside_idle(llm: LlamaCpp) -> float:
        # The 8 batch() prompts above, cached: the stream's attention passes over their cells too (masked).
        llm.load().clear_cache()
        llm.batch(prompts, max_tokens=16)
        return stream_rate(llm, STORY, 128, ignore_eos=True)

    reference, m = interleave(
        7,
        lambda: llama_bench(model, threads, 0, 128)["tg128"],
        new=lambda: fresh(new_llm),
        old=lambda: fresh(old_llm),
        idle=lambda: beside_idle(new_llm),
    )
    lines.append(
        f"| one stream, stream() vs llama-bench tg128 ({reference:.1f} tok/s) | {m['new'].value()} tok/s, "
        f"**{m['new'].ratio()}** | {m['old'].value()} tok/s, {m['old'].ratio()} | |"
    )
    lines.append(
        f"| the same stream beside 8 idle cached conversations | {m['idle'].value()} tok/s, {m['idle'].ratio()} "
        "| (one slot holds one) | |"
    )

    # Two conversations served alternately: each follow-up finds its prefix.
    chat = ChatLlamaCpp(model_path=str(get("qwen")), n_threads=threads, temperature=0, max_tokens=16, n_ctx=4096)
    chat.load().clear_cache()
    rules = "Answer carefully and cite the rules you follow. " * 60
    a1 = [("system", "You are a meticulous assistant. " + rules), ("human", "Name a fruit.")]
    b1 = [("system", "You are a patient poet. " + rules), ("human", "Name a river.")]
    cold_a, reply_a = first_token_seconds(chat, a1)
    cold_b, reply_b = first_token_seconds(chat, b1)
    warm_a, _ = first_token_seconds(chat, [*a1, ("ai", reply_a), ("human", "Another one?")])
    warm_b, _ = first_token_seconds(chat, [*b1, ("ai", reply_b), ("human", "Another one?")])
    lines.append(
        f"| chat follow-up TTFT, two conversations alternating (vs cold) | A {warm_a / cold_a:.3f}, "
        f"B **{warm_b / cold_b:.3f}** | | |"
    )
    print("\n".join(lines[-8:]), flush=True)


# -- speculative decoding ------------------------------------------------------------------------

# The tests' code edit (tests/texts.py) with one more function: a longer answer to time.
SPEC_CODE = CODE + "\n\ndef stdev(values):\n    return variance(values) ** 0.5\n"
SPEC_CONTEXT = (
    "The Rhine rises in the Swiss Alps and flows 1,230 kilometres to the North Sea. It passes Basel, where it "
    "turns north, then Strasbourg, Mannheim, Mainz, Koblenz, Cologne and Duisburg before entering the "
    "Netherlands. Its largest tributaries are the Aare, the Main, the Neckar and the Moselle. The river carries "
    "more freight than any other inland waterway in Europe, and the stretch between Bingen and Koblenz, the "
    "Middle Rhine, is a UNESCO World Heritage Site known for its castles and vineyards."
)
SPEC_PROMPTS = {
    "code edit": code_edit(SPEC_CODE),
    "RAG answer": f"Context:\n{SPEC_CONTEXT}\n\nQuoting the context, list every city the Rhine passes and its "
    "largest tributaries, then say why the Middle Rhine is known.",
    "free prose": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
}
SPEC_TOKENS = 160
SPEC_K = 3  # draft length for the comparison with llama.cpp's tool (its default)


def speculative_simple(target: str, draft: str | None, prompt: str, threads: int, k: int) -> tuple[float, float]:
    """llama.cpp's own speculative tool (examples/speculative-simple): decode tokens/s and acceptance."""
    args = [str(reference_tool("llama-speculative-simple")), "-m", target, "-p", prompt, "-n", str(SPEC_TOKENS),
            "-t", str(threads), "-c", "2048", "--temp", "0", "--top-k", "1", "--spec-draft-n-max", str(k),
            "--spec-draft-n-min", "0"]  # fmt: skip
    if draft:
        args += ["-md", draft, "-td", str(threads), "--spec-type", "draft-simple"]
    else:
        args += ["--spec-type", "ngram-simple"]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    text = out.stdout + out.stderr
    rate = float(text.split("decoded", 1)[1].split("speed:", 1)[1].split("t/s", 1)[0])
    drafted = int(text.split("n_drafted =", 1)[1].split()[0])
    accepted = int(text.split("n_accept  =", 1)[1].split()[0])
    return rate, accepted / max(drafted, 1)


def per_token_acceptance(rate: float, k: int) -> float:
    """The a with (a + a^2 + ... + a^k) / k = rate: the chance a drafted token is right given those before it were."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        a = (lo + hi) / 2
        if sum(a**i for i in range(1, k + 1)) / k < rate:
            lo = a
        else:
            hi = a
    return (lo + hi) / 2


def decode_ms(engine: Any, rows: int, reps: int = 8) -> float:
    """Milliseconds of one decode of `rows` tokens, every row with logits, after a 150-token prefix."""
    model = engine.model
    prefix = model.tokenize(STORY, add_special=True, parse_special=False)[:150]
    engine.kv_remove(0, 0)
    engine.evaluate(0, prefix, False)
    times = []
    for i in range(reps + 1):
        tokens = [(1000 + 7 * (i + j)) % model.n_vocab for j in range(rows)]
        t0 = time.perf_counter()
        engine.evaluate(0, tokens, True)
        times.append((time.perf_counter() - t0) * 1000)
        engine.kv_remove(0, len(prefix))
    return statistics.median(times[1:])


def section_speculative(threads: int, lines: list[str]) -> None:
    target, draft = str(get("qwen15")), str(get("qwen"))
    lines.append("\n## Speculative decoding: Qwen2.5-Coder-1.5B-Instruct, drafts by the 0.5B or by prompt lookup\n")
    lines.append(
        f'Greedy, {SPEC_TOKENS} tokens at most, generation tokens/s (prompt not counted). "ours, adaptive" is the '
        'default (the cost model decides the draft length, 16 at most); "forced" drafts '
        f"{SPEC_K} tokens every step (draft_min=draft_max={SPEC_K}), as llama.cpp's `llama-speculative-simple` does "
        f"with `--spec-draft-n-max {SPEC_K}` in the same run. Without `batch_invariant` (as here, for speed) a k-row "
        "batch rounds differently from a one-row step, so where two tokens are nearly tied the text can differ "
        "between columns (noted beside the text); with it, the outputs are token for token the same "
        "(tests/integration/test_speculative.py).\n"
    )
    lines.append(
        "| text | plain tok/s | draft model, adaptive | draft model, forced k=3: tok/s, acceptance | llama.cpp "
        "speculative-simple k=3: tok/s, acceptance | forced vs llama.cpp | prompt lookup, adaptive | prompt lookup, "
        "forced k=3: tok/s, acceptance |\n|---|---|---|---|---|---|---|---|"
    )
    common: dict[str, Any] = {"n_threads": threads, "temperature": 0, "repeat_penalty": 1.0, "n_seq": 1,
                              "n_ctx": 2048, "max_tokens": SPEC_TOKENS}  # fmt: skip
    setups = {
        "plain": LlamaCpp(model_path=target, **common),
        "draft": LlamaCpp(model_path=target, draft_model_path=draft, **common),
        "draft3": LlamaCpp(model_path=target, draft_model_path=draft, draft_min=SPEC_K, draft_max=SPEC_K, **common),
        "lookup": LlamaCpp(model_path=target, prompt_lookup=True, **common),
        "lookup3": LlamaCpp(model_path=target, prompt_lookup=True, draft_min=SPEC_K, draft_max=SPEC_K, **common),
    }

    def run(llm: LlamaCpp, prompt: str) -> tuple[float, float, float, str]:
        llm.load().clear_cache()
        engine = llm.load()
        params = native.RequestParams()
        params.prompt = engine.model.tokenize(prompt, add_special=True, parse_special=True)
        params.max_tokens = SPEC_TOKENS
        params.sampling.temperature = 0
        request = engine.submit(params)
        text = "".join(c.text for c in request.wait())
        u = request.usage
        rate = (u.completion_tokens - 1) / (u.generation_ms / 1000)
        # Steps that drafted, per generated token: prompt lookup drafts only where the text repeats itself.
        rounds = u.draft_n / SPEC_K / max(u.completion_tokens, 1)
        return rate, u.draft_n_accepted / max(u.draft_n, 1), rounds, text

    for llm in setups.values():
        run(llm, chatml("Hi"))  # load, warm up
    measured: dict[str, dict[str, tuple[float, ...]]] = {}
    for label, text in SPEC_PROMPTS.items():
        prompt = chatml(text)
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in [*setups, "tool"]}
        outputs = set()
        for _ in range(3):  # rounds, interleaved: the machine's speed drifts
            for name, llm in setups.items():
                rate, acc, rounds, out = run(llm, prompt)
                figures[name].append((rate, acc, rounds))
                outputs.add(out)
            figures["tool"].append((*speculative_simple(target, draft, prompt, threads, SPEC_K), 0.0))
        med = {name: tuple(statistics.median(x[i] for x in v) for i in range(3)) for name, v in figures.items()}
        measured[label] = med
        plain = med["plain"][0]
        same = "" if len(outputs) == 1 else f" ({len(outputs)} different outputs)"
        lines.append(
            f"| {label}{same} | {plain:.1f} | {med['draft'][0]:.1f} ({med['draft'][0] / plain:.2f}x) "
            f"| {med['draft3'][0]:.1f} ({med['draft3'][0] / plain:.2f}x), {med['draft3'][1]:.2f} "
            f"| {med['tool'][0]:.1f}, {med['tool'][1]:.2f} | **{med['draft3'][0] / med['tool'][0]:.2f}** "
            f"| {med['lookup'][0]:.1f} ({med['lookup'][0] / plain:.2f}x) "
            f"| {med['lookup3'][0]:.1f} ({med['lookup3'][0] / plain:.2f}x), {med['lookup3'][1]:.2f} |"
        )
        print(lines[-1], flush=True)

    # The cost model: what a k-token verification costs here, and what it predicts.
    t_engine = setups["plain"].load()
    d_engine = LlamaCpp(model_path=draft, n_threads=threads, n_seq=1, n_ctx=2048).load()
    one = decode_ms(t_engine, 1)
    cost = {k: decode_ms(t_engine, k + 1) / one for k in (1, 2, 3, 4, 8)}
    d = decode_ms(d_engine, 1) / one
    lines.append(
        "\nCost model. Measured here: a decode of k+1 rows (each with logits) costs "
        + ", ".join(f"{c:.2f}x one row for k={k}" for k, c in cost.items())
        + f"; the draft model's token costs {d:.2f}x the target's. With a per-token acceptance a, a step that "
        "drafts k tokens yields 1 + a + ... + a^k tokens for c(k) + k*d units of time, so the speed-up over plain "
        "decoding is S = (1 + a + ... + a^k) / (c(k) + k*d) (prompt lookup: d = 0). Where only a fraction r of "
        "the steps per generated token draft (prompt lookup finds no match elsewhere), a text of N tokens "
        "takes r*N*(c(k) + k*d) + N - r*N*(1 + a + ... + a^k) units.\n"
    )
    lines.append(
        "| text | source | acceptance (per token a) | predicted S, this machine | measured S, this machine "
        "| predicted S where k+1 rows cost one (memory-bound: GPU, Apple silicon) |\n|---|---|---|---|---|---|"
    )
    for label, med in measured.items():
        for name, source, dd in (("draft3", "draft model", d), ("lookup3", "prompt lookup", 0.0)):
            rate, rounds = med[name][1], med[name][2]
            a = per_token_acceptance(rate, SPEC_K)
            gain = 1 + sum(a**i for i in range(1, SPEC_K + 1))
            rounds = min(rounds, 1 / gain)  # drafting steps cannot yield more tokens than the text has

            def speedup(step_cost: float, rounds: float = rounds, gain: float = gain) -> float:
                return 1 / (rounds * step_cost + 1 - rounds * gain)

            predicted = speedup(cost[SPEC_K] + SPEC_K * dd)
            elsewhere = speedup(1.0 + SPEC_K * dd)
            lines.append(
                f"| {label} | {source} | {rate:.2f} ({a:.2f}) | {predicted:.2f} | {med[name][0] / med['plain'][0]:.2f} "
                f"| {elsewhere:.2f} |"
            )
    print("\n".join(lines[-8:]), flush=True)
