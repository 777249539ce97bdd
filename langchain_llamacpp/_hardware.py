"""The fields about the machine, shared by all three classes: the KV cache's types, where the weights go
(devices, the split between them, tensor overrides, MoE experts in CPU memory), and context extension
(RoPE scaling, YaRN). Their names follow llama-cpp-python's ``Llama(...)`` and llama.cpp's flags; how each
reaches llama.cpp is its row in `_settings`."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, model_validator

import langchain_llamacpp._settings as _settings
from langchain_llamacpp._docs import DocumentedFields

# llama.cpp's --cache-type-k/-v names.
CacheType = Literal["f16", "f32", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


class HardwareParams(DocumentedFields):
    """KV cache types, placement of the weights and context extension (see the module's docstring)."""

    cache_type_k: CacheType | None = None
    """The K (key) cache's type, as llama.cpp's ``--cache-type-k``: ``"q8_0"`` halves the KV cache's
    memory against ``"f16"`` at a perplexity cost under 1% (see the README). None: by `f16_kv` (f16). A type
    given wins over `f16_kv` (with a warning where `f16_kv=False` is given too). llama-cpp-python's
    ``type_k`` (a ggml type number) is taken in ``model_kwargs``."""

    cache_type_v: CacheType | None = None
    """The V (value) cache's type, as `cache_type_k`. A quantized V cache needs flash attention: with
    `flash_attn` unset it is turned on; `flash_attn=False` raises a ValueError saying so."""

    main_gpu: int | None = Field(None, ge=0)
    """The GPU (an index among the devices used) that holds the whole model with ``split_mode="none"``,
    or the intermediate results and KV cache with ``"row"``. None: 0."""

    split_mode: Literal["none", "layer", "row"] | int | None = None
    """How the offloaded layers are split between several GPUs: ``"layer"`` (llama.cpp's default: whole
    layers and their KV cache per GPU), ``"row"`` (each weight split by rows) or ``"none"`` (only
    `main_gpu`). llama-cpp-python's numbers (0, 1, 2) are taken too."""

    tensor_split: list[float] | None = None
    """The share of the offloaded layers each GPU takes, in device order (``[3, 1]``: three quarters on the
    first). None: in proportion to their free memory."""

    devices: list[str] | str | None = None
    """The devices that take offloaded layers, by llama.cpp's names (``["CUDA0", "CUDA1"]``, ``"Vulkan0"``;
    a comma-separated string as llama.cpp's ``--device``; ``["none"]``: no device). An unknown name raises
    a ValueError listing the known ones. None: every GPU."""

    override_tensor: list[str] | str | None = None
    """Tensors whose names match a regex go to the named buffer type, as llama.cpp's ``-ot``:
    ``["blk\\.(1[0-9])\\.ffn_.*_exps=CPU"]`` (or one comma-separated string). A bad regex or an unknown
    buffer type raises a ValueError. Overrides come before those of `n_cpu_moe`."""

    n_cpu_moe: int | None = Field(None, ge=0)
    """Keep the expert tensors of the first N layers of a mixture-of-experts model in CPU memory, as
    llama.cpp's ``--n-cpu-moe``: a 30B MoE on a 24 GB GPU with ``n_gpu_layers=-1`` and its experts in RAM.
    None: 0."""

    rope_scaling_type: Literal["none", "linear", "yarn"] | int | None = None
    """RoPE scaling for a context longer than the model was trained on: ``"linear"`` (with
    `rope_freq_scale`) or ``"yarn"`` (with `yarn_orig_ctx` and the ``yarn_*`` factors). None: the model's
    own (from its GGUF metadata)."""

    yarn_ext_factor: float | None = Field(None, allow_inf_nan=False)
    """YaRN's extrapolation mix factor (0: interpolation only). None: the model's own."""

    yarn_attn_factor: float | None = Field(None, ge=0, allow_inf_nan=False)
    """YaRN's attention magnitude scale. None: the model's own."""

    yarn_beta_fast: float | None = Field(None, ge=0, allow_inf_nan=False)
    """YaRN's low correction dimension. None: the model's own."""

    yarn_beta_slow: float | None = Field(None, ge=0, allow_inf_nan=False)
    """YaRN's high correction dimension. None: the model's own."""

    yarn_orig_ctx: int | None = Field(None, ge=0)
    """The context length the model was trained on, for YaRN. None: the model's own."""

    @model_validator(mode="after")
    def _check_cache_types(self) -> Any:
        kwargs = getattr(self, "model_kwargs", {})
        for key in ("type_k", "type_v"):
            if key in kwargs:
                _settings.cache_type_name(kwargs[key], key)  # a ValueError naming the key
                if getattr(self, "cache_" + key) is not None:
                    raise ValueError(f"give cache_{key} or model_kwargs {key!r}, not both")
        given = [n for n in ("cache_type_k", "cache_type_v") if getattr(self, n) is not None]
        given += [n for n in ("type_k", "type_v") if kwargs.get(n) is not None]
        if given and getattr(self, "f16_kv", True) is False:
            warnings.warn(
                f"{' and '.join(given)} given with f16_kv=False: the cache type given wins (f16_kv=False "
                "still makes the other cache f32)",
                stacklevel=2,
            )
        return self
