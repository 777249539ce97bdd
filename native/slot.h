// A sequence slot of the engine (private to native/): the tokens its KV sequence holds, kept between
// requests for prefix reuse, and the request it serves, in a named state as llama-server's slots.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "params.h"
#include "request.h"
#include "sampler.h"
#include "speculative.h"
#include "text.h"

namespace lcl {

struct CachedMedia {
    size_t offset = 0;
    size_t n_tokens = 0;
    std::string id;
};

// Drops the media that reach past `end` (their KV is gone).
void forget_media_after(std::vector<CachedMedia> & media, size_t end);

// A request accepted by submit() and waiting for a slot.
struct Pending {
    RequestParams params;
    std::unique_ptr<RequestSampler> sampler;
    std::shared_ptr<RequestState> request;
    double t_submit = 0;
};

enum class SlotState {
    idle,        // no request; its cache stays for the next one that shares a prefix
    prompt,      // evaluating the request's prompt
    generating,  // sampling, one token (and its drafts) per step
};

struct Slot {
    int id = 0;
    SlotState state = SlotState::idle;

    // Kept between requests.
    std::vector<llama_token> cache;         // tokens whose KV is in this sequence, in position order
    std::vector<CachedMedia> cached_media;  // media in it (their positions hold placeholders), by offset
    long long last_used = 0;                // orders the slots for eviction

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
    // Speculative decoding: this step's draft (decoded after next_token), where it came from, this
    // request's acceptance of each source, and when to try the draft model again after it stopped paying.
    std::vector<llama_token> draft;
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
    // Takes a request whose first n_keep prompt tokens are cached here already.
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
