#include "context.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "backends.h"
#include "common.h"
#include "embeddings.h"
#include "ggml-cpu.h"
#include "llama-context.h"  // llama.cpp internal: the scheduler, for batch_invariant
#include "logging.h"
#include "placement.h"  // kv_cache_type
#include "speculative.h"

namespace lcl {

namespace {

// n_seq within llama.cpp's limit (LLAMA_MAX_SEQ, _native.MAX_SEQUENCES); n_ctx's defaults from the model.
void plan_sequences(const Model & model, EngineParams & params) {
    const int max_seq = static_cast<int>(llama_max_parallel_sequences());
    if (params.n_seq < 1 || params.n_seq > max_seq) {
        throw std::invalid_argument("n_seq must be between 1 and " + std::to_string(max_seq) + ", got " +
                                    std::to_string(params.n_seq));
    }
    if (params.n_ctx == 0) {
        params.n_ctx = model.n_ctx_train();
    } else if (params.n_ctx < 0) {
        params.n_ctx = std::min(4096, model.n_ctx_train());  // a sensible default, not 32k of KV cache
    }
}

// batch_invariant's conditions; sets the flash attention and batch sizes it needs.
void check_batch_invariant(const Model & model, EngineParams & params, bool recurrent) {
    if (model.params().repack) {
        throw std::invalid_argument("batch_invariant needs the model loaded without repacked weights (repack=False): "
                                    "their kernels differ between one column and several");
    }
    if (params.flash_attn == 0) {
        throw std::invalid_argument("batch_invariant needs flash attention (its reference path computes each row alone)");
    }
    if (params.kv_unified == 1) {
        throw std::invalid_argument("batch_invariant needs a KV cache per slot (kv_unified=False): in a shared pool, "
                                    "which cells a sequence gets changes the order of its sums");
    }
    if (recurrent) {
        throw std::invalid_argument("batch_invariant is not supported for recurrent or hybrid models (their state "
                                    "cannot take a filler token)");
    }
    params.flash_attn = 1;
    params.n_ubatch = params.n_batch = std::max(params.n_batch, 4);
}

// Speculative decoding's conditions.
void check_speculation(EngineParams & params, bool recurrent) {
    if (params.embeddings) {
        throw std::invalid_argument("speculative decoding (a draft model, prompt lookup) is for generation, not embeddings");
    }
    if (recurrent) {
        throw std::invalid_argument("speculative decoding needs a KV cache that can drop the drafts the model "
                                    "refuses; a recurrent or hybrid model's state cannot");
    }
    check_draft_lengths(params.draft_max, params.draft_min);
    if (!(params.draft_p_min >= 0.0f && params.draft_p_min <= 1.0f)) {
        throw std::invalid_argument("draft_p_min must be between 0 and 1");
    }
}

// The KV cache's types: a type named wins over f16_kv. A quantized V cache needs flash attention, which
// is turned on where it was left to llama.cpp (as llama.cpp does) and refused where it was turned off.
void plan_cache_types(ContextPlan & plan) {
    EngineParams & params = plan.params;
    const ggml_type by_f16_kv = params.f16_kv ? GGML_TYPE_F16 : GGML_TYPE_F32;
    plan.type_k = params.cache_type_k.empty() ? by_f16_kv : kv_cache_type(params.cache_type_k, "cache_type_k");
    plan.type_v = params.cache_type_v.empty() ? by_f16_kv : kv_cache_type(params.cache_type_v, "cache_type_v");
    if (ggml_is_quantized(plan.type_v)) {
        if (params.flash_attn == 0) {
            throw std::invalid_argument(std::string("cache_type_v=") + ggml_type_name(plan.type_v) +
                                        " (a quantized V cache) needs flash attention: set flash_attn=True, or "
                                        "leave it unset (None) and it is turned on");
        }
        params.flash_attn = 1;
    }
}

// RoPE scaling and YaRN: llama.cpp's own checks are asserts, so the values are checked here first.
void check_rope(const EngineParams & params) {
    if (params.rope_scaling_type < -1 || params.rope_scaling_type > LLAMA_ROPE_SCALING_TYPE_YARN) {
        throw std::invalid_argument("rope_scaling_type must be -1 (the model's), 0 (none), 1 (linear) or 2 (yarn), got " +
                                    std::to_string(params.rope_scaling_type));
    }
    if (params.yarn_orig_ctx < 0) {
        throw std::invalid_argument("yarn_orig_ctx must be 0 (the model's) or a context length");
    }
    for (const float v : {params.yarn_ext_factor, params.yarn_attn_factor, params.yarn_beta_fast, params.yarn_beta_slow}) {
        if (!std::isfinite(v)) {
            throw std::invalid_argument("the yarn_* settings must be finite numbers (negative: the model's)");
        }
    }
}

}  // namespace

ContextPlan plan_context(const Model & model, const EngineParams & params_in, bool has_draft) {
    if (model.params().vocab_only) {
        throw std::invalid_argument("the model was loaded with vocab_only=True: it can tokenize but not generate");
    }
    ContextPlan plan;
    EngineParams & params = plan.params;
    params = params_in;
    plan_sequences(model, params);
    if (params.embeddings) {
        params = embedding_params(model, params);
        if (!params.mmproj_path.empty()) {
            throw std::invalid_argument("a projector (mmproj_path) is for generation, not for embeddings");
        }
    }
    if (params.n_batch <= 0 || params.n_ubatch <= 0) {
        throw std::invalid_argument("n_batch and n_ubatch must be positive");
    }
    if (!params.prompt_cache_dir.empty() && (params.embeddings || params.prompt_cache_max_bytes <= 0 || params.prompt_cache_min_tokens < 1)) {
        throw std::invalid_argument(params.embeddings ? "prompt_cache_dir is for generation, not embeddings"
                                                      : "prompt_cache_max_bytes and prompt_cache_min_tokens must be positive");
    }
    plan.recurrent = llama_model_is_recurrent(model.get()) || llama_model_is_hybrid(model.get());
    if (params.batch_invariant) {
        check_batch_invariant(model, params, plan.recurrent);
    }
    // Every generating slot decodes a token in each step, so a step may hold n_seq tokens even where
    // the prompt chunk (n_batch) is smaller; llama_decode aborts the process beyond its n_batch.
    params.n_batch = std::max(params.n_batch, params.n_seq);
    params.n_ubatch = std::min(std::max(params.n_ubatch, params.n_seq), params.n_batch);
    if (params.n_threads <= 0) {
        params.n_threads = std::max(1, common_cpu_get_num_math());
    }
    if (params.n_threads_batch <= 0) {
        params.n_threads_batch = params.n_threads;
    }
    // A filler token would advance a recurrent state that cannot be rolled back, and such a state is one
    // per sequence anyway: no unified pool for those. In one pool, llama.cpp computes any set of sequences
    // in one pass: no fillers needed.
    const bool unified = !params.embeddings && (params.kv_unified < 0 ? !params.batch_invariant && !plan.recurrent
                                                                       : params.kv_unified == 1);
    params.kv_unified = unified ? 1 : 0;
    plan.fill_gaps = !plan.recurrent && !unified;
    if (has_draft || params.prompt_lookup) {
        check_speculation(params, plan.recurrent);
    }
    plan_cache_types(plan);
    check_rope(params);
    return plan;
}

namespace {

llama_context_params context_params(const ContextPlan & plan) {
    const EngineParams & params = plan.params;
    auto cparams = llama_context_default_params();
    // n_ctx is the longest request either way: a pool of that size, or that much per slot.
    cparams.n_ctx = static_cast<uint32_t>(params.n_ctx) * static_cast<uint32_t>(params.kv_unified ? 1 : params.n_seq);
    cparams.n_batch = params.n_batch;
    cparams.n_ubatch = params.n_ubatch;
    cparams.n_seq_max = params.n_seq;
    if (params.embeddings) {
        // Many texts share one batch, each its own sequence in one unified cache of n_ctx cells
        // (cleared before every batch), as llama.cpp's llama-embedding does.
        // No more sequences than tokens in a batch: llama.cpp reserves an output per sequence at creation
        // and aborts if that exceeds n_batch outputs.
        cparams.n_seq_max = std::min<uint32_t>(llama_max_parallel_sequences(), params.n_batch);
    }
    cparams.n_threads = params.n_threads;
    cparams.n_threads_batch = params.n_threads_batch;
    cparams.type_k = plan.type_k;
    cparams.type_v = plan.type_v;
    cparams.flash_attn_type = params.flash_attn < 0   ? LLAMA_FLASH_ATTN_TYPE_AUTO
                              : params.flash_attn == 0 ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                       : LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cparams.rope_freq_base = params.rope_freq_base;
    cparams.rope_freq_scale = params.rope_freq_scale;
    cparams.rope_scaling_type = static_cast<llama_rope_scaling_type>(params.rope_scaling_type);
    cparams.yarn_ext_factor = params.yarn_ext_factor;
    cparams.yarn_attn_factor = params.yarn_attn_factor;
    cparams.yarn_beta_fast = params.yarn_beta_fast;
    cparams.yarn_beta_slow = params.yarn_beta_slow;
    cparams.yarn_orig_ctx = static_cast<uint32_t>(params.yarn_orig_ctx);
    cparams.embeddings = params.embeddings;
    cparams.pooling_type = static_cast<enum llama_pooling_type>(params.pooling);
    cparams.swa_full = params.swa_full;
    cparams.kv_unified = params.embeddings || params.kv_unified;
    cparams.offload_kqv = params.offload_kqv;
    cparams.no_perf = true;
    return cparams;
}

}  // namespace

EngineContext::EngineContext(const Model & model, const ContextPlan & plan) {
    const EngineParams & params = plan.params;
    auto cparams = context_params(plan);
    ErrorCapture capture;
    ctx_.reset(llama_init_from_model(model.get(), cparams));
    if (ctx_ && params.embeddings && params.pooling < 0 && llama_pooling_type(ctx_.get()) == LLAMA_POOLING_TYPE_NONE) {
        // A generative model has no pooling of its own: average the token embeddings.
        cparams.pooling_type = LLAMA_POOLING_TYPE_MEAN;
        ctx_.reset(llama_init_from_model(model.get(), cparams));
    }
    if (ctx_ && params.embeddings && params.pooling != LLAMA_POOLING_TYPE_RANK &&
        llama_pooling_type(ctx_.get()) == LLAMA_POOLING_TYPE_RANK) {
        throw std::invalid_argument("this is a reranking model (rank pooling): it scores query-document pairs, "
                                    "it does not embed texts; pass pooling mean, cls or last to embed anyway");
    }
    if (!ctx_) {
        throw std::runtime_error("failed to create the llama.cpp context (n_ctx=" + std::to_string(cparams.n_ctx) +
                                 "): " + capture.message("out of memory?"));
    }
    if (!params.lora_path.empty()) {
        std::error_code ec;
        if (!std::filesystem::exists(params.lora_path, ec)) {
            throw FileNotFound("LoRA adapter not found: " + params.lora_path);
        }
        lora_.reset(llama_adapter_lora_init(model.get(), params.lora_path.c_str()));
        if (!lora_) {
            throw std::invalid_argument("failed to load LoRA adapter " + params.lora_path + ": " +
                                        capture.message("not a LoRA GGUF for this model"));
        }
        llama_adapter_lora * adapters[] = {lora_.get()};
        float scales[] = {params.lora_scale};
        if (llama_set_adapters_lora(ctx_.get(), adapters, 1, scales) != 0) {
            throw std::invalid_argument("failed to apply LoRA adapter " + params.lora_path);
        }
    }
    if (params.batch_invariant) {
        // llama.h does not reach the context's CPU backend; its scheduler (llama.cpp internal) does.
        // The reference mode computes flash attention one query row at a time, with no split of
        // the KV cells that depends on the batch, and fuses no ops.
        ggml_backend_sched_t sched = ctx_->get_sched();
        auto * set_use_ref = backend_fn<decltype(ggml_backend_cpu_set_use_ref)>("CPU", "ggml_backend_cpu_set_use_ref");
        for (int i = 0; i < ggml_backend_sched_get_n_backends(sched); ++i) {
            ggml_backend_t backend = ggml_backend_sched_get_backend(sched, i);
            ggml_backend_dev_t dev = ggml_backend_get_device(backend);
            if (set_use_ref == nullptr || dev == nullptr ||
                std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev))) != "CPU") {
                throw std::invalid_argument(std::string("batch_invariant is for the CPU backend; this context also runs on ") +
                                            ggml_backend_name(backend) + " (set n_gpu_layers=0)");
            }
            set_use_ref(backend, true);
        }
    }
    // Last: nothing throws after the pools exist (the destructor frees them).
    // The CPU backend's own functions, which a wheel's run-time loaded backend does not export.
    auto * threadpool_new = backend_fn<decltype(ggml_threadpool_new)>("CPU", "ggml_threadpool_new");
    threadpool_free_ = backend_fn<decltype(ggml_threadpool_free)>("CPU", "ggml_threadpool_free");
    if (!params.embeddings && threadpool_new != nullptr && threadpool_free_ != nullptr) {
        ggml_threadpool_params tpp;
        ggml_threadpool_params_init(&tpp, params.n_threads);
        ggml_threadpool_params tpp_batch;
        ggml_threadpool_params_init(&tpp_batch, params.n_threads_batch);
        if (!ggml_threadpool_params_match(&tpp, &tpp_batch)) {
            batch_pool_ = threadpool_new(&tpp_batch);
            tpp.paused = true;  // as llama.cpp's common: the batch pool starts, the other waits for work
        }
        pool_ = threadpool_new(&tpp);
        if (pool_ != nullptr) {
            llama_attach_threadpool(ctx_.get(), pool_, batch_pool_);
        }
    }
}

EngineContext::~EngineContext() {
    ctx_.reset();  // first: it uses the adapter and the pools
    lora_.reset();
    if (pool_ != nullptr) {
        threadpool_free_(pool_);
    }
    if (batch_pool_ != nullptr) {
        threadpool_free_(batch_pool_);
    }
}

}  // namespace lcl
