// An engine's llama.cpp context: the settings normalized and checked first (a pure step, so every rule about
// them is in one function), then the context, its LoRA adapter, its CPU thread pools and its kernels made
// from them.
#pragma once

#include "llama-cpp.h"
#include "model.h"
#include "params.h"

struct ggml_threadpool;

namespace lcl {

struct ContextPlan {
    EngineParams params;     // resolved: n_ctx per request, batch sizes, threads, kv_unified 0 or 1
    bool recurrent = false;  // a recurrent or hybrid model: its state cannot be rolled back
    bool fill_gaps = false;  // fillers keep a step's KV streams contiguous (a KV cache per slot)
    ggml_type type_k = GGML_TYPE_F16;  // the KV cache's types: cache_type_k/v, else by f16_kv
    ggml_type type_v = GGML_TYPE_F16;
};

// Defaults resolved and every combination checked; throws std::invalid_argument naming the setting.
ContextPlan plan_context(const Model & model, const EngineParams & params, bool has_draft);

class EngineContext {
public:
    EngineContext(const Model & model, const ContextPlan & plan);
    ~EngineContext();
    EngineContext(const EngineContext &) = delete;
    EngineContext & operator=(const EngineContext &) = delete;

    llama_context * get() const { return ctx_.get(); }
    // Persistent CPU worker threads, as llama.cpp's tools attach (without them ggml starts and joins its
    // threads in every decode); the draft model's context, on the same thread, shares them.
    ggml_threadpool * pool() const { return pool_; }
    ggml_threadpool * batch_pool() const { return batch_pool_; }

private:
    // Declared in the order they may be freed last: pools, adapter, then the context that uses both.
    ggml_threadpool * pool_ = nullptr;
    ggml_threadpool * batch_pool_ = nullptr;
    void (*threadpool_free_)(ggml_threadpool *) = nullptr;  // the CPU backend's, which made them
    llama_adapter_lora_ptr lora_;
    llama_context_ptr ctx_;
};

}  // namespace lcl
