// A loaded GGUF model: weights plus vocabulary, shared by every engine that uses the same file
// with the same load parameters.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "llama-cpp.h"

namespace lcl {

// Raised as Python's FileNotFoundError.
class FileNotFound : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct ModelParams {
    std::string path;
    int n_gpu_layers = 0;  // -1: all layers
    bool use_mmap = true;
    bool use_mlock = false;
    bool vocab_only = false;
    bool check_tensors = false;
    bool repack = true;  // llama.cpp's repacked weight layouts (extra buffer types)
    std::map<std::string, std::string> kv_overrides;  // "key" -> "int:1" / "float:0.5" / "bool:true" / "str:x"
    std::vector<std::string> rpc_servers;  // "host:port" of llama.cpp rpc-servers that take offloaded layers
    int rpc_timeout_ms = 5000;             // for each server's connection and handshake
};

using ProgressCallback = std::function<bool(float)>;

class Model {
public:
    // Loads a model, or returns the already-loaded one for the same file and parameters.
    static std::shared_ptr<Model> load(const ModelParams & params, const ProgressCallback & progress);
    // At exit: models on RPC servers are never freed (see model.cpp).
    static void keep_rpc_models_at_exit();
    ~Model() = default;

    llama_model * get() const { return model_.get(); }
    const llama_vocab * vocab() const { return vocab_; }
    const ModelParams & params() const { return params_; }

    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string token_to_piece(llama_token token, bool special) const;
    std::string detokenize(const std::vector<llama_token> & tokens, bool special) const;

    int n_ctx_train() const;
    int n_vocab() const;
    int n_embd() const;
    int n_layer() const;
    uint64_t size_bytes() const;
    uint64_t n_params() const;
    std::string description() const;
    std::string chat_template(const std::string & name) const;  // "" if none
    std::map<std::string, std::string> metadata() const;
    std::string meta(const std::string & key) const;  // "" if absent
    llama_token bos() const;
    llama_token eos() const;
    bool add_bos() const;
    bool is_eog(llama_token token) const;
    double load_time_ms() const { return load_ms_; }

private:
    Model(ModelParams params, llama_model_ptr model, double load_ms);

    ModelParams params_;
    llama_model_ptr model_;
    const llama_vocab * vocab_;
    double load_ms_;
};

}  // namespace lcl
