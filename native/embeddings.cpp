#include "embeddings.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common.h"
#include "batch.h"
#include "logging.h"

namespace lcl {

EngineParams embedding_params(EngineParams params) {
    if (params.n_batch <= 0 || params.n_batch > params.n_ctx) {
        params.n_batch = params.n_ctx;
    }
    params.n_ubatch = params.n_batch;
    params.n_seq = 1;  // one slot: the loop never generates here; sequences are per batch (embed())
    if (params.pooling == LLAMA_POOLING_TYPE_NONE || params.pooling == LLAMA_POOLING_TYPE_RANK) {
        throw std::invalid_argument("pooling must give one vector per text (mean, cls or last), got " +
                                    std::to_string(params.pooling));
    }
    return params;
}

int Engine::embed_max_tokens() const { return std::min(params_.n_batch, n_ctx_seq_); }

int Engine::embed_max_texts() const { return static_cast<int>(llama_n_seq_max(ctx())); }

std::vector<float> Engine::embed(const std::vector<std::vector<llama_token>> & inputs, int normalize) {
    if (!params_.embeddings) {
        throw std::invalid_argument("this engine was created without embeddings=True");
    }
    const int n_vocab = model_->n_vocab();
    const size_t limit = static_cast<size_t>(embed_max_tokens());
    for (size_t i = 0; i < inputs.size(); ++i) {
        const auto & tokens = inputs[i];
        if (tokens.empty()) {
            throw std::invalid_argument("text " + std::to_string(i) + " is empty after tokenization: nothing to embed");
        }
        if (tokens.size() > limit) {
            throw std::invalid_argument("text " + std::to_string(i) + " has " + std::to_string(tokens.size()) +
                                        " tokens, more than the " + std::to_string(limit) +
                                        " one batch holds (n_ctx/n_batch)");
        }
        for (auto t : tokens) {
            if (t < 0 || t >= n_vocab) {
                throw std::invalid_argument("text " + std::to_string(i) + ": token " + std::to_string(t) +
                                            " is outside the vocabulary");
            }
        }
    }
    const int n_embd = n_embd_out();
    std::vector<float> out(inputs.size() * static_cast<size_t>(n_embd));
    run_on_thread([&] {
        llama_context * ctx = this->ctx();
        llama_memory_t mem = llama_get_memory(ctx);  // null for encoder-only models
        const int n_seq_max = embed_max_texts();
        size_t first = 0;  // index of the batch's first text
        int n_seq = 0;
        batch_.n_tokens = 0;
        auto flush = [&] {
            if (n_seq == 0) {
                return;
            }
            if (mem != nullptr) {
                llama_memory_clear(mem, true);
            }
            ErrorCapture capture;
            const int rc = llama_decode(ctx, batch_);
            if (rc != 0) {
                throw std::runtime_error("llama_decode failed while embedding (code " + std::to_string(rc) +
                                         "): " + capture.message("no details"));
            }
            for (int s = 0; s < n_seq; ++s) {
                const float * e = llama_get_embeddings_seq(ctx, s);
                if (e == nullptr) {
                    throw std::runtime_error("the model returned no pooled embedding");
                }
                common_embd_normalize(e, out.data() + (first + s) * n_embd, n_embd, normalize);
            }
            {
                std::lock_guard<std::mutex> lock(stats_mutex_);
                stats_.steps += 1;
                stats_.prompt_tokens_evaluated += batch_.n_tokens;
                stats_.max_batch = std::max<long long>(stats_.max_batch, batch_.n_tokens);
            }
            first += n_seq;
            n_seq = 0;
            batch_.n_tokens = 0;
        };
        for (const auto & tokens : inputs) {
            if (static_cast<size_t>(batch_.n_tokens) + tokens.size() > limit || n_seq == n_seq_max) {
                flush();
            }
            for (size_t i = 0; i < tokens.size(); ++i) {
                batch_add(batch_, tokens[i], static_cast<llama_pos>(i), n_seq, true);
            }
            ++n_seq;
        }
        flush();
        if (mem != nullptr) {
            llama_memory_clear(mem, true);
        }
    });
    return out;
}

}  // namespace lcl
