// One sequence of a context's KV cache and what its cells hold. It is the only code that edits the
// target context's memory (llama_memory_seq_*): like llama-server's server_tokens, the tokens and the
// media are kept with the cells behind private members, so that the three cannot drift apart. Every
// edit of the cells updates the tokens in the same call.
//
// Positions are the cell index except after an M-RoPE image (Qwen2-VL and kin): its nx*ny cells all sit
// at one position in llama.cpp's cell bookkeeping (libmtmd gives each its time, row and column in the
// batch), and the text after it continues max(nx, ny) positions on. pos_at() maps a cell index to its
// position from the media held; every edit cuts at whole media. Saving and restoring a sequence
// (llama_state_seq_*) is here too: the state goes with the tokens and media it holds (prompt_cache.h).
#pragma once

#include <string>
#include <vector>

#include "llama.h"
#include "media.h"

namespace lcl {

struct CachedMedia {
    size_t offset = 0;
    size_t n_tokens = 0;
    size_t n_pos = 0;  // positions it takes (MediaChunk::n_pos): n_tokens but for M-RoPE images
    std::string id;
};

// How many leading tokens of `prompt` (with `media`) equal `tokens` (with `held`): a media position
// counts only as a whole chunk of the same file. The prompt cache on disk compares by it too.
size_t matching_prefix(const std::vector<llama_token> & tokens, const std::vector<CachedMedia> & held,
                       const std::vector<llama_token> & prompt, const MediaPrompt * media);

class KvSequence {
public:
    KvSequence(llama_context * ctx, llama_seq_id id) : ctx_(ctx), id_(id) {}

    llama_seq_id id() const { return id_; }
    size_t size() const { return tokens_.size(); }  // cells held
    bool empty() const { return tokens_.empty(); }
    llama_pos next_pos() const { return pos_at(tokens_.size()); }  // where the next token goes
    // The position of cell i (i <= size()): a cell of an M-RoPE image gives the image's first position.
    llama_pos pos_at(size_t i) const;
    const std::vector<llama_token> & tokens() const { return tokens_; }
    bool holds_media() const { return !media_.empty(); }
    const std::vector<CachedMedia> & media() const { return media_; }

    // How many leading tokens of `prompt` are cached here: a media position counts only as a whole
    // chunk cached from the same file. At most prompt.size() - 1 (the last token is evaluated again for
    // its logits); 0 where a sliding window of `n_swa` positions has dropped cells the prefix needs.
    size_t reusable_prefix(const std::vector<llama_token> & prompt, const MediaPrompt * media, int n_swa) const;

    // A decode wrote these cells at next_pos() on: they join the sequence.
    void append(llama_token token) { tokens_.push_back(token); }
    void append(const llama_token * begin, const llama_token * end) { tokens_.insert(tokens_.end(), begin, end); }
    void append_media(const MediaChunk & chunk, const std::vector<llama_token> & prompt);

    // Keeps the first n cells; a memory that cannot cut a sequence drops it whole. Returns the cells kept.
    size_t truncate(size_t n);
    void evict() { truncate(0); }
    // This sequence becomes the donor's first n cells (seq_cp tags the same cells: no copy, no memory).
    void share(const KvSequence & donor, size_t n);
    // Drops the cells decoded past the tokens held: fillers, refused drafts, a media chunk that failed.
    void drop_uncommitted();
    // Removes the cells [from, to) and moves the later ones down; throws where the memory cannot, or
    // where it would cut or move an M-RoPE image (its cells' positions cannot be shifted as text's).
    void erase(size_t from, size_t to);

    // llama.cpp's state of these cells (llama_state_seq_get_data): what the prompt cache saves.
    std::vector<uint8_t> save_state() const;
    // Replaces the cells with a saved state of exactly `tokens`' cells; false (and empty) where llama.cpp
    // refuses it (no room, another layout) or it holds other positions than the tokens say.
    bool restore(const std::vector<uint8_t> & state, const std::vector<llama_token> & tokens,
                 const std::vector<CachedMedia> & media);

private:
    llama_memory_t memory() const { return llama_get_memory(ctx_); }
    void forget_media_after(size_t end);
    size_t whole_media_start(size_t n) const;  // n, or the start of the media chunk n falls inside

    llama_context * ctx_;
    llama_seq_id id_;
    std::vector<llama_token> tokens_;  // whose KV is in the cells, in position order
    std::vector<CachedMedia> media_;   // media in it (their positions hold placeholders), by offset
};

}  // namespace lcl
