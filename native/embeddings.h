// Embeddings: how an embedding engine is sized, and the batched, pooled computation (Engine::embed).
#pragma once

#include <string>
#include <vector>

#include "engine.h"
#include "model.h"

namespace lcl {

// An embedding engine's settings: whole texts go in one micro-batch (encoders attend over the
// whole text at once), so the batch is the context unless the user set a smaller one.
// Rank pooling (a reranker) is only for a model that declares it.
EngineParams embedding_params(const Model & model, EngineParams params);

// A query-document pair's tokens as llama-server's /rerank builds them: the model's "rerank" template
// ({query}, {document}) when it has one, else [BOS] query [EOS] [SEP] document [EOS] by the vocab's flags.
std::vector<llama_token> rerank_tokens(const Model & model, const std::string & query, const std::string & document);

// One relevance score per pair (the classifier's first output, unnormalized), many pairs per decode.
std::vector<float> rerank_scores(Engine & engine, const std::vector<std::vector<llama_token>> & pairs);

}  // namespace lcl
