#include "backends.h"

#include <dlfcn.h>

#include <filesystem>
#include <mutex>

#include "ggml-backend.h"
#include "llama.h"
#include "logging.h"

namespace lcl {
namespace {

std::once_flag g_loaded;

// The folder of the shared object (or executable) that holds this function.
std::string own_folder() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void *>(&own_folder), &info) == 0 || info.dli_fname == nullptr) {
        return "";
    }
    return std::filesystem::path(info.dli_fname).parent_path().string();
}

#ifdef GGML_BACKEND_DL
// A GPU wheel on a machine without that GPU (or its driver): ggml skips the backend silently; say it once.
void log_missing_gpu(const std::string & folder) {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        const auto type = ggml_backend_dev_type(ggml_backend_dev_get(i));
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            return;
        }
    }
    for (const char * gpu : {"cuda", "hip", "metal", "vulkan", "sycl", "musa", "opencl"}) {
        const std::string file = std::string("libggml-") + gpu + ".so";
        std::error_code ec;
        if (std::filesystem::exists(std::filesystem::path(folder) / file, ec)) {
            log_line(GGML_LOG_LEVEL_WARN, "load_backends: " + file + " found no device (or could not load): running on the CPU\n");
        }
    }
}
#endif

void * proc_of(const char * reg_name, const char * fn) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name(reg_name);
    return reg == nullptr ? nullptr : ggml_backend_reg_get_proc_address(reg, fn);
}

// The file that holds the CPU backend (any of its functions names it); "" where it is built in.
std::string cpu_file() {
#ifdef GGML_BACKEND_DL
    void * fn = proc_of("CPU", "ggml_backend_get_features");
    Dl_info info{};
    if (fn != nullptr && dladdr(fn, &info) != 0 && info.dli_fname != nullptr) {
        return std::filesystem::path(info.dli_fname).filename().string();
    }
#endif
    return "";
}

}  // namespace

void load_backends() {
    std::call_once(g_loaded, [] {
#ifdef GGML_BACKEND_DL
        const std::string folder = own_folder();
        if (!folder.empty()) {
            // The explicit folder is the only one searched (ggml's default also tries the working directory).
            ggml_backend_load_all_from_path(folder.c_str());
        }
        const std::string cpu = cpu_file();  // not cpu_backend_file(): that would wait for this very call
        log_line(GGML_LOG_LEVEL_INFO, cpu.empty() ? "load_backends: no CPU backend found in " + folder + "\n"
                                                  : "load_backends: CPU backend " + cpu + " (chosen for this CPU)\n");
        log_missing_gpu(folder);
#endif
    });
}

void * backend_proc(const char * reg_name, const char * fn) {
    load_backends();
    return proc_of(reg_name, fn);
}

std::string cpu_backend_file() {
    load_backends();
    return cpu_file();
}

std::string system_info() {
    load_backends();
    std::string info = llama_print_system_info();
    const std::string cpu = cpu_backend_file();
    return cpu.empty() ? info : info + "CPU_BACKEND = " + cpu + " | ";
}

}  // namespace lcl
