"""Texts shared by tests and benchmarks: the code edit of the speculative decoding tests and benchmark, the
long document of the prompt-cache test and benchmark, and the weather tool of the server's test and
benchmark."""

# Code that a correct edit gives back almost whole: what prompt lookup and a draft model predict best.
CODE = """def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)


def variance(values):
    m = mean(values)
    total = 0
    for v in values:
        total += (v - m) ** 2
    return total / len(values)
"""


def code_edit(code: str) -> str:
    """The user's request: rename a variable in `code` and give all of it back."""
    return f"Rename the variable `total` to `acc` in this code and give the whole code back:\n```python\n{code}```"


def chatml(text: str) -> str:
    """`text` as a user turn in Qwen's ChatML template, with the assistant's turn opened."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def committee_minutes(sections: int) -> str:
    """A long document of `sections` near-identical paragraphs (~45 tokens each): a prompt to cache."""
    return "".join(
        f"Section {i}. The committee reviewed item {i} of the plan: its cost, its schedule and the risks the "
        f"engineers listed, and agreed to revisit item {i} in the next quarterly meeting after the audit.\n"
        for i in range(1, sections + 1)
    )


# A tool in OpenAI's shape, for requests with tool_choice="auto".
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
