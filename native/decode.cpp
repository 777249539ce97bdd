// One llama_decode of a run of slots and the sampling of its rows; a media chunk's own decode.
#include "engine.h"

#include <algorithm>
#include <string>

#include "batch.h"
#include "logging.h"
#include "slot.h"

namespace lcl {

bool Engine::decode_media(Slot & slot) {
    const MediaChunk * media = slot.params.media->starting_at(slot.n_prompt_done);
    if (media == nullptr) {
        return false;
    }
    const double t0 = now_ms();
    const std::string error = vision_->eval(ctx(), *media, slot.kv.next_pos(), slot.id, params_.n_batch);
    if (!error.empty()) {
        slot.kv.drop_uncommitted();
        finish_slot(slot, "error", error);
        return true;
    }
    slot.kv.append_media(*media, slot.params.prompt);
    slot.n_prompt_done += media->n_tokens;
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.steps++;
    stats_.prompt_tokens_evaluated += static_cast<long long>(media->n_tokens);
    stats_.media_ms += now_ms() - t0;
    return true;
}

void Engine::add_prompt_rows(Slot & slot) {
    const auto & prompt = slot.params.prompt;
    for (int k = 0; k < slot.n_take; ++k) {
        const bool last = slot.n_prompt_done + 1 == prompt.size();
        const llama_token token = prompt[slot.n_prompt_done++];
        batch_add(batch_, token, slot.kv.next_pos(), slot.id, last);
        slot.kv.append(token);
        if (last) {
            slot.i_batch = batch_.n_tokens - 1;
        }
    }
}

void Engine::add_generation_rows(Slot & slot) {
    batch_add(batch_, slot.next_token, slot.kv.next_pos(), slot.id, true);
    slot.kv.append(slot.next_token);
    slot.next_token = LLAMA_TOKEN_NULL;
    slot.i_batch = batch_.n_tokens - 1;
    // The draft follows, an output row each; its cells join the sequence only as they are accepted.
    for (size_t k = 0; k < slot.draft.size(); ++k) {
        batch_add(batch_, slot.draft[k], slot.kv.next_pos() + static_cast<llama_pos>(k), slot.id, true);
    }
}

Engine::BatchCounts Engine::add_rows(int lo, int hi, int tail_row, llama_token guess) {
    batch_.n_tokens = 0;
    BatchCounts counts;
    for (int i = lo; i <= hi; ++i) {
        Slot & slot = *slots_[i];
        if (slot.filler) {
            batch_add(batch_, 0, slot.kv.next_pos(), slot.id, false);
            counts.fill++;
        } else if (slot.n_take == 0) {
            continue;
        } else if (slot.generating()) {
            add_generation_rows(slot);
        } else {
            add_prompt_rows(slot);
            counts.prompt += slot.n_take;
        }
        if (i == tail_row) {
            batch_add(batch_, guess == LLAMA_TOKEN_NULL ? 0 : guess, slot.kv.next_pos(), slot.id, true);
            slot.filler = true;
            counts.fill++;
        }
    }
    return counts;
}

void Engine::count_decode(const BatchCounts & counts) {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.steps++;
    stats_.tokens_decoded += batch_.n_tokens - counts.fill;
    stats_.fillers += counts.fill;
    stats_.prompt_tokens_evaluated += counts.prompt;
    stats_.max_batch = std::max<long long>(stats_.max_batch, batch_.n_tokens - counts.fill);
    stats_.graphs_reused = llama_perf_context(ctx()).n_reused;
}

void Engine::drop_fillers(int lo, int hi) {
    for (int i = lo; i <= hi; ++i) {
        if (slots_[i]->filler) {
            slots_[i]->kv.drop_uncommitted();
            slots_[i]->filler = false;
        }
    }
}

void Engine::fail_decode(int lo, int hi, int rc, const std::string & details) {
    drop_fillers(lo, hi);
    for (int i = lo; i <= hi; ++i) {
        slots_[i]->draft.clear();
    }
    const std::string what = rc == 1 ? "no room left in the KV cache" : "llama_decode failed with code " + std::to_string(rc);
    for (auto & slot : slots_) {
        if (slot->active()) {
            slot->kv.evict();
            finish_slot(*slot, "error", what + ": " + details);
        }
    }
}

void Engine::decode_slots(int lo, int hi, int tail_row, llama_token guess) {
    const BatchCounts counts = add_rows(lo, hi, tail_row, guess);
    if (batch_.n_tokens == 0) {
        return;
    }
    ErrorCapture capture;
    const double t_decode = now_ms();
    const int rc = llama_decode(ctx(), batch_);
    if (speculating() && rc == 0 && counts.prompt == 0 && counts.fill == 0) {
        spec_cost_.record_decode(batch_.n_tokens, now_ms() - t_decode);  // every row an output
    }
    count_decode(counts);
    if (rc != 0) {
        fail_decode(lo, hi, rc, capture.message("no details"));
        return;
    }
    {
        const DeferredWakeups wakeups;  // the step's tokens reach an event loop together
        for (int i = lo; i <= hi; ++i) {
            Slot & slot = *slots_[i];
            if (slot.active() && slot.i_batch >= 0) {
                sample_slot(slot, i == tail_row, guess);
            }
        }
    }
    drop_fillers(lo, hi);
}

int Engine::keep_guess(Slot & slot, llama_token guess, int idx) {
    // The guess was right: its cell stays as the slot's next position, and its row holds the next
    // token's logits, computed as the next step would (every row alone) and sampled in order, so two
    // tokens come out of this pass exactly as of two.
    slot.kv.append(guess);  // guess_next_token() left room: "context full" comes as it would
    slot.filler = false;
    {
        std::lock_guard<std::mutex> lock(stats_mutex_);
        stats_.tokens_decoded++;
        stats_.guesses_accepted++;
    }
    emit_token(slot, guess, idx);
    if (!slot.active()) {
        return -1;
    }
    slot.next_token = LLAMA_TOKEN_NULL;  // decoded already
    return batch_.n_tokens - 1;          // the tail row, the batch's last (a tail row's slot decodes alone)
}

void Engine::sample_slot(Slot & slot, bool tail_row, llama_token guess) {
    int idx = slot.i_batch;
    slot.i_batch = -1;
    if (!slot.generating()) {
        slot.state = SlotState::generating;
        slot.t_prompt_done = now_ms();
        if (slot.exact_prompt) {  // whole chunks only: the last partial one is shaped by this prompt's length
            slot.kv.set_exact(slot.kv.size() / prompt_granule() * prompt_granule());
        }
        slot.request->usage.prompt_ms = slot.t_prompt_done - slot.t_start;
    }
    try {
        llama_token token = slot.sampler->sample(ctx(), idx);
        if (!tail_row && (!slot.draft.empty() || slot.shadow != LLAMA_TOKEN_NULL)) {
            accept_drafts(slot, token, idx);
            return;
        }
        if (tail_row && guess != LLAMA_TOKEN_NULL && token == guess) {
            idx = keep_guess(slot, guess, idx);
            if (idx < 0) {
                return;
            }
            token = slot.sampler->sample(ctx(), idx);
        }
        emit_token(slot, token, idx);
    } catch (const std::exception & e) {
        finish_slot(slot, "error", std::string("sampling failed: ") + e.what());
    }
}

}  // namespace lcl
