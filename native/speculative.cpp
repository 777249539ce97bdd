#include "speculative.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "batch.h"
#include "sampler.h"  // first_max
#include "logging.h"

namespace lcl {

std::vector<llama_token> prompt_lookup(const std::vector<llama_token> & tokens, int n_max, const LookupParams & lookup) {
    std::vector<llama_token> out;
    const size_t n = tokens.size();
    if (n_max <= 0 || n < 2) {
        return out;
    }
    const size_t stop = n > lookup.window ? n - lookup.window : 0;
    for (int g = std::min<int>(lookup.ngram_max, static_cast<int>(n) - 1); g >= std::max(1, lookup.ngram_min); --g) {
        const auto len = static_cast<size_t>(g);
        const llama_token * tail = tokens.data() + n - len;
        // The last earlier occurrence: the text being written most likely continues as it did most recently.
        for (size_t i = n - len; i-- > stop;) {
            if (std::equal(tail, tail + len, tokens.data() + i)) {
                for (size_t j = i + len; j < n && out.size() < static_cast<size_t>(n_max); ++j) {
                    if (tokens[j] < 0) {  // a media placeholder is not a token anyone can draft
                        break;
                    }
                    out.push_back(tokens[j]);
                }
                return out;
            }
        }
    }
    return out;
}

void check_draft_lengths(int draft_max, int draft_min) {
    if (draft_max < 1 || draft_max > kMaxDraft || draft_min < 0 || draft_min > draft_max) {
        throw std::invalid_argument("speculative decoding needs 1 <= draft_max <= " + std::to_string(kMaxDraft) +
                                    " and 0 <= draft_min <= draft_max, got draft_max=" + std::to_string(draft_max) +
                                    ", draft_min=" + std::to_string(draft_min));
    }
}

void SpecCost::record_decode(int n_tokens, double ms) {
    if (n_tokens < 1 || n_tokens > kMaxBatch || !(ms > 0)) {
        return;
    }
    double & m = ms_[n_tokens];
    m = m > 0 ? 0.9 * m + 0.1 * ms : ms;
}

void SpecCost::record_draft(int n_tokens, double ms) {
    if (n_tokens < 1 || !(ms >= 0)) {
        return;
    }
    const double per = ms / n_tokens;
    draft_ms_ = draft_ms_ > 0 ? 0.9 * draft_ms_ + 0.1 * per : per;
}

double SpecCost::decode_ms(int n) const {
    n = std::clamp(n, 1, kMaxBatch);
    if (ms_[n] > 0) {
        return ms_[n];
    }
    int lo = 0, hi = 0;
    for (int i = n - 1; i >= 1; --i) {
        if (ms_[i] > 0) {
            lo = i;
            break;
        }
    }
    for (int i = n + 1; i <= kMaxBatch; ++i) {
        if (ms_[i] > 0) {
            hi = i;
            break;
        }
    }
    // Not measured yet: an optimistic guess (a token more costs a quarter of one, as on hardware that
    // is bound by memory bandwidth), so that a size is tried once and then known.
    const auto prior = [](int k) { return 1.0 + 0.25 * (k - 1); };
    if (lo > 0 && hi > 0) {
        return ms_[lo] + (ms_[hi] - ms_[lo]) * (n - lo) / (hi - lo);
    }
    if (lo > 0) {
        if (lo > 1 && ms_[1] > 0) {
            return ms_[lo] + (ms_[lo] - ms_[1]) / (lo - 1) * (n - lo);
        }
        return ms_[lo] * prior(n) / prior(lo);
    }
    if (hi > 0) {
        return ms_[hi] * prior(n) / prior(hi);
    }
    return prior(n);
}

double SpecCost::expected_accepted(double a, int k) {
    double e = 0, p = 1;
    for (int i = 0; i < k; ++i) {
        p *= a;
        e += p;
    }
    return e;
}

int SpecCost::best_length(int batch, int generating, double acceptance, int k_max, bool with_model,
                          double margin) const {
    batch = std::max(batch, 1);
    generating = std::max(generating, 1);
    const double base = generating / decode_ms(batch);
    double best = base * (1.0 + margin);
    int best_k = 0;
    const double per_draft = with_model ? draft_ms_per_token() : 0.0;
    for (int k = 1; k <= k_max && batch + k <= kMaxBatch; ++k) {
        const double rate = (generating + expected_accepted(acceptance, k)) / (decode_ms(batch + k) + k * per_draft);
        if (rate > best) {
            best = rate;
            best_k = k;
        }
    }
    return best_k;
}

void Acceptance::add(int accepted, int drafted) {
    if (drafted <= 0) {
        return;
    }
    constexpr double decay = 0.8;
    hits = hits * decay + accepted;
    trials = trials * decay + accepted + (accepted < drafted ? 1 : 0);
}

double Acceptance::rate(double prior) const { return (hits + 2.0 * prior) / (trials + 2.0); }

namespace {

// Which differences between two vocabularies still let one model's drafts be the other's tokens: llama.cpp
// allows a few extra (padding) tokens at the end.
constexpr int kVocabSlack = 128;

std::string token_text(const llama_vocab * vocab, llama_token t) {
    const char * text = llama_vocab_get_text(vocab, t);
    return text ? text : "";
}

void check_vocab(const Model & draft, const Model & target) {
    const llama_vocab * vd = draft.vocab();
    const llama_vocab * vt = target.vocab();
    if (llama_vocab_type(vd) != llama_vocab_type(vt)) {
        throw std::invalid_argument("the draft model's tokenizer is of another kind than the target's: drafts must "
                                    "be token ids of the target's vocabulary");
    }
    const int nd = llama_vocab_n_tokens(vd), nt = llama_vocab_n_tokens(vt);
    if (std::abs(nd - nt) > kVocabSlack) {
        throw std::invalid_argument("the draft model's vocabulary has " + std::to_string(nd) + " tokens, the target's " +
                                    std::to_string(nt) + ": the draft must share the target's vocabulary");
    }
    if (llama_vocab_bos(vd) != llama_vocab_bos(vt) || llama_vocab_eos(vd) != llama_vocab_eos(vt) ||
        llama_vocab_get_add_bos(vd) != llama_vocab_get_add_bos(vt)) {
        throw std::invalid_argument("the draft model's special tokens (BOS/EOS) differ from the target's");
    }
    for (llama_token t = 0; t < std::min(nd, nt); ++t) {
        if (token_text(vd, t) != token_text(vt, t)) {
            throw std::invalid_argument("token " + std::to_string(t) + " is '" + token_text(vd, t) +
                                        "' in the draft model and '" + token_text(vt, t) +
                                        "' in the target: the draft must share the target's vocabulary");
        }
    }
}

}  // namespace

Drafter::Drafter(std::shared_ptr<Model> draft, const Model & target, int n_ctx_seq, int n_seq, bool unified,
                 int n_batch, int n_threads, ggml_type type_k, ggml_type type_v)
    : model_(std::move(draft)), n_batch_(n_batch) {
    if (model_->params().vocab_only) {
        throw std::invalid_argument("the draft model was loaded with vocab_only=True");
    }
    if (llama_model_is_recurrent(model_->get()) || llama_model_is_hybrid(model_->get())) {
        throw std::invalid_argument("a recurrent or hybrid draft model cannot drop the drafts the target refuses");
    }
    check_vocab(*model_, target);
    auto cparams = llama_context_default_params();
    cparams.n_ctx = static_cast<uint32_t>(n_ctx_seq) * static_cast<uint32_t>(unified ? 1 : n_seq);
    cparams.n_batch = static_cast<uint32_t>(n_batch);
    cparams.n_ubatch = static_cast<uint32_t>(n_batch);
    cparams.n_seq_max = static_cast<uint32_t>(n_seq);
    cparams.kv_unified = unified;
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    // The target's cache types (a quantized V cache needs flash attention, as in the target's context).
    cparams.type_k = type_k;
    cparams.type_v = type_v;
    if (ggml_is_quantized(type_v)) {
        cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    }
    cparams.no_perf = true;
    ErrorCapture capture;
    ctx_.reset(llama_init_from_model(model_->get(), cparams));
    if (!ctx_) {
        throw std::runtime_error("failed to create the draft model's context: " + capture.message("out of memory?"));
    }
    n_ctx_seq_ = static_cast<int>(llama_n_ctx_seq(ctx_.get()));
    n_batch_ = static_cast<int>(llama_n_batch(ctx_.get()));
    unified_ = unified;
    batch_ = llama_batch_init(n_batch_, 0, 1);
    for (int s = 0; s < n_seq; ++s) {
        seqs_.emplace_back(ctx_.get(), s);
    }
}

Drafter::~Drafter() {
    if (batch_.token != nullptr) {
        llama_batch_free(batch_);
    }
}

namespace {

// The draft's greedy pick and how sure it is of it (its softmax probability).
std::pair<llama_token, float> top_token(const float * logits, int n_vocab, bool want_p) {
    const int best = first_max(logits, n_vocab);
    if (best < 0) {
        return {LLAMA_TOKEN_NULL, 0.0f};
    }
    if (!want_p) {
        return {best, 1.0f};
    }
    const float m = logits[best];
    double sum = 0;
    for (int i = 0; i < n_vocab; ++i) {
        sum += std::exp(static_cast<double>(logits[i] - m));
    }
    return {best, static_cast<float>(1.0 / sum)};
}

}  // namespace

std::vector<Drafter::Work> Drafter::start(std::vector<Job> & jobs) {
    std::vector<Work> work;
    for (auto & job : jobs) {
        job.draft.clear();
        const auto & t = *job.tokens;
        job.n_max = std::min(job.n_max, n_ctx_seq_ - static_cast<int>(t.size()) - 1);
        if (job.n_max <= 0 || t.empty()) {
            continue;
        }
        KvSequence & seq = seqs_[static_cast<size_t>(job.seq)];
        const auto & c = seq.tokens();
        size_t keep = 0;
        while (keep < c.size() && keep < t.size() && c[keep] == t[keep]) {
            ++keep;
        }
        // The last token is decoded again: its logits are the draft's start.
        seq.truncate(std::min(keep, t.size() - 1));
        work.push_back({&job, true});
    }
    return work;
}

void Drafter::free_idle(const std::vector<Work> & work) {
    if (!unified_ || seqs_.size() < 2) {
        return;
    }
    size_t held = 0, needed = 0;
    for (const auto & seq : seqs_) {
        held += seq.size();
    }
    std::vector<bool> busy(seqs_.size(), false);
    for (const auto & w : work) {
        needed += w.job->tokens->size() - seqs_[static_cast<size_t>(w.job->seq)].size() + static_cast<size_t>(w.job->n_max);
        busy[static_cast<size_t>(w.job->seq)] = true;
    }
    if (held + needed <= static_cast<size_t>(n_ctx_seq_)) {
        return;
    }
    for (size_t s = 0; s < seqs_.size(); ++s) {
        if (!busy[s] && !seqs_[s].empty()) {
            seqs_[s].evict();
        }
    }
}

bool Drafter::pick(Job & job, int row, float p_min) {
    const float * logits = llama_get_logits_ith(ctx_.get(), row);
    if (logits == nullptr) {
        return false;
    }
    const int n_vocab = llama_vocab_n_tokens(model_->vocab());
    const bool need_p = p_min > 0 && static_cast<int>(job.draft.size()) >= job.n_min;
    const auto [token, p] = top_token(logits, n_vocab, need_p);
    if (p < p_min && static_cast<int>(job.draft.size()) >= job.n_min) {
        return false;
    }
    if (token < 0 || token >= n_vocab || model_->is_eog(token)) {
        return false;  // the end of the answer: the target decides that on its own
    }
    job.draft.push_back(token);
    return static_cast<int>(job.draft.size()) < job.n_max;
}

int Drafter::decode_and_pick(std::vector<Work> & work, Rows & rows, float p_min) {
    if (batch_.n_tokens == 0) {
        return 0;
    }
    if (llama_decode(ctx_.get(), batch_) != 0) {
        // A failed decode (no room) leaves the draft context's contents unknown: start over next time.
        for (auto & seq : seqs_) {
            seq.evict();
        }
        abandon(work);
        return 0;
    }
    for (auto & [w, row] : rows) {
        w->live = pick(*w->job, row, p_min);
    }
    return batch_.n_tokens;
}

int Drafter::catch_up(std::vector<Work> & work, float p_min) {
    // What the target holds (the whole prompt the first time), many sequences per batch; each one's
    // first draft token comes from the row of its last token.
    int decoded = 0;
    Rows rows;
    while (true) {
        batch_.n_tokens = 0;
        rows.clear();
        for (auto & w : work) {
            const auto & t = *w.job->tokens;
            KvSequence & seq = seqs_[static_cast<size_t>(w.job->seq)];
            while (seq.size() < t.size() && batch_.n_tokens < n_batch_) {
                const bool last = seq.size() + 1 == t.size();
                batch_add(batch_, t[seq.size()], seq.next_pos(), seq.id(), last);
                seq.append(t[seq.size()]);
                if (last) {
                    rows.emplace_back(&w, batch_.n_tokens - 1);
                }
            }
        }
        const int n = decode_and_pick(work, rows, p_min);
        if (n == 0) {
            return decoded;
        }
        decoded += n;
    }
}

int Drafter::extend(std::vector<Work> & work, float p_min) {
    // One token per sequence and pass, each the last one drafted.
    int decoded = 0;
    Rows rows;
    while (true) {
        batch_.n_tokens = 0;
        rows.clear();
        for (auto & w : work) {
            if (!w.live) {
                continue;
            }
            KvSequence & seq = seqs_[static_cast<size_t>(w.job->seq)];
            const llama_token last = w.job->draft.back();
            batch_add(batch_, last, seq.next_pos(), seq.id(), true);
            seq.append(last);
            rows.emplace_back(&w, batch_.n_tokens - 1);
        }
        const int n = decode_and_pick(work, rows, p_min);
        if (n == 0) {
            return decoded;
        }
        decoded += n;
    }
}

void Drafter::abandon(std::vector<Work> & work) {
    for (auto & w : work) {
        w.job->draft.clear();
        w.live = false;
    }
}

int Drafter::draft(std::vector<Job> & jobs, float p_min) {
    std::vector<Work> work = start(jobs);
    // In a unified pool the idle sequences' tokens take cells too: they go first when the pool is short.
    free_idle(work);
    const int caught_up = catch_up(work, p_min);
    return caught_up + extend(work, p_min);  // nothing left to extend where catching up failed
}

}  // namespace lcl
