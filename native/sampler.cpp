#include "sampler.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "common.h"
#include "grammar.h"
#include "logging.h"
#include "model.h"
#include "request.h"
#include "sampling.h"

namespace lcl {

TokenRules::TokenRules(const llama_vocab * vocab) : level_(static_cast<size_t>(llama_vocab_n_tokens(vocab)), 0) {
    int32_t n_suppress = 0;
    const llama_token * suppress = llama_vocab_get_suppress_tokens(vocab, &n_suppress);
    for (int32_t i = 0; i < n_suppress; ++i) {
        level_[static_cast<size_t>(suppress[i])] = kSuppressed;
    }
    for (llama_token t = 0; t < n_vocab(); ++t) {
        if (llama_vocab_is_eog(vocab, t)) {
            eog_.push_back(t);
            if (level_[static_cast<size_t>(t)] == 0) {
                level_[static_cast<size_t>(t)] = kEog;
            }
        }
    }
}

Penalties::Penalties(int last_n, float repeat, float freq, float present)
    : repeat_(repeat), freq_(freq), present_(present) {
    const bool off = repeat == 1.0f && freq == 0.0f && present == 0.0f;  // llama.cpp's is_disabled()
    last_n_ = off ? 0 : static_cast<size_t>(std::max(last_n, 0));
}

void Penalties::accept(llama_token token) {
    if (last_n_ == 0) {
        return;
    }
    count_[token]++;
    if (prev_.size() >= last_n_) {
        const llama_token old = prev_.front();
        prev_.pop_front();
        if (--count_[old] == 0) {
            count_.erase(old);
        }
    }
    prev_.push_back(token);
}

void Penalties::apply(float * logits) {
    saved_.clear();
    for (const auto & [token, count] : count_) {
        float & logit = logits[token];
        saved_.emplace_back(token, logit);
        logit = logit <= 0 ? logit * repeat_ : logit / repeat_;
        logit -= static_cast<float>(count) * freq_ + static_cast<float>(count > 0) * present_;
    }
}

void Penalties::restore(float * logits) {
    for (const auto & [token, logit] : saved_) {
        logits[token] = logit;
    }
    saved_.clear();
}

size_t penalty_window(int repeat_last_n, size_t n) {
    return repeat_last_n < 0 ? n : std::min(n, static_cast<size_t>(std::max(64, repeat_last_n)));
}

namespace {

// Each DRY sequence breaker costs llama.cpp a pass over the whole vocabulary when the request is submitted.
constexpr size_t kMaxDryBreakers = 32;
// A longer DRY window only costs memory (4 bytes a token): no text is this long.
constexpr int kMaxDryWindow = 1 << 20;

// DRY, XTC and top-n-sigma: llama.cpp's own samplers, in its default order in the chain.
void set_dry_xtc_sigma(const SamplingParams & s, int n_ctx_train, common_params_sampling & p) {
    if (s.dry_penalty_last_n < -1 || s.dry_allowed_length < 0) {
        throw std::invalid_argument("dry_penalty_last_n must be -1 (the whole context) or more, and "
                                    "dry_allowed_length 0 or more");
    }
    if (s.dry_sequence_breakers.size() > kMaxDryBreakers) {
        throw std::invalid_argument("dry_sequence_breakers: at most " + std::to_string(kMaxDryBreakers) +
                                    " sequence breakers, got " + std::to_string(s.dry_sequence_breakers.size()));
    }
    if (!(s.xtc_probability >= 0.0f && s.xtc_probability <= 1.0f && s.xtc_threshold >= 0.0f)) {
        throw std::invalid_argument("xtc_probability must be between 0 and 1, and xtc_threshold 0 or more");
    }
    p.dry_multiplier = s.dry_multiplier;
    p.dry_base = s.dry_base;
    p.dry_allowed_length = s.dry_allowed_length;
    // llama.cpp's sampler takes -1 as off; llama-server's -1 is the context, as here.
    const int window = s.dry_penalty_last_n < 0 ? n_ctx_train : s.dry_penalty_last_n;
    p.dry_penalty_last_n = std::min(window, kMaxDryWindow);
    p.dry_sequence_breakers = s.dry_sequence_breakers;
    p.xtc_probability = s.xtc_probability;
    p.xtc_threshold = s.xtc_threshold;
    p.top_n_sigma = s.top_n_sigma;
}

// The tokens that open the thinking block. Where the generation prompt opened it already, as the prompt spells
// them: a vocabulary without the tag may write "<think>\n" as "<think" ">\n", and the budget's matcher, fed the
// prompt's tokens, would never see the tag's own "<think" ">". Else the tag's own tokens.
llama_tokens start_tokens(const llama_vocab * vocab, const std::string & prompt, const std::string & tag) {
    const size_t open = prompt.rfind(tag);
    if (open == std::string::npos || prompt.find_first_not_of(" \t\r\n", open + tag.size()) != std::string::npos) {
        return common_tokenize(vocab, tag, false, true);
    }
    const llama_tokens tokens = common_tokenize(vocab, prompt, false, true);
    std::string text;
    std::vector<size_t> ends;  // where each token's text ends
    for (const llama_token t : tokens) {
        text += common_token_to_piece(vocab, t, true);
        ends.push_back(text.size());
    }
    const size_t at = text.rfind(tag);
    if (at == std::string::npos) {
        return common_tokenize(vocab, tag, false, true);
    }
    size_t first = 0;
    while (ends[first] <= at) {
        ++first;
    }
    size_t last = first;
    while (ends[last] < at + tag.size()) {
        ++last;
    }
    return llama_tokens(tokens.begin() + static_cast<std::ptrdiff_t>(first),
                        tokens.begin() + static_cast<std::ptrdiff_t>(last) + 1);
}

// llama.cpp's reasoning-budget sampler (common/reasoning-budget.h), wired as llama-server wires it: the chat
// template's thinking tags as tokens, the first end tag forced where the budget runs out. llama.cpp also runs it
// without a budget under a lazy tool-call grammar, which it then keeps from triggering inside the thinking.
void set_reasoning(common_params_sampling & p, const SamplingParams & s, const llama_vocab * vocab) {
    if (s.reasoning_budget < -1) {
        throw std::invalid_argument("reasoning_budget must be -1 (no limit) or a number of tokens, got " +
                                    std::to_string(s.reasoning_budget));
    }
    p.generation_prompt = s.generation_prompt;  // where the template opened the thinking block already
    for (const auto & tag : s.reasoning_end) {
        if (!tag.empty()) {
            p.reasoning_budget_end.push_back(common_tokenize(vocab, tag, false, true));
        }
    }
    if (!s.reasoning_start.empty()) {
        p.reasoning_budget_start = start_tokens(vocab, s.generation_prompt, s.reasoning_start);
    }
    if (p.reasoning_budget_start.empty() || p.reasoning_budget_end.empty()) {
        if (s.reasoning_budget >= 0) {
            throw std::invalid_argument("a reasoning budget needs the chat template's thinking tags (this one has none)");
        }
        p.reasoning_budget_start.clear();
        p.reasoning_budget_end.clear();
        return;
    }
    p.reasoning_budget_tokens = s.reasoning_budget;
    p.reasoning_budget_forced = p.reasoning_budget_end.front();
}

// The text llama.cpp's sampler feeds a template's grammar before the reply (common_sampler_init): the
// generation prompt re-tokenized on its own, less a first token that starts with a space the prompt does
// not. Where the template's markers are not tokens of an SPM vocabulary, that first token ("_<") also holds
// the marker's first character, so the text fed lacks it.
std::string prefill_text(const llama_vocab * vocab, const std::string & generation_prompt) {
    const llama_tokens tokens = common_tokenize(vocab, generation_prompt, false, true);
    std::string text;
    for (size_t i = 0; i < tokens.size(); ++i) {
        const std::string piece = common_token_to_piece(vocab, tokens[i], true);
        if (i == 0 && !piece.empty() && std::isspace(static_cast<unsigned char>(piece[0])) &&
            !std::isspace(static_cast<unsigned char>(generation_prompt[0]))) {
            continue;  // llama.cpp's rule
        }
        text += piece;
    }
    return text;
}

// `grammar` without `dropped` at the start of its root rule's first literal, where it starts so.
std::optional<std::string> without_leading(const std::string & grammar, const std::string & dropped) {
    size_t at = grammar.rfind("root ::=", 0) == 0 ? 0 : grammar.find("\nroot ::=");
    if (at == std::string::npos) {
        return std::nullopt;
    }
    at = grammar.find_first_not_of(' ', grammar.find("::=", at) + 3);
    if (at == std::string::npos || grammar[at] != '"' ||
        grammar.compare(at + 1, dropped.size(), dropped) != 0 ||
        dropped.find_first_of("\\\"") != std::string::npos) {
        return std::nullopt;
    }
    return grammar.substr(0, at + 1) + grammar.substr(at + 1 + dropped.size());
}

// A template's grammar that starts where llama.cpp's prefill leaves it: unchanged where the prefill spells the
// generation prompt; where it lacks the prompt's first characters, the grammar without them.
std::string fit_to_prefill(const llama_vocab * vocab, const std::string & generation_prompt,
                           const std::string & grammar) {
    const std::string fed = prefill_text(vocab, generation_prompt);
    if (fed == generation_prompt) {
        return grammar;
    }
    const size_t cut = generation_prompt.size() - std::min(fed.size(), generation_prompt.size());
    if (generation_prompt.compare(cut, std::string::npos, fed) == 0) {
        if (auto fitted = without_leading(grammar, generation_prompt.substr(0, cut))) {
            return *fitted;
        }
    }
    const auto shown = [](const std::string & t) {  // on one line, at most 80 bytes of it, whole characters
        size_t end = std::min<size_t>(t.size(), 80);
        while (end > 0 && end < t.size() && (static_cast<unsigned char>(t[end]) & 0xC0) == 0x80) {
            --end;
        }
        std::string out;
        for (const char c : t.substr(0, end)) {
            out += c == '\n' ? std::string("\\n") : std::string(1, c);
        }
        return "'" + out + "'";
    };
    throw std::invalid_argument(
        "invalid grammar: llama.cpp starts the grammar after the template's generation prompt " +
        shown(generation_prompt) + ", and this model's tokenizer does not spell it back (it reads " + shown(fed) +
        "): the template's markers are not tokens of this vocabulary, so the template does not fit the model");
}

// Our settings as llama.cpp's sampler settings, checked.
common_params_sampling to_common(const RequestParams & request, const TokenRules & rules, const llama_vocab * vocab,
                                 const std::set<llama_token> & preserved) {
    const SamplingParams & s = request.sampling;
    common_params_sampling p;
    p.ignore_eos = request.ignore_eos;
    if (request.ignore_eos) {
        for (const llama_token t : rules.eog()) {
            p.logit_bias.push_back({t, -std::numeric_limits<float>::infinity()});
        }
    }
    p.seed = s.seed < 0 ? LLAMA_DEFAULT_SEED : static_cast<uint32_t>(s.seed);
    p.temp = s.temperature;
    p.top_k = s.top_k;
    p.top_p = s.top_p;
    p.min_p = s.min_p;
    p.typ_p = s.typical_p;
    p.penalty_repeat = s.repeat_penalty;
    p.penalty_last_n = s.repeat_last_n;
    p.penalty_freq = s.frequency_penalty;
    p.penalty_present = s.presence_penalty;
    if (s.mirostat < 0 || s.mirostat > 2) {  // llama.cpp asserts on any other
        throw std::invalid_argument("mirostat must be 0 (off), 1 or 2, got " + std::to_string(s.mirostat));
    }
    p.mirostat = s.mirostat;
    p.mirostat_tau = s.mirostat_tau;
    p.mirostat_eta = s.mirostat_eta;
    // The sampler's token history: the penalty window (64 where the prompt's whole length is asked for).
    p.n_prev = static_cast<int32_t>(penalty_window(std::max(0, s.repeat_last_n), std::numeric_limits<int32_t>::max()));
    for (const auto & [token, bias] : s.logit_bias) {
        if (token < 0 || token >= rules.n_vocab()) {
            throw std::invalid_argument("logit_bias names token " + std::to_string(token) +
                                        ", outside the vocabulary (0.." + std::to_string(rules.n_vocab() - 1) + ")");
        }
        p.logit_bias.push_back({token, bias});
    }
    if (!s.grammar.empty()) {
        const std::string error = grammar_error(vocab, s.grammar);
        if (!error.empty()) {
            throw std::invalid_argument("invalid grammar: " + error);
        }
        // llama.cpp feeds a template's grammar (not a caller's) the generation prompt first.
        const bool prefilled = s.grammar_is_tool_call && !s.grammar_lazy && !s.generation_prompt.empty();
        p.grammar = common_grammar(s.grammar_is_tool_call ? COMMON_GRAMMAR_TYPE_TOOL_CALLS : COMMON_GRAMMAR_TYPE_USER,
                                   prefilled ? fit_to_prefill(vocab, s.generation_prompt, s.grammar) : s.grammar);
        p.grammar_lazy = s.grammar_lazy;
    }
    set_reasoning(p, s, vocab);
    p.preserved_tokens = preserved;
    for (const auto & t : s.grammar_triggers) {
        if (t.type < COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN || t.type > COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL) {
            throw std::invalid_argument("unknown grammar trigger type " + std::to_string(t.type));
        }
        const auto type = static_cast<common_grammar_trigger_type>(t.type);
        if (type == COMMON_GRAMMAR_TRIGGER_TYPE_WORD) {
            const auto ids = common_tokenize(vocab, t.value, false, true);
            if (ids.size() == 1 && preserved.count(ids[0]) != 0) {
                p.grammar_triggers.push_back({COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN, t.value, ids[0]});
                continue;
            }
        }
        p.grammar_triggers.push_back({type, t.value, t.token});
    }
    if (p.grammar_lazy && p.grammar_triggers.empty()) {
        throw std::invalid_argument("a lazy grammar needs at least one trigger");
    }
    return p;
}

// Whether llama.cpp's chain would pick the largest logit: at temperature <= 0 its temperature step keeps only
// the top token, so every step after the ones that move logits (penalties, DRY, bias, grammar) is moot,
// and so is top-n-sigma's cut, which never drops the top token; XTC's does (it keeps the least likely of
// the top choices), so it runs in the chain. Read from llama.cpp's own settings, so a setting we pass on
// later is seen here. The ignore_eos bias is the argmax's own rule.
bool picks_argmax(const common_params_sampling & p, size_t n_eog_bias) {
    // A reasoning budget forces the end of the thinking block at its count: the chain's own step.
    return p.temp <= 0.0f && p.mirostat == 0 && p.grammar.grammar.empty() && p.penalty_repeat == 1.0f &&
           p.penalty_freq == 0.0f && p.penalty_present == 0.0f && p.dry_multiplier == 0.0f &&
           p.xtc_probability <= 0.0f && p.adaptive_target < 0.0f && p.logit_bias.size() == n_eog_bias &&
           p.reasoning_budget_tokens < 0;
}

}  // namespace

void RequestSampler::ChainDeleter::operator()(common_sampler * chain) const { common_sampler_free(chain); }

RequestSampler::RequestSampler(const Model & model, const TokenRules & rules, const RequestParams & request)
    : model_(model), rules_(rules) {
    for (const auto & word : request.sampling.preserved_tokens) {
        const auto ids = model.tokenize(word, false, true);
        if (ids.size() == 1) {
            preserved_.insert(ids[0]);
        }
    }
    n_probs_ = request.n_probs;
    repeat_last_n_ = request.sampling.repeat_last_n;
    ignore_eos_ = request.ignore_eos;
    render_special_ = request.render_special;
    has_grammar_ = !request.sampling.grammar.empty();
    common_params_sampling params = to_common(request, rules, model.vocab(), preserved_);
    set_dry_xtc_sigma(request.sampling, model.n_ctx_train(), params);
    take_penalties(params);
    greedy_ = picks_argmax(params, request.ignore_eos ? rules.eog().size() : 0);
    ErrorCapture capture;
    try {
        chain_.reset(common_sampler_init(model.get(), params));
    } catch (const std::exception & e) {
        throw std::invalid_argument(std::string("invalid grammar: ") + capture.message(e.what()));
    }
    if (!chain_) {
        throw std::invalid_argument("invalid sampling parameters: " + capture.message("sampler initialisation failed"));
    }
}

RequestSampler::~RequestSampler() = default;

void RequestSampler::take_penalties(common_params_sampling & params) {
    // In llama.cpp's chain a logit bias comes before the penalties (whose rule reads the logit's sign):
    // with a finite one the chain keeps them. The ignore_eos and suppressed tokens' -inf stays -inf either way.
    const bool finite_bias = std::any_of(params.logit_bias.begin(), params.logit_bias.end(),
                                         [](const llama_logit_bias & b) { return std::isfinite(b.bias); });
    if (finite_bias) {
        return;
    }
    penalties_ = Penalties(params.penalty_last_n, params.penalty_repeat, params.penalty_freq, params.penalty_present);
    params.penalty_repeat = 1.0f;
    params.penalty_freq = 0.0f;
    params.penalty_present = 0.0f;
}

void RequestSampler::prime(const std::vector<llama_token> & prompt) {
    for (size_t i = prompt.size() - penalty_window(repeat_last_n_, prompt.size()); i < prompt.size(); ++i) {
        if (prompt[i] >= 0) {  // not a media placeholder
            common_sampler_accept(chain_.get(), prompt[i], false);
            penalties_.accept(prompt[i]);
        }
    }
}

llama_token RequestSampler::sample(llama_context * ctx, int idx) {
    if (!penalties_.active()) {
        return choose(ctx, idx);
    }
    float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        throw std::runtime_error("no logits for this position");
    }
    // On the context's own row, put back before anything else reads it (logprobs are of the model's logits).
    penalties_.apply(logits);
    llama_token token = LLAMA_TOKEN_NULL;
    try {
        token = choose(ctx, idx);
    } catch (...) {
        penalties_.restore(logits);
        throw;
    }
    penalties_.restore(logits);
    if (token != LLAMA_TOKEN_NULL) {
        penalties_.accept(token);
    }
    return token;
}

llama_token RequestSampler::choose(llama_context * ctx, int idx) {
    if (greedy_) {
        return argmax(ctx, idx);
    }
    const llama_token token = common_sampler_sample(chain_.get(), ctx, idx);
    if (has_grammar_) {
        // A complete grammar admits only the end of generation; where that is banned too (ignore_eos,
        // a logit bias) no token is left and the sampler picks one at -inf, which the grammar would
        // then refuse with an error. The output is done: the caller finishes with "stop".
        const llama_token_data_array * cur = common_sampler_get_candidates(chain_.get(), false);
        if (cur->selected >= 0 && cur->data[cur->selected].logit == -std::numeric_limits<float>::infinity()) {
            return LLAMA_TOKEN_NULL;
        }
    }
    common_sampler_accept(chain_.get(), token, true);
    return token;
}

bool RequestSampler::ends_generation(llama_token token) const { return !ignore_eos_ && model_.is_eog(token); }

llama_token RequestSampler::argmax(llama_context * ctx, int idx) const {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        throw std::runtime_error("no logits for this position");
    }
    const int n = rules_.n_vocab();
    const int top = first_max(logits, n);
    if (top >= 0 && !rules_.banned(top, ignore_eos_)) {
        return top;
    }
    // The winner may not be chosen (or every logit is -inf): the best of the rest.
    llama_token best = LLAMA_TOKEN_NULL;
    float best_logit = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; ++i) {
        if (logits[i] > best_logit && !rules_.banned(i, ignore_eos_)) {
            best_logit = logits[i];
            best = i;
        }
    }
    if (best == LLAMA_TOKEN_NULL) {
        throw std::runtime_error("every token is suppressed");
    }
    return best;
}

void RequestSampler::fill_logprobs(Chunk & chunk, llama_context * ctx, int idx, llama_token token) const {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        return;
    }
    const int n_vocab = model_.n_vocab();
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n_vocab; ++i) {
        max_logit = std::max(max_logit, logits[i]);
    }
    double sum = 0.0;
    for (int i = 0; i < n_vocab; ++i) {
        sum += std::exp(static_cast<double>(logits[i] - max_logit));
    }
    const float log_z = max_logit + static_cast<float>(std::log(sum));
    chunk.logprob = logits[token] - log_z;
    chunk.has_logprob = true;
    if (n_probs_ <= 0) {
        return;
    }
    const int n_top = std::min(n_probs_, n_vocab);
    std::vector<int> ids(static_cast<size_t>(n_vocab));
    for (int i = 0; i < n_vocab; ++i) {
        ids[static_cast<size_t>(i)] = i;
    }
    std::partial_sort(ids.begin(), ids.begin() + n_top, ids.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    chunk.top.reserve(static_cast<size_t>(n_top));
    for (int i = 0; i < n_top; ++i) {
        chunk.top.push_back({ids[i], model_.token_to_piece(ids[i], true), logits[ids[i]] - log_z});
    }
}

// Two passes the compiler vectorizes (a max over fixed-width lanes, then a blockwise search for it) instead
// of one branchy loop: over Gemma's 262k-token vocabulary that is ~40 us instead of ~500 us per token, 3-5%
// of a step of a small model.
int first_max(const float * x, int n) {
    constexpr int W = 32;
    float lanes[W];
    std::fill(lanes, lanes + W, -std::numeric_limits<float>::infinity());
    int i = 0;
    for (; i + W <= n; i += W) {
        for (int j = 0; j < W; ++j) {
            lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
        }
    }
    float m = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < W; ++j) {
        m = lanes[j] > m ? lanes[j] : m;
    }
    for (; i < n; ++i) {
        m = x[i] > m ? x[i] : m;
    }
    if (!(m > -std::numeric_limits<float>::infinity())) {
        return -1;
    }
    i = 0;
    for (; i + W <= n; i += W) {
        int hit = 0;
        for (int j = 0; j < W; ++j) {
            hit |= x[i + j] == m;
        }
        if (hit) {
            break;
        }
    }
    for (; i < n; ++i) {
        if (x[i] == m) {
            return i;
        }
    }
    return -1;
}

}  // namespace lcl
