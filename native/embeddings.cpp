#include "embeddings.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common.h"
#include "batch.h"
#include "logging.h"

namespace lcl {

namespace {

// The pooling a model's GGUF declares ("" where it declares none).
std::string declared_pooling(const Model & model) {
    return model.meta(model.meta("general.architecture") + ".pooling_type");
}

}  // namespace

EngineParams embedding_params(const Model & model, EngineParams params) {
    if (params.n_batch <= 0 || params.n_batch > params.n_ctx) {
        params.n_batch = params.n_ctx;
    }
    params.n_ubatch = params.n_batch;
    params.n_seq = 1;  // one slot: the loop never generates here; sequences are per batch (embed())
    if (params.pooling == LLAMA_POOLING_TYPE_NONE) {
        throw std::invalid_argument("pooling must give one vector per text (mean, cls or last), got " +
                                    std::to_string(params.pooling));
    }
    // Rank pooling on a model without a classifier head would give its first hidden unit as a "score":
    // only a model that declares rank pooling (as llama.cpp's converter writes rerankers) is one.
    if (params.pooling == LLAMA_POOLING_TYPE_RANK &&
        declared_pooling(model) != std::to_string(LLAMA_POOLING_TYPE_RANK)) {
        const std::string declared = declared_pooling(model);
        throw std::invalid_argument(
            "not a reranking model: " + model.params().path + " declares " +
            (declared.empty() ? std::string("no pooling") : "pooling " + declared) +
            " in its GGUF, a reranker (cross-encoder such as bge-reranker) declares rank pooling (4) and has a "
            "classifier head");
    }
    return params;
}

int Engine::n_embd_out() const {
    // A reranker's pooled output is its classifier's: n_cls_out scores (the first is the relevance).
    return params_.pooling == LLAMA_POOLING_TYPE_RANK ? static_cast<int>(llama_model_n_cls_out(model_->get()))
                                                      : llama_model_n_embd_out(model_->get());
}

std::vector<llama_token> rerank_tokens(const Model & model, const std::string & query, const std::string & document) {
    const std::string tmpl = model.chat_template("rerank");
    if (!tmpl.empty()) {
        std::string prompt = tmpl;
        string_replace_all(prompt, "{query}", query);
        string_replace_all(prompt, "{document}", document);
        return model.tokenize(prompt, false, true);
    }
    // As llama-server's format_prompt_rerank: [BOS] query [EOS] [SEP] document [EOS], each by the vocab's
    // flags (BERT vocabularies: [CLS] query [SEP] document), with SEP standing in for a missing EOS.
    const llama_vocab * vocab = model.vocab();
    llama_token eos = llama_vocab_eos(vocab);
    if (eos == LLAMA_TOKEN_NULL) {
        eos = llama_vocab_sep(vocab);
    }
    std::vector<llama_token> out;
    if (llama_vocab_get_add_bos(vocab)) {
        out.push_back(llama_vocab_bos(vocab));
    }
    const auto q = model.tokenize(query, false, false);
    out.insert(out.end(), q.begin(), q.end());
    if (llama_vocab_get_add_eos(vocab)) {
        out.push_back(eos);
    }
    if (llama_vocab_get_add_sep(vocab)) {
        out.push_back(llama_vocab_sep(vocab));
    }
    const auto d = model.tokenize(document, false, false);
    out.insert(out.end(), d.begin(), d.end());
    if (llama_vocab_get_add_eos(vocab)) {
        out.push_back(eos);
    }
    return out;
}

std::vector<float> rerank_scores(Engine & engine, const std::vector<std::vector<llama_token>> & pairs) {
    if (engine.params().pooling != LLAMA_POOLING_TYPE_RANK) {
        throw std::invalid_argument("this engine does not rerank: it was created without rank pooling");
    }
    const size_t n_out = static_cast<size_t>(engine.n_embd_out());
    if (n_out == 0) {
        throw std::invalid_argument("the model's classifier has no outputs (n_cls_out = 0)");
    }
    const std::vector<float> all = engine.embed(pairs, -1);  // -1: the raw classifier output
    std::vector<float> scores(pairs.size());
    for (size_t i = 0; i < pairs.size(); ++i) {
        scores[i] = all[i * n_out];
    }
    return scores;
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
