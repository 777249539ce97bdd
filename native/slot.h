// A sequence slot of the engine (private to native/): its KV sequence, kept between requests for prefix
// reuse, and the request it serves, in a named state as llama-server's slots.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kv_sequence.h"
#include "params.h"
#include "request.h"
#include "request_queue.h"
#include "sampler.h"
#include "speculative.h"
#include "text.h"

namespace lcl {

enum class SlotState {
    idle,        // no request; its cache stays for the next one that shares a prefix
    prompt,      // evaluating the request's prompt
    generating,  // sampling, one token (and its drafts) per step
};

struct Slot {
    Slot(llama_context * ctx, int slot_id) : id(slot_id), kv(ctx, slot_id) {}

    int id = 0;
    SlotState state = SlotState::idle;

    // Kept between requests.
    KvSequence kv;           // the cells of sequence `id` and the tokens and media they hold
    long long last_used = 0;  // orders the slots for eviction

    // The request being served (begin() sets every field, end() lets go).
    std::shared_ptr<RequestState> request;
    RequestParams params;
    std::unique_ptr<RequestSampler> sampler;
    size_t n_prompt_done = 0;
    llama_token next_token = LLAMA_TOKEN_NULL;  // sampled, to be decoded in the next step
    int n_decoded = 0;
    Utf8Assembler utf8;
    std::unique_ptr<StopMatcher> stop;
    double t_start = 0, t_prompt_done = 0;
    size_t reserved = 0;  // unified pool: cells this request may come to hold
    bool exact_prompt = false;  // its prompt is evaluated in a cold run's chunks: its cells become exact (KvSequence::exact)
    // Speculative decoding: this step's draft (decoded after next_token), where it came from, this
    // request's acceptance of each source, and when to try the draft model again after it stopped paying.
    std::vector<llama_token> draft;
    std::vector<llama_token> continued;  // the cached tokens and next_token: the text a draft continues
    bool draft_from_model = false;
    llama_token shadow = LLAMA_TOKEN_NULL;  // a lookup draft's first token not used: checked for free
    Acceptance lookup_acceptance, model_acceptance;
    int probe_in = 16, probe_every = 16;

    // Its part of the step being built (clear_step() before each).
    int n_take = 0;       // tokens it puts in the batch
    bool filler = false;  // holds a filler token
    int i_batch = -1;     // the batch row to sample from

    bool active() const { return state != SlotState::idle; }
    bool generating() const { return state == SlotState::generating; }
    // Takes a request whose first n_keep prompt tokens are cached here already (kv holds just those).
    void begin(Pending && pending, size_t n_keep, size_t reserve);
    // Back to idle; the cache stays.
    void end(long long use);
    void clear_step() {
        n_take = 0;
        filler = false;
        i_batch = -1;
    }
};

}  // namespace lcl
