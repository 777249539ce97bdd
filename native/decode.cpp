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
    const auto n_past = static_cast<llama_pos>(slot.cache.size());
    const double t0 = now_ms();
    const std::string error = vision_->eval(ctx(), *media, n_past, slot.id, params_.n_batch);
    if (!error.empty()) {
        llama_memory_seq_rm(llama_get_memory(ctx()), slot.id, n_past, -1);
        finish_slot(slot, "error", error);
        return true;
    }
    const auto & prompt = slot.params.prompt;
    const auto begin = prompt.begin() + static_cast<long>(media->offset);
    slot.cache.insert(slot.cache.end(), begin, begin + static_cast<long>(media->n_tokens));
    slot.cached_media.push_back({media->offset, media->n_tokens, media->id});
    slot.n_prompt_done += media->n_tokens;
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.steps++;
    stats_.prompt_tokens_evaluated += static_cast<long long>(media->n_tokens);
    stats_.media_ms += now_ms() - t0;
    return true;
}

void Engine::decode_slots(int lo, int hi, int tail_filler, llama_token draft) {
    batch_.n_tokens = 0;
    long long n_prompt_tokens = 0;
    int n_fill = 0;
    for (int i = lo; i <= hi; ++i) {
        Slot & slot = *slots_[i];
        if (slot.filler) {
            batch_add(batch_, 0, static_cast<llama_pos>(slot.cache.size()), slot.id, false);
            n_fill++;
        } else if (slot.n_take == 0) {
            continue;
        } else if (slot.generating()) {
            batch_add(batch_, slot.next_token, static_cast<llama_pos>(slot.cache.size()), slot.id, true);
            slot.cache.push_back(slot.next_token);
            slot.next_token = LLAMA_TOKEN_NULL;
            slot.i_batch = batch_.n_tokens - 1;
            // The draft follows, an output row each; its cells join the cache only as they are accepted.
            for (size_t k = 0; k < slot.draft.size(); ++k) {
                batch_add(batch_, slot.draft[k], static_cast<llama_pos>(slot.cache.size() + k), slot.id, true);
            }
        } else {
            const auto & prompt = slot.params.prompt;
            for (int k = 0; k < slot.n_take; ++k) {
                const bool last = slot.n_prompt_done + 1 == prompt.size();
                batch_add(batch_, prompt[slot.n_prompt_done], static_cast<llama_pos>(slot.cache.size()), slot.id, last);
                slot.cache.push_back(prompt[slot.n_prompt_done]);
                slot.n_prompt_done++;
                if (last) {
                    slot.i_batch = batch_.n_tokens - 1;
                }
            }
            n_prompt_tokens += slot.n_take;
        }
        if (i == tail_filler) {
            batch_add(batch_, draft == LLAMA_TOKEN_NULL ? 0 : draft, static_cast<llama_pos>(slot.cache.size()), slot.id, true);
            slot.filler = true;
            n_fill++;
        }
    }
    if (batch_.n_tokens == 0) {
        return;
    }
    ErrorCapture capture;
    const double t_decode = now_ms();
    const int rc = llama_decode(ctx(), batch_);
    if (speculating() && rc == 0 && n_prompt_tokens == 0 && n_fill == 0) {
        spec_cost_.record_decode(batch_.n_tokens, now_ms() - t_decode);  // every row an output
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stats_.steps++;
        stats_.tokens_decoded += batch_.n_tokens - n_fill;
        stats_.fillers += n_fill;
        stats_.prompt_tokens_evaluated += n_prompt_tokens;
        stats_.max_batch = std::max<long long>(stats_.max_batch, batch_.n_tokens - n_fill);
    }
    const auto remove_fillers = [&] {
        llama_memory_t mem = llama_get_memory(ctx());
        for (int i = lo; i <= hi; ++i) {
            if (slots_[i]->filler) {
                llama_memory_seq_rm(mem, i, static_cast<llama_pos>(slots_[i]->cache.size()), -1);
                slots_[i]->filler = false;
            }
        }
    };
    if (rc != 0) {
        remove_fillers();
        for (int i = lo; i <= hi; ++i) {
            slots_[i]->draft.clear();
        }
        const std::string what = rc == 1 ? "no room left in the KV cache" : "llama_decode failed with code " + std::to_string(rc);
        llama_memory_t mem = llama_get_memory(ctx());
        for (auto & slot : slots_) {
            if (slot->active()) {
                llama_memory_seq_rm(mem, slot->id, -1, -1);
                slot->cache.clear();
                slot->cached_media.clear();
                finish_slot(*slot, "error", what + ": " + capture.message("no details"));
            }
        }
        return;
    }
    for (int i = lo; i <= hi; ++i) {
        Slot & slot = *slots_[i];
        if (!slot.active() || slot.i_batch < 0) {
            continue;
        }
        int idx = slot.i_batch;
        slot.i_batch = -1;
        if (!slot.generating()) {
            slot.state = SlotState::generating;
            slot.t_prompt_done = now_ms();
            slot.request->t_prompt_ms = slot.t_prompt_done - slot.t_start;
        }
        try {
            llama_token token = slot.sampler->sample(ctx(), idx);
            if (i != tail_filler && (!slot.draft.empty() || slot.shadow != LLAMA_TOKEN_NULL)) {
                accept_drafts(slot, token, idx);
                continue;
            }
            if (i == tail_filler && draft != LLAMA_TOKEN_NULL && token == draft) {
                // The guess was right: its cell stays as the slot's next position, and its row holds
                // the next token's logits, computed as the next step would (every row alone) and
                // sampled in order, so two tokens come out of this pass exactly as of two.
                slot.cache.push_back(draft);  // draft_token() left room: "context full" comes as it would
                slot.filler = false;
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    stats_.tokens_decoded++;
                    stats_.drafts_accepted++;
                }
                emit_token(slot, token, idx);
                if (!slot.active()) {
                    continue;
                }
                slot.next_token = LLAMA_TOKEN_NULL;  // decoded already
                idx = batch_.n_tokens - 1;
                token = slot.sampler->sample(ctx(), idx);
            }
            emit_token(slot, token, idx);
        } catch (const std::exception & e) {
            finish_slot(slot, "error", std::string("sampling failed: ") + e.what());
        }
    }
    remove_fillers();
}

}  // namespace lcl
