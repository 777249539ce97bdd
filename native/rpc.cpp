#include "rpc.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <memory>

#include "backends.h"
#include "ggml-rpc.h"

namespace lcl {

// Linked in (GGML_USE_RPC) or loaded from the package's folder (GGML_BACKEND_DL): asked of the registry.
bool rpc_available() { return backend_proc("RPC", "ggml_backend_rpc_add_server") != nullptr; }

namespace {
std::atomic<bool> g_rpc_in_use{false};
}  // namespace

bool rpc_in_use() { return g_rpc_in_use; }

namespace {

// What ggml's RPC client sends first and expects back (ggml-rpc.cpp, protocol 7): command 14 (HELLO)
// with 24 bytes of transport capabilities (zeros: plain TCP), answered by an 8-byte size and the
// server's version (major, minor, patch, padding) with its own 24 bytes of capabilities.
constexpr uint8_t kHello = 14;
constexpr size_t kCapsSize = 24;
constexpr uint8_t kProtoMajor = 7;

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) {
            close(fd);
        }
    }
};

[[noreturn]] void fail(const std::string & endpoint, const std::string & what) {
    throw ConnectionFailed("RPC server " + endpoint + ": " + what);
}

void split_endpoint(const std::string & endpoint, std::string & host, std::string & port) {
    // As ggml's client parses it: the host is everything before the first ':' (no IPv6 literals).
    const auto colon = endpoint.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
        throw std::invalid_argument("an RPC server is \"host:port\", got \"" + endpoint + "\"");
    }
    host = endpoint.substr(0, colon);
    port = endpoint.substr(colon + 1);
    char * end = nullptr;
    errno = 0;
    const long p = std::strtol(port.c_str(), &end, 10);
    if (errno != 0 || *end != '\0' || p < 1 || p > 65535) {
        throw std::invalid_argument("an RPC server is \"host:port\" with a port from 1 to 65535, got \"" + endpoint + "\"");
    }
}

int remaining(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<long long>(0, left.count()));
}

void io(const std::string & endpoint, int fd, void * data, size_t size, bool send,
        std::chrono::steady_clock::time_point deadline) {
    auto * p = static_cast<uint8_t *>(data);
    while (size > 0) {
        pollfd pfd{fd, static_cast<short>(send ? POLLOUT : POLLIN), 0};
        const int ready = poll(&pfd, 1, remaining(deadline));
        if (ready == 0) {
            fail(endpoint, "no answer to the handshake in time (busy with another client, or not a llama.cpp rpc-server?)");
        }
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail(endpoint, std::strerror(errno));
        }
        const ssize_t n = send ? ::send(fd, p, size, MSG_NOSIGNAL) : ::recv(fd, p, size, 0);
        if (n == 0) {
            fail(endpoint, "closed the connection during the handshake (not a llama.cpp rpc-server of protocol 7?)");
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
                continue;
            }
            fail(endpoint, std::strerror(errno));
        }
        p += n;
        size -= static_cast<size_t>(n);
    }
}

void check_server(const std::string & endpoint, int timeout_ms) {
    std::string host, port;
    split_endpoint(endpoint, host, port);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * found = nullptr;
    if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
        fail(endpoint, std::string("cannot resolve the host: ") + gai_strerror(rc));
    }
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> addrs(found, freeaddrinfo);
    std::string last_error = "no address";
    for (addrinfo * a = addrs.get(); a != nullptr; a = a->ai_next) {
        Fd sock{socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol)};
        if (sock.fd < 0) {
            last_error = std::strerror(errno);
            continue;
        }
        fcntl(sock.fd, F_SETFL, fcntl(sock.fd, F_GETFL) | O_NONBLOCK);
        if (connect(sock.fd, a->ai_addr, a->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                last_error = std::strerror(errno);
                continue;
            }
            pollfd pfd{sock.fd, POLLOUT, 0};
            if (poll(&pfd, 1, remaining(deadline)) <= 0) {
                last_error = "connection timed out";
                continue;
            }
            int err = 0;
            socklen_t len = sizeof(err);
            getsockopt(sock.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                last_error = std::strerror(err);
                continue;
            }
        }
        uint8_t request[1 + 8 + kCapsSize] = {};
        request[0] = kHello;
        const uint64_t size = kCapsSize;
        std::memcpy(request + 1, &size, sizeof(size));
        io(endpoint, sock.fd, request, sizeof(request), true, deadline);
        uint64_t answer_size = 0;
        io(endpoint, sock.fd, &answer_size, sizeof(answer_size), false, deadline);
        if (answer_size != 4 + kCapsSize) {
            fail(endpoint, "answered the handshake with " + std::to_string(answer_size) +
                               " bytes: not a llama.cpp rpc-server of protocol 7 (build it from the same llama.cpp)");
        }
        uint8_t answer[4 + kCapsSize];
        io(endpoint, sock.fd, answer, sizeof(answer), false, deadline);
        if (answer[0] != kProtoMajor) {
            fail(endpoint, "speaks RPC protocol " + std::to_string(answer[0]) + "." + std::to_string(answer[1]) +
                               ", this build " + std::to_string(kProtoMajor) + ".x: run an rpc-server built from the same llama.cpp");
        }
        return;
    }
    fail(endpoint, "cannot connect: " + last_error);
}

}  // namespace

std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints, int timeout_ms) {
    std::vector<ggml_backend_dev_t> devices;
    if (endpoints.empty()) {
        return devices;
    }
    auto * add_server = backend_fn<decltype(ggml_backend_rpc_add_server)>("RPC", "ggml_backend_rpc_add_server");
    if (add_server == nullptr) {
        throw std::invalid_argument("rpc_servers needs a build with llama.cpp's RPC backend (CMAKE_ARGS=\"-DGGML_RPC=ON\")");
    }
    for (const auto & endpoint : endpoints) {
        check_server(endpoint, timeout_ms);
    }
    g_rpc_in_use = true;
    for (const auto & endpoint : endpoints) {
        ggml_backend_reg_t reg = add_server(endpoint.c_str());
        if (reg == nullptr) {
            fail(endpoint, "has no devices");
        }
        for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); ++i) {
            devices.push_back(ggml_backend_reg_dev_get(reg, i));
        }
    }
    return devices;
}

std::vector<ggml_backend_dev_t> model_devices(const std::vector<ggml_backend_dev_t> & rpc) {
    std::vector<ggml_backend_dev_t> devices = rpc, gpus, igpus;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto type = ggml_backend_dev_type(dev);
        if (std::strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev)), "RPC") == 0) {
            continue;
        }
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU) {
            gpus.push_back(dev);
        } else if (type == GGML_BACKEND_DEVICE_TYPE_IGPU &&
                   (igpus.empty() || ggml_backend_dev_backend_reg(dev) == ggml_backend_dev_backend_reg(igpus.back()))) {
            igpus.push_back(dev);
        }
    }
    devices.insert(devices.end(), gpus.begin(), gpus.end());
    if (gpus.empty()) {
        devices.insert(devices.end(), igpus.begin(), igpus.end());
    }
    devices.push_back(nullptr);  // llama_model_params.devices ends with a null
    return devices;
}

}  // namespace lcl
