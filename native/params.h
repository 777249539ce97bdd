// The settings of an engine and of a request, each declared once: a table row gives the field's type,
// name, default and documentation, and the same table makes the C++ struct here and its Python binding
// (module.cpp). Python's LangChain fields map onto these names (langchain_llamacpp/_settings.py).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "llama.h"

namespace lcl {

struct MediaPrompt;

// X(type, name, default, doc): one row per setting. Types with commas go through the aliases below.
#define LCL_DECLARE_FIELD(type, name, value, doc) type name = value;

#define LCL_ENGINE_PARAMS(X)                                                                                        \
    X(int, n_ctx, -1, "The longest request, in tokens; 0: the model's trained length; -1: min(4096, trained).")    \
    X(int, n_batch, 512, "Logical batch: tokens per decode step.")                                                 \
    X(int, n_ubatch, 512, "Physical batch.")                                                                       \
    X(int, n_seq, 1, "Sequence slots: requests decoded together, conversations kept warm.")                       \
    X(int, n_threads, 0, "Threads for generation; 0: from the machine.")                                           \
    X(int, n_threads_batch, 0, "Threads for prompt processing; 0: the same as n_threads.")                         \
    X(bool, f16_kv, true, "KV cache in f16 (else f32).")                                                           \
    X(std::string, cache_type_k, "",                                                                               \
      "The K cache's type: f16, f32, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0 or q5_1; \"\": by f16_kv.")              \
    X(std::string, cache_type_v, "", "The V cache's type, as cache_type_k; a quantized one needs flash attention.") \
    X(int, flash_attn, -1, "-1 auto, 0 off, 1 on.")                                                                \
    X(float, rope_freq_base, 0.0f, "0: from the model.")                                                           \
    X(float, rope_freq_scale, 0.0f, "0: from the model.")                                                          \
    X(int, rope_scaling_type, -1, "llama_rope_scaling_type: -1 from the model, 0 none, 1 linear, 2 yarn.")         \
    X(float, yarn_ext_factor, -1.0f, "YaRN extrapolation mix factor; negative: from the model.")                   \
    X(float, yarn_attn_factor, -1.0f, "YaRN magnitude scaling factor; negative: from the model.")                  \
    X(float, yarn_beta_fast, -1.0f, "YaRN low correction dim; negative: from the model.")                          \
    X(float, yarn_beta_slow, -1.0f, "YaRN high correction dim; negative: from the model.")                         \
    X(int, yarn_orig_ctx, 0, "YaRN's original context length; 0: from the model.")                               \
    X(bool, embeddings, false, "An embedding engine (pooled vectors), not a generating one.")                      \
    X(int, pooling, -1, "llama_pooling_type of an embedding engine; -1: from the model.")                          \
    X(bool, swa_full, false, "Sliding-window layers keep every position (else only their window).")                \
    X(bool, offload_kqv, true, "KV cache and attention on the GPU with the offloaded layers.")                     \
    X(std::string, lora_path, "", "A LoRA adapter applied to this engine's context; \"\" for none.")              \
    X(float, lora_scale, 1.0f, "The LoRA adapter's scale.")                                                        \
    X(bool, batch_invariant, false, "Outputs do not depend on what else is decoded with them (CPU backend; slower).") \
    X(std::string, mmproj_path, "", "A projector GGUF (mmproj) for image and audio input; \"\" for none.")         \
    X(int, kv_unified, -1,                                                                                         \
      "One KV pool of n_ctx cells shared by all slots: -1 auto (on unless batch_invariant or a recurrent model), " \
      "0 off (n_ctx per slot), 1 on.")                                                                             \
    X(bool, prompt_lookup, false,                                                                                  \
      "Speculative decoding with drafts copied from the request's own text (n-gram prompt lookup).")               \
    X(int, draft_max, 16, "Tokens drafted at most per step.")                                                      \
    X(int, draft_min, 0, "Tokens drafted at least where a draft exists, whatever the cost model says (0: as it says).") \
    X(float, draft_p_min, 0.75f, "The draft model stops drafting where its top token's probability is below this.") \
    X(int, draft_n_ctx, 0, "The draft model's context per slot; 0: the same as n_ctx.")                            \
    X(std::string, prompt_cache_dir, "",                                                                           \
      "A directory where finished requests' KV state is saved and restored from (prompt_cache.h); \"\" for none.")  \
    X(int64_t, prompt_cache_max_bytes, int64_t(2) << 30, "The prompt cache's files together, at most (least recently used go first).") \
    X(int, prompt_cache_min_tokens, 512, "Prompts shorter than this are neither saved nor looked up on disk.")

struct EngineParams {
    LCL_ENGINE_PARAMS(LCL_DECLARE_FIELD)
};

struct GrammarTrigger {
    int type = 0;  // common_grammar_trigger_type
    std::string value;
    int token = -1;
};

using LogitBias = std::vector<std::pair<int, float>>;
using GrammarTriggers = std::vector<GrammarTrigger>;
using Strings = std::vector<std::string>;
// llama.cpp's default DRY sequence breakers (common_params_sampling).
inline const Strings kDryBreakers = {"\n", ":", "\"", "*"};

#define LCL_SAMPLING_PARAMS(X)                                                                                     \
    X(float, temperature, 0.8f, "0 for greedy decoding.")                                                          \
    X(int, top_k, 40, "")                                                                                          \
    X(float, top_p, 0.95f, "")                                                                                     \
    X(float, min_p, 0.05f, "")                                                                                     \
    X(float, typical_p, 1.0f, "")                                                                                  \
    X(float, repeat_penalty, 1.0f, "")                                                                             \
    X(int, repeat_last_n, 64, "Tokens the penalties look back on; -1: the whole context.")                         \
    X(float, frequency_penalty, 0.0f, "")                                                                          \
    X(float, presence_penalty, 0.0f, "")                                                                           \
    X(int, mirostat, 0, "0 off, 1 Mirostat, 2 Mirostat 2.0.")                                                      \
    X(float, mirostat_tau, 5.0f, "")                                                                               \
    X(float, mirostat_eta, 0.1f, "")                                                                               \
    X(float, dry_multiplier, 0.0f, "DRY repetition penalty's strength; 0 off.")                                    \
    X(float, dry_base, 1.75f, "DRY: the penalty grows as dry_base ** (repeated length - dry_allowed_length).")      \
    X(int, dry_allowed_length, 2, "DRY: repeats up to this long go unpenalized.")                                  \
    X(int, dry_penalty_last_n, 64, "DRY: tokens looked back on; -1: the whole context, 0 off.")                    \
    X(Strings, dry_sequence_breakers, kDryBreakers, "DRY: text that ends a repeated sequence (at most 32).")       \
    X(float, xtc_probability, 0.0f, "XTC: the chance of cutting the most likely tokens at a step; 0 off.")         \
    X(float, xtc_threshold, 0.1f, "XTC: tokens at least this likely are cut, all but the least likely of them.")  \
    X(float, top_n_sigma, -1.0f, "Keep tokens within n standard deviations of the top logit; -1 off.")            \
    X(int64_t, seed, -1, "-1 for a random seed.")                                                                  \
    X(LogitBias, logit_bias, {}, "(token, bias) pairs added to the logits.")                                       \
    X(std::string, grammar, "", "GBNF grammar text; empty for none.")                                              \
    X(bool, grammar_lazy, false, "The grammar applies from a trigger on.")                                         \
    X(bool, grammar_is_tool_call, false, "A grammar from the chat template (prefilled with the generation prompt).") \
    X(GrammarTriggers, grammar_triggers, {}, "")                                                                   \
    X(Strings, preserved_tokens, {}, "Special tokens of the template that are output as text.")                    \
    X(std::string, generation_prompt, "", "")                                                                     \
    X(int, reasoning_budget, -1, "Tokens of thinking at most, then the block is closed; -1: no limit.")            \
    X(std::string, reasoning_start, "", "The chat template's tag that opens a thinking block.")                    \
    X(Strings, reasoning_end, {}, "The tags that close it; the first is written where the budget runs out.")

struct SamplingParams {
    LCL_SAMPLING_PARAMS(LCL_DECLARE_FIELD)
};

using Tokens = std::vector<llama_token>;

// Besides these, a request has `media` (a MediaPrompt whose tokens are the prompt: Engine::tokenize_media).
#define LCL_REQUEST_PARAMS(X)                                                                                      \
    X(Tokens, prompt, {}, "Prompt token ids.")                                                                     \
    X(int, max_tokens, -1, "-1: until end of generation or a full context.")                                       \
    X(Strings, stop, {}, "Stop strings: the output ends before the first one.")                                    \
    X(int, n_probs, 0, "Top logprobs per token; -1: the chosen token's only.")                                     \
    X(bool, ignore_eos, false, "Generate past the end-of-generation tokens.")                                      \
    X(bool, render_special, false, "Output special tokens as text.")                                               \
    X(SamplingParams, sampling, {}, "")

struct RequestParams {
    LCL_REQUEST_PARAMS(LCL_DECLARE_FIELD)
    std::shared_ptr<const MediaPrompt> media;
};

}  // namespace lcl
