#include "prompt_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "build-info.h"
#include "logging.h"
#include "model.h"
#include "params.h"
#include "sha256.h"

#ifndef LCL_LLAMA_SOURCE_ID
#define LCL_LLAMA_SOURCE_ID "unknown"
#endif

namespace lcl {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'L', 'C', 'L', 'P', 'C', 'A', 'C', 'H'};
constexpr size_t kMaxTokens = size_t(1) << 24;  // far above any context
constexpr uint32_t kMaxMediaId = 1024;
constexpr const char * kSuffix = ".lcpc";

// -- bytes ----------------------------------------------------------------------------------------

template <class T> void put(std::string & out, T value) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));  // little-endian hosts only (as llama.cpp's own state files)
    out.append(bytes, sizeof(T));
}

// Reads from memory or from a file, never past `left`; running short is a truncated file.
class Cursor {
public:
    Cursor(const uint8_t * data, size_t size) : data_(data), left_(size) {}
    Cursor(std::ifstream & file, size_t size) : file_(&file), left_(size) {}

    void take(void * dst, size_t n) {
        if (n > left_) {
            throw BadPromptFile("truncated");
        }
        if (file_ != nullptr) {
            if (!file_->read(static_cast<char *>(dst), static_cast<std::streamsize>(n))) {
                throw BadPromptFile("truncated");
            }
        } else {
            std::memcpy(dst, data_, n);
            data_ += n;
        }
        left_ -= n;
    }
    template <class T> T get() {
        T value;
        take(&value, sizeof(T));
        return value;
    }
    size_t left() const { return left_; }
    const uint8_t * here() const { return data_; }

private:
    const uint8_t * data_ = nullptr;
    std::ifstream * file_ = nullptr;
    size_t left_;
};

struct Header {
    CacheKey key{};
    uint64_t payload = 0;
    std::array<uint8_t, 32> checksum{};
};

// The header's own fields, checked against the file's size and our key.
Header read_header(Cursor & in, size_t file_size, const CacheKey & key) {
    char magic[8];
    in.take(magic, sizeof(magic));
    if (std::memcmp(magic, kMagic, sizeof(magic)) != 0) {
        throw BadPromptFile("not a prompt cache file (bad magic)");
    }
    const auto version = in.get<uint32_t>();
    const auto header_size = in.get<uint32_t>();
    if (version != kPromptFileVersion) {
        throw BadPromptFile("format version " + std::to_string(version) + ", this build reads " +
                            std::to_string(kPromptFileVersion));
    }
    if (header_size != kPromptHeaderSize) {
        throw BadPromptFile("bad header size " + std::to_string(header_size));
    }
    Header h;
    in.take(h.key.data(), h.key.size());
    h.payload = in.get<uint64_t>();
    in.take(h.checksum.data(), h.checksum.size());
    if (h.key != key) {
        throw BadPromptFile("saved for another model, settings or llama.cpp build (key mismatch)");
    }
    if (h.payload != file_size - kPromptHeaderSize) {
        throw BadPromptFile(h.payload > file_size - kPromptHeaderSize ? "truncated" : "trailing bytes after the payload");
    }
    return h;
}

// The payload's tokens and media, each count bounded by the bytes left.
void read_sequence(Cursor & in, StoredPrompt & out) {
    const auto n = in.get<uint32_t>();
    if (n == 0 || n > kMaxTokens || size_t(n) * sizeof(llama_token) > in.left()) {
        throw BadPromptFile("bad token count " + std::to_string(n));
    }
    out.tokens.resize(n);
    in.take(out.tokens.data(), n * sizeof(llama_token));
    const auto m = in.get<uint32_t>();
    if (m > n || size_t(m) * 28 > in.left()) {  // an entry takes 28 bytes at least
        throw BadPromptFile("bad media count " + std::to_string(m));
    }
    out.media.resize(m);
    size_t end = 0;  // entries in order, apart: each media position is counted once (KvSequence::pos_at)
    for (auto & media : out.media) {
        media.offset = in.get<uint64_t>();
        media.n_tokens = in.get<uint64_t>();
        media.n_pos = in.get<uint64_t>();
        const auto id_size = in.get<uint32_t>();
        if (media.offset < end || media.n_tokens == 0 || media.offset >= n || media.n_tokens > n - media.offset ||
            media.n_pos == 0 || media.n_pos > media.n_tokens || id_size > kMaxMediaId) {
            throw BadPromptFile("bad media entry");
        }
        end = media.offset + media.n_tokens;
        media.id.resize(id_size);
        in.take(media.id.data(), id_size);
    }
}

std::string payload_head(const StoredPrompt & prompt) {
    std::string out;
    put<uint32_t>(out, static_cast<uint32_t>(prompt.tokens.size()));
    out.append(reinterpret_cast<const char *>(prompt.tokens.data()), prompt.tokens.size() * sizeof(llama_token));
    put<uint32_t>(out, static_cast<uint32_t>(prompt.media.size()));
    for (const auto & media : prompt.media) {
        put<uint64_t>(out, media.offset);
        put<uint64_t>(out, media.n_tokens);
        put<uint64_t>(out, media.n_pos);
        put<uint32_t>(out, static_cast<uint32_t>(media.id.size()));
        out += media.id;
    }
    put<uint64_t>(out, prompt.state.size());
    return out;
}

// The header and the payload up to the state: the state's bytes follow.
std::string file_head(const CacheKey & key, const StoredPrompt & prompt) {
    const std::string head = payload_head(prompt);
    Sha256 sum;
    sum.update(head).update(prompt.state.data(), prompt.state.size());
    const auto checksum = sum.digest();
    std::string out(kMagic, sizeof(kMagic));
    put<uint32_t>(out, kPromptFileVersion);
    put<uint32_t>(out, kPromptHeaderSize);
    out.append(reinterpret_cast<const char *>(key.data()), key.size());
    put<uint64_t>(out, head.size() + prompt.state.size());
    out.append(reinterpret_cast<const char *>(checksum.data()), checksum.size());
    return out + head;
}

bool ends_with(const std::string & s, const std::string & end) {
    return s.size() >= end.size() && s.compare(s.size() - end.size(), end.size(), end) == 0;
}

// -- the key --------------------------------------------------------------------------------------

void add_bytes(Sha256 & h, const std::string & name, const void * data, size_t n) {
    const uint64_t sizes[2] = {name.size(), n};
    h.update(&sizes[0], sizeof(uint64_t)).update(name).update(&sizes[1], sizeof(uint64_t)).update(data, n);
}
void add(Sha256 & h, const std::string & name, const std::string & v) { add_bytes(h, name, v.data(), v.size()); }
template <class T> void add(Sha256 & h, const std::string & name, const T & v);
template <class A, class B> void add(Sha256 & h, const std::string & name, const std::pair<A, B> & v) {
    add(h, name + ".first", v.first);
    add(h, name + ".second", v.second);
}
template <class T> void add(Sha256 & h, const std::string & name, const T & v) {
    if constexpr (std::is_arithmetic_v<T>) {
        add_bytes(h, name, &v, sizeof(v));
    } else {
        size_t i = 0;
        for (const auto & item : v) {  // a list (or map) setting: each item under its index
            add(h, name + "[" + std::to_string(i++) + "]", item);
        }
    }
}

std::string file_identity(const std::string & path);

// A setting's value; a file's (a LoRA adapter, a projector) by its identity, not its name.
template <class T> void add_setting(Sha256 & h, const std::string & name, const T & v) { add(h, name, v); }
void add_setting(Sha256 & h, const std::string & name, const std::string & v) {
    add(h, name, ends_with(name, "_path") && !v.empty() ? file_identity(v) : v);
}

// A file by what it holds: size, modification time, first and last MiB (hashing gigabytes of
// weights at every load would cost more than the cache saves).
std::string file_identity(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    struct stat st {};
    if (!f || ::stat(path.c_str(), &st) != 0) {
        return "unreadable:" + path;
    }
    Sha256 h;
    const auto size = static_cast<uint64_t>(st.st_size);
    const int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    h.update(&size, sizeof(size)).update(&mtime, sizeof(mtime));
    std::vector<char> buf(1 << 20);
    for (const uint64_t at : {uint64_t(0), size > buf.size() ? size - buf.size() : uint64_t(0)}) {
        f.seekg(static_cast<std::streamoff>(at));
        f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        h.update(buf.data(), static_cast<size_t>(f.gcount()));
        f.clear();
    }
    return h.hex();
}

bool changes_no_cell(const std::string & name) {
    static const std::set<std::string> names = {
        "n_ctx",         "n_batch",   "n_ubatch",  "n_seq",       "n_threads",   "n_threads_batch",        "prompt_lookup",
        "draft_max",     "draft_min", "draft_p_min", "draft_n_ctx", "prompt_cache_dir", "prompt_cache_max_bytes",
        "prompt_cache_min_tokens"};
    return names.count(name) > 0;
}

void warn(const std::string & text) { log_line(GGML_LOG_LEVEL_WARN, "prompt cache: " + text); }

}  // namespace

std::string write_prompt_file(const CacheKey & key, const StoredPrompt & prompt) {
    std::string out = file_head(key, prompt);
    out.append(reinterpret_cast<const char *>(prompt.state.data()), prompt.state.size());
    return out;
}

StoredPrompt read_prompt_file(const uint8_t * data, size_t size, const CacheKey & key) {
    Cursor in(data, size);
    const Header header = read_header(in, size, key);
    Sha256 sum;
    sum.update(in.here(), in.left());
    if (sum.digest() != header.checksum) {
        throw BadPromptFile("checksum mismatch (corrupted)");
    }
    StoredPrompt out;
    read_sequence(in, out);
    const auto n_state = in.get<uint64_t>();
    if (n_state == 0 || n_state != in.left()) {
        throw BadPromptFile("bad state size");
    }
    out.state.assign(in.here(), in.here() + n_state);
    return out;
}

CacheKey prompt_cache_key(const Model & model, const EngineParams & params) {
    Sha256 h;
    add(h, "format", std::to_string(kPromptFileVersion));
    add(h, "llama.cpp", std::string(llama_build_info()) + " " + LCL_LLAMA_SOURCE_ID);
    add(h, "model", file_identity(model.params().path));
    add(h, "kv_overrides", model.params().kv_overrides);
#define LCL_ADD_KEY_FIELD(type, name, value, doc) \
    if (!changes_no_cell(#name)) {                 \
        add_setting(h, #name, params.name);        \
    }
    LCL_ENGINE_PARAMS(LCL_ADD_KEY_FIELD)
#undef LCL_ADD_KEY_FIELD
    return h.digest();
}

// -- PromptCache ----------------------------------------------------------------------------------

PromptCache::PromptCache(const std::string & dir, uint64_t max_bytes, size_t min_tokens, const CacheKey & key)
    : dir_(dir), max_bytes_(max_bytes), min_tokens_(min_tokens), key_(key), prefix_(to_hex(key.data(), 8) + "-") {
    std::error_code ec;
    if (!fs::exists(dir_, ec)) {
        fs::create_directories(dir_, ec);
        if (!ec) {
            fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::replace, ec);
        }
        if (ec) {
            throw std::invalid_argument("prompt_cache_dir: cannot create " + dir_ + ": " + ec.message());
        }
    }
    struct stat st {};
    if (::stat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        throw std::invalid_argument("prompt_cache_dir is not a directory: " + dir_);
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        warn(dir_ + " is writable by other users: whoever can write there decides what this process restores "
                    "(the checksum guards against corruption, not forgery); make it writable by you only (chmod go-w)");
    }
    thread_ = std::thread([this] { run(); });
}

PromptCache::~PromptCache() {
    {
        std::lock_guard<std::mutex> lock(jobs_mutex_);
        stopping_ = true;
    }
    jobs_cv_.notify_all();
    thread_.join();
}

std::string PromptCache::name_for(const std::vector<llama_token> & tokens, const std::vector<CachedMedia> & media) const {
    StoredPrompt shape{tokens, media, {}};
    Sha256 h;
    h.update(payload_head(shape));
    return prefix_ + h.hex().substr(0, 32) + kSuffix;
}

void PromptCache::refresh_index() {
    std::set<std::string> seen;
    std::error_code ec;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.rfind(prefix_, 0) != 0 || !ends_with(name, kSuffix)) {
            continue;  // another key's file, or a file being written
        }
        seen.insert(name);
        if (index_.count(name) > 0 || bad_.count(name) > 0) {
            continue;
        }
        try {
            std::ifstream f(it->path(), std::ios::binary);
            const auto size = static_cast<size_t>(fs::file_size(it->path()));
            if (!f) {
                continue;
            }
            Cursor in(f, size);
            read_header(in, size, key_);
            StoredPrompt head;
            read_sequence(in, head);
            index_[name] = {std::move(head.tokens), std::move(head.media)};
        } catch (const BadPromptFile & e) {
            warn("ignoring " + it->path().string() + ": " + e.what());
            bad_.insert(name);
        } catch (const std::exception &) {
            // removed meanwhile (another process's eviction): not there
        }
    }
    for (auto it = index_.begin(); it != index_.end();) {
        it = seen.count(it->first) > 0 ? std::next(it) : index_.erase(it);
    }
}

PromptCache::Candidate PromptCache::find(const std::vector<llama_token> & prompt, const MediaPrompt * media, bool exact,
                                         size_t max_cells) {
    std::lock_guard<std::mutex> lock(index_mutex_);
    refresh_index();
    Candidate best;
    for (const auto & [name, entry] : index_) {
        const size_t cells = entry.tokens.size();
        const size_t n = std::min(matching_prefix(entry.tokens, entry.media, prompt, media), prompt.size() - 1);
        if (cells > max_cells || (exact && n < cells)) {
            continue;
        }
        if (n > best.usable || (n == best.usable && n > 0 && cells < best.cells)) {
            best = {name, n, cells};
        }
    }
    return best;
}

bool PromptCache::has(const std::vector<llama_token> & tokens, const std::vector<CachedMedia> & media) {
    const std::string name = name_for(tokens, media);
    std::lock_guard<std::mutex> lock(index_mutex_);
    std::error_code ec;
    return index_.count(name) > 0 || fs::exists(fs::path(dir_) / name, ec);
}

std::shared_future<std::shared_ptr<StoredPrompt>> PromptCache::load(const Candidate & candidate) {
    auto promise = std::make_shared<std::promise<std::shared_ptr<StoredPrompt>>>();
    std::shared_future<std::shared_ptr<StoredPrompt>> future = promise->get_future().share();
    post([this, promise, name = candidate.name] { promise->set_value(read(name)); });
    return future;
}

std::shared_ptr<StoredPrompt> PromptCache::read(const std::string & name) {
    const fs::path path = fs::path(dir_) / name;
    try {
        std::error_code ec;
        const auto size = static_cast<size_t>(fs::file_size(path, ec));
        if (ec) {
            return nullptr;  // evicted meanwhile
        }
        if (size > max_bytes_) {
            throw BadPromptFile("larger than prompt_cache_max_bytes");
        }
        std::vector<uint8_t> bytes(size);
        std::ifstream f(path, std::ios::binary);
        if (!f.read(reinterpret_cast<char *>(bytes.data()), static_cast<std::streamsize>(size))) {
            throw BadPromptFile("truncated");
        }
        auto out = std::make_shared<StoredPrompt>(read_prompt_file(bytes.data(), size, key_));
        fs::last_write_time(path, fs::file_time_type::clock::now(), ec);  // recently used: evicted last
        return out;
    } catch (const BadPromptFile & e) {
        warn("ignoring " + path.string() + ": " + e.what());
        std::lock_guard<std::mutex> lock(index_mutex_);
        bad_.insert(name);
        index_.erase(name);
        return nullptr;
    }
}

void PromptCache::save(StoredPrompt prompt) {
    auto shared = std::make_shared<StoredPrompt>(std::move(prompt));
    post([this, shared] {
        write(*shared);
        evict_least_recent();
    });
}

void PromptCache::write(const StoredPrompt & prompt) {
    static std::atomic<unsigned> counter{0};
    const std::string name = name_for(prompt.tokens, prompt.media);
    const fs::path path = fs::path(dir_) / name;
    std::error_code ec;
    const std::string head = file_head(key_, prompt);
    if (fs::exists(path, ec) || head.size() + prompt.state.size() > max_bytes_) {
        return;
    }
    // Written whole under a temporary name, then renamed: a reader sees the whole file or none.
    const fs::path tmp = fs::path(dir_) / ("." + name + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    bool ok = fd >= 0;
    for (const auto & [data, n] : {std::pair<const void *, size_t>{head.data(), head.size()},
                                   std::pair<const void *, size_t>{prompt.state.data(), prompt.state.size()}}) {
        for (size_t done = 0; ok && done < n;) {
            const ssize_t w = ::write(fd, static_cast<const char *>(data) + done, n - done);
            ok = w > 0;
            done += ok ? static_cast<size_t>(w) : 0;
        }
    }
    ok = fd >= 0 && ::close(fd) == 0 && ok;
    if (ok) {
        fs::rename(tmp, path, ec);
        ok = !ec;
    }
    if (!ok) {
        fs::remove(tmp, ec);
        warn("could not write " + path.string());
        return;
    }
    std::lock_guard<std::mutex> lock(index_mutex_);
    index_[name] = {prompt.tokens, prompt.media};
}

void PromptCache::evict_least_recent() {
    struct File {
        fs::path path;
        uint64_t size;
        fs::file_time_type used;
    };
    std::vector<File> files;
    uint64_t total = 0;
    std::error_code ec;
    const auto now = fs::file_time_type::clock::now();
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        std::error_code e1, e2;
        const auto used = fs::last_write_time(it->path(), e1);
        const auto size = fs::file_size(it->path(), e2);
        if (e1 || e2) {
            continue;
        }
        if (name[0] == '.' && name.find(".tmp-") != std::string::npos && now - used > std::chrono::hours(1)) {
            fs::remove(it->path(), e1);  // left by a process that died while writing
        } else if (ends_with(name, kSuffix)) {
            files.push_back({it->path(), size, used});
            total += size;
        }
    }
    std::sort(files.begin(), files.end(), [](const File & a, const File & b) { return a.used < b.used; });
    for (const auto & f : files) {
        if (total <= max_bytes_) {
            break;
        }
        fs::remove(f.path, ec);
        total -= f.size;
    }
}

void PromptCache::post(std::function<void()> job) {
    {
        std::lock_guard<std::mutex> lock(jobs_mutex_);
        jobs_.push_back(std::move(job));
    }
    jobs_cv_.notify_all();
}

void PromptCache::run() {
    std::unique_lock<std::mutex> lock(jobs_mutex_);
    for (;;) {
        jobs_cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) {
            return;  // stopping, and every save is written
        }
        auto job = std::move(jobs_.front());
        jobs_.pop_front();
        busy_ = true;
        lock.unlock();
        try {
            job();
        } catch (const std::exception & e) {
            warn(std::string("disk error: ") + e.what());
        }
        lock.lock();
        busy_ = false;
        jobs_cv_.notify_all();
    }
}

void PromptCache::flush() {
    std::unique_lock<std::mutex> lock(jobs_mutex_);
    jobs_cv_.wait(lock, [&] { return jobs_.empty() && !busy_; });
}

}  // namespace lcl
