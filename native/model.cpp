#include "model.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "backends.h"
#include "common.h"
#include "rpc.h"
#include "gguf.h"
#include "logging.h"
#include "placement.h"

namespace lcl {
namespace {

std::once_flag g_backend_once;

void init_backend() {
    std::call_once(g_backend_once, [] {
        install_log_callback();
        llama_backend_init();
    });
}

// The integer value of key i, of whichever width; false where it is not an integer.
bool gguf_integer(const gguf_context * g, int64_t i, int64_t & out) {
    switch (gguf_get_kv_type(g, i)) {
        case GGUF_TYPE_UINT8: out = gguf_get_val_u8(g, i); return true;
        case GGUF_TYPE_INT8: out = gguf_get_val_i8(g, i); return true;
        case GGUF_TYPE_UINT16: out = gguf_get_val_u16(g, i); return true;
        case GGUF_TYPE_INT16: out = gguf_get_val_i16(g, i); return true;
        case GGUF_TYPE_UINT32: out = gguf_get_val_u32(g, i); return true;
        case GGUF_TYPE_INT32: out = gguf_get_val_i32(g, i); return true;
        case GGUF_TYPE_UINT64: out = static_cast<int64_t>(std::min<uint64_t>(gguf_get_val_u64(g, i), INT64_MAX)); return true;
        case GGUF_TYPE_INT64: out = gguf_get_val_i64(g, i); return true;
        default: return false;
    }
}

// Metadata values that llama.cpp trusts and then asserts on (GGML_ASSERT aborts the process) or
// divides by, found by the fuzz suite: refuse them with the key's name before llama.cpp reads them.
void check_metadata(const std::string & path) {
    gguf_init_params gp{/*no_alloc=*/true, /*ctx=*/nullptr};
    std::unique_ptr<gguf_context, decltype(&gguf_free)> g(gguf_init_from_file(path.c_str(), gp), gguf_free);
    if (!g) {
        return;  // not readable as GGUF: llama.cpp's own load reports why
    }
    const auto integer = [&](int64_t i, int64_t & out) { return gguf_integer(g.get(), i, out); };
    const int64_t arch_id = gguf_find_key(g.get(), "general.architecture");
    const std::string arch = arch_id >= 0 && gguf_get_kv_type(g.get(), arch_id) == GGUF_TYPE_STRING
                                 ? gguf_get_val_str(g.get(), arch_id)
                                 : "";
    auto bad = [&](const std::string & key, const std::string & value, const std::string & why) {
        throw std::invalid_argument("the GGUF file's metadata has " + key + " = " + value + " (" + why + "): " + path);
    };
    const int64_t n_kv = gguf_get_n_kv(g.get());
    for (int64_t i = 0; i < n_kv; i++) {
        const std::string key = gguf_get_key(g.get(), i);
        int64_t v = 0;
        if (!arch.empty() && key == arch + ".block_count" && integer(i, v) && (v < 1 || v > 512)) {
            bad(key, std::to_string(v), "llama.cpp supports 1 to 512 layers");
        }
        if (!arch.empty() && (key == arch + ".embedding_length" || key == arch + ".attention.head_count") &&
            integer(i, v) && v < 1) {
            bad(key, std::to_string(v), "must be positive");
        }
        if (key.size() >= 7 && key.compare(key.size() - 7, 7, "epsilon") == 0 &&
            gguf_get_kv_type(g.get(), i) == GGUF_TYPE_FLOAT32) {
            const float eps = gguf_get_val_f32(g.get(), i);
            if (!std::isfinite(eps) || eps < 0) {
                bad(key, std::to_string(eps), "must be a finite number >= 0");
            }
        }
    }
}

std::mutex registry_mutex;
std::map<std::string, std::weak_ptr<Model>> registry;

std::string registry_key(const ModelParams & p, const std::string & canonical) {
    std::string key = canonical + '|' + std::to_string(p.n_gpu_layers) + '|' + (p.use_mmap ? '1' : '0') +
                      (p.use_mlock ? '1' : '0') + (p.vocab_only ? '1' : '0') + (p.check_tensors ? '1' : '0') + (p.repack ? '1' : '0');
    for (const auto & [k, v] : p.kv_overrides) {
        key += '|' + k + '=' + v;
    }
    for (const auto & server : p.rpc_servers) {
        key += "|rpc=" + server;
    }
    return key + placement_key(p);
}

llama_model_kv_override parse_override(const std::string & key, const std::string & spec) {
    llama_model_kv_override o{};
    if (key.size() >= sizeof(o.key)) {
        throw std::invalid_argument("metadata override key too long: " + key);
    }
    std::strncpy(o.key, key.c_str(), sizeof(o.key) - 1);
    const auto colon = spec.find(':');
    const std::string type = colon == std::string::npos ? "" : spec.substr(0, colon);
    const std::string value = colon == std::string::npos ? spec : spec.substr(colon + 1);
    if (type == "str") {
        if (value.size() >= sizeof(o.val_str)) {
            throw std::invalid_argument("metadata override value too long for " + key);
        }
        o.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
        std::strncpy(o.val_str, value.c_str(), sizeof(o.val_str) - 1);
    } else if (type == "bool") {
        o.tag = LLAMA_KV_OVERRIDE_TYPE_BOOL;
        o.val_bool = value == "true" || value == "1";
    } else if (type == "int" || type == "float") {
        try {
            if (type == "int") {
                o.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
                o.val_i64 = std::stoll(value);
            } else {
                o.tag = LLAMA_KV_OVERRIDE_TYPE_FLOAT;
                o.val_f64 = std::stod(value);
            }
        } catch (const std::logic_error &) {
            throw std::invalid_argument("invalid metadata override " + key + "=" + spec);
        }
    } else {
        throw std::invalid_argument("metadata override for " + key +
                                    " must look like int:N, float:X, bool:B or str:S");
    }
    return o;
}

bool has_gguf_magic(const std::string & path) {
    FILE * f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        return false;
    }
    char magic[4] = {0, 0, 0, 0};
    const size_t n = std::fread(magic, 1, 4, f);
    std::fclose(f);
    return n == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

void check_model_file(const std::string & path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (path.empty() || !fs::exists(path, ec)) {
        throw FileNotFound("model file not found: " + path);
    }
    if (fs::is_directory(path, ec)) {
        throw std::invalid_argument("model path is a directory, not a GGUF file: " + path);
    }
    if (!has_gguf_magic(path)) {
        throw std::invalid_argument("not a GGUF file (bad magic bytes): " + path);
    }
}

// llama.cpp's parameters for `params`; `devices`, `overrides` and `placement` hold what they point at.
llama_model_params model_params(const ModelParams & params, std::vector<ggml_backend_dev_t> & devices,
                                std::vector<llama_model_kv_override> & overrides, Placement & placement) {
    devices.clear();
    overrides.clear();
    auto mparams = llama_model_default_params();
    mparams.n_gpu_layers = params.n_gpu_layers;
    if (params.use_mmap) {
        mparams.load_mode = params.use_mlock ? LLAMA_LOAD_MODE_MMAP_MLOCK : LLAMA_LOAD_MODE_MMAP;
    } else {
        mparams.load_mode = params.use_mlock ? LLAMA_LOAD_MODE_MLOCK : LLAMA_LOAD_MODE_NONE;
    }
    mparams.vocab_only = params.vocab_only;
    mparams.check_tensors = params.check_tensors;
    mparams.use_extra_bufts = params.repack;
    // Devices are named explicitly once RPC servers are known to this process: a model uses its own
    // servers and no other model's (llama.cpp's default is every registered device).
    std::vector<ggml_backend_dev_t> rpc;
    if (!params.rpc_servers.empty() || rpc_in_use()) {
        rpc = rpc_devices(params.rpc_servers, params.rpc_timeout_ms);
        devices = model_devices(rpc);
        mparams.devices = devices.data();
    }
    apply_placement(params, rpc, mparams, placement);  // devices named: those, after the RPC servers'
    for (const auto & [k, v] : params.kv_overrides) {
        overrides.push_back(parse_override(k, v));
    }
    if (!overrides.empty()) {
        overrides.emplace_back();
        overrides.back().key[0] = 0;
        mparams.kv_overrides = overrides.data();
    }
    return mparams;
}

}  // namespace

Model::Model(ModelParams params, llama_model_ptr model, double load_ms)
    : params_(std::move(params)), model_(std::move(model)), vocab_(llama_model_get_vocab(model_.get())),
      load_ms_(load_ms) {}

std::shared_ptr<Model> Model::load(const ModelParams & params, const ProgressCallback & progress,
                                   const EngineParams * fit_for) {
    init_backend();
    if (!params.vocab_only) {
        load_backends();  // not in the template worker, which reads vocabularies only
    }
    namespace fs = std::filesystem;
    std::error_code ec;
    check_model_file(params.path);
    const std::string canonical = fs::canonical(params.path, ec).string();
    const std::string key = registry_key(params, ec ? params.path : canonical);

    // One lock around the load: two threads asking for the same file get one copy of the weights.
    std::lock_guard<std::mutex> lock(registry_mutex);
    if (auto it = registry.find(key); it != registry.end()) {
        if (auto existing = it->second.lock()) {
            return existing;
        }
    }

    check_metadata(params.path);

    std::vector<ggml_backend_dev_t> devices;
    std::vector<llama_model_kv_override> overrides;
    Placement placement;
    llama_model_params mparams = model_params(params, devices, overrides, placement);
    FitResult fitted;
    if (params.fit && !params.vocab_only) {
        // Fitted once, for the first engine asked for (here, under the lock: the fit swaps llama.cpp's
        // logger); the model's key is its settings as given, so later engines share these weights.
        fitted = fit_to_memory(params, mparams, fit_for != nullptr ? *fit_for : EngineParams{});
        placement = Placement{};
        mparams = model_params(fitted.model, devices, overrides, placement);
    }
    struct ProgressState {
        const ProgressCallback * cb;
        bool cancelled = false;
    } state{&progress};
    if (progress) {
        mparams.progress_callback = [](float p, void * ud) -> bool {
            auto * st = static_cast<ProgressState *>(ud);
            try {
                if (!(*st->cb)(p)) {
                    st->cancelled = true;
                }
            } catch (...) {
                st->cancelled = true;
            }
            return !st->cancelled;
        };
        mparams.progress_callback_user_data = &state;
    }

    ErrorCapture capture;
    const auto t0 = std::chrono::steady_clock::now();
    llama_model_ptr model(llama_model_load_from_file(params.path.c_str(), mparams));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!model) {
        if (state.cancelled) {
            throw std::runtime_error("model loading cancelled by the progress callback: " + params.path);
        }
        throw std::invalid_argument("failed to load model from " + params.path +
                                    " (corrupt or unsupported GGUF): " + capture.message("no details"));
    }
    std::shared_ptr<Model> result(new Model(params, std::move(model), ms));
    result->fit_ = std::move(fitted);
    registry[key] = result;
    return result;
}

void Model::keep_rpc_models_at_exit() {
    // Freeing a model whose weights live in an rpc-server sends the server a message, and ggml's RPC
    // client aborts the process where it cannot (a server stopped first). At exit nothing needs freeing:
    // the process's end closes the connections and each server frees what that client held.
    std::lock_guard<std::mutex> lock(registry_mutex);
    static auto * kept = new std::vector<std::shared_ptr<Model>>();  // never freed, on purpose
    for (auto & [key, weak] : registry) {
        if (auto model = weak.lock(); model && !model->params().rpc_servers.empty()) {
            kept->push_back(std::move(model));
        }
    }
}

std::vector<llama_token> Model::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    // Cases llama.cpp's tokenizer asserts on (aborting the process), found by the fuzz suite.
    if (llama_vocab_type(vocab_) == LLAMA_VOCAB_TYPE_NONE || n_vocab() == 0) {
        throw std::invalid_argument("this model has no tokenizer (tokenizer.ggml.model is 'none' or its vocabulary "
                                    "is empty): it cannot turn text into tokens; give token ids instead");
    }
    if (add_special && ((llama_vocab_get_add_bos(vocab_) && llama_vocab_bos(vocab_) == LLAMA_TOKEN_NULL) ||
                        (llama_vocab_get_add_eos(vocab_) && llama_vocab_eos(vocab_) == LLAMA_TOKEN_NULL))) {
        throw std::invalid_argument("the model's metadata asks for a BOS/EOS token around the text but names none");
    }
    return common_tokenize(vocab_, text, add_special, parse_special);
}

std::string Model::token_to_piece(llama_token token, bool special) const {
    if (token < 0 || token >= n_vocab()) {
        throw std::out_of_range("token id out of range: " + std::to_string(token));
    }
    return common_token_to_piece(vocab_, token, special);
}

std::string Model::detokenize(const std::vector<llama_token> & tokens, bool special) const {
    for (auto t : tokens) {
        if (t < 0 || t >= n_vocab()) {
            throw std::out_of_range("token id out of range: " + std::to_string(t));
        }
    }
    return common_detokenize(vocab_, tokens, special);
}

int Model::n_ctx_train() const { return llama_model_n_ctx_train(model_.get()); }
int Model::n_vocab() const { return llama_vocab_n_tokens(vocab_); }
int Model::n_embd() const { return llama_model_n_embd(model_.get()); }
int Model::n_layer() const { return llama_model_n_layer(model_.get()); }
uint64_t Model::size_bytes() const { return llama_model_size(model_.get()); }
uint64_t Model::n_params() const { return llama_model_n_params(model_.get()); }

std::string Model::description() const {
    char buf[256];
    const int n = llama_model_desc(model_.get(), buf, sizeof(buf));
    return n > 0 ? std::string(buf, std::min<size_t>(n, sizeof(buf) - 1)) : std::string();
}

std::string Model::chat_template(const std::string & name) const {
    const char * t = llama_model_chat_template(model_.get(), name.empty() ? nullptr : name.c_str());
    return t != nullptr ? std::string(t) : std::string();
}

std::string Model::meta(const std::string & key) const {
    const int32_t n = llama_model_meta_val_str(model_.get(), key.c_str(), nullptr, 0);
    if (n < 0) {
        return {};
    }
    std::string value(static_cast<size_t>(n) + 1, '\0');
    llama_model_meta_val_str(model_.get(), key.c_str(), value.data(), value.size());
    value.resize(static_cast<size_t>(n));
    return value;
}

std::map<std::string, std::string> Model::metadata() const {
    std::map<std::string, std::string> out;
    const int32_t count = llama_model_meta_count(model_.get());
    for (int32_t i = 0; i < count; ++i) {
        char key[512];
        if (llama_model_meta_key_by_index(model_.get(), i, key, sizeof(key)) < 0) {
            continue;
        }
        const int32_t n = llama_model_meta_val_str_by_index(model_.get(), i, nullptr, 0);
        if (n < 0) {
            continue;
        }
        std::string value(static_cast<size_t>(n) + 1, '\0');
        llama_model_meta_val_str_by_index(model_.get(), i, value.data(), value.size());
        value.resize(static_cast<size_t>(n));
        out.emplace(key, std::move(value));
    }
    return out;
}

llama_token Model::bos() const { return llama_vocab_bos(vocab_); }
llama_token Model::eos() const { return llama_vocab_eos(vocab_); }
bool Model::add_bos() const { return llama_vocab_get_add_bos(vocab_); }
bool Model::is_eog(llama_token token) const { return llama_vocab_is_eog(vocab_, token); }

}  // namespace lcl
