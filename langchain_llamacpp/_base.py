"""Fields and engine plumbing shared by `LlamaCpp`, `ChatLlamaCpp` and `LlamaCppEmbeddings`.

The field names and meanings follow `langchain_community`'s llama.cpp classes so that their
documentation works with only the import changed; defaults differ where theirs were wrong.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

import langchain_llamacpp._engine as _engine
import langchain_llamacpp._hub as _hub
import langchain_llamacpp._native as _native
from langchain_llamacpp._lifecycle import NativeStateMixin
from langchain_llamacpp.grammars import resolve_grammar_path

# Per-call keyword arguments accepted by invoke/stream/generate (besides `stop`).
CALL_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "last_n_tokens_size",
        "frequency_penalty",
        "presence_penalty",
        "mirostat_mode",
        "mirostat_tau",
        "mirostat_eta",
        "seed",
        "max_tokens",
        "logprobs",
        "logit_bias",
        "grammar",
        "grammar_path",
        "echo",
        "suffix",
        "ignore_eos",
        "timeout",
    }
)

# Arguments that only mean something to a hosted API (LangChain's standard tests pass api_key; code
# that switches providers passes both): accepted with a warning, and dropped.
HOSTED_API_ARGS = ("api_key", "base_url")

_SAMPLING_KWARGS = frozenset(f for f in dir(_native.SamplingParams) if not f.startswith("_"))


def _finite_or_banned(bias: float) -> float:
    """A logit bias: finite, or minus infinity (the token is never sampled)."""
    if math.isnan(bias) or bias == math.inf:
        raise ValueError("a logit bias must be a finite number, or -inf to ban the token")
    return bias


_Model = TypeVar("_Model", bound="FromPretrainedMixin")


class FromPretrainedMixin(BaseModel):
    """`from_pretrained`, shared by `LlamaCpp`, `ChatLlamaCpp` and `LlamaCppEmbeddings`."""

    @classmethod
    def from_pretrained(
        cls: type[_Model],
        repo_id: str,
        filename: str | None = None,
        *,
        mmproj: bool | str = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        token: bool | str | None = None,
        **kwargs: Any,
    ) -> _Model:
        """A model from the Hugging Face Hub, downloaded into huggingface_hub's cache on first use.

        Needs ``pip install "langchain-llamacpp[hub]"``. Shows huggingface_hub's progress bars (set
        ``HF_HUB_DISABLE_PROGRESS_BARS=1`` to hide them). With ``HF_HUB_OFFLINE=1``, or when the Hub
        cannot be reached, the files are listed from the cache and loaded from it, globs included.

        Example:
            .. code-block:: python

                from langchain_llamacpp import ChatLlamaCpp

                chat = ChatLlamaCpp.from_pretrained(
                    "Qwen/Qwen2.5-0.5B-Instruct-GGUF", filename="*q4_k_m.gguf", n_ctx=4096, temperature=0
                )

        Args:
            repo_id: the repository, ``"org/name"``.
            filename: the GGUF file: its name (``"sub/model-Q4_K_M.gguf"``), or a glob matching one
                model, usually its quantisation (``"*Q4_K_M.gguf"``; case-insensitive when nothing matches
                exactly). A split model (``model-00001-of-00003.gguf``, ...) counts as one: every part is
                downloaded and the first one loaded. None: the repository's only GGUF model. No match or
                several: ``ValueError`` listing the repository's GGUF files.
            mmproj: also download the multimodal projector beside the model: True for ``mmproj*.gguf``, or
                a name or glob. Its path goes to an ``mmproj_path`` field where the class has one; these
                classes have none yet (no vision support), so it is only downloaded, for later use.
            revision: a branch, tag or commit (default ``"main"``).
            cache_dir: huggingface_hub's cache folder (default ``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).
            local_dir: download into this folder instead of the cache.
            token: a Hugging Face token for private or gated repositories (default: the saved login).
            **kwargs: the class's fields (``n_ctx``, ``n_gpu_layers``, ``temperature``, ...).

        Raises ``FileNotFoundError`` (no such repository, revision or file; offline and not in the
        cache), ``PermissionError`` (a gated repository) and ``ConnectionError`` (the Hub unreachable
        and the files not in the cache), each naming the repository and the file, with huggingface_hub's
        exception, where there is one, as the ``__cause__``; ``ImportError`` without huggingface_hub.
        """
        if "model_path" in kwargs:
            raise TypeError("from_pretrained sets model_path from the downloaded file; do not pass it")
        files = _hub.download_gguf(
            repo_id,
            filename,
            mmproj=mmproj,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            token=token,
        )
        if files.mmproj_path is not None and "mmproj_path" in cls.model_fields:
            kwargs["mmproj_path"] = files.mmproj_path
        return cls(**{**kwargs, "model_path": files.model_path})


# Slots when n_seq is not given: a batch of 8 runs ~2.2x as fast as 8 calls in a row on gemma-3-270m here,
# and the shared KV pool makes them free when idle.
DEFAULT_N_SEQ = 8


class LlamaCppParams(FromPretrainedMixin, NativeStateMixin, BaseModel):
    """Model, context and sampling settings common to the llama.cpp LangChain classes."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    model_path: str
    """Path to the GGUF model file."""

    lora_base: str | None = None
    """Accepted for compatibility; llama.cpp applies `lora_path` to the loaded model directly."""

    lora_path: str | None = None
    """Path to a LoRA adapter (GGUF) applied on top of the model."""

    lora_scale: float = Field(1.0, allow_inf_nan=False)
    """Strength of the LoRA adapter."""

    n_ctx: int | None = Field(None, ge=0)
    """Context window per request (prompt plus completion). None: the model's trained length,
    capped at 4096; 0: the full trained length."""

    n_parts: int = -1
    """Accepted for compatibility; GGUF files are not split this way any more."""

    seed: int = -1
    """Sampling seed; -1 for a random one."""

    f16_kv: bool = True
    """Keep the KV cache in 16-bit floats (False: 32-bit)."""

    logits_all: bool = False
    """Accepted for compatibility; `logprobs` works without it."""

    vocab_only: bool = False
    """Load only the vocabulary (tokenize, no generation)."""

    use_mlock: bool = False
    """Lock the weights in RAM so they are never swapped out."""

    n_threads: int | None = Field(None, ge=1)
    """Threads for generation. None: the machine's physical cores."""

    n_threads_batch: int | None = Field(None, ge=1)
    """Threads for prompt processing. None: same as `n_threads`."""

    n_batch: int = Field(512, ge=1)
    """Prompt tokens evaluated per decode step (llama.cpp's default; 8, the old default here, made
    prompt processing many times slower). Raised to `n_seq` if smaller: every generating slot
    decodes in each step."""

    n_ubatch: int | None = Field(None, ge=1)
    """Physical batch size. None: `n_batch`."""

    n_seq: int | None = Field(None, ge=1, le=256)
    """Sequence slots: up to this many requests are decoded together in one batch, and this many
    conversations keep their prompt cache warm. None: 8 (1 with `batch_invariant`). The slots share
    one KV pool of `n_ctx` cells (llama.cpp's unified KV cache, as its server uses), so memory does not
    grow with them and any one request may use all of `n_ctx`. A request is admitted when its prompt
    plus `max_tokens` fits beside the running ones (idle conversations give way, least recently used
    first); otherwise it waits for one to finish (its `timeout` counting), never truncated. With one
    slot concurrent calls queue, and their outputs are exactly those of calls made one after another;
    with more, llama.cpp's CPU kernels round differently at different batch sizes, so at temperature 0
    a nearly tied token can come out differently (`batch_invariant` prevents it)."""

    batch_invariant: bool = False
    """Make every output independent of what else is decoded with it: with `n_seq > 1`, concurrent
    calls at temperature 0 give exactly the tokens of calls made one at a time, and a cached prefix
    gives what evaluating it afresh would. Uses kernels whose rounding does not depend on the batch
    (no repacked weights, reference flash attention, at least two rows per product, the second
    row of a lone request a guess at its next token); slower for free prose decoded alone, and for
    the CPU backend only."""

    draft_model_path: str | None = None
    """Speculative decoding with a draft model: a small GGUF model with the same vocabulary (e.g.
    Qwen2.5-Coder-0.5B for Qwen2.5-Coder-1.5B) guesses the next tokens greedily and this model checks
    them all in one batch. The output is what this model gives alone: every token is sampled from this
    model's own logits at its position (at temperature 0, the same tokens up to the rounding of a batch,
    which `batch_invariant` removes; above 0, the same distribution). Drafting is adjusted as it runs,
    from the measured cost of a k-token batch and the acceptance so far: where it would not pay (a CPU
    bound by compute, unpredictable text) it stops, and tries again now and then. Loaded with the same
    `n_gpu_layers`; counts of drafted and accepted tokens come in `generation_info` /
    `response_metadata` (`draft_n`, `draft_n_accepted`)."""

    prompt_lookup: bool = False
    """Speculative decoding without a draft model: the draft is what followed the last earlier
    occurrence of the text's final few tokens in the prompt or the answer so far. Nearly free, it pays
    where the answer repeats its context (editing code, quoting documents, extracting fields). Used
    first where both are on; adjusted as it runs, like `draft_model_path`."""

    draft_max: int = Field(16, ge=1, le=63)
    """Tokens drafted at most per step (llama-server's ``--draft-max``)."""

    draft_min: int = Field(0, ge=0, le=63)
    """Tokens drafted at least where a draft exists, whatever the measured costs say (0: as they say)."""

    draft_p_min: float = Field(0.75, ge=0, le=1, allow_inf_nan=False)
    """The draft model stops drafting where it gives its top token less than this probability."""

    n_gpu_layers: int | None = None
    """Layers to offload to the GPU (-1: all). Needs a GPU build; see README. None: none, or all of
    them where `rpc_servers` are given."""

    rpc_servers: list[str] | str | None = None
    """llama.cpp ``rpc-server`` processes (``["host:port", ...]``, or one comma-separated string as
    llama-cpp-python takes it) that hold and compute the offloaded layers (`n_gpu_layers`), before
    this machine's GPUs: a model larger than one machine, or a machine with a GPU serving this one.
    Start them with ``rpc-server -H 0.0.0.0 -p 50052`` from the same llama.cpp (the build's
    ``ggml-rpc-server`` target). Each is checked (connection and handshake, 5 s) when the model loads:
    an unreachable server raises ConnectionError naming it. The RPC protocol has no authentication or
    encryption: anyone who reaches a server's port can run code in it, so only use servers on
    loopback or a private network you trust, as llama.cpp warns. A server that dies while in use
    ends the process (llama.cpp's RPC client aborts)."""

    flash_attn: bool | None = None
    """Flash attention: None lets llama.cpp decide."""

    suffix: str | None = None
    """Text after the completion, for fill-in-the-middle models."""

    max_tokens: int | None = 256
    """Most tokens to generate; None or -1 generates until the end of the text or a full context."""

    temperature: float = Field(0.8, ge=0, allow_inf_nan=False)
    """Sampling temperature; 0 for greedy (deterministic) decoding."""

    top_p: float = Field(0.95, ge=0, le=1, allow_inf_nan=False)
    """Nucleus sampling: keep the smallest set of tokens whose probability adds up to top_p (1: off)."""

    top_k: int = 40
    """Keep only the k most likely tokens (0: all)."""

    min_p: float = Field(0.05, ge=0, le=1, allow_inf_nan=False)
    """Drop tokens less likely than min_p times the most likely one (0: off)."""

    typical_p: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    """Locally typical sampling (1.0: off)."""

    logprobs: int | None = None
    """Return log probabilities of the sampled tokens and this many top alternatives."""

    echo: bool = False
    """Include the prompt in the returned text."""

    ignore_eos: bool = False
    """Keep generating past end-of-generation tokens, up to max_tokens (benchmarks, tests)."""

    stop: list[str] | None = None
    """Stop strings; generation ends before the first of them, which is not returned."""

    repeat_penalty: float = Field(1.1, gt=0, allow_inf_nan=False)
    """Penalty for repeating recent tokens (1.0: off; below 1 favours repeating them)."""

    last_n_tokens_size: int = 64
    """How many recent tokens `repeat_penalty` looks at."""

    frequency_penalty: float = Field(0.0, allow_inf_nan=False)
    """Penalty proportional to how often a token already appeared (negative: a bonus)."""

    presence_penalty: float = Field(0.0, allow_inf_nan=False)
    """Penalty for any token that already appeared (negative: a bonus)."""

    mirostat_mode: int = Field(0, ge=0, le=2)
    """Mirostat sampling: 0 off, 1 Mirostat, 2 Mirostat 2.0."""

    mirostat_tau: float = Field(5.0, ge=0, allow_inf_nan=False)
    """Mirostat target entropy."""

    mirostat_eta: float = Field(0.1, ge=0, allow_inf_nan=False)
    """Mirostat learning rate."""

    logit_bias: dict[int, Annotated[float, AfterValidator(_finite_or_banned)]] | None = None
    """Added to the logits of the given token ids before sampling; float("-inf") bans a token."""

    use_mmap: bool = True
    """Map the model file into memory instead of reading it."""

    rope_freq_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    """RoPE frequency scaling factor. None: the model's own value."""

    rope_freq_base: float | None = Field(None, ge=0, allow_inf_nan=False)
    """RoPE base frequency. None: the model's own value (a fixed 10000 breaks models trained with
    another base, such as Llama 3 or Qwen 2)."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further llama.cpp settings: model loading (`kv_overrides`, `check_tensors`), context
    (`n_ubatch`, `swa_full`, `offload_kqv`, ...) or sampling (`min_p`, ...)."""

    streaming: bool = True
    """Compatibility: callbacks always receive tokens as they are generated."""

    grammar_path: str | Path | None = None
    """A GBNF grammar file constraining the output; the names of the bundled grammars ("json",
    "list", ...) work too."""

    grammar: str | None = None
    """GBNF grammar text constraining the output."""

    verbose: bool = False
    """Print llama.cpp's load details and per-call timings to stderr. False prints nothing."""

    progress: bool | None = None
    """A progress bar on stderr while the model loads (tqdm's when installed). None: when `verbose`."""

    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Seconds a call may take, from its submission (time waiting for a free slot included) to its
    last token. Past it the request is cancelled, which frees its slot, and the call raises
    TimeoutError. Unlike a hosted API's HTTP read timeout it bounds the whole call, a stream that
    is still producing tokens included. Also a per-call option: ``invoke(..., timeout=5)``. None:
    no limit."""

    max_retries: int | None = Field(None, ge=0)
    """Accepted for code written for hosted APIs (and LangChain's standard tests); never used. A
    local model has no network errors or rate limits to wait out, and its errors (a prompt longer
    than the context, an invalid grammar) would come back the same on every retry."""

    _loaded: _native.Engine | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _collect_extra_kwargs(cls, values: Any) -> Any:
        """Unknown constructor arguments go to model_kwargs, with a warning (as in langchain_community)."""
        if not isinstance(values, dict):
            return values
        # langchain_community's docs pass callback_manager=CallbackManager([...]); langchain-core 1.x
        # takes the same object as `callbacks`.
        if "callback_manager" in values:
            manager = values.pop("callback_manager")
            if values.get("callbacks") is not None and manager is not None:
                raise ValueError("give either callbacks or callback_manager, not both")
            if manager is not None:
                values["callbacks"] = manager
        hosted = [name for name in HOSTED_API_ARGS if values.pop(name, None) is not None]
        if hosted:
            warnings.warn(
                f"{', '.join(hosted)} ignored: {cls.__name__} runs a local model, not a hosted API",
                stacklevel=4,
            )
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        extra = dict(values.get("model_kwargs") or {})
        for name in list(values):
            if name not in known:
                if name in extra:
                    raise ValueError(f"{name!r} is given twice: as an argument and in model_kwargs")
                warnings.warn(
                    f"{name!r} is not a field of {cls.__name__}; passing it to llama.cpp through model_kwargs",
                    stacklevel=4,
                )
                extra[name] = values.pop(name)
        if extra:
            values["model_kwargs"] = extra
        return values

    @model_validator(mode="after")
    def _check_paths(self) -> LlamaCppParams:
        path = os.path.expanduser(os.fspath(self.model_path))
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file not found: {path}")
        self.model_path = path
        if self.lora_path is not None and not os.path.exists(os.path.expanduser(self.lora_path)):
            raise FileNotFoundError(f"LoRA adapter not found: {self.lora_path}")
        if self.draft_model_path is not None:
            draft = os.path.expanduser(os.fspath(self.draft_model_path))
            if not os.path.exists(draft):
                raise FileNotFoundError(f"draft model file not found: {draft}")
            self.draft_model_path = draft
        if self.draft_min > self.draft_max:
            raise ValueError(f"draft_min ({self.draft_min}) is more than draft_max ({self.draft_max})")
        if self.grammar is not None and self.grammar_path is not None:
            raise ValueError("give either grammar or grammar_path, not both")
        if self.grammar_path is not None:
            self.grammar_path = resolve_grammar_path(self.grammar_path)
        unknown = set(self.model_kwargs) - _MODEL_KWARGS
        if unknown:
            raise ValueError(f"unknown model_kwargs {sorted(unknown)}; known: {', '.join(sorted(_MODEL_KWARGS))}")
        return self

    # -- engine ---------------------------------------------------------------------------

    def _model_config(self) -> _engine.ModelConfig:
        kw = self.model_kwargs
        overrides = kw.get("kv_overrides") or {}
        return _engine.ModelConfig(
            path=self.model_path,
            n_gpu_layers=self.n_gpu_layers if self.n_gpu_layers is not None else (-1 if self._rpc_servers() else 0),
            use_mmap=self.use_mmap,
            use_mlock=self.use_mlock,
            vocab_only=self.vocab_only,
            check_tensors=bool(kw.get("check_tensors", False)),
            repack=bool(kw.get("repack", not self.batch_invariant)),
            kv_overrides=tuple(sorted((str(k), _override_spec(v)) for k, v in overrides.items())),
            rpc_servers=self._rpc_servers(),
        )

    def _rpc_servers(self) -> tuple[str, ...]:
        servers = self.rpc_servers
        if isinstance(servers, str):
            servers = servers.split(",")
        return tuple(s.strip() for s in servers or () if s.strip())

    def _engine_config(self, embeddings: bool = False) -> _engine.EngineConfig:
        kw = {k: v for k, v in self.model_kwargs.items() if k in _engine.ENGINE_FIELDS}
        return _engine.EngineConfig(
            **{
                "n_ctx": -1 if self.n_ctx is None else self.n_ctx,
                "n_batch": self.n_batch,
                "n_ubatch": self.n_ubatch or self.n_batch,
                "n_seq": self.n_seq or (1 if self.batch_invariant else DEFAULT_N_SEQ),
                "n_threads": self.n_threads or 0,
                "n_threads_batch": self.n_threads_batch or 0,
                "f16_kv": self.f16_kv,
                "flash_attn": -1 if self.flash_attn is None else int(self.flash_attn),
                "rope_freq_base": self.rope_freq_base or 0.0,
                "rope_freq_scale": self.rope_freq_scale or 0.0,
                "embeddings": embeddings,
                "batch_invariant": self.batch_invariant,
                "lora_path": os.path.expanduser(self.lora_path) if self.lora_path else "",
                "lora_scale": self.lora_scale,
                **(
                    {}
                    if embeddings
                    else {
                        "draft_model_path": self.draft_model_path or "",
                        "prompt_lookup": self.prompt_lookup,
                        "draft_max": self.draft_max,
                        "draft_min": self.draft_min,
                        "draft_p_min": self.draft_p_min,
                    }
                ),
                **kw,
            }
        )

    def load(self) -> _native.Engine:
        """Load the model now (otherwise it is loaded on first use) and return its engine."""
        if not _engine.is_live(self._loaded):  # None, or inherited through fork()
            self._loaded = _engine.get_engine(self._model_config(), self._engine_config(), self.verbose, self.progress)
        return self._loaded

    @property
    def native_model(self) -> _native.Model:
        """The loaded llama.cpp model (tokenize, detokenize, metadata)."""
        if self.vocab_only:
            return _engine.load_model(self._model_config(), self.verbose, self.progress)
        return self.load().model

    def close(self) -> None:
        """Drop this instance's engine; weights are freed when no instance uses them."""
        self._loaded = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identity, shared by the LangChain classes ---------------------------------------------

    def _model_name(self) -> str:
        return os.path.basename(self.model_path)

    def _base_identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "repeat_penalty": self.repeat_penalty,
            "stop": self.stop,
            "grammar": self.grammar,
            "grammar_path": str(self.grammar_path) if self.grammar_path else None,
            **self.model_kwargs,
        }

    def _add_ls_params(self, params: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> Any:
        """LangSmith's ls_* fields, from the instance and this call's options."""
        params["ls_provider"] = "llamacpp"
        params["ls_model_name"] = kwargs.get("model") or self._model_name()
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None and max_tokens >= 0:
            params["ls_max_tokens"] = max_tokens
        merged = self._stop_list(stop)
        if merged:
            params["ls_stop"] = merged
        return params

    # -- requests ---------------------------------------------------------------------------

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Per-call options merged over the fields."""
        unknown = set(kwargs) - CALL_OPTIONS
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {', '.join(sorted(CALL_OPTIONS))}")
        options = {name: getattr(self, name) for name in CALL_OPTIONS}
        # A grammar given for this call replaces the instance's, whichever way it is given.
        if "grammar" in kwargs or "grammar_path" in kwargs:
            options["grammar"] = options["grammar_path"] = None
        options.update({name: _check_option(name, value) for name, value in kwargs.items()})
        return options

    def _stop_list(self, stop: list[str] | None) -> list[str]:
        """The constructor's stop strings plus the call's, never one dropping the other."""
        merged = list(self.stop or [])
        for s in stop or []:
            if s not in merged:
                merged.append(s)
        return merged

    def _request_params(
        self,
        prompt_tokens: list[int],
        stop: list[str],
        options: dict[str, Any],
        grammar: str | None = None,
    ) -> _native.RequestParams:
        params = _native.RequestParams()
        params.prompt = prompt_tokens
        max_tokens = options["max_tokens"]
        params.max_tokens = -1 if max_tokens is None or max_tokens < 0 else int(max_tokens)
        params.stop = _engine.valid_texts(stop, "stop")
        params.ignore_eos = bool(options["ignore_eos"])
        logprobs = options["logprobs"]
        params.n_probs = 0 if logprobs is None else (int(logprobs) if logprobs > 0 else -1)
        s = params.sampling
        s.temperature = float(options["temperature"])
        s.top_p = float(options["top_p"])
        s.top_k = int(options["top_k"])
        s.min_p = float(options["min_p"])
        s.typical_p = float(options["typical_p"])
        s.repeat_penalty = float(options["repeat_penalty"])
        s.repeat_last_n = int(options["last_n_tokens_size"])
        s.frequency_penalty = float(options["frequency_penalty"])
        s.presence_penalty = float(options["presence_penalty"])
        s.mirostat = int(options["mirostat_mode"])
        s.mirostat_tau = float(options["mirostat_tau"])
        s.mirostat_eta = float(options["mirostat_eta"])
        s.seed = int(options["seed"])
        if options["logit_bias"]:
            s.logit_bias = [(int(k), float(v)) for k, v in options["logit_bias"].items()]
        sampling_kw = {k: v for k, v in self.model_kwargs.items() if k in _SAMPLING_KWARGS}
        _engine.apply_overrides(s, sampling_kw, _SAMPLING_KWARGS, "sampling")
        if grammar is None:
            grammar = self._grammar_text(options)
        if grammar:
            s.grammar = _engine.valid_text(grammar, "grammar")
        return params

    @staticmethod
    def _grammar_text(options: dict[str, Any]) -> str | None:
        if options.get("grammar") and options.get("grammar_path"):
            raise ValueError("give either grammar or grammar_path, not both")
        if options.get("grammar"):
            return str(options["grammar"])
        if options.get("grammar_path"):
            return Path(resolve_grammar_path(options["grammar_path"])).read_text(encoding="utf-8")
        return None

    def _report(self, request: _native.Request) -> None:
        """Forward native logs; with verbose, print the call's timings as llama.cpp does."""
        _engine.flush_native_logs(self.verbose)
        if not self.verbose:
            return
        u = request.usage
        evaluated = u["prompt_tokens"] - u["cached_tokens"]
        pp = evaluated / (u["prompt_ms"] / 1000) if u["prompt_ms"] > 0 else 0.0
        gen = max(u["completion_tokens"] - 1, 0)
        tg = gen / (u["generation_ms"] / 1000) if u["generation_ms"] > 0 else 0.0
        print(
            f"llama_perf: prompt eval = {u['prompt_ms']:.1f} ms / {evaluated} tokens ({pp:.1f} tok/s, "
            f"{u['cached_tokens']} cached) | eval = {u['generation_ms']:.1f} ms / {u['completion_tokens']} "
            f"tokens ({tg:.1f} tok/s) | queued = {u['queued_ms']:.1f} ms | finish = {request.finish_reason}",
            file=sys.stderr,
        )

    def _draft_info(self, request: _native.Request) -> dict[str, int]:
        """Speculative decoding's counts for this call, named as llama-server reports them; {} without it."""
        if not (self.draft_model_path or self.prompt_lookup):
            return {}
        u = request.usage
        return {"draft_n": int(u["draft_n"]), "draft_n_accepted": int(u["draft_n_accepted"])}

    @staticmethod
    def _usage(request: _native.Request) -> dict[str, int]:
        u = request.usage
        return {
            "prompt_tokens": int(u["prompt_tokens"]),
            "completion_tokens": int(u["completion_tokens"]),
            "total_tokens": int(u["prompt_tokens"] + u["completion_tokens"]),
            "cached_tokens": int(u["cached_tokens"]),
        }


_MODEL_KWARGS = (_engine.ENGINE_FIELDS | _SAMPLING_KWARGS | {"kv_overrides", "check_tensors", "repack"}) - {
    "batch_invariant",
    "embeddings",
    "lora_path",
    "lora_scale",
    "mmproj_path",
    "grammar",
    "grammar_lazy",
    "grammar_triggers",
    "preserved_tokens",
    "generation_prompt",
    "grammar_is_tool_call",
}


# Per-call options are checked against the declarations of the fields of the same names.
_OPTION_TYPES: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(Annotated[info.annotation, info])  # type: ignore[arg-type]  # a type built at run time
    for name, info in LlamaCppParams.model_fields.items()
    if name in CALL_OPTIONS
}


def _check_option(name: str, value: Any) -> Any:
    """A per-call option's value as its field would take it; a ValueError naming it otherwise."""
    try:
        return _OPTION_TYPES[name].validate_python(value)
    except ValidationError as e:
        raise ValueError(f"invalid {name}={value!r}: {e.errors()[0]['msg']}") from None


def _override_spec(value: Any) -> str:
    if isinstance(value, bool):
        return f"bool:{str(value).lower()}"
    if isinstance(value, int):
        return f"int:{value}"
    if isinstance(value, float):
        return f"float:{value}"
    return f"str:{value}"
