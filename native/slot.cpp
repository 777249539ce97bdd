#include "slot.h"

#include "batch.h"

namespace lcl {

void Slot::begin(Pending && pending, size_t n_keep, size_t reserve) {
    state = SlotState::prompt;
    request = std::move(pending.request);
    params = std::move(pending.params);
    sampler = std::move(pending.sampler);
    n_prompt_done = n_keep;
    next_token = LLAMA_TOKEN_NULL;
    n_decoded = 0;
    utf8 = Utf8Assembler();
    stop = std::make_unique<StopMatcher>(params.stop);
    t_start = now_ms();
    t_prompt_done = 0;
    reserved = reserve;
    draft.clear();
    draft_from_model = false;
    shadow = LLAMA_TOKEN_NULL;
    lookup_acceptance = {};
    model_acceptance = {};
    probe_in = probe_every = 16;
    clear_step();
    request->usage.cached_tokens = static_cast<int>(n_keep);
    request->usage.queued_ms = t_start - pending.t_submit;
}

void Slot::end(long long use) {
    state = SlotState::idle;
    request.reset();
    sampler.reset();
    reserved = 0;
    i_batch = -1;  // a filler it holds in this step stays flagged: the step removes it
    last_used = use;
}

}  // namespace lcl
