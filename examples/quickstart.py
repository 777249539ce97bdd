"""End to end on small real models: a prompt chain, streaming, a grammar, and a chat turn.

Run with ``./dev example`` (it builds the package and fetches the models first).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for tests.models (the package: the installed one)

from langchain_core.callbacks import StreamingStdOutCallbackHandler
from langchain_core.prompts import PromptTemplate

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp
from tests.models import get


def main() -> None:
    gemma = str(get("gemma3"))
    llm = LlamaCpp(model_path=gemma, temperature=0, max_tokens=48, callbacks=[StreamingStdOutCallbackHandler()])

    print("== PromptTemplate | LlamaCpp, streamed through a callback")
    chain = PromptTemplate.from_template("Question: {question}\nAnswer:") | llm.bind(stop=["\n"])
    result = chain.invoke({"question": "What is the capital of France?"})
    print(f"\n-- returned {len(result)} characters")

    print("\n== JSON constrained by the bundled json.gbnf grammar")
    json_llm = LlamaCpp(model_path=gemma, temperature=0, max_tokens=64, grammar_path="json")
    print(json_llm.invoke("A person described as JSON:").strip())  # the grammar allows trailing spaces

    print("\n== ChatLlamaCpp with the model's own chat template")
    chat = ChatLlamaCpp(model_path=str(get("smollm2")), temperature=0, max_tokens=48)
    reply = chat.invoke([("system", "You are a concise assistant."), ("human", "Name three colors.")])
    print(reply.content)
    print(f"-- usage: {reply.usage_metadata}")


if __name__ == "__main__":
    main()
