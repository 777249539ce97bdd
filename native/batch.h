// Small helpers every decoding unit shares: filling a llama_batch, and the clock.
#pragma once

#include <chrono>

#include "llama.h"

namespace lcl {

inline void batch_add(llama_batch & batch, llama_token token, llama_pos pos, llama_seq_id seq, bool output) {
    const int i = batch.n_tokens++;
    batch.token[i] = token;
    batch.pos[i] = pos;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = seq;
    batch.logits[i] = output ? 1 : 0;
}

inline double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace lcl
