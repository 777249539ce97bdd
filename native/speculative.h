// Speculative decoding: guesses at a slot's next tokens that the target model checks in one batch.
//
// The engine puts a generating slot's next token and its draft d1..dk in one batch with an output row
// each, samples row 0 as it always would, and keeps going down the rows while the sampled token is the
// drafted one. Every emitted token is sampled from the target's own logits at its own position, so
// greedy output is what plain decoding gives (up to the rounding of a k-token batch: batch_invariant
// removes that) and sampling keeps the target's distribution, as llama.cpp's server does.
//
// Drafts come from the request's own context (prompt lookup: what followed the last earlier occurrence
// of the final n-gram) or from a small draft model with the same vocabulary. How many tokens to draft
// is decided per slot and step by SpecCost from what was measured in this process: the time of a
// k-token target batch, the draft model's time per token, and each slot's acceptance rate.
#pragma once

#include <memory>
#include <vector>

#include "kv_sequence.h"
#include "llama-cpp.h"
#include "model.h"

namespace lcl {

// Prompt lookup's n-grams and window. The draft settings' defaults live in params.h (ENGINE_PARAMS).
struct LookupParams {
    int ngram_min = 2;  // the final n tokens are matched, n from ngram_max down to ngram_min
    int ngram_max = 4;
    size_t window = 8192;  // within the last this many tokens
};
constexpr LookupParams kPromptLookup{};
// batch_invariant's guess in the row it pays for anyway: a weak guess (one token matched) beats none.
constexpr LookupParams kGuessLookup{1, kPromptLookup.ngram_max, kPromptLookup.window};

// Tokens that may follow `tokens`, copied from after the last earlier occurrence of their final n-gram
// (longest n first); at most n_max.
std::vector<llama_token> prompt_lookup(const std::vector<llama_token> & tokens, int n_max, const LookupParams & lookup);

// What speculation costs and gains, measured as it runs (engine thread only).
class SpecCost {
public:
    static constexpr int kMaxBatch = 64;
    // A target decode of n tokens, each with an output row, took ms.
    void record_decode(int n_tokens, double ms);
    // The draft model spent ms on n drafted tokens (catching up included).
    void record_draft(int n_tokens, double ms);
    // Estimated time of a target decode of n output tokens.
    double decode_ms(int n_tokens) const;
    double draft_ms_per_token() const { return draft_ms_ > 0 ? draft_ms_ : 0.35 * decode_ms(1); }
    // The draft length that maximizes tokens per unit of time for a step that already holds `batch`
    // tokens of which `generating` are generating slots' next tokens, for a slot whose drafts are accepted
    // one after another with probability `acceptance`; 0 where no draft length is expected to gain at least
    // `margin` (a fraction) over not drafting. `with_model`: drafts cost the draft model's time.
    int best_length(int batch, int generating, double acceptance, int k_max, bool with_model, double margin) const;
    // Expected accepted tokens of a k-token draft.
    static double expected_accepted(double acceptance, int k);

private:
    double ms_[kMaxBatch + 1] = {};  // exponential moving averages; 0: not measured
    double draft_ms_ = 0;
};

// The longest draft: a slot's next token and its drafts are one measured batch of SpecCost.
constexpr int kMaxDraft = SpecCost::kMaxBatch - 1;

// Throws std::invalid_argument unless 1 <= draft_max <= kMaxDraft and 0 <= draft_min <= draft_max (checked by
// the engine where it speculates, and by the LangChain classes at construction).
void check_draft_lengths(int draft_max, int draft_min);

// Acceptance of one slot's drafts: the probability that a drafted token is accepted given the ones
// before it were, counted with decay so that it follows the text (a quote, then free prose).
struct Acceptance {
    double hits = 0, trials = 0;
    void add(int accepted, int drafted);
    double rate(double prior) const;  // the prior weighs as two trials
};

// A draft model: its own context with one sequence per engine slot, decoded greedily.
class Drafter {
public:
    ~Drafter();
    Drafter(const Drafter &) = delete;
    Drafter & operator=(const Drafter &) = delete;
    // Throws std::invalid_argument where the draft's vocabulary differs from the target's.
    Drafter(std::shared_ptr<Model> draft, const Model & target, int n_ctx_seq, int n_seq, bool unified, int n_batch,
            int n_threads, ggml_type type_k, ggml_type type_v);

    struct Job {
        int seq = 0;
        const std::vector<llama_token> * tokens = nullptr;  // what the target holds, its next token last
        int n_max = 0;
        int n_min = 0;
        std::vector<llama_token> draft;  // out
    };
    // Drafts for every job together; returns the tokens decoded by the draft model.
    int draft(std::vector<Job> & jobs, float p_min);
    void forget(int seq) { seqs_[static_cast<size_t>(seq)].evict(); }  // its target cache was edited
    int n_ctx_seq() const { return n_ctx_seq_; }
    void attach_threadpool(ggml_threadpool * gen, ggml_threadpool * batch) { llama_attach_threadpool(ctx_.get(), gen, batch); }
    const Model & model() const { return *model_; }

private:
    struct Work {
        Job * job;
        bool live;  // still drafting
    };
    using Rows = std::vector<std::pair<Work *, int>>;  // the batch row each sequence's next token comes from
    std::vector<Work> start(std::vector<Job> & jobs);  // keeps what each sequence still shares with its job
    void free_idle(const std::vector<Work> & work);     // unified pool: idle sequences give way
    int catch_up(std::vector<Work> & work, float p_min);
    int extend(std::vector<Work> & work, float p_min);
    // Tokens decoded; 0: nothing to decode, or a failed decode (context cleared, no drafts this step).
    int decode_and_pick(std::vector<Work> & work, Rows & rows, float p_min);
    void abandon(std::vector<Work> & work);         // after a failure: no drafts this step
    bool pick(Job & job, int row, float p_min);     // appends the draft's next token; false: it stops

    std::shared_ptr<Model> model_;
    llama_context_ptr ctx_;
    llama_batch batch_{};
    int n_batch_ = 0;
    int n_ctx_seq_ = 0;
    bool unified_ = false;
    std::vector<KvSequence> seqs_;  // one per engine slot: the draft context's cells and their tokens
};

}  // namespace lcl
