#include "step_plan.h"

#include <algorithm>

namespace lcl {

namespace {

size_t cells_in_use(const std::vector<SlotView> & slots) {
    size_t used = 0;
    for (const auto & s : slots) {
        used += s.active ? std::max(s.reserved, s.cached) : s.cached;
    }
    return used;
}

// The slot that costs least: prompt tokens still to evaluate plus cached tokens thrown away (another
// conversation may come back for them). A follow-up turn lands on its own conversation's slot; an
// unrelated prompt takes an empty or least recently used one. `shared`: a prefix another slot can share.
int cheapest_idle_slot(const std::vector<SlotView> & slots, size_t prompt, size_t shared) {
    int best = -1;
    size_t best_cost = 0;
    for (int i = 0; i < static_cast<int>(slots.size()); ++i) {
        const SlotView & s = slots[i];
        if (s.active) {
            continue;
        }
        const size_t cost = (prompt - std::max(s.prefix, shared)) + (s.cached - s.prefix);
        const SlotView * b = best < 0 ? nullptr : &slots[best];
        if (b == nullptr || cost < best_cost ||
            (cost == best_cost && (s.prefix > b->prefix || (s.prefix == b->prefix && s.last_used < b->last_used)))) {
            best = i;
            best_cost = cost;
        }
    }
    return best;
}

}  // namespace

bool plan_room(std::vector<SlotView> & slots, size_t cells, int keep, int protect, size_t pool, std::vector<int> & evict) {
    size_t used = cells_in_use(slots) - (keep >= 0 && !slots[keep].active ? slots[keep].cached : 0);
    while (used + cells > pool) {
        int victim = -1;
        for (int i = 0; i < static_cast<int>(slots.size()); ++i) {
            const SlotView & s = slots[i];
            if (!s.active && i != keep && i != protect && s.cached > 0 &&
                (victim < 0 || s.last_used < slots[victim].last_used)) {
                victim = i;
            }
        }
        if (victim < 0) {
            return false;
        }
        used -= slots[victim].cached;
        slots[victim].cached = 0;
        slots[victim].prefix = 0;
        evict.push_back(victim);
    }
    return true;
}

PlacementPlan plan_placement(const std::vector<SlotView> & slots, size_t prompt, size_t reserve, bool unified,
                             size_t pool, size_t stored) {
    // In the unified pool a prefix cached in any slot can be shared (llama.cpp's seq_cp tags the same
    // cells with a second sequence: no copy, no memory): a repeated or regenerated prompt reuses it
    // without taking the slot, and the tail, of the conversation that holds it.
    PlacementPlan plan;
    int donor = -1;
    size_t donor_prefix = 0;
    for (int i = 0; unified && i < static_cast<int>(slots.size()); ++i) {
        if (slots[i].prefix > donor_prefix) {
            donor = i;
            donor_prefix = slots[i].prefix;
        }
    }
    plan.slot = cheapest_idle_slot(slots, prompt, std::max(donor_prefix, stored));
    if (plan.slot < 0) {
        return plan;
    }
    plan.prefix = slots[plan.slot].prefix;
    const bool restore = stored > std::max(plan.prefix, donor_prefix);
    bool share = !restore && donor >= 0 && donor_prefix > plan.prefix;
    if (unified) {
        std::vector<SlotView> after = slots;  // as evictions leave them
        if (share && !plan_room(after, reserve - donor_prefix, plan.slot, donor, pool, plan.evict)) {
            // No room beside the conversation that holds the prefix: where it is idle, the request takes
            // its slot (its tail gives way) rather than evicting it whole.
            share = false;
            if (!slots[donor].active) {
                plan.slot = donor;
                plan.prefix = donor_prefix;
            }
        }
        if (!share && !plan_room(after, reserve, plan.slot, -1, pool, plan.evict)) {
            plan.slot = -1;  // the running requests hold the pool: the request waits for one of them to end
            plan.prefix = 0;
            return plan;
        }
    }
    if (share) {
        plan.donor = donor;
        plan.prefix = donor_prefix;
    } else if (restore) {
        plan.restore = true;
        plan.prefix = stored;
    }
    return plan;
}

int plan_fillers(const std::vector<SlotView> & slots, BatchPlan & plan, const BatchLimits & limits) {
    if (!limits.fill_gaps || plan.lo < 0) {
        return 0;
    }
    size_t end = 0;  // the longest busy sequence after this step
    for (int i = plan.lo; i <= plan.hi; ++i) {
        if (plan.take[i] > 0) {
            end = std::max(end, slots[i].cached + static_cast<size_t>(plan.take[i]));
        }
    }
    int n_fill = 0;
    for (int i = plan.lo; i <= plan.hi; ++i) {
        const size_t held = slots[i].cached;
        const bool near = held < end || held - end < limits.filler_slack;
        plan.filler[i] = plan.take[i] == 0 && near && static_cast<int>(held) < limits.n_ctx_seq;
        n_fill += plan.filler[i] ? 1 : 0;
    }
    return n_fill;
}

BatchPlan plan_batch(const std::vector<SlotView> & slots, const BatchLimits & limits) {
    const int n = static_cast<int>(slots.size());
    BatchPlan plan;
    plan.take.assign(slots.size(), 0);
    plan.filler.assign(slots.size(), false);
    int budget = limits.n_batch;
    for (int i = 0; i < n; ++i) {
        if (slots[i].generating) {
            plan.take[i] = slots[i].n_next;
            budget -= slots[i].n_next;
        }
    }
    for (int i = 0; i < n && budget > 0; ++i) {
        if (slots[i].active && !slots[i].generating) {
            plan.take[i] = static_cast<int>(std::min(slots[i].prompt_left, static_cast<size_t>(budget)));
            budget -= plan.take[i];
        }
    }
    for (int i = 0; i < n; ++i) {
        if (plan.take[i] > 0) {
            plan.lo = plan.lo < 0 ? i : plan.lo;
            plan.hi = i;
        }
    }
    // Fillers must fit in n_batch too: prompts give way, from the last slot, down to one token.
    int over = plan_fillers(slots, plan, limits) - budget;
    for (int i = plan.hi; i >= plan.lo && i >= 0 && over > 0; --i) {
        if (slots[i].active && !slots[i].generating && plan.take[i] > 1) {
            const int cut = std::min(over, plan.take[i] - 1);
            plan.take[i] -= cut;
            over -= cut;
        }
    }
    return plan;
}

}  // namespace lcl
