// The prompt cache on disk: a finished request's KV sequence (llama_state_seq_get_data) saved in a file,
// restored by a later request, in this process or another, whose prompt starts with the same tokens.
//
// A file is untrusted input: llama.cpp's reader asserts on malformed state. Ours has a header in front
// (magic, version, the engine's key, the payload's length and sha256), and nothing of it reaches
// llama.cpp before the whole file is checked (read_prompt_file). The checksum guards against
// corruption, not forgery: the directory must be writable by its owner only (warned otherwise).
//
// Files:  <key:16 hex>-<tokens' hash:32 hex>.lcpc, written whole to a temporary name and renamed (several
// processes may share the directory); the least recently used go first past max_bytes.
//   header (88 bytes, little-endian): "LCLPCACH" | u32 version | u32 header size | key[32] | u64 payload
//   size | sha256(payload)[32]
//   payload: u32 n | i32 tokens[n] | u32 m | m x (u64 offset, u64 n_tokens, u64 n_pos, u32 id size,
//   id) | u64 state size | state (llama_state_seq_get_data of the sequence that held the tokens)
//
// The engine thread asks find() (an index of the files in memory, kept up to date by listing the
// directory: no file read beyond its tokens); reading, checking and writing run on this cache's own
// thread, so that a step never waits on the disk.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kv_sequence.h"

namespace lcl {

class Model;
struct EngineParams;
struct MediaPrompt;

using CacheKey = std::array<uint8_t, 32>;

constexpr uint32_t kPromptFileVersion = 2;  // 2: each media entry has its positions (M-RoPE)
constexpr size_t kPromptHeaderSize = 88;

// A sequence as saved: its tokens, its media and llama.cpp's state of its cells.
struct StoredPrompt {
    std::vector<llama_token> tokens;
    std::vector<CachedMedia> media;
    std::vector<uint8_t> state;
};

// Why a file was not used ("truncated", "checksum mismatch", ...).
class BadPromptFile : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The file's bytes for `prompt` under `key`.
std::string write_prompt_file(const CacheKey & key, const StoredPrompt & prompt);
// Checks a whole file (header, key, length, checksum, then the payload's own bounds) and returns what it
// holds; throws BadPromptFile saying what is wrong. Nothing is trusted before the checksum matched.
StoredPrompt read_prompt_file(const uint8_t * data, size_t size, const CacheKey & key);

// What the engine's KV cache depends on: the model file (its size, time and first and last MiB), the
// settings that change what a cell holds (every EngineParams field but a few that do not: threads,
// batch sizes, slots, speculation, this cache's own), LoRA and projector files, and llama.cpp's build.
CacheKey prompt_cache_key(const Model & model, const EngineParams & params);

class PromptCache {
public:
    // Creates `dir` (mode 0700) if missing; throws std::invalid_argument where it cannot be used.
    // Warns where others may write to it.
    PromptCache(const std::string & dir, uint64_t max_bytes, size_t min_tokens, const CacheKey & key);
    ~PromptCache();  // waits for the files being written
    PromptCache(const PromptCache &) = delete;
    PromptCache & operator=(const PromptCache &) = delete;

    size_t min_tokens() const { return min_tokens_; }

    struct Candidate {
        std::string name;
        size_t usable = 0;  // leading prompt tokens it holds
        size_t cells = 0;   // cells its state fills when restored (before trimming)
    };
    // The saved sequence that holds the longest prefix of the prompt, whose state fits in `max_cells`;
    // `exact`: only sequences that are a prefix whole (a sliding-window or recurrent memory cannot be
    // trimmed back). usable == 0: none.
    Candidate find(const std::vector<llama_token> & prompt, const MediaPrompt * media, bool exact, size_t max_cells);
    // Reads and checks a candidate's file on the cache's thread; null (with a warning) where it is bad.
    std::shared_future<std::shared_ptr<StoredPrompt>> load(const Candidate & candidate);
    // Whether a sequence with exactly these tokens is saved already.
    bool has(const std::vector<llama_token> & tokens, const std::vector<CachedMedia> & media);
    // Writes on the cache's thread, then drops the least recently used files past max_bytes.
    void save(StoredPrompt prompt);
    // Returns once every save queued so far is written.
    void flush();

private:
    struct Indexed {
        std::vector<llama_token> tokens;
        std::vector<CachedMedia> media;
    };
    std::string name_for(const std::vector<llama_token> & tokens, const std::vector<CachedMedia> & media) const;
    void refresh_index();  // under index_mutex_
    void post(std::function<void()> job);
    void run();
    void write(const StoredPrompt & prompt);
    void evict_least_recent();
    std::shared_ptr<StoredPrompt> read(const std::string & name);

    std::string dir_;
    uint64_t max_bytes_;
    size_t min_tokens_;
    CacheKey key_;
    std::string prefix_;  // of this key's file names

    std::mutex index_mutex_;
    std::map<std::string, Indexed> index_;  // this key's files by name
    std::set<std::string> bad_;             // files already warned about

    std::mutex jobs_mutex_;
    std::condition_variable jobs_cv_;
    std::deque<std::function<void()>> jobs_;
    bool busy_ = false, stopping_ = false;
    std::thread thread_;
};

}  // namespace lcl
