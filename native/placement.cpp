#include "placement.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <regex>
#include <stdexcept>

#include "common.h"
#include "fit.h"
#include "ggml-backend.h"

namespace lcl {
namespace {

// Tensor names are short, but std::regex recurses per character of a pattern: keep patterns modest.
constexpr size_t kMaxPatternLength = 512;

std::string join(const std::vector<std::string> & items) {
    std::string out;
    for (const auto & item : items) {
        out += (out.empty() ? "" : ", ") + item;
    }
    return out.empty() ? "none" : out;
}

// The devices named, as llama.cpp's --device takes them: offload devices only, or "none".
void named_devices(const std::vector<std::string> & names, std::vector<ggml_backend_dev_t> & devices) {
    if (names.size() == 1 && names[0] == "none") {
        return;
    }
    std::vector<std::string> known;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
            known.push_back(ggml_backend_dev_name(dev));
        }
    }
    for (const auto & name : names) {
        ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
        if (dev == nullptr || ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
            throw std::invalid_argument("devices: '" + name + "' is not a device this build can offload to (" +
                                        (dev != nullptr ? "the CPU holds what is not offloaded" : "unknown") +
                                        "); known: " + (known.empty() ? "none, this build has no GPU backend" : join(known)));
        }
        devices.push_back(dev);
    }
}

// Buffer types by name, as llama.cpp's -ot looks them up: each device's own.
std::map<std::string, ggml_backend_buffer_type_t> buffer_types() {
    std::map<std::string, ggml_backend_buffer_type_t> bufts;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        if (auto * buft = ggml_backend_dev_buffer_type(ggml_backend_dev_get(i))) {
            bufts[ggml_backend_buft_name(buft)] = buft;
        }
    }
    return bufts;
}

void add_override(const std::string & spec, const std::map<std::string, ggml_backend_buffer_type_t> & bufts,
                  Placement & placement) {
    const auto eq = spec.rfind('=');
    if (eq == std::string::npos || eq == 0) {
        throw std::invalid_argument("override_tensor: '" + spec + "' is not of the form 'regex=buffer type'");
    }
    const std::string pattern = spec.substr(0, eq), name = spec.substr(eq + 1);
    const auto buft = bufts.find(name);
    if (buft == bufts.end()) {
        std::vector<std::string> known;
        for (const auto & [n, b] : bufts) {
            known.push_back(n);
        }
        throw std::invalid_argument("override_tensor: unknown buffer type '" + name + "' in '" + spec +
                                    "'; known: " + join(known));
    }
    if (pattern.size() > kMaxPatternLength) {
        throw std::invalid_argument("override_tensor: a pattern longer than " + std::to_string(kMaxPatternLength) +
                                    " characters");
    }
    try {
        std::regex check(pattern);  // llama.cpp's loader matches with std::regex_search
    } catch (const std::regex_error & e) {
        throw std::invalid_argument("override_tensor: invalid regex '" + pattern + "': " + e.what());
    }
    placement.patterns.push_back(pattern);
    placement.overrides.push_back({placement.patterns.back().c_str(), buft->second});
}

void check_split(const ModelParams & params) {
    if (params.split_mode < LLAMA_SPLIT_MODE_NONE || params.split_mode > LLAMA_SPLIT_MODE_ROW) {
        throw std::invalid_argument("split_mode must be 0 (none), 1 (layer) or 2 (row), got " +
                                    std::to_string(params.split_mode));
    }
    if (params.main_gpu < 0) {
        throw std::invalid_argument("main_gpu must be a device index (0 or more), got " + std::to_string(params.main_gpu));
    }
    if (params.tensor_split.size() > llama_max_devices()) {
        throw std::invalid_argument("tensor_split: " + std::to_string(params.tensor_split.size()) +
                                    " shares, for at most " + std::to_string(llama_max_devices()) + " devices");
    }
    for (const float share : params.tensor_split) {
        if (!std::isfinite(share) || share < 0) {
            throw std::invalid_argument("tensor_split: each share must be a finite number >= 0");
        }
    }
    if (params.n_cpu_moe < 0) {
        throw std::invalid_argument("n_cpu_moe must be 0 or more, got " + std::to_string(params.n_cpu_moe));
    }
}

}  // namespace

std::vector<std::string> n_cpu_moe_overrides(int n) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) {
        out.push_back(llm_ffn_block_regex(i, LLM_FFN_EXPS_REGEX) + "=" +
                      ggml_backend_buft_name(ggml_backend_cpu_buffer_type()));
    }
    return out;
}

void apply_placement(const ModelParams & params, const std::vector<ggml_backend_dev_t> & rpc,
                     llama_model_params & mparams, Placement & placement) {
    check_split(params);
    mparams.main_gpu = params.main_gpu;
    mparams.split_mode = static_cast<llama_split_mode>(params.split_mode);
    if (!params.devices.empty()) {
        placement.devices = rpc;
        named_devices(params.devices, placement.devices);
        placement.devices.push_back(nullptr);
        mparams.devices = placement.devices.data();
    }
    if (!params.tensor_split.empty()) {
        placement.tensor_split.assign(llama_max_devices(), 0.0f);
        std::copy(params.tensor_split.begin(), params.tensor_split.end(), placement.tensor_split.begin());
        mparams.tensor_split = placement.tensor_split.data();
    }
    std::vector<std::string> specs = params.override_tensor;
    for (const auto & spec : n_cpu_moe_overrides(params.n_cpu_moe)) {
        specs.push_back(spec);
    }
    if (specs.size() + 1 > llama_max_tensor_buft_overrides()) {
        throw std::invalid_argument("override_tensor and n_cpu_moe: at most " +
                                    std::to_string(llama_max_tensor_buft_overrides() - 1) + " tensor overrides");
    }
    const auto bufts = buffer_types();
    for (const auto & spec : specs) {
        add_override(spec, bufts, placement);
    }
    if (!placement.overrides.empty()) {
        placement.overrides.push_back({nullptr, nullptr});
        mparams.tensor_buft_overrides = placement.overrides.data();
    }
}

std::string placement_key(const ModelParams & p) {
    std::string key = "|gpu=" + std::to_string(p.main_gpu) + "|split=" + std::to_string(p.split_mode) +
                      "|moe=" + std::to_string(p.n_cpu_moe) + (p.fit ? "|fit" : "");
    for (const float share : p.tensor_split) {
        key += "|ts=" + std::to_string(share);
    }
    for (const auto & dev : p.devices) {
        key += "|dev=" + dev;
    }
    for (const auto & spec : p.override_tensor) {
        key += "|ot=" + spec;
    }
    return key;
}

ggml_type kv_cache_type(const std::string & name, const char * field) {
    // llama.cpp's --cache-type-k/-v list (common/arg.cpp, kv_cache_types).
    static const ggml_type types[] = {GGML_TYPE_F32,  GGML_TYPE_F16,    GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
                                      GGML_TYPE_Q4_1, GGML_TYPE_IQ4_NL, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1};
    std::string known;
    for (const ggml_type t : types) {
        if (name == ggml_type_name(t)) {
            return t;
        }
        known += std::string(known.empty() ? "" : ", ") + ggml_type_name(t);
    }
    throw std::invalid_argument(std::string(field) + ": unknown KV cache type '" + name + "'; known: " + known);
}

bool has_gpu_device() {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        const auto type = ggml_backend_dev_type(ggml_backend_dev_get(i));
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            return true;
        }
    }
    return false;
}

namespace {

// The context the fit measures: the engine's settings as plan_context and context_params resolve them
// (without the model, which is not loaded yet). `streams`: KV streams (slots without a shared pool).
llama_context_params fit_context_params(const EngineParams & engine, uint32_t & streams) {
    auto c = llama_context_default_params();
    const int n_seq = std::max(1, engine.n_seq);
    const bool unified = engine.embeddings || (engine.kv_unified < 0 ? !engine.batch_invariant : engine.kv_unified == 1);
    streams = unified ? 1 : static_cast<uint32_t>(n_seq);
    c.n_ctx = engine.n_ctx < 0 ? 0 : static_cast<uint32_t>(engine.n_ctx) * streams;  // 0: the trained length
    c.n_batch = static_cast<uint32_t>(std::max(engine.n_batch > 0 ? engine.n_batch : 512, n_seq));
    c.n_ubatch = std::min(static_cast<uint32_t>(std::max(engine.n_ubatch > 0 ? engine.n_ubatch : 512, n_seq)), c.n_batch);
    c.n_seq_max = static_cast<uint32_t>(n_seq);
    c.kv_unified = unified;
    const ggml_type by_f16_kv = engine.f16_kv ? GGML_TYPE_F16 : GGML_TYPE_F32;
    c.type_k = engine.cache_type_k.empty() ? by_f16_kv : kv_cache_type(engine.cache_type_k, "cache_type_k");
    c.type_v = engine.cache_type_v.empty() ? by_f16_kv : kv_cache_type(engine.cache_type_v, "cache_type_v");
    c.flash_attn_type = ggml_is_quantized(c.type_v) || engine.flash_attn > 0 ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                        : engine.flash_attn == 0                             ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                                             : LLAMA_FLASH_ATTN_TYPE_AUTO;
    c.swa_full = engine.swa_full;
    c.offload_kqv = engine.offload_kqv;
    c.embeddings = engine.embeddings;
    return c;
}

// What the fit chose, as our settings: layers, the split, and its overrides by buffer type name.
void take_fit(const llama_model_params & mparams, const std::vector<float> & split,
              const std::vector<llama_model_tensor_buft_override> & overrides, FitResult & result) {
    result.model.n_gpu_layers = mparams.n_gpu_layers;
    if (mparams.tensor_split == split.data()) {
        size_t n = split.size();
        while (n > 0 && split[n - 1] == 0.0f) {
            --n;
        }
        result.model.tensor_split.assign(split.begin(), split.begin() + static_cast<std::ptrdiff_t>(n));
    }
    if (mparams.tensor_buft_overrides == overrides.data()) {
        for (const auto * o = overrides.data(); o->pattern != nullptr; ++o) {
            result.model.override_tensor.push_back(std::string(o->pattern) + "=" + ggml_backend_buft_name(o->buft));
        }
    }
}

}  // namespace

FitResult fit_to_memory(const ModelParams & params, llama_model_params mparams, const EngineParams & engine) {
    FitResult result;
    result.model = params;
    result.model.fit = false;
    result.n_ctx = engine.n_ctx;
    if (!has_gpu_device()) {
        result.summary = "no GPU backend in this build: n_gpu_layers=" + std::to_string(params.n_gpu_layers);
        return result;
    }
    if (!params.tensor_split.empty() || !params.override_tensor.empty() || params.n_cpu_moe > 0 ||
        params.split_mode == LLAMA_SPLIT_MODE_ROW) {
        result.summary = "a placement was given (tensor_split, override_tensor, n_cpu_moe or a row split), which "
                         "llama.cpp's fit does not combine with: n_gpu_layers=" + std::to_string(params.n_gpu_layers);
        return result;
    }
    uint32_t streams = 1;
    llama_context_params cparams = fit_context_params(engine, streams);
    mparams.n_gpu_layers = llama_model_default_params().n_gpu_layers;  // the fit changes only defaults
    std::vector<float> split(llama_max_devices(), 0.0f);
    std::vector<llama_model_tensor_buft_override> overrides(llama_max_tensor_buft_overrides(), {nullptr, nullptr});
    std::vector<size_t> margins(llama_max_devices(), size_t(1) << 30);  // llama.cpp's default: 1 GiB a device
    // A context not given may be lowered, to min(trained length, 4096) at least (llama.cpp's --fit-ctx);
    // one given is kept (UINT32_MAX: never lowered).
    const uint32_t n_ctx_min = engine.n_ctx < 0 ? 4096 : UINT32_MAX;
    const auto status = common_fit_params(params.path.c_str(), &mparams, &cparams, split.data(), overrides.data(),
                                          margins.data(), n_ctx_min, nullptr, GGML_LOG_LEVEL_ERROR);
    take_fit(mparams, split, overrides, result);
    if (engine.n_ctx < 0) {
        result.n_ctx = static_cast<int>(cparams.n_ctx / streams);  // 0: the trained length fits
    }
    result.summary = std::string(status == COMMON_PARAMS_FIT_STATUS_SUCCESS ? "fitted to free device memory"
                                                                            : "could not fit to free device memory") +
                     ": n_gpu_layers=" + std::to_string(result.model.n_gpu_layers) +
                     ", n_ctx=" + (result.n_ctx == 0 ? "trained length" : std::to_string(result.n_ctx)) +
                     ", tensor overrides: " + std::to_string(result.model.override_tensor.size());
    return result;
}

}  // namespace lcl
