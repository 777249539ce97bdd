// Where a model's weights go: devices by name, the split between them, tensor overrides (llama.cpp's -ot,
// --n-cpu-moe), and the fit of layers and context to free device memory (llama.cpp's common_fit_params).
#pragma once

#include <list>
#include <string>
#include <vector>

#include "llama.h"
#include "model.h"

namespace lcl {

// What llama_model_params points at for a model's placement; it must outlive the load.
struct Placement {
    std::vector<ggml_backend_dev_t> devices;  // null-terminated; empty: llama.cpp's default
    std::vector<float> tensor_split;          // llama_max_devices() entries; empty: none
    std::list<std::string> patterns;          // the overrides' regexes (stable addresses)
    std::vector<llama_model_tensor_buft_override> overrides;  // null-terminated; empty: none
};

// llama.cpp's --n-cpu-moe: the expert tensors of the first n layers kept in CPU memory, as "regex=CPU".
std::vector<std::string> n_cpu_moe_overrides(int n);

// Checks the placement settings (a std::invalid_argument naming the setting) and points `mparams` at them.
// `rpc`: the devices of the model's RPC servers, which come first.
void apply_placement(const ModelParams & params, const std::vector<ggml_backend_dev_t> & rpc,
                     llama_model_params & mparams, Placement & placement);

// The placement settings in a model's registry key.
std::string placement_key(const ModelParams & params);

// The ggml type of a KV cache type's name (llama.cpp's --cache-type-k names); throws std::invalid_argument
// naming `field` for any other. Here for the fit, which measures the context before the model is loaded.
ggml_type kv_cache_type(const std::string & name, const char * field);

// Whether this build has a device that takes offloaded layers (a GPU backend).
bool has_gpu_device();

// llama.cpp's common_fit_params for `params` (as `mparams`, its placement applied) with an engine of `engine`'s
// settings on it. Where the build has no GPU backend, or a placement was given (which the fit does not
// combine with), the settings unchanged, and why. Where the fit finds no allocation that fits, what it
// got to, as llama.cpp's tools load. common_fit_params swaps llama.cpp's global logger (lines logged
// meanwhile reach ours below error level, so another thread's ErrorCapture would miss its errors):
// Model::load calls it under the lock that loads take, and Python's _registry lock serializes loads with
// engine creation.
FitResult fit_to_memory(const ModelParams & params, llama_model_params mparams, const EngineParams & engine);

}  // namespace lcl
