#include "kv_sequence.h"

#include <algorithm>
#include <stdexcept>

namespace lcl {

namespace {

size_t common_prefix(const std::vector<llama_token> & a, const std::vector<llama_token> & b) {
    const size_t n = std::min(a.size(), b.size());
    size_t i = 0;
    while (i < n && a[i] == b[i]) {
        ++i;
    }
    return i;
}

}  // namespace

size_t matching_prefix(const std::vector<llama_token> & tokens, const std::vector<CachedMedia> & held,
                       const std::vector<llama_token> & prompt, const MediaPrompt * media) {
    size_t n = common_prefix(tokens, prompt);
    for (size_t i = 0; i < n; ++i) {
        if (tokens[i] >= 0) {
            continue;
        }
        const MediaChunk * wanted = media ? media->starting_at(i) : nullptr;
        const auto cached = std::find_if(held.begin(), held.end(), [&](const CachedMedia & m) { return m.offset == i; });
        if (wanted == nullptr || cached == held.end() || cached->id != wanted->id ||
            cached->n_tokens != wanted->n_tokens || cached->n_pos != wanted->n_pos || i + wanted->n_tokens > n) {
            return i;
        }
        i += wanted->n_tokens - 1;
    }
    return n;
}

llama_pos KvSequence::pos_at(size_t i) const {
    auto pos = static_cast<llama_pos>(i);
    for (const auto & m : media_) {
        if (m.offset >= i) {
            continue;
        }
        if (i < m.offset + m.n_tokens) {
            return pos - static_cast<llama_pos>(i - m.offset);  // inside: the media's first position
        }
        pos -= static_cast<llama_pos>(m.n_tokens - m.n_pos);
    }
    return pos;
}

size_t KvSequence::whole_media_start(size_t n) const {
    for (const auto & m : media_) {
        if (m.offset < n && n < m.offset + m.n_tokens) {
            return m.offset;
        }
    }
    return n;
}

size_t KvSequence::reusable_prefix(const std::vector<llama_token> & prompt, const MediaPrompt * media, int n_swa) const {
    size_t n = matching_prefix(tokens_, media_, prompt, media);
    if (n >= prompt.size()) {
        n = prompt.size() - 1;
    }
    if (n > 0 && n_swa > 0) {
        // A sliding-window cache drops positions that fell out of every window. The token after
        // the prefix attends to the n_swa positions before it: they must all still be there.
        const llama_pos pos_min = llama_memory_seq_pos_min(memory(), id_);
        if (pos_min > std::max(0, pos_at(n) - n_swa)) {
            n = 0;
        }
    }
    return n;
}

void KvSequence::append_media(const MediaChunk & chunk, const std::vector<llama_token> & prompt) {
    const auto begin = prompt.begin() + static_cast<long>(chunk.offset);
    tokens_.insert(tokens_.end(), begin, begin + static_cast<long>(chunk.n_tokens));
    media_.push_back({chunk.offset, chunk.n_tokens, chunk.n_pos, chunk.id});
}

size_t KvSequence::truncate(size_t n) {
    n = whole_media_start(std::min(n, tokens_.size()));  // a media chunk's cells go whole or not at all
    if (n == 0 || !llama_memory_seq_rm(memory(), id_, pos_at(n), -1)) {
        llama_memory_seq_rm(memory(), id_, -1, -1);  // all, or a memory that cannot cut a sequence: start over
        n = 0;
    }
    tokens_.resize(n);
    forget_media_after(n);
    return n;
}

void KvSequence::share(const KvSequence & donor, size_t n) {
    n = donor.whole_media_start(std::min(n, donor.size()));
    llama_memory_seq_rm(memory(), id_, -1, -1);
    llama_memory_seq_cp(memory(), donor.id_, id_, 0, donor.pos_at(n));
    tokens_.assign(donor.tokens_.begin(), donor.tokens_.begin() + static_cast<long>(n));
    media_ = donor.media_;
    forget_media_after(n);
}

void KvSequence::drop_uncommitted() { llama_memory_seq_rm(memory(), id_, next_pos(), -1); }

void KvSequence::erase(size_t from, size_t to) {
    to = std::min(to, tokens_.size());
    if (from >= to) {
        return;
    }
    const bool moves_later = to < tokens_.size();
    for (const auto & m : media_) {
        if (m.n_pos != m.n_tokens && m.offset + m.n_tokens > from && (moves_later || m.offset < from)) {
            throw std::invalid_argument("cells " + std::to_string(m.offset) + " to " + std::to_string(m.offset + m.n_tokens) +
                                        " hold an image with M-RoPE positions, which cannot be cut or moved: remove "
                                        "from its first cell or before it to the end");
        }
    }
    const llama_pos p0 = pos_at(from);
    const llama_pos p1 = pos_at(to);
    if (!llama_memory_seq_rm(memory(), id_, p0, p1)) {
        throw std::runtime_error("this model's memory cannot remove a part of a sequence");
    }
    if (moves_later) {
        // Later tokens move down so that positions stay contiguous.
        llama_memory_seq_add(memory(), id_, p1, -1, p0 - p1);
    }
    tokens_.erase(tokens_.begin() + static_cast<long>(from), tokens_.begin() + static_cast<long>(to));
    // Media from `from` on are forgotten: their placeholders no longer count as a cached prefix.
    forget_media_after(from);
}

std::vector<uint8_t> KvSequence::save_state() const {
    std::vector<uint8_t> state(llama_state_seq_get_size(ctx_, id_));
    state.resize(llama_state_seq_get_data(ctx_, state.data(), state.size(), id_));
    return state;
}

bool KvSequence::restore(const std::vector<uint8_t> & state, const std::vector<llama_token> & tokens,
                         const std::vector<CachedMedia> & media) {
    evict();
    const bool read = llama_state_seq_set_data(ctx_, state.data(), state.size(), id_) == state.size();
    tokens_ = tokens;
    media_ = media;
    // The cells must end where the tokens and media say (a sliding window keeps only the last of them).
    if (!read || llama_memory_seq_pos_max(memory(), id_) + 1 != next_pos()) {
        llama_memory_seq_rm(memory(), id_, -1, -1);
        tokens_.clear();
        media_.clear();
        return false;
    }
    return true;
}

void KvSequence::forget_media_after(size_t end) {
    media_.erase(std::remove_if(media_.begin(), media_.end(), [&](const CachedMedia & m) { return m.offset + m.n_tokens > end; }),
                 media_.end());
}

}  // namespace lcl
