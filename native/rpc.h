// llama.cpp's RPC backend: layers offloaded to `rpc-server` processes on other machines (or this one).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "ggml-backend.h"

namespace lcl {

// Raised as Python's ConnectionError.
class ConnectionFailed : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

bool rpc_available();  // built with -DGGML_RPC=ON
bool rpc_in_use();     // a server has been connected in this process

// The devices of these servers ("host:port" each), connected. Each server is first checked with a
// connection and handshake of our own, bounded by timeout_ms: ggml's RPC client aborts the process where
// a server cannot be reached or does not answer as one, so it only ever sees servers that just did.
std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints, int timeout_ms);

// The devices a model uses: those of its RPC servers first (as llama.cpp orders them), then this machine's
// GPUs (its integrated GPUs where it has no other), never another model's RPC servers.
std::vector<ggml_backend_dev_t> model_devices(const std::vector<ggml_backend_dev_t> & rpc);

}  // namespace lcl
