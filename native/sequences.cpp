// The low-level sequence API: evaluate tokens into an idle slot and read its logits, edit its KV cells.
// Each call runs on the engine thread (run_on_thread), between steps.
#include "engine.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "batch.h"
#include "logging.h"
#include "slot.h"

namespace lcl {

std::vector<std::vector<llama_token>> Engine::cached_prompts() {
    std::vector<std::vector<llama_token>> out;
    run_on_thread([&] {
        for (const auto & slot : slots_) {
            out.push_back(slot->kv.tokens());
        }
    });
    return out;
}

void Engine::clear_cache() {
    run_on_thread([&] {
        for (auto & slot : slots_) {
            if (!slot->active()) {
                slot->kv.evict();
            }
        }
    });
}

namespace {
void check_slot_index(int slot, size_t n) {
    if (slot < 0 || static_cast<size_t>(slot) >= n) {
        throw std::out_of_range("slot " + std::to_string(slot) + " does not exist (the engine has " + std::to_string(n) +
                                " slots)");
    }
}
}  // namespace

std::vector<std::vector<float>> Engine::evaluate(int slot_id, const std::vector<llama_token> & tokens, bool all_logits) {
    if (params_.embeddings) {
        throw std::invalid_argument("this engine computes embeddings (embeddings=True); it has no logits to evaluate");
    }
    check_slot_index(slot_id, slots_.size());
    const int n_vocab = model_->n_vocab();
    for (auto t : tokens) {
        if (t < 0 || t >= n_vocab) {
            throw std::invalid_argument("token " + std::to_string(t) + " is outside the vocabulary");
        }
    }
    std::vector<std::vector<float>> out;
    run_on_thread([&] {
        Slot & slot = *slots_[slot_id];
        if (slot.active()) {
            throw std::runtime_error("slot " + std::to_string(slot_id) + " is busy with a request");
        }
        if (static_cast<int>(slot.kv.size() + tokens.size()) > n_ctx_seq_) {
            throw std::invalid_argument("evaluating " + std::to_string(tokens.size()) + " more tokens would exceed n_ctx (" +
                                        std::to_string(n_ctx_seq_) + ")");
        }
        if (unified_ && !make_room(slot.kv.size() + tokens.size(), slot)) {
            throw std::runtime_error("the KV pool is held by running requests: evaluate when they are done");
        }
        size_t done = 0;
        while (done < tokens.size()) {
            batch_.n_tokens = 0;
            const size_t left = tokens.size() - done;
            const size_t end = done + (batch_invariant_ ? invariant_chunk(left) : std::min(left, static_cast<size_t>(params_.n_batch)));
            int n_outputs = 0;
            for (size_t i = done; i < end; ++i) {
                const bool output = all_logits || i + 1 == tokens.size();
                batch_add(batch_, tokens[i], slot.kv.next_pos() + static_cast<llama_pos>(i - done), slot.id, output);
                n_outputs += output;
            }
            const auto next = slot.kv.next_pos() + static_cast<llama_pos>(end - done);
            const bool tail = needs_tail_row(batch_.n_tokens, n_outputs, slot.kv.size() + (end - done));
            if (tail) {
                batch_add(batch_, 0, next, slot.id, true);
            }
            ErrorCapture capture;
            const int rc = llama_decode(ctx(), batch_);
            if (tail) {
                batch_.n_tokens--;
            }
            slot.kv.append(tokens.data() + done, tokens.data() + (rc == 0 ? end : done));
            slot.kv.drop_uncommitted();  // the tail row, or what a failed decode left
            if (rc != 0) {
                throw std::runtime_error("llama_decode failed (code " + std::to_string(rc) + "): " + capture.message("no details"));
            }
            for (int i = 0; i < batch_.n_tokens; ++i) {
                if (batch_.logits[i]) {
                    const float * row = llama_get_logits_ith(ctx(), i);
                    out.emplace_back(row, row + n_vocab);
                }
            }
            done = end;
        }
        slot.last_used = ++uses_;
    });
    return out;
}

void Engine::kv_remove(int slot_id, int p0, int p1) {
    check_slot_index(slot_id, slots_.size());
    run_on_thread([&] {
        Slot & slot = *slots_[slot_id];
        if (slot.active()) {
            throw std::runtime_error("slot " + std::to_string(slot_id) + " is busy with a request");
        }
        const int size = static_cast<int>(slot.kv.size());
        const int from = std::clamp(p0, 0, size);
        const int to = p1 < 0 ? size : std::clamp(p1, from, size);
        slot.kv.erase(static_cast<size_t>(from), static_cast<size_t>(to));
    });
}

void Engine::kv_copy(int src, int dst) {
    check_slot_index(src, slots_.size());
    check_slot_index(dst, slots_.size());
    if (src == dst) {
        return;
    }
    run_on_thread([&] {
        if (slots_[src]->active() || slots_[dst]->active()) {
            throw std::runtime_error("both slots must be idle to copy");
        }
        slots_[dst]->kv.share(slots_[src]->kv, slots_[src]->kv.size());
    });
}

std::vector<llama_token> Engine::slot_tokens(int slot_id) {
    check_slot_index(slot_id, slots_.size());
    std::vector<llama_token> out;
    run_on_thread([&] { out = slots_[slot_id]->kv.tokens(); });
    return out;
}

}  // namespace lcl
