// Images (and audio) for multimodal models, through llama.cpp's libmtmd: a projector GGUF (mmproj)
// turns each image into embeddings that the text model reads where the image sits in the prompt.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "llama.h"

struct mtmd_context;
struct mtmd_input_chunk;

namespace lcl {

// An image is decoded only if its header says at most this many pixels (a few bytes may claim
// gigapixels); the projector scales every image down to a few hundred patches anyway.
constexpr long long kMaxImagePixels = 64LL << 20;
constexpr size_t kMaxMediaBytes = 64 << 20;

struct MediaChunk {
    size_t offset = 0;    // its first position in the prompt
    size_t n_tokens = 0;  // cells (KV entries) it fills
    size_t n_pos = 0;     // positions it takes: n_tokens, or fewer for M-RoPE images (max of its grid's sides)
    std::string id;       // sha256 of the file's bytes
    std::shared_ptr<mtmd_input_chunk> chunk;
};

// A prompt of text tokens and media. `tokens` holds a placeholder at each media position, derived from
// the media's hash and negative (never a vocabulary id), so that cached prefixes compare equal only
// where the same file is; prefix reuse also checks the ids (Engine::reusable_prefix).
struct MediaPrompt {
    std::vector<llama_token> tokens;
    std::vector<MediaChunk> media;

    const MediaChunk * starting_at(size_t pos) const;
    size_t next_start(size_t pos) const;  // the first media offset at or after pos, or tokens.size()
};

class Vision {
public:
    Vision(const std::string & mmproj_path, llama_model * model, int n_threads, bool use_gpu);
    ~Vision();
    Vision(const Vision &) = delete;
    Vision & operator=(const Vision &) = delete;

    // Splits `text` at each media marker and puts the files (image or audio bytes, in order) there.
    // Images are decoded and preprocessed here, in the caller's thread.
    std::shared_ptr<MediaPrompt> tokenize(const std::string & text, const std::vector<std::string> & files) const;
    // Encodes one chunk with the projector and decodes its embeddings into `seq` from position
    // n_past (M-RoPE: libmtmd gives each image token its time, row and column positions from there),
    // on the engine's thread. Returns an error message, or "".
    std::string eval(llama_context * ctx, const MediaChunk & media, llama_pos n_past, llama_seq_id seq, int n_batch);

    // Why a chunk cannot be decoded with these batch sizes, or "".
    std::string batch_error(const MediaChunk & media, int n_batch, int n_ubatch) const;

    const char * marker() const;
    bool supports_images() const;
    bool supports_audio() const;

private:
    mutable std::mutex mutex_;  // libmtmd's encoder is not thread-safe
    mtmd_context * ctx_ = nullptr;
};

}  // namespace lcl
