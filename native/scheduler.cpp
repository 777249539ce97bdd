// The scheduler: which slot takes a request (prefix reuse, sharing a prefix across slots, the unified
// pool's room), and what each step's batch holds (generating slots, prompt chunks, fillers,
// batch-invariant rows). It decides; decode.cpp runs the decode.
#include "engine.h"

#include <algorithm>
#include <limits>

#include "batch.h"
#include "slot.h"

namespace lcl {

namespace {

size_t common_prefix(const std::vector<llama_token> & a, const std::vector<llama_token> & b) {
    const size_t n = std::min(a.size(), b.size());
    size_t i = 0;
    while (i < n && a[i] == b[i]) {
        ++i;
    }
    return i;
}

}  // namespace

bool Engine::assign_pending() {
    std::unique_lock<std::mutex> lock(mutex_);
    bool assigned = false;
    while (!pending_.empty()) {
        // Drop requests cancelled while queued.
        if (pending_.front()->request->cancelled) {
            pending_.front()->request->finish("cancelled");
            pending_.pop_front();
            continue;
        }
        // The slot that costs least: prompt tokens still to evaluate plus cached tokens thrown
        // away (another conversation may come back for them). A follow-up turn lands on its own
        // conversation's slot; an unrelated prompt takes an empty or least recently used one.
        // In the unified pool a prefix cached in any slot can be shared (llama.cpp's seq_cp tags the same
        // cells with a second sequence: no copy, no memory): a repeated or regenerated prompt reuses it
        // without taking the slot, and the tail, of the conversation that holds it.
        const auto & request = pending_.front()->params;
        const auto & prompt = request.prompt;
        Slot * donor = nullptr;
        size_t donor_prefix = 0;
        if (unified_) {
            for (auto & slot : slots_) {
                const size_t prefix = reusable_prefix(*slot, request);
                if (prefix > donor_prefix) {
                    donor = slot.get();
                    donor_prefix = prefix;
                }
            }
        }
        Slot * best = nullptr;
        size_t best_cost = 0;
        size_t best_prefix = 0;
        for (auto & slot : slots_) {
            if (slot->active()) {
                continue;
            }
            const size_t prefix = reusable_prefix(*slot, request);
            const size_t cost = (prompt.size() - std::max(prefix, donor_prefix)) + (slot->cache.size() - prefix);
            if (best == nullptr || cost < best_cost ||
                (cost == best_cost && (prefix > best_prefix || (prefix == best_prefix && slot->last_used < best->last_used)))) {
                best = slot.get();
                best_cost = cost;
                best_prefix = prefix;
            }
        }
        if (best == nullptr) {
            break;
        }
        bool share = donor != nullptr && donor_prefix > best_prefix;
        if (unified_) {
            const size_t cells = reservation(request);
            if (share && !make_room(cells - donor_prefix, best, donor)) {
                // No room beside the conversation that holds the prefix: where it is idle, the request takes
                // its slot (its tail gives way) rather than evicting it whole.
                share = false;
                if (!donor->active()) {
                    best = donor;
                    best_prefix = donor_prefix;
                }
            }
            if (!share && !make_room(cells, best)) {
                break;  // the running requests hold the pool: this one waits for one of them to end
            }
        }
        if (share) {
            llama_memory_t mem = llama_get_memory(ctx());
            llama_memory_seq_rm(mem, best->id, -1, -1);
            llama_memory_seq_cp(mem, donor->id, best->id, 0, static_cast<llama_pos>(donor_prefix));
            best->cache.assign(donor->cache.begin(), donor->cache.begin() + static_cast<long>(donor_prefix));
            best->cached_media = donor->cached_media;
            forget_media_after(best->cached_media, donor_prefix);
            best_prefix = donor_prefix;
        }
        std::unique_ptr<Pending> pending = std::move(pending_.front());
        pending_.pop_front();
        lock.unlock();
        start_slot(*best, std::move(*pending), best_prefix);
        assigned = true;
        lock.lock();
    }
    return assigned;
}

size_t Engine::reservation(const RequestParams & request) const {
    const size_t n = request.prompt.size();
    const size_t most = static_cast<size_t>(n_ctx_seq_);
    return request.max_tokens < 0 ? most : std::min(most, n + static_cast<size_t>(request.max_tokens));
}

size_t Engine::cells_in_use() const {
    size_t used = 0;
    for (const auto & slot : slots_) {
        used += slot->active() ? std::max(slot->reserved, slot->cache.size()) : slot->cache.size();
    }
    return used;
}

void Engine::evict(Slot & slot) {
    llama_memory_seq_rm(llama_get_memory(ctx()), slot.id, -1, -1);
    slot.cache.clear();
    slot.cached_media.clear();
}

bool Engine::make_room(size_t cells, const Slot * keep, const Slot * protect) {
    // `keep`'s own cache gives way to the request that takes it; `protect`'s is needed (a shared prefix).
    size_t used = cells_in_use() - (keep != nullptr && !keep->active() ? keep->cache.size() : 0);
    while (used + cells > pool_) {
        Slot * victim = nullptr;
        for (auto & slot : slots_) {
            if (!slot->active() && slot.get() != keep && slot.get() != protect && !slot->cache.empty() &&
                (victim == nullptr || slot->last_used < victim->last_used)) {
                victim = slot.get();
            }
        }
        if (victim == nullptr) {
            return false;
        }
        used -= victim->cache.size();
        evict(*victim);
    }
    return true;
}

size_t Engine::reusable_prefix(const Slot & slot, const RequestParams & request) const {
    const auto & prompt = request.prompt;
    size_t n = common_prefix(slot.cache, prompt);
    // A media position counts only as a whole chunk, cached from the same file as the prompt's.
    for (size_t i = 0; i < n; ++i) {
        if (slot.cache[i] >= 0) {
            continue;
        }
        const MediaChunk * wanted = request.media ? request.media->starting_at(i) : nullptr;
        const auto cached = std::find_if(slot.cached_media.begin(), slot.cached_media.end(),
                                         [&](const CachedMedia & m) { return m.offset == i; });
        if (wanted == nullptr || cached == slot.cached_media.end() || cached->id != wanted->id ||
            cached->n_tokens != wanted->n_tokens || i + wanted->n_tokens > n) {
            n = i;
            break;
        }
        i += wanted->n_tokens - 1;
    }
    if (n >= prompt.size()) {
        n = prompt.size() - 1;  // the last prompt token is evaluated again for its logits
    }
    if (n > 0 && n_swa_ > 0) {
        // A sliding-window cache drops positions that fell out of every window. The token after
        // the prefix attends to the n_swa positions before it: they must all still be there.
        const llama_pos pos_min = llama_memory_seq_pos_min(llama_get_memory(ctx()), slot.id);
        if (pos_min > std::max(0, static_cast<int>(n) - n_swa_)) {
            n = 0;
        }
    }
    return n;
}

constexpr size_t kFillerSlack = 512;  // cells; see step()
void Engine::step() {
    // How many tokens each slot contributes: generating slots one, and prompts share what is left
    // of n_batch, in slot order, so running streams keep flowing.
    int n_gen = 0;
    for (auto & slot : slots_) {
        slot->clear_step();
        if (slot->active() && slot->generating() && slot->next_token != LLAMA_TOKEN_NULL) {
            slot->n_take = 1;
            n_gen++;
        }
    }
    if (speculating() && n_gen > 0) {
        plan_drafts(params_.n_batch - n_gen);
        n_gen = 0;
        for (auto & slot : slots_) {
            n_gen += slot->n_take > 0 ? slot->n_take : 0;
        }
    }
    if (batch_invariant_) {
        step_invariant();
        return;
    }
    // Media are decoded on their own (embeddings, not tokens), one chunk per slot and step.
    if (vision_) {
        for (auto & slot : slots_) {
            if (slot->active() && !slot->generating() && slot->params.media && decode_media(*slot)) {
                return;
            }
        }
    }
    int budget = params_.n_batch - n_gen;
    int lo = -1, hi = -1;
    for (auto & slot : slots_) {
        if (slot->active() && !slot->generating() && budget > 0) {
            const size_t end = slot->params.media ? slot->params.media->next_start(slot->n_prompt_done)
                                                  : slot->params.prompt.size();
            const size_t left = end - slot->n_prompt_done;
            slot->n_take = static_cast<int>(std::min<size_t>(left, static_cast<size_t>(budget)));
            budget -= slot->n_take;
        }
        if (slot->n_take > 0) {
            lo = lo < 0 ? slot->id : lo;
            hi = slot->id;
        }
    }
    if (lo < 0) {
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
    const int n_fill = mark_fillers(lo, hi, kFillerSlack);
    // Fillers must fit in n_batch too: prompts give way, from the last slot, down to one token.
    int over = n_fill - budget;
    for (int i = hi; i >= lo && over > 0; --i) {
        Slot & slot = *slots_[i];
        if (slot.active() && !slot.generating() && slot.n_take > 1) {
            const int cut = std::min(over, slot.n_take - 1);
            slot.n_take -= cut;
            over -= cut;
        }
    }
    decode_slots(lo, hi, -1);
}

int Engine::mark_fillers(int lo, int hi, size_t slack) {
    if (!fill_gaps_) {
        return 0;
    }
    size_t end = 0;
    for (int i = lo; i <= hi; ++i) {
        end = std::max(end, slots_[i]->cache.size() + static_cast<size_t>(slots_[i]->n_take));
    }
    int n_fill = 0;
    for (int i = lo; i <= hi; ++i) {
        Slot & slot = *slots_[i];
        const bool near = slot.cache.size() < end || slot.cache.size() - end < slack;
        slot.filler = slot.n_take == 0 && near && static_cast<int>(slot.cache.size()) < n_ctx_seq_;
        n_fill += slot.filler;
    }
    return n_fill;
}

void Engine::step_invariant() {
    // Every row of every matrix product goes through the same kernel whatever else is decoded:
    // llama.cpp's CPU matmul switches kernels between one column and several (llamafile's
    // tinyBLAS), so every micro-batch here has at least two tokens and, where it computes logits,
    // at least two outputs; a tail filler (the slot's next position, removed after) makes up the
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
    for (int lo = 0; lo < n_slots;) {
        if (slots_[lo]->n_take == 0) {
            ++lo;
            continue;
        }
        // A run of generating slots, bridged by fillers wherever one fits.
        int hi = lo;
        for (int j = lo + 1; j < n_slots; ++j) {
            if (slots_[j]->n_take > 0) {
                hi = j;
            } else if (static_cast<int>(slots_[j]->cache.size()) >= n_ctx_seq_) {
                break;  // no cell left for a filler: the run ends here
            }
        }
        mark_fillers(lo, hi, std::numeric_limits<size_t>::max());
        int n_real = 0;
        for (int i = lo; i <= hi; ++i) {
            n_real += slots_[i]->n_take;
        }
        // One output: add a second, and make it a guess at the token after this one (see
        // decode_slots: where the guess is right, two tokens come out of one pass, exactly).
        const bool tail = needs_tail_row(n_real, n_real, static_cast<llama_pos>(slots_[lo]->cache.size() + 1));
        decode_slots(lo, hi, tail ? lo : -1, tail ? draft_token(*slots_[lo]) : LLAMA_TOKEN_NULL);
        lo = hi + 1;
    }
    for (auto & slot : slots_) {
        if (!slot->active() || slot->generating()) {
            continue;
        }
        const size_t left = slot->params.prompt.size() - slot->n_prompt_done;
        const size_t take = invariant_chunk(left);
        slot->n_take = static_cast<int>(take);
        const bool tail = needs_tail_row(static_cast<int>(take), take == left ? 1 : 0,
                                         static_cast<llama_pos>(slot->cache.size() + take));
        decode_slots(slot->id, slot->id, tail ? slot->id : -1);
    }
}

bool Engine::needs_tail_row(int n_tokens, int n_outputs, llama_pos next) const {
    // Under batch_invariant no matrix product has one row: a call with one output (or one token) gets a
    // second output row at the next position, removed after (room permitting: a full context has none).
    return batch_invariant_ && (n_outputs == 1 || n_tokens == 1) && next < n_ctx_seq_;
}

size_t Engine::invariant_chunk(size_t left) const {
    // One micro-batch per call: the last chunk has room for its tail filler, and a chunk before it
    // has at least two tokens (n_ubatch >= 4).
    const auto cap = static_cast<size_t>(params_.n_ubatch);
    return left + 1 <= cap ? left : std::min(left - 1, cap);
}

llama_token Engine::draft_token(const Slot & slot) const {
    // Prompt lookup: the token that followed the last earlier occurrence of the final two tokens
    // (the one about to be decoded included), else of the final one, within the last 2048. Text
    // that quotes or repeats its context (code edits, extraction, lists) guesses right often.
    const auto & c = slot.cache;
    const size_t n = c.size() + 1;  // with next_token
    if (slot.next_token == LLAMA_TOKEN_NULL || c.empty() || static_cast<int>(n) + 2 >= n_ctx_seq_) {
        return LLAMA_TOKEN_NULL;
    }
    const llama_token a = c.back(), b = slot.next_token;
    const size_t stop = n > 2048 ? n - 2048 : 0;
    llama_token after_b = LLAMA_TOKEN_NULL;  // the row is paid for anyway: a weaker guess beats none
    for (size_t i = c.size() - 1; i-- > stop;) {  // c[i], c[i + 1] == a, b and c[i + 2] exists
        if (c[i + 1] == b && i + 2 < c.size()) {
            if (c[i] == a) {
                return c[i + 2];
            }
            after_b = after_b == LLAMA_TOKEN_NULL ? c[i + 2] : after_b;
        }
    }
    return after_b;
}

}  // namespace lcl
