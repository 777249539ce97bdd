// The scheduler: which slot takes a request (prefix reuse, sharing a prefix across slots, the unified
// pool's room), and what each step's batch holds (generating slots, prompt chunks, fillers,
// batch-invariant rows). It decides; decode.cpp runs the decode.
#include "engine.h"

#include <algorithm>
#include <limits>

#include "batch.h"
#include "logging.h"
#include "prompt_cache.h"
#include "slot.h"

namespace lcl {

std::vector<SlotView> Engine::slot_views(const RequestParams * placing) const {
    std::vector<SlotView> views(slots_.size());
    for (size_t i = 0; i < slots_.size(); ++i) {
        const Slot & slot = *slots_[i];
        SlotView & v = views[i];
        v.active = slot.active();
        v.generating = slot.generating();
        v.cached = slot.kv.size();
        v.reserved = slot.reserved;
        v.last_used = slot.last_used;
        v.prefix = placing != nullptr ? reusable_prefix(slot, *placing) : 0;
        v.n_next = slot.generating() ? slot.n_take : 0;
        if (v.active && !v.generating) {
            const auto & media = slot.params.media;
            const size_t end = media ? media->next_start(slot.n_prompt_done) : slot.params.prompt.size();
            v.prompt_left = end - slot.n_prompt_done;
        }
    }
    return views;
}

bool Engine::assign_pending() {
    bool assigned = false;
    // The queue's lock is held only to look and to take: planning and evicting run without it.
    while (Pending * pending = queue_.front()) {
        const RequestParams & request = pending->params;
        const std::vector<SlotView> views = slot_views(&request);
        size_t stored = 0;
        if (!stored_prefix_ready(*pending, views, stored)) {
            break;  // its saved prefix is being read (the requests behind it wait: a read takes ~0.1 s)
        }
        const PlacementPlan plan =
            plan_placement(views, request.prompt.size(), reservation(request), unified_, pool_, stored);
        for (const int victim : plan.evict) {
            slots_[victim]->kv.evict();
        }
        if (plan.slot < 0) {
            break;  // it waits for a slot, or for room
        }
        Slot & slot = *slots_[plan.slot];
        size_t prefix = plan.prefix;
        if (plan.restore) {
            prefix = restore_stored(slot, *pending, plan.prefix);
        } else if (plan.donor >= 0) {
            slot.kv.share(slots_[plan.donor]->kv, plan.prefix);
        }
        start_slot(slot, std::move(*queue_.pop()), prefix);
        assigned = true;
    }
    return assigned;
}

bool Engine::stored_prefix_ready(Pending & pending, const std::vector<SlotView> & views, size_t & stored) {
    const RequestParams & request = pending.params;
    if (!disk_ || request.prompt.size() < disk_->min_tokens()) {
        return true;
    }
    if (!pending.looked_up) {
        pending.looked_up = true;
        size_t cached = 0;  // the longest prefix a slot holds: the disk is read only to do better
        for (const auto & v : views) {
            cached = std::max(cached, v.prefix);
        }
        // A longer saved sequence is restored whole, then cut (in the pool, room permitting: else evaluated).
        const auto found = disk_->find(request.prompt, request.media.get(), disk_exact_, static_cast<size_t>(n_ctx_seq_));
        if (found.usable > cached) {
            pending.stored = disk_->load(found);
        }
    }
    if (!pending.stored.valid()) {
        return true;
    }
    // Nothing else to run: wait a little for the read here instead of spinning through the loop.
    const bool busy = std::any_of(views.begin(), views.end(), [](const SlotView & v) { return v.active; });
    if (pending.stored.wait_for(std::chrono::milliseconds(busy ? 0 : 5)) != std::future_status::ready) {
        return false;
    }
    // What the checked file holds, compared again (the index read its tokens before the checksum).
    if (const auto & read = pending.stored.get()) {
        const size_t n = std::min(matching_prefix(read->tokens, read->media, request.prompt, request.media.get()),
                                  request.prompt.size() - 1);
        const bool whole = n == read->tokens.size();
        stored = (disk_exact_ && !whole) || read->tokens.size() > static_cast<size_t>(n_ctx_seq_) ? 0 : restore_point(*read, n);
    }
    return true;
}

size_t Engine::prompt_granule() const {
    const auto batch = static_cast<size_t>(params_.n_batch), ubatch = static_cast<size_t>(params_.n_ubatch);
    return batch_invariant_ ? 0 : (batch % ubatch == 0 ? ubatch : batch);
}

size_t Engine::restore_point(const StoredPrompt & read, size_t n) const {
    // A sliding-window or recurrent memory cannot be cut back to a boundary: its saved sequences are
    // restored whole (they end after their reply, decoded a token per step: identity cannot hold there).
    // Saved with other batch sizes or several slots (granule 0), or restored into one of several slots
    // (whose prompts share batches): no restore point gives a cold run's shapes; what matches is restored.
    const size_t granule = exact_granule();
    if (disk_exact_ || granule == 0 || read.granule != granule) {
        return n;
    }
    return std::min(n, read.exact) / granule * granule;
}

size_t Engine::restore_stored(Slot & slot, const Pending & pending, size_t prefix) {
    const StoredPrompt & read = *pending.stored.get();
    if (!slot.kv.restore(read.state, read.tokens, read.media, read.exact)) {
        log_line(GGML_LOG_LEVEL_WARN, "prompt cache: llama.cpp did not take a saved state; evaluating the prompt");
        return 0;
    }
    return prefix;  // start_slot trims the cells past it
}

void Engine::save_to_disk(Slot & slot) {
    // Worth a file: a prompt of at least min_tokens evaluated whole, holding at least min_tokens more
    // than the longest prefix saved already (a conversation is saved again every min_tokens or so).
    const size_t min = disk_ ? disk_->min_tokens() : 0;
    if (!disk_ || !slot.generating() || slot.params.prompt.size() < min) {
        return;
    }
    slot.kv.drop_uncommitted();  // draft rows still in the cells
    const auto saved = disk_->find(slot.kv.tokens(), nullptr, disk_exact_, std::numeric_limits<size_t>::max());
    if (slot.kv.size() < saved.usable + min) {
        return;
    }
    const size_t granule = exact_granule();
    disk_->save({slot.kv.tokens(), slot.kv.media(), slot.kv.save_state(), static_cast<uint32_t>(granule), slot.kv.exact()});
}

size_t Engine::reservation(const RequestParams & request) const {
    const size_t n = request.prompt.size();
    const size_t most = static_cast<size_t>(n_ctx_seq_);
    return request.max_tokens < 0 ? most : std::min(most, n + static_cast<size_t>(request.max_tokens));
}

bool Engine::make_room(size_t cells, const Slot & keep) {
    std::vector<SlotView> views = slot_views(nullptr);
    std::vector<int> evict;
    const bool fits = plan_room(views, cells, keep.id, -1, pool_, evict);
    for (const int victim : evict) {
        slots_[victim]->kv.evict();
    }
    return fits;
}

size_t Engine::reusable_prefix(const Slot & slot, const RequestParams & request) const {
    return slot.kv.reusable_prefix(request.prompt, request.media.get(), n_swa_);
}

int Engine::take_generating() {
    int n_gen = 0;
    for (auto & slot : slots_) {
        slot->clear_step();
        if (slot->generating() && slot->next_token != LLAMA_TOKEN_NULL) {
            slot->n_take = 1;
            n_gen++;
        }
    }
    if (speculating() && n_gen > 0) {
        plan_drafts(params_.n_batch - n_gen);
        n_gen = 0;
        for (auto & slot : slots_) {
            n_gen += slot->n_take;
        }
    }
    return n_gen;
}

bool Engine::decode_next_media() {
    // Media are decoded on their own (embeddings, not tokens), one chunk per slot and step.
    for (auto & slot : slots_) {
        if (slot->active() && !slot->generating() && slot->params.media && decode_media(*slot)) {
            return true;
        }
    }
    return false;
}

void Engine::step() {
    // Generating slots take their next token (and its draft); prompts share what is left (plan_batch).
    take_generating();
    if (batch_invariant_) {
        step_invariant();
        return;
    }
    if (vision_ && decode_next_media()) {
        return;
    }
    // llama.cpp splits a batch that spans several KV streams (one per slot) into micro-batches of
    // consecutive sequence ids with the same number of tokens each: slots 0 and 2 without 1 would
    // be computed one after the other, and tokens out of slot order likewise. So the batch is
    // built in slot order, and an idle slot between two busy ones decodes a filler token that is
    // removed right after (a cell at its next position; the cached tokens stay).
    // A filler is not worth it where its sequence is much longer than the longest in the step:
    // every stream in a micro-batch attends over as many cells as the longest one holds (padded
    // to 256), and a few hundred cells cost less than another pass over the weights.
    const BatchPlan plan = plan_batch(slot_views(nullptr), batch_limits(kFillerSlack));
    if (plan.lo < 0) {
        return;
    }
    apply(plan);
    decode_slots(plan.lo, plan.hi, -1);
}

BatchLimits Engine::batch_limits(size_t filler_slack) const {
    return {params_.n_batch, n_ctx_seq_, fill_gaps_, filler_slack};
}

void Engine::apply(const BatchPlan & plan) {
    for (size_t i = 0; i < slots_.size(); ++i) {
        slots_[i]->n_take = plan.take[i];
        slots_[i]->filler = plan.filler[i];
    }
}

int Engine::generating_run_end(int lo) const {
    // A run of generating slots from lo, bridged by fillers wherever one fits.
    const int n_slots = static_cast<int>(slots_.size());
    int hi = lo;
    for (int j = lo + 1; j < n_slots; ++j) {
        if (slots_[j]->n_take > 0) {
            hi = j;
        } else if (static_cast<int>(slots_[j]->kv.size()) >= n_ctx_seq_) {
            break;  // no cell left for a filler: the run ends here
        }
    }
    return hi;
}

void Engine::step_invariant() {
    // Every row of every matrix product goes through the same kernel whatever else is decoded:
    // llama.cpp's CPU matmul switches kernels between one column and several (llamafile's
    // tinyBLAS), so every micro-batch here has at least two tokens and, where it computes logits,
    // at least two outputs; a tail row (the slot's next position, removed after) makes up the
    // second. Generating slots decode together, one token each; each prompt chunk goes alone, so
    // that llama.cpp never splits a call into micro-batches of its own choosing.
    // A slot with a draft decodes alone: its next token and draft make the two rows (or more) by themselves.
    for (auto & slot : slots_) {
        if (slot->generating() && slot->n_take > 1) {
            decode_slots(slot->id, slot->id, -1);
            slot->n_take = 0;
        }
    }
    const int n_slots = static_cast<int>(slots_.size());
    for (int lo = 0; lo < n_slots; ++lo) {
        if (slots_[lo]->n_take == 0) {
            continue;
        }
        const int hi = generating_run_end(lo);
        BatchPlan run;
        run.lo = lo;
        run.hi = hi;
        for (const auto & slot : slots_) {
            run.take.push_back(slot->n_take);
        }
        run.filler.assign(slots_.size(), false);
        plan_fillers(slot_views(nullptr), run, batch_limits(std::numeric_limits<size_t>::max()));
        apply(run);
        int n_real = 0;
        for (int i = lo; i <= hi; ++i) {
            n_real += slots_[i]->n_take;
        }
        // One output: add a second, and make it a guess at the token after this one (see
        // decode_slots: where the guess is right, two tokens come out of one pass, exactly).
        const bool tail = needs_tail_row(n_real, n_real, slots_[lo]->kv.size() + 1);
        decode_slots(lo, hi, tail ? lo : -1, tail ? guess_next_token(*slots_[lo]) : LLAMA_TOKEN_NULL);
        lo = hi;
    }
    for (auto & slot : slots_) {
        if (!slot->active() || slot->generating()) {
            continue;
        }
        const size_t left = slot->params.prompt.size() - slot->n_prompt_done;
        const size_t take = invariant_chunk(left);
        slot->n_take = static_cast<int>(take);
        const bool tail = needs_tail_row(static_cast<int>(take), take == left ? 1 : 0, slot->kv.size() + take);
        decode_slots(slot->id, slot->id, tail ? slot->id : -1);
    }
}

bool Engine::needs_tail_row(int n_tokens, int n_outputs, size_t cells) const {
    // Under batch_invariant no matrix product has one row: a call with one output (or one token) gets a
    // second output row at the next position, removed after (room permitting: counted in cells, as an
    // M-RoPE image takes fewer positions than cells).
    return batch_invariant_ && (n_outputs == 1 || n_tokens == 1) && cells < static_cast<size_t>(n_ctx_seq_);
}

size_t Engine::invariant_chunk(size_t left) const {
    // One micro-batch per call: the last chunk has room for its tail row, and a chunk before it
    // has at least two tokens (n_ubatch >= 4).
    const auto cap = static_cast<size_t>(params_.n_ubatch);
    return left + 1 <= cap ? left : std::min(left - 1, cap);
}

llama_token Engine::guess_next_token(Slot & slot) const {
    // The tail row is paid for anyway: it holds prompt lookup's guess at the token after next_token
    // (text that quotes or repeats its context guesses right often), with n-grams down to one token,
    // since a weak guess beats none here. Room is left for the guess to be kept: "context full" comes
    // as it would.
    const int n = static_cast<int>(slot.kv.size()) + 1;  // with next_token
    if (slot.next_token == LLAMA_TOKEN_NULL || slot.kv.empty() || n + 2 >= n_ctx_seq_) {
        return LLAMA_TOKEN_NULL;
    }
    const std::vector<llama_token> & text = continued_text(slot);
    const auto guess = prompt_lookup(text, 1, kGuessLookup);
    return guess.empty() ? LLAMA_TOKEN_NULL : guess[0];
}

const std::vector<llama_token> & Engine::continued_text(Slot & slot) const {
    slot.continued.assign(slot.kv.tokens().begin(), slot.kv.tokens().end());
    slot.continued.push_back(slot.next_token);
    return slot.continued;
}

}  // namespace lcl
