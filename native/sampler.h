// The sampling side of one request, built once when it is submitted (in the caller's thread, so that a bad
// grammar, trigger or token id raises there) and owned by its slot: llama.cpp's sampler chain or the greedy
// fast path, the end-of-generation policy, which special tokens come out as text, and logprobs.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "llama.h"
#include "params.h"

struct common_sampler;

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
    // Plain greedy decoding needs no sampler chain: an argmax over the logits, as llama.cpp's benchmarks
    // do, instead of sorting the whole vocabulary every token.
    bool greedy_ = false;
};

// The first index of the largest value of x[0..n), -1 if every value is -inf or NaN.
int first_max(const float * x, int n);

}  // namespace lcl
