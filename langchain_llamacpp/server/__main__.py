"""`python -m langchain_llamacpp.server --model PATH ...`: the same as `langchain-llamacpp serve`."""

from langchain_llamacpp.server._cli import serve

if __name__ == "__main__":
    serve()
