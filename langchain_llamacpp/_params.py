"""The fields of `LlamaCpp` and `ChatLlamaCpp`, with what is checked when an instance is made.

The field names and meanings follow `langchain_community`'s llama.cpp classes so that their
documentation works with only the import changed; defaults differ where theirs were wrong. Each
field's docstring is its documentation; how it reaches llama.cpp is its row in `_settings`.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

import langchain_llamacpp._native as _native
import langchain_llamacpp._settings as _settings
from langchain_llamacpp._hardware import HardwareParams
from langchain_llamacpp._lifecycle import NativeStateMixin
from langchain_llamacpp._pretrained import FromPretrainedMixin
from langchain_llamacpp.grammars import resolve_grammar_path


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A file's path: a str, or a pathlib.Path (any os.PathLike) taken as its string.
PathText = Annotated[str, BeforeValidator(_path_text)]

# Arguments that only mean something to a hosted API (LangChain's standard tests pass api_key; code
# that switches providers passes both): accepted with a warning, and dropped.
HOSTED_API_ARGS = ("api_key", "base_url")


def _finite_or_banned(bias: float) -> float:
    """A logit bias: finite, or minus infinity (the token is never sampled)."""
    if math.isnan(bias) or bias == math.inf:
        raise ValueError("a logit bias must be a finite number, or -inf to ban the token")
    return bias


# The first bytes of every GGUF file (models, LoRA adapters, projectors).
GGUF_MAGIC = b"GGUF"


def check_files(instance: BaseModel) -> None:
    """Each field that names a file (`_settings` rows with `file`): `~` expanded, and a GGUF file there.

    Checked here, at construction, so that a wrong path fails where it is written rather than at the
    first call: missing (FileNotFoundError), a directory, or a file that does not start with the GGUF
    magic (ValueError). The native loaders check again as they open each file, for
    `native.load_model` and `create_engine`, which have no construction step.
    """
    for row in _settings.file_rows(type(instance)):
        value = getattr(instance, row.name)
        if value is None:
            continue
        path = os.path.expanduser(os.fspath(value))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{row.file} not found: {path}")
        if os.path.isdir(path):
            raise ValueError(f"{row.name} is a directory, not a GGUF file: {path}; give the .gguf file's path")
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
        if magic != GGUF_MAGIC:
            raise ValueError(
                f"{row.name}: {row.file} is not a GGUF file (it does not start with the bytes 'GGUF'): {path}"
            )
        setattr(instance, row.name, path)


def model_as_path(cls: type, values: dict[str, Any]) -> None:
    """ChatOllama's `model=` (a model's name there): the path of an existing file is taken as `model_path`;
    anything else is refused, saying what to pass, before it could go to llama.cpp as an unknown setting."""
    model = _path_text(values.pop("model"))
    name = cls.__name__
    if values.get("model_path") is not None:
        raise ValueError(f"give model_path only: {name} takes no model argument (model={model!r})")
    if isinstance(model, str) and os.path.isfile(os.path.expanduser(model)):
        values["model_path"] = model
        return
    raise ValueError(
        f"model={model!r} is not the path of a file: {name} runs a local GGUF file, passed as "
        f"model_path='/path/to/model.gguf' (or use {name}.from_pretrained(repo_id, filename) for a file "
        "on the Hugging Face Hub)"
    )


class LocalModelChecks(BaseModel):
    """What the embedding and reranking classes check at construction: OllamaEmbeddings' `model=` taken as
    `model_path`, the files (`check_files`) and `model_kwargs`. (`LlamaCppParams` checks the same among
    its own: its `model=` handling also takes langchain_community's other arguments.)"""

    @model_validator(mode="before")
    @classmethod
    def _model_as_path(cls, values: Any) -> Any:
        """`model=`: a file's path is taken as `model_path`; anything else is refused."""
        if isinstance(values, dict) and "model" in values:
            values = dict(values)
            model_as_path(cls, values)
        return values

    @model_validator(mode="after")
    def _check_files(self) -> LocalModelChecks:
        check_files(self)
        _settings.check_model_kwargs(type(self), getattr(self, "model_kwargs", {}))
        return self


class LlamaCppParams(FromPretrainedMixin, NativeStateMixin, HardwareParams):
    """Model, context and sampling settings common to the llama.cpp LangChain classes."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    # Which rows of the settings table apply (`_settings.SETTINGS`).
    _settings_class: ClassVar[str] = _settings.LLM

    model_path: PathText
    """Path to the GGUF model file."""

    lora_base: str | None = None
    """Accepted for compatibility; llama.cpp applies `lora_path` to the loaded model directly."""

    lora_path: PathText | None = None
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

    n_seq: int | None = Field(None, ge=1, le=_native.MAX_SEQUENCES)
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

    draft_model_path: PathText | None = None
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

    draft_max: int = Field(16, ge=1, le=_native.MAX_DRAFT_TOKENS)
    """Tokens drafted at most per step (llama-server's ``--draft-max``)."""

    draft_min: int = Field(0, ge=0, le=_native.MAX_DRAFT_TOKENS)
    """Tokens drafted at least where a draft exists, whatever the measured costs say (0: as they say)."""

    draft_p_min: float = Field(0.75, ge=0, le=1, allow_inf_nan=False)
    """The draft model stops drafting where it gives its top token less than this probability."""

    prompt_cache_dir: PathText | None = None
    """A prompt cache on disk that survives a restart: a directory (created if missing) where the
    KV state of each finished request with a long prompt is saved, in the background and before the
    process exits, and from which a later request, in this process or another, whose prompt starts
    with the same tokens restores it and evaluates only the rest (a long system prompt or a document
    is paid for once). Files are keyed by the model file, every setting that changes the KV cache,
    LoRA adapter, images and the llama.cpp build; each is checked (length, sha256) before llama.cpp
    reads it, and a damaged or foreign one is ignored with a warning. Several processes may share the
    directory. It must be writable by you only (a warning says so otherwise): the checksum guards
    against corruption, not against someone who writes a file there. None: off."""

    prompt_cache_max_bytes: int = Field(2 << 30, ge=1)
    """The files of `prompt_cache_dir` together at most, in bytes (the least recently used are
    deleted first). A saved state takes about n_tokens x n_layer x 2 x n_embd_kv x 2 bytes in f16
    (23 KB a token for SmolLM2-135M, 128 KB for Llama 3 8B)."""

    prompt_cache_min_tokens: int = Field(512, ge=1)
    """Prompts shorter than this are neither saved to nor looked up in `prompt_cache_dir`; a
    sequence is saved again once it holds this many tokens more than its longest saved prefix."""

    n_gpu_layers: int | None = None
    """Layers to offload to the GPU (-1: all). Needs a GPU build; see README. None: as llama.cpp's tools
    do, as many as fit in free device memory (llama.cpp's fit; where the context is not given either, it
    may be lowered, not below min(trained length, 4096)), logged; all of them where `rpc_servers` are given;
    as given where a placement is (`tensor_split`, `override_tensor`, `n_cpu_moe`, a row split). A build
    without a GPU backend: none."""

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

    dry_multiplier: float | None = Field(None, ge=0, allow_inf_nan=False)
    """DRY ("don't repeat yourself") sampling: tokens that would extend a sequence already seen in the
    text are penalized by ``dry_multiplier * dry_base ** (length - dry_allowed_length)``, which breaks
    repetition loops that plain sampling falls into (0.8 is the usual strength). None: 0, off."""

    dry_base: float | None = Field(None, ge=1, allow_inf_nan=False)
    """DRY: how fast the penalty grows with the repeated sequence's length. None: 1.75."""

    dry_allowed_length: int | None = Field(None, ge=0)
    """DRY: repeated sequences up to this long go unpenalized. None: 2."""

    dry_penalty_last_n: int | None = Field(None, ge=-1)
    """DRY: how many recent tokens are searched for repeats (-1: the whole context, 0: off). None: 64."""

    dry_sequence_breakers: list[str] | None = Field(None, max_length=32)
    """DRY: text that ends a repeated sequence, so that a repeat across it is not penalized (at most 32).
    None: llama.cpp's ``["\\n", ":", "\"", "*"]``."""

    xtc_probability: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    """XTC ("exclude top choices"): at each token, with this probability, every token more likely than
    `xtc_threshold` except the least likely of them is removed, for less predictable prose. None: 0, off."""

    xtc_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    """XTC: the probability above which a token counts as a top choice (above 0.5: off). None: 0.1."""

    top_n_sigma: float | None = Field(None, allow_inf_nan=False)
    """Top-n-sigma: keep only tokens whose logit is within n standard deviations of the top one (a cut
    that does not depend on the temperature). None: -1, off."""

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
    """Further llama.cpp settings, those without a field here: model loading (`kv_overrides`,
    `check_tensors`, `repack`) and context (`swa_full`, `offload_kqv`, `kv_unified`, `draft_n_ctx`).
    A key that is a field, or llama.cpp's name for one (`mirostat` for `mirostat_mode`), raises a
    ValueError naming the field to pass instead."""

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
        if "model" in values and "model" not in cls.model_fields:
            model_as_path(cls, values)
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
    def _check(self) -> LlamaCppParams:
        check_files(self)
        _native.check_draft_lengths(self.draft_max, self.draft_min)  # at once, not only where it speculates
        _settings.one_grammar(self.grammar, self.grammar_path)
        if self.grammar_path is not None:
            self.grammar_path = resolve_grammar_path(self.grammar_path)
        _settings.check_model_kwargs(type(self), self.model_kwargs)
        return self
