// ggml's backends, reached the same way whether they are linked in (a source build) or loaded at run time
// from this package's folder (a wheel built with GGML_BACKEND_DL: one CPU backend per instruction set, the
// best one for this CPU chosen by ggml's score). Every call into a backend's own API (thread pools, the
// CPU reference mode, RPC servers) goes through backend_proc, never a direct symbol.
#pragma once

#include <string>

namespace lcl {

// Once per process: with GGML_BACKEND_DL, loads the backends found in the folder of the library that
// holds this code, and no other (not the working directory, not LD_LIBRARY_PATH); logs which CPU variant
// was chosen. Without GGML_BACKEND_DL it does nothing (the backends are linked in).
void load_backends();

// The function `fn` of the backend registered as `reg` ("CPU", "RPC"), or nullptr where that backend is
// absent or lacks it. Loads the backends first.
void * backend_proc(const char * reg, const char * fn);

template <typename F>
F * backend_fn(const char * reg, const char * fn) {
    return reinterpret_cast<F *>(backend_proc(reg, fn));
}

// The CPU backend's file name ("libggml-cpu-haswell.so") where it was loaded at run time, "" where it is
// built in.
std::string cpu_backend_file();

// llama.cpp's system info, with the CPU backend's file where one was chosen at run time.
std::string system_info();

}  // namespace lcl
