"""Texts shared by tests and benchmarks: the code edit of the speculative decoding tests and benchmark."""

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
