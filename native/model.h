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
#include "params.h"  // LCL_DECLARE_FIELD

namespace lcl {

// Raised as Python's FileNotFoundError.
class FileNotFound : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

using KvOverrides = std::map<std::string, std::string>;

// X(type, name, default, doc), as in params.h.
#define LCL_MODEL_PARAMS(X)                                                                                        \
    X(std::string, path, "", "The GGUF file.")                                                                     \
    X(int, n_gpu_layers, 0, "Layers to offload to the GPU; -1 for all.")                                           \
    X(bool, use_mmap, true, "Map the file instead of reading it.")                                                 \
    X(bool, use_mlock, false, "Lock the weights in RAM.")                                                          \
    X(bool, vocab_only, false, "Load the vocabulary only (tokenize, no generation).")                              \
    X(bool, check_tensors, false, "Validate the tensor data while loading.")                                       \
    X(bool, repack, true, "Use llama.cpp's repacked weight layouts (faster on some CPUs).")                         \
    X(KvOverrides, kv_overrides, {},                                                                               \
      "GGUF metadata overrides: key -> 'int:1' / 'float:0.5' / 'bool:true' / 'str:x'.")                            \
    X(std::vector<std::string>, rpc_servers, {}, "host:port of llama.cpp rpc-servers that take offloaded layers.") \
    X(int, rpc_timeout_ms, 5000, "For each RPC server's connection and handshake.")                                 \
    X(int, main_gpu, 0, "The GPU for the whole model (split_mode 0), or for intermediate results and KV (row split).") \
    X(int, split_mode, 1, "llama_split_mode: 0 none (one GPU), 1 layer, 2 row.")                                       \
    X(std::vector<float>, tensor_split, {}, "The share of the offloaded layers per device; empty: by free memory.")     \
    X(std::vector<std::string>, devices, {},                                                                           \
      "Devices that take offloaded layers, by llama.cpp's names (CUDA0, Vulkan1); [\"none\"]: none; empty: all.")       \
    X(std::vector<std::string>, override_tensor, {},                                                                   \
      "\"regex=buffer type\" each: tensors whose names match go to that buffer type (llama.cpp's -ot).")                \
    X(int, n_cpu_moe, 0, "The expert tensors of the first N layers stay in CPU memory (llama.cpp's --n-cpu-moe).")     \
    X(bool, fit, false,                                                                                                \
      "Fit n_gpu_layers (and a context not given) to free device memory, with llama.cpp's common_fit_params.")

struct ModelParams {
    LCL_MODEL_PARAMS(LCL_DECLARE_FIELD)
};

struct FitResult {
    ModelParams model;    // n_gpu_layers, tensor_split and override_tensor as fitted; fit off
    int n_ctx = -1;       // per request: lowered where it was not given, else as given
    std::string summary;  // what was chosen (or why nothing was), for the log
};

using ProgressCallback = std::function<bool(float)>;

class Model {
public:
    // Loads a model, or returns the already-loaded one for the same file and parameters. With params.fit,
    // its placement is fitted to free device memory first, for an engine with fit_for's settings (default
    // ones where null), and the context that fit chose is kept (fitted()).
    static std::shared_ptr<Model> load(const ModelParams & params, const ProgressCallback & progress,
                                       const EngineParams * fit_for = nullptr);
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
    // What the fit chose where params().fit (n_ctx -1 and an empty summary where there was none).
    const FitResult & fitted() const { return fit_; }

private:
    Model(ModelParams params, llama_model_ptr model, double load_ms);

    ModelParams params_;
    llama_model_ptr model_;
    const llama_vocab * vocab_;
    double load_ms_;
    FitResult fit_;
};

}  // namespace lcl
