// The engine: one llama_context, a set of sequence slots, and one thread that owns decoding.
// Like llama.cpp's server loop, every step builds one batch from all active slots; requests
// from any Python thread are queued to it and their output is handed back through RequestState.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "media.h"
#include "model.h"
#include "sampling.h"
#include "speculative.h"
#include "text.h"

namespace lcl {

struct EngineParams {
    int n_ctx = -1;          // context per sequence; 0: trained length; -1: min(4096, trained)
    int n_batch = 512;       // logical batch: tokens per decode step
    int n_ubatch = 512;      // physical batch
    int n_seq = 1;           // sequence slots: requests decoded together, conversations kept warm
    int n_threads = 0;       // 0: from the machine
    int n_threads_batch = 0; // 0: same as n_threads
    bool f16_kv = true;
    int flash_attn = -1;     // -1 auto, 0 off, 1 on
    float rope_freq_base = 0.0f;   // 0: from the model
    float rope_freq_scale = 0.0f;  // 0: from the model
    bool embeddings = false;
    int pooling = -1;        // llama_pooling_type; -1 from the model
    bool swa_full = false;   // sliding-window layers keep only their window (prefix reuse is checked)
    bool offload_kqv = true;
    std::string lora_path;   // a LoRA adapter applied to this engine's context
    float lora_scale = 1.0f;
    bool batch_invariant = false;  // outputs independent of what else is decoded (CPU; slower)
    std::string mmproj_path;       // a projector for image/audio input (libmtmd); "" for none
    // One KV pool of n_ctx cells that every slot draws from (llama.cpp's unified KV cache, as its server
    // uses by default), instead of n_ctx cells per slot: -1 auto (on, except for batch_invariant and
    // recurrent models), 0 off, 1 on.
    int kv_unified = -1;
    // Speculative decoding (speculative.h): drafts from the request's own text, and/or from a draft model
    // passed to Engine::create, checked by this model in one batch.
    bool prompt_lookup = false;
    int draft_max = 16;
    int draft_min = 0;
    float draft_p_min = 0.75f;
    int draft_n_ctx = 0;  // the draft model's context per slot; 0: the same as n_ctx
};

struct GrammarTrigger {
    int type = 0;  // common_grammar_trigger_type
    std::string value;
    int token = -1;
};

struct SamplingParams {
    float temperature = 0.8f;
    int top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float typical_p = 1.0f;
    float repeat_penalty = 1.0f;
    int repeat_last_n = 64;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    int mirostat = 0;
    float mirostat_tau = 5.0f;
    float mirostat_eta = 0.1f;
    int64_t seed = -1;  // -1: random
    std::vector<std::pair<int, float>> logit_bias;
    std::string grammar;
    bool grammar_lazy = false;
    bool grammar_is_tool_call = false;  // a grammar from the chat template (prefilled with the generation prompt)
    std::vector<GrammarTrigger> grammar_triggers;
    std::vector<std::string> preserved_tokens;
    std::string generation_prompt;
};

struct RequestParams {
    std::vector<llama_token> prompt;
    std::shared_ptr<const MediaPrompt> media;  // with media: its tokens are the prompt (Engine::tokenize_media)
    int max_tokens = -1;  // -1: until end of generation or the context is full
    std::vector<std::string> stop;
    int n_probs = 0;      // top logprobs per token; -1 for the chosen token's logprob only
    bool ignore_eos = false;
    bool render_special = false;
    SamplingParams sampling;
};

struct TopLogprob {
    int token;
    std::string text;
    float logprob;
};

struct Chunk {
    std::string text;
    int token = -1;
    float logprob = 0.0f;
    bool has_logprob = false;
    std::vector<TopLogprob> top;
};

// Shared between the engine thread and the Python handle.
struct RequestState {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<Chunk> chunks;
    bool done = false;
    std::string error;
    std::string finish_reason;
    std::string stop_string;
    int prompt_tokens = 0;
    int cached_tokens = 0;
    int completion_tokens = 0;
    int draft_n = 0;           // tokens drafted for this request (speculative decoding)
    int draft_n_accepted = 0;  // of which the model accepted
    double t_queued_ms = 0, t_prompt_ms = 0, t_gen_ms = 0;
    std::atomic<bool> cancelled{false};
    std::atomic<bool> signaled{false};
    int notify_fd = -1;

    void push(Chunk chunk);
    void finish(std::string reason, std::string error_text = {});
    void notify();
};

class Engine;

class Request {
public:
    Request(std::shared_ptr<RequestState> state, std::shared_ptr<Engine> engine);
    ~Request();
    // Blocks until a chunk is ready; nullopt at the end. Rethrows an engine error.
    std::optional<Chunk> next();
    // Waits up to timeout_ms for a chunk or the end (until_done: for the end only); true if it came.
    // Lets a binding wait in slices and look for signals (Ctrl-C) in between.
    bool wait_for(bool until_done, int timeout_ms);
    // Non-blocking: all chunks ready now.
    std::vector<Chunk> poll();
    // Blocks until the request finished; all remaining chunks.
    std::vector<Chunk> wait();
    void cancel();
    bool done();
    void raise_if_failed();
    std::shared_ptr<RequestState> state() const { return state_; }

private:
    std::shared_ptr<RequestState> state_;
    std::shared_ptr<Engine> engine_;
};

class Engine : public std::enable_shared_from_this<Engine> {
public:
    // `draft`: a small model with the same vocabulary that drafts tokens for this one (speculative decoding).
    static std::shared_ptr<Engine> create(std::shared_ptr<Model> model, const EngineParams & params,
                                          std::shared_ptr<Model> draft = nullptr);
    ~Engine();

    // Validates and queues a request; errors in the request itself (prompt too long, bad
    // grammar) are thrown here, in the caller's thread.
    std::unique_ptr<Request> submit(RequestParams params, int notify_fd);
    // A prompt with images or audio at the projector's markers (needs mmproj_path); runs in the caller's thread.
    std::shared_ptr<MediaPrompt> tokenize_media(const std::string & text, const std::vector<std::string> & files) const;
    const Vision * vision() const { return vision_.get(); }

    void shutdown();
    void wake();

    int n_ctx_per_seq() const { return n_ctx_seq_; }
    bool kv_unified() const { return unified_; }
    int n_ctx_total() const;
    int n_seq() const { return params_.n_seq; }
    int n_batch() const { return params_.n_batch; }
    int n_threads() const;
    const EngineParams & params() const { return params_; }
    std::shared_ptr<Model> model() const { return model_; }
    std::vector<std::vector<llama_token>> cached_prompts();  // per slot, for tests and diagnostics

    // Low-level: the engine's context is owned by its thread; these run there.
    // Pooled embeddings of whole texts, n_embd_out() floats each, many texts per decode (embeddings.cpp);
    // normalize as llama.cpp's common_embd_normalize: -1 none, 0 max-abs (int16 range), 2 L2, p > 2 p-norm.
    std::vector<float> embed(const std::vector<std::vector<llama_token>> & inputs, int normalize);
    int embed_max_tokens() const;  // the longest text one batch holds
    int n_embd_out() const { return llama_model_n_embd_out(model_->get()); }
    int pooling() const { return static_cast<int>(llama_pooling_type(ctx_.get())); }
    void clear_cache();

    // Low-level sequence access for power users; the slot must be idle. Its tokens stay cached,
    // so a later request that starts with them reuses the work.
    std::vector<std::vector<float>> evaluate(int slot, const std::vector<llama_token> & tokens, bool all_logits);
    void kv_remove(int slot, int p0, int p1);   // drop positions [p0, p1); p1 < 0: to the end
    void kv_copy(int src, int dst);             // dst becomes a copy of src
    std::vector<llama_token> slot_tokens(int slot);

    struct Stats {
        long long steps = 0;
        long long tokens_decoded = 0;
        long long prompt_tokens_evaluated = 0;
        long long prompt_tokens_reused = 0;
        long long max_batch = 0;
        long long fillers = 0;  // tokens that kept a step's sequences contiguous (see step())
        long long draft_tokens = 0;     // speculative decoding: tokens drafted and checked
        long long drafts_accepted = 0;  // drafted tokens that were right (batch_invariant: second rows too)
        double media_ms = 0;            // encoding and decoding images and audio
    };
    Stats stats();

private:
    Engine(std::shared_ptr<Model> model, const EngineParams & params);
    struct Slot;
    struct Pending {
        RequestParams params;
        common_sampler_ptr sampler;
        std::shared_ptr<RequestState> state;
        double t_submit;
    };
    struct Task;  // work other than generation, run on the engine thread

    void loop();
    bool assign_pending();                     // returns true if a slot was assigned
    void start_slot(Slot & slot, Pending && pending, size_t n_keep);  // n_keep: reusable_prefix()
    void reap_cancelled();
    void step();
    void step_invariant();
    size_t invariant_chunk(size_t left) const;          // prompt tokens for the next batch-invariant call
    int mark_fillers(int lo, int hi, size_t slack);     // flags idle slots in [lo, hi] for a filler
    // One llama_decode of slots [lo, hi], then sampling; tail_filler: a slot that gets a second
    // output row after its tokens, holding `draft` (a guess at its next token) if not null.
    void decode_slots(int lo, int hi, int tail_filler, llama_token draft = LLAMA_TOKEN_NULL);
    llama_token draft_token(const Slot & slot) const;
    // Speculative decoding: the drafts of each generating slot for this step (Slot::draft), within
    // `budget` tokens of the batch; returns the tokens drafted.
    int plan_drafts(int budget);
    bool speculating() const { return params_.prompt_lookup || drafter_ != nullptr; }
    llama_token sample(Slot & slot, int idx);  // the slot's next token from row idx of the logits
    void finish_slot(Slot & slot, const std::string & reason, const std::string & error = {});
    void emit_token(Slot & slot, llama_token token, int batch_index);
    // `token` was sampled from row idx, where the slot's next token stood; its draft's rows follow.
    void accept_drafts(Slot & slot, llama_token token, int idx);
    llama_token argmax(const Slot & slot, int batch_index) const;
    size_t reusable_prefix(const Slot & slot, const RequestParams & request) const;
    // The unified pool: the cells a request may come to hold, those held or reserved now, and room made
    // by dropping the caches of idle slots (least recently used first) other than `keep` and `protect`.
    size_t reservation(const RequestParams & request) const;
    size_t cells_in_use() const;
    bool make_room(size_t cells, const Slot * keep, const Slot * protect = nullptr);
    void evict(Slot & slot);
    bool decode_media(Slot & slot);  // the media chunk where the slot's prompt stands, if any
    void run_tasks();
    void run_on_thread(std::function<void()> fn);

    std::shared_ptr<Model> model_;
    EngineParams params_;
    // Persistent CPU worker threads, as llama.cpp's tools attach (without them ggml starts and joins its
    // threads in every decode); shared with the draft model's context, which runs on the same thread.
    // Declared before the contexts: freed after them.
    struct ThreadPools {
        ggml_threadpool * gen = nullptr;
        ggml_threadpool * batch = nullptr;
        ~ThreadPools();
    } pools_;
    llama_adapter_lora_ptr lora_;  // declared before ctx_: the context is freed first
    llama_context_ptr ctx_;
    std::unique_ptr<Vision> vision_;
    std::unique_ptr<Drafter> drafter_;
    SpecCost spec_cost_;
    Acceptance lookup_acceptance_, model_acceptance_;  // over all requests: the prior of a new one
    int n_ctx_seq_ = 0;
    bool fill_gaps_ = true;
    bool unified_ = false;
    size_t pool_ = 0;  // cells in the unified pool
    long long uses_ = 0;  // orders the slots by last use (engine thread only)
    bool batch_invariant_ = false;
    int n_swa_ = 0;  // window of the sliding-window layers whose cache is not full size; 0: none
    std::vector<uint8_t> suppressed_;  // tokens the model never emits; EOG tokens are marked 2
    std::vector<std::unique_ptr<Slot>> slots_;
    llama_batch batch_{};

    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<Pending> pending_;
    std::deque<std::shared_ptr<Task>> tasks_;
    bool stopping_ = false;
    Stats stats_;
    std::thread thread_;
};

inline void batch_add(llama_batch & batch, llama_token token, llama_pos pos, llama_seq_id seq, bool output) {
    const int i = batch.n_tokens++;
    batch.token[i] = token;
    batch.pos[i] = pos;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = seq;
    batch.logits[i] = output ? 1 : 0;
}

// The first index of the largest value of x[0..n), -1 if every value is -inf or NaN (engine.cpp).
int first_max(const float * x, int n);

// Stops every engine thread (called at interpreter exit).
void shutdown_all_engines();

double now_ms();

}  // namespace lcl
