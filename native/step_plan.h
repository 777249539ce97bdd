// The scheduler's decisions as pure functions of what it sees (no model, no context, no locks): where a
// request goes and what the unified pool gives up for it, and which rows a step's batch holds. The
// engine (scheduler.cpp) builds the views, asks, and carries the plan out; tests call these with
// made-up slots (bound privately as _native._plan_placement and _native._plan_batch).
//
// The pool's room here is an estimate: llama.cpp may still refuse cells (sliding windows,
// fragmentation), and the engine recovers from a refused decode (Engine::fail_decode).
#pragma once

#include <cstddef>
#include <vector>

namespace lcl {

// What the planner sees of one slot.
struct SlotView {
    bool active = false;      // serving a request
    bool generating = false;  // past its prompt
    size_t cached = 0;        // cells its sequence holds
    size_t reserved = 0;      // unified pool: cells its request may come to hold
    long long last_used = 0;  // idle slots: the least recently used gives way first
    size_t prefix = 0;        // placing a request: its prompt's leading tokens cached here and reusable
    int n_next = 0;           // a step: rows of its next token and draft (generating slots)
    size_t prompt_left = 0;   // a step: prompt tokens before its next media chunk or the end
};

struct PlacementPlan {
    int slot = -1;           // -1: the request waits (no idle slot, or the running requests hold the pool)
    size_t prefix = 0;       // cached tokens it keeps
    int donor = -1;          // >= 0: the slot whose first `prefix` cells are shared into `slot` (seq_cp)
    std::vector<int> evict;  // idle slots whose caches give way, in order (also where the request then waits)
    bool restore = false;    // `slot` takes the prompt cache's saved state of the first `prefix` tokens (from disk)
};

// `prompt`: the request's tokens; `reserve`: the cells it may come to hold; `pool`: the unified pool's
// cells (unused where the slots have a cache each); `stored`: a prefix read from the prompt cache on
// disk, restored into the slot where no slot holds as much (its cells are the request's own: in `reserve`).
PlacementPlan plan_placement(const std::vector<SlotView> & slots, size_t prompt, size_t reserve, bool unified,
                             size_t pool, size_t stored = 0);

// Evicts idle slots, least recently used first, until `cells` more fit in the pool; `keep`'s cache gives
// way to the request that takes it (not counted), `protect`'s is needed (-1: none). Victims get cached = 0
// and are appended to `evict`. Returns whether the cells fit.
bool plan_room(std::vector<SlotView> & slots, size_t cells, int keep, int protect, size_t pool, std::vector<int> & evict);

// Cells: a filler is not worth it where its sequence is this much longer than the step's longest (see Engine::step).
constexpr size_t kFillerSlack = 512;

struct BatchLimits {
    int n_batch = 0;
    int n_ctx_seq = 0;
    bool fill_gaps = true;      // slots have a KV stream each: keep the batch's sequence ids contiguous
    size_t filler_slack = kFillerSlack;
};

struct BatchPlan {
    std::vector<int> take;     // per slot: tokens it puts in the batch
    std::vector<bool> filler;  // per slot: an idle slot's filler token, removed after the step
    int lo = -1, hi = -1;      // the slots the batch spans; lo < 0: nothing to decode
};

// Generating slots put their n_next rows in; prompts share what is left of n_batch in slot order (so
// running streams keep flowing); fillers bridge idle slots between busy ones and must fit too.
BatchPlan plan_batch(const std::vector<SlotView> & slots, const BatchLimits & limits);
// Flags the slots in [plan.lo, plan.hi] with nothing to take that get a filler; returns how many.
int plan_fillers(const std::vector<SlotView> & slots, BatchPlan & plan, const BatchLimits & limits);

}  // namespace lcl
