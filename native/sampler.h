// The sampling side of one request, built once when it is submitted (in the caller's thread, so that a bad
// grammar, trigger or token id raises there) and owned by its slot: llama.cpp's sampler chain or the greedy
// fast path, the end-of-generation policy, which special tokens come out as text, and logprobs.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "llama.h"
#include "params.h"

struct common_sampler;
struct common_params_sampling;

namespace lcl {

class Model;
struct Chunk;

// What a model's vocabulary says about every token, computed once per engine (llama-server precomputes its
// end-of-generation bias the same way): tokens it never emits, and its end-of-generation tokens.
class TokenRules {
public:
    explicit TokenRules(const llama_vocab * vocab);
    // The token may not be chosen: suppressed by the model, or end of generation where that is ignored.
    bool banned(llama_token token, bool ignore_eos) const {
        const uint8_t level = level_[static_cast<size_t>(token)];
        return level == kSuppressed || (level == kEog && ignore_eos);
    }
    const std::vector<llama_token> & eog() const { return eog_; }
    int n_vocab() const { return static_cast<int>(level_.size()); }

private:
    static constexpr uint8_t kSuppressed = 1, kEog = 2;
    std::vector<uint8_t> level_;
    std::vector<llama_token> eog_;
};

// How many tokens before the next one the repetition penalties look at, out of `n` (a negative
// repeat_last_n: all of them). llama.cpp's sampler keeps at least 64.
size_t penalty_window(int repeat_last_n, size_t n);

// llama.cpp's repetition penalties (its `penalties` sampler: repeat, frequency and presence over the last
// `last_n` tokens, the same arithmetic), applied to the logits of the tokens in the window only. llama.cpp
// looks every token of the vocabulary up in the window's hash map, 49,152 lookups a token for SmolLM2: 2%
// of the CPU of 8 streams, on the engine thread between decodes.
class Penalties {
public:
    Penalties() = default;
    Penalties(int last_n, float repeat, float freq, float present);
    bool active() const { return last_n_ > 0; }
    void accept(llama_token token);
    // Penalize the window's tokens in `logits`, keeping their values for restore().
    void apply(float * logits);
    void restore(float * logits);

private:
    size_t last_n_ = 0;
    float repeat_ = 1.0f, freq_ = 0.0f, present_ = 0.0f;
    std::deque<llama_token> prev_;
    std::unordered_map<llama_token, int> count_;
    std::vector<std::pair<llama_token, float>> saved_;
};

class RequestSampler {
public:
    // Throws std::invalid_argument naming what is wrong (grammar, trigger, bias token).
    RequestSampler(const Model & model, const TokenRules & rules, const RequestParams & request);
    ~RequestSampler();
    RequestSampler(const RequestSampler &) = delete;
    RequestSampler & operator=(const RequestSampler &) = delete;

    // The penalties see the end of the prompt, as in llama.cpp's own tools.
    void prime(const std::vector<llama_token> & prompt);
    // The next token from row idx of the context's logits; LLAMA_TOKEN_NULL where a grammar is complete
    // and nothing may follow (the output is done).
    llama_token sample(llama_context * ctx, int idx);
    // The request ends on this token (an end-of-generation token, unless ignore_eos).
    bool ends_generation(llama_token token) const;
    // The token's text includes special tokens (render_special, or one the chat template preserves).
    bool special_as_text(llama_token token) const { return render_special_ || preserved_.count(token) != 0; }
    bool wants_logprobs() const { return n_probs_ != 0; }
    // The chosen token's logprob and the top n_probs, from row idx.
    void fill_logprobs(Chunk & chunk, llama_context * ctx, int idx, llama_token token) const;

private:
    // Move the repetition penalties out of llama.cpp's chain into penalties_ where that is exact.
    void take_penalties(common_params_sampling & params);
    // The token from the (penalized) logits: the greedy argmax or llama.cpp's chain.
    llama_token choose(llama_context * ctx, int idx);
    llama_token argmax(llama_context * ctx, int idx) const;

    struct ChainDeleter {
        void operator()(common_sampler * chain) const;
    };
    const Model & model_;
    const TokenRules & rules_;
    std::unique_ptr<common_sampler, ChainDeleter> chain_;
    std::set<llama_token> preserved_;  // special tokens of the template, output as text
    int n_probs_ = 0;
    int repeat_last_n_ = 64;
    bool ignore_eos_ = false;
    bool render_special_ = false;
    bool has_grammar_ = false;
    // The repetition penalties, out of llama.cpp's chain (inactive where they are off, or where a finite
    // logit bias must come before them, as in the chain: there the chain applies them).
    Penalties penalties_;
    // Plain greedy decoding needs no sampler chain: an argmax over the logits, as llama.cpp's benchmarks
    // do, instead of sorting the whole vocabulary every token.
    bool greedy_ = false;
};

// The first index of the largest value of x[0..n), -1 if every value is -inf or NaN.
int first_max(const float * x, int n);

}  // namespace lcl
