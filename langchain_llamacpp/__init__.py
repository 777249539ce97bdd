"""LangChain integration for local GGUF models through llama.cpp, on native bindings."""

from importlib import metadata

from langchain_llamacpp import grammars
from langchain_llamacpp.chat_models import ChatLlamaCpp
from langchain_llamacpp.embeddings import LlamaCppEmbeddings
from langchain_llamacpp.llms import LlamaCpp
from langchain_llamacpp.rerankers import LlamaCppReranker

try:
    __version__ = metadata.version(__package__ or "langchain_llamacpp")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = ""

__all__ = ["ChatLlamaCpp", "LlamaCpp", "LlamaCppEmbeddings", "LlamaCppReranker", "__version__", "grammars"]
