// Speculative decoding inside the engine's step: which slots draft how many tokens (prompt lookup or the
// draft model, by the measured cost model), and the acceptance of a verified draft row by row.
#include "engine.h"

#include <algorithm>
#include <vector>

#include "batch.h"
#include "slot.h"

namespace lcl {

void Engine::accept_drafts(Slot & slot, llama_token token, int idx) {
    // Down the rows while the model's own choice is the drafted token: each row's logits were computed
    // after the tokens before it, so each token is sampled where plain decoding would sample it.
    const size_t n_draft = slot.draft.size();
    size_t accepted = 0;
    // Counted before the tokens go out: the request may finish on any of them, and its caller then reads these.
    slot.request->usage.draft_n += static_cast<int>(n_draft);
    while (accepted < n_draft && token == slot.draft[accepted]) {
        slot.request->usage.draft_n_accepted++;
        emit_token(slot, token, idx);
        if (!slot.active()) {
            break;
        }
        slot.kv.append(slot.draft[accepted]);
        slot.next_token = LLAMA_TOKEN_NULL;  // decoded already
        ++accepted;
        ++idx;
        token = slot.sampler->sample(ctx(), idx);
    }
    if (n_draft > 0) {
        // The refused drafts' cells (and, where the slot finished, those after its end) are dropped.
        slot.kv.drop_uncommitted();
        record_acceptance(slot, static_cast<int>(accepted), static_cast<int>(n_draft));
    } else if (slot.shadow != LLAMA_TOKEN_NULL) {
        const int hit = token == slot.shadow ? 1 : 0;
        slot.lookup_acceptance.add(hit, 1);
        lookup_acceptance_.add(hit, 1);
    }
    slot.draft.clear();
    slot.shadow = LLAMA_TOKEN_NULL;
    if (slot.active()) {
        emit_token(slot, token, idx);
    }
}

void Engine::record_acceptance(Slot & slot, int accepted, int drafted) {
    auto & mine = slot.draft_from_model ? slot.model_acceptance : slot.lookup_acceptance;
    auto & all = slot.draft_from_model ? model_acceptance_ : lookup_acceptance_;
    mine.add(accepted, drafted);
    all.add(accepted, drafted);
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.draft_tokens += drafted;
    stats_.drafts_accepted += accepted;
    stats_.tokens_decoded -= drafted - accepted;  // counted as decoded with the batch
}

// A slot drafts where the cost model expects more tokens per second from it: the step's measured
// time with and without k more rows, the draft model's time, and this request's acceptance so far.
constexpr double kDraftMargin = 0.10;  // estimates are noisy: draft where the gain is clear

int Engine::draft_cap(const Slot & slot, int budget) const {
    int k_cap = std::min({params_.draft_max, budget, n_ctx_seq_ - static_cast<int>(slot.kv.size()) - 2});
    if (slot.params.max_tokens >= 0) {
        k_cap = std::min(k_cap, slot.params.max_tokens - slot.n_decoded - 1);
    }
    return k_cap;
}

void Engine::draft_by_lookup(Slot & slot, int k_cap, const StepShape & shape) {
    auto guess = prompt_lookup(slot.continued, k_cap, kPromptLookup);
    if (guess.empty()) {
        return;
    }
    const double a = slot.lookup_acceptance.rate(lookup_acceptance_.rate(0.6));
    int k = spec_cost_.best_length(shape.batch, shape.generating, a, static_cast<int>(guess.size()), false, kDraftMargin);
    k = std::max(k, std::min(params_.draft_min, static_cast<int>(guess.size())));
    if (k == 0) {
        slot.shadow = guess[0];
    }
    guess.resize(static_cast<size_t>(k));
    slot.draft = std::move(guess);
    slot.draft_from_model = false;
}

int Engine::model_draft_length(Slot & slot, int k_cap, const StepShape & shape) {
    const double a = slot.model_acceptance.rate(model_acceptance_.rate(0.5));
    int k = std::max(params_.draft_min, spec_cost_.best_length(shape.batch, shape.generating, a, k_cap, true, kDraftMargin));
    if (k > 0) {
        slot.probe_every = 16;  // drafting pays: if it stops paying, look again soon
    } else if (spec_cost_.best_length(shape.batch, shape.generating, 0.95, k_cap, true, kDraftMargin) > 0 &&
               --slot.probe_in <= 0) {
        // Not paying at this acceptance, but it would at a better one: try a short draft now and
        // then, less often each time it does not pay, to notice when the text turns predictable.
        k = std::min(2, k_cap);
        slot.probe_in = slot.probe_every;
        slot.probe_every = std::min(256, slot.probe_every * 2);
    }
    return std::min(k, k_cap);
}

void Engine::take_draft(Slot & slot, StepShape & shape) {
    slot.draft.resize(std::min(slot.draft.size(), static_cast<size_t>(std::max(0, shape.budget))));
    const int n = static_cast<int>(slot.draft.size());
    slot.n_take = 1 + n;
    shape.budget -= n;
    shape.batch += n;
}

int Engine::plan_drafts(int budget) {
    StepShape shape{0, 0, budget};
    for (const auto & slot : slots_) {
        if (slot->n_take > 0) {
            shape.batch += slot->n_take;
            shape.generating++;
        }
    }
    std::vector<Drafter::Job> jobs;
    std::vector<Slot *> job_slots;
    for (auto & slot_ptr : slots_) {
        Slot & slot = *slot_ptr;
        slot.draft.clear();
        slot.shadow = LLAMA_TOKEN_NULL;
        const int k_cap = slot.n_take > 0 ? draft_cap(slot, shape.budget) : 0;
        if (k_cap <= 0) {
            continue;
        }
        continued_text(slot);  // the draft continues the text after the next token
        if (params_.prompt_lookup) {
            draft_by_lookup(slot, k_cap, shape);
        }
        const bool model_may_draft = slot.draft.empty() && drafter_ && !slot.kv.holds_media() && !slot.params.media;
        const int k = model_may_draft ? model_draft_length(slot, k_cap, shape) : 0;
        if (k > 0) {
            jobs.push_back({slot.id, &slot.continued, k, std::min(params_.draft_min, k_cap), {}});
            job_slots.push_back(&slot);
        } else {
            take_draft(slot, shape);
        }
    }
    return jobs.empty() ? 0 : draft_with_model(jobs, job_slots, shape);
}

int Engine::draft_with_model(std::vector<Drafter::Job> & jobs, const std::vector<Slot *> & job_slots, StepShape & shape) {
    const double t0 = now_ms();
    const int decoded = drafter_->draft(jobs, params_.draft_p_min);
    int drafted = 0;
    for (size_t j = 0; j < jobs.size(); ++j) {
        job_slots[j]->draft = std::move(jobs[j].draft);
        job_slots[j]->draft_from_model = true;
        take_draft(*job_slots[j], shape);
        drafted += static_cast<int>(job_slots[j]->draft.size());
    }
    if (decoded > 0) {
        spec_cost_.record_draft(std::max(drafted, 1), now_ms() - t0);
    }
    return drafted;
}

}  // namespace lcl
