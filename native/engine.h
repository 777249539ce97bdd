// The engine: one llama_context, a set of sequence slots, and one thread that owns decoding.
// Like llama.cpp's server loop, every step builds one batch from all active slots; requests
// from any Python thread are queued to it and their output is handed back through RequestState.
//
// Where each job lives (one file each): engine.cpp (creation, submit, the loop, a slot's tokens going out),
// request_queue.cpp (the requests and tasks waiting for the engine thread), scheduler.cpp (slot choice,
// prefix reuse, the unified pool, batch planning, fillers, batch-invariant rows), decode.cpp (one
// llama_decode of a run of slots, then sampling; media), drafts.cpp (speculative decoding's planning and
// acceptance), kv_sequence.cpp (each slot's KV cells and what they hold), sequences.cpp (the low-level
// sequence API), embeddings.cpp, context.cpp (settings and context setup), sampler.cpp (one request's
// sampling), request.cpp (the channel to the caller).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "media.h"
#include "model.h"
#include "params.h"
#include "request.h"
#include "request_queue.h"
#include "sampler.h"
#include "speculative.h"
#include "step_plan.h"

namespace lcl {

class EngineContext;
class PromptCache;
struct Slot;

// X(type, name, doc): an engine's counters since creation (Engine.stats); the same table makes the struct
// and its binding.
#define LCL_ENGINE_STATS(X)                                                                                         \
    X(long long, steps, "Decode steps.")                                                                            \
    X(long long, tokens_decoded, "Tokens decoded, prompts too; fillers and refused drafts aside.")                                                  \
    X(long long, prompt_tokens_evaluated, "Prompt tokens evaluated.")                                               \
    X(long long, prompt_tokens_reused, "Prompt tokens reused from a slot's cache instead.")                          \
    X(long long, max_batch, "The largest batch decoded in one step.")                                               \
    X(long long, fillers, "Tokens that kept a step's sequences contiguous (see Engine::step).")                     \
    X(long long, draft_tokens, "Speculative decoding: tokens drafted and checked.")                                 \
    X(long long, drafts_accepted, "Drafted tokens that were right.")                                                \
    X(long long, guesses_accepted, "batch_invariant: tail rows whose guess was right (a second token).")            \
    X(long long, graphs_reused, "Decode calls that reused the previous call's compute graph (llama.cpp's count).")   \
    X(double, media_ms, "Encoding and decoding images and audio.")                                                  \
    X(long long, slots_busy, "Now, not a counter: slots with a request (as of the last step).")                     \
    X(long long, queue_length, "Now, not a counter: requests waiting for a slot.")

struct EngineStats {
    LCL_ENGINE_STATS(LCL_DECLARE_COUNTER)
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
    int n_threads() const { return params_.n_threads; }
    const EngineParams & params() const { return params_; }
    std::shared_ptr<Model> model() const { return model_; }
    std::vector<std::vector<llama_token>> cached_prompts();  // per slot, for tests and diagnostics

    // Low-level: the engine's context is owned by its thread; these run there.
    // Pooled embeddings of whole texts, n_embd_out() floats each, many texts per decode (embeddings.cpp);
    // normalize as llama.cpp's common_embd_normalize: -1 none, 0 max-abs (int16 range), 2 L2, p > 2 p-norm.
    std::vector<float> embed(const std::vector<std::vector<llama_token>> & inputs, int normalize);
    int embed_max_tokens() const;  // the longest text one batch holds
    int embed_max_texts() const;   // the most texts one batch holds (a sequence each)
    int n_embd_out() const;  // the vector's length; a reranker's: its classifier's outputs (embeddings.cpp)
    int pooling() const;
    void clear_cache();

    // Low-level sequence access for power users (sequences.cpp); the slot must be idle. Its tokens stay
    // cached, so a later request that starts with them reuses the work.
    std::vector<std::vector<float>> evaluate(int slot, const std::vector<llama_token> & tokens, bool all_logits);
    void kv_remove(int slot, int p0, int p1);   // drop positions [p0, p1); p1 < 0: to the end
    void kv_copy(int src, int dst);             // dst becomes a copy of src
    std::vector<llama_token> slot_tokens(int slot);

    using Stats = EngineStats;
    Stats stats();

private:
    Engine(std::shared_ptr<Model> model, const EngineParams & params);

    llama_context * ctx() const;

    // engine.cpp: the loop and a request's life in its slot.
    void loop();
    void reap_cancelled();
    void count_busy();  // slots_busy_ from the slots (engine thread)
    void start_slot(Slot & slot, Pending && pending, size_t n_keep);  // n_keep: reusable_prefix()
    void finish_slot(Slot & slot, const std::string & reason, const std::string & error = {});
    void emit_token(Slot & slot, llama_token token, int batch_index);
    void run_tasks();
    void run_on_thread(std::function<void()> fn);

    // scheduler.cpp: builds the views, asks step_plan.h's pure planners, carries the plans out.
    std::vector<SlotView> slot_views(const RequestParams * placing) const;  // placing: fills SlotView::prefix
    bool assign_pending();  // returns true if a slot was assigned
    size_t reusable_prefix(const Slot & slot, const RequestParams & request) const;
    // The prompt cache on disk (prompt_cache.h): whether the request may be placed now (false while a saved
    // prefix longer than any slot's is read for it), and the prefix that saved state then gives (0: none).
    bool stored_prefix_ready(Pending & pending, const std::vector<SlotView> & views, size_t & stored);
    size_t restore_stored(Slot & slot, const Pending & pending, size_t prefix);  // the prefix kept
    void save_to_disk(Slot & slot);  // a finished request's sequence, where worth a file
    // The chunk a cold prompt is evaluated in from position 0 (n_ubatch, or n_batch where n_ubatch does not
    // divide it); 0 under batch_invariant, whose outputs do not depend on it.
    size_t prompt_granule() const;
    // The chunk in which a slot's cells are exact (a cold run's shapes): prompt_granule() with one slot;
    // 0 with several, whose prompts share batches (their exact cells are not tracked).
    size_t exact_granule() const { return slots_.size() == 1 ? prompt_granule() : 0; }
    // How much of a saved sequence matching `n` prompt tokens to restore: with one slot, on a memory that
    // can be cut, the largest chunk boundary within its exact cells, so that the rest of the prompt is
    // evaluated in the micro-batches of a cold run and the greedy output is the cold one (prompt_cache.h).
    size_t restore_point(const StoredPrompt & read, size_t n) const;
    size_t reservation(const RequestParams & request) const;  // the cells a request may come to hold
    // Unified pool: room for `cells` more, made by evicting idle slots other than `keep`.
    bool make_room(size_t cells, const Slot & keep);
    void step();
    int take_generating();     // next tokens and drafts of this step; returns their count
    bool decode_next_media();  // a media chunk where a prompt stands, decoded alone
    BatchLimits batch_limits(size_t filler_slack) const;
    void apply(const BatchPlan & plan);  // each slot's n_take and filler
    int generating_run_end(int lo) const;
    void step_invariant();
    size_t invariant_chunk(size_t left) const;  // prompt tokens for the next batch-invariant call
    // Whether a batch-invariant decode needs a second output row after its `n_tokens` tokens of which
    // `n_outputs` are outputs, after which the sequence holds `cells` (room permitting: a full context has none).
    bool needs_tail_row(int n_tokens, int n_outputs, size_t cells) const;
    // A guess at the token after the slot's next one, for its tail row (batch_invariant).
    llama_token guess_next_token(Slot & slot) const;
    // The slot's cached tokens and its next token, in Slot::continued: the text a draft or guess continues.
    const std::vector<llama_token> & continued_text(Slot & slot) const;

    // decode.cpp: one llama_decode of slots [lo, hi], then sampling; tail_row: a slot that gets a second
    // output row after its tokens, holding `guess` (at the token after its next one) if not null.
    void decode_slots(int lo, int hi, int tail_row, llama_token guess = LLAMA_TOKEN_NULL);
    struct BatchCounts {
        long long prompt = 0;  // prompt tokens
        int fill = 0;          // fillers and tail rows: not counted as decoded
    };
    BatchCounts add_rows(int lo, int hi, int tail_row, llama_token guess);
    void add_prompt_rows(Slot & slot);
    void add_generation_rows(Slot & slot);
    void count_decode(const BatchCounts & counts);
    void fail_decode(int lo, int hi, int rc, const std::string & details);
    void drop_fillers(int lo, int hi);
    void sample_slot(Slot & slot, bool tail_row, llama_token guess);
    // The tail row's guess was right: keeps it and returns the row of the token after it.
    int keep_guess(Slot & slot, llama_token guess, int idx);
    bool decode_media(Slot & slot);  // the media chunk where the slot's prompt stands, if any

    // drafts.cpp: speculative decoding. The drafts of each generating slot for this step (Slot::draft),
    // within `budget` tokens of the batch; returns the tokens drafted.
    int plan_drafts(int budget);
    bool speculating() const { return params_.prompt_lookup || drafter_ != nullptr; }
    struct StepShape {
        int batch = 0;       // tokens in the step so far
        int generating = 0;  // generating slots in it
        int budget = 0;      // rows left for drafts
    };
    int draft_cap(const Slot & slot, int budget) const;  // the longest draft the slot may have now
    void draft_by_lookup(Slot & slot, int k_cap, const StepShape & shape);
    int model_draft_length(Slot & slot, int k_cap, const StepShape & shape);  // 0: no draft model this step
    int draft_with_model(std::vector<Drafter::Job> & jobs, const std::vector<Slot *> & job_slots, StepShape & shape);
    void take_draft(Slot & slot, StepShape & shape);  // Slot::draft, cut to the budget, joins the step
    // `token` was sampled from row idx, where the slot's next token stood; its draft's rows follow.
    void accept_drafts(Slot & slot, llama_token token, int idx);
    void record_acceptance(Slot & slot, int accepted, int drafted);

    std::shared_ptr<Model> model_;
    EngineParams params_;  // as planned by plan_context(), batch sizes as llama.cpp chose
    std::unique_ptr<EngineContext> context_;
    std::unique_ptr<Vision> vision_;
    std::unique_ptr<Drafter> drafter_;  // declared after the context: freed first (it shares its pools)
    std::unique_ptr<TokenRules> rules_;
    std::unique_ptr<PromptCache> disk_;  // null: no prompt_cache_dir
    bool disk_exact_ = false;            // sliding-window or recurrent memory: restore whole saved sequences only
    SpecCost spec_cost_;
    Acceptance lookup_acceptance_, model_acceptance_;  // over all requests: the prior of a new one
    int n_ctx_seq_ = 0;
    bool unified_ = false;  // one KV pool for all slots
    bool fill_gaps_ = true;
    size_t pool_ = 0;  // cells in the unified pool
    long long uses_ = 0;  // orders the slots by last use (engine thread only)
    bool batch_invariant_ = false;
    int n_swa_ = 0;  // window of the sliding-window layers whose cache is not full size; 0: none
    std::vector<std::unique_ptr<Slot>> slots_;
    llama_batch batch_{};

    RequestQueue queue_;
    std::mutex stats_mutex_;
    Stats stats_;
    std::atomic<int> slots_busy_{0};  // set by the engine thread after placing and after each step
    std::thread thread_;
};

// Stops every engine thread (called at interpreter exit).
void shutdown_all_engines();

}  // namespace lcl
