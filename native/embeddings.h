// Embeddings: how an embedding engine is sized, and the batched, pooled computation (Engine::embed).
#pragma once

#include "engine.h"

namespace lcl {

// An embedding engine's settings: whole texts go in one micro-batch (encoders attend over the
// whole text at once), so the batch is the context unless the user set a smaller one.
EngineParams embedding_params(EngineParams params);

}  // namespace lcl
