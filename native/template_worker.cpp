// The chat-template sandbox: a small process that renders chat templates for ChatLlamaCpp.
//
// A chat template is Jinja code shipped inside a GGUF file by whoever made it, and llama.cpp's Jinja
// interpreter has no budget: a template can loop ten billion times, allocate without bound, or
// recurse until the stack overflows. Here it can only hurt this process: the parent
// (langchain_llamacpp/_templates.py) gives each request a deadline and kills and replaces the worker
// when one passes; the address-space limit turns a memory bomb into a clean error; a crash is an
// EOF the parent reports by signal.
//
// Protocol on stdin/stdout: a message is a little-endian u32 field count, then per field a u32
// length and the bytes. Requests:
//   ["load", model_path, kv_key_1, kv_spec_1, ...] -> ["ok"]   (vocabulary and metadata only)
//   ["init", override_template] -> ["ok", template_source]   (parse and probe the template)
//   ["apply", messages_json, tools_json, tool_choice, parallel(0/1), json_schema,
//    add_generation_prompt(0/1), enable_thinking(0/1), reasoning_format, kwarg_key_1, kwarg_value_1, ...]
//     -> ["ok", prompt, format, format_name, grammar, grammar_lazy(0/1), generation_prompt, parser,
//         supports_thinking(0/1), n_triggers, (type, value, token) * n, n_preserved, preserved * n,
//         n_stops, stops * n, thinking_start_tag, n_end_tags, thinking_end_tags * n]
// A failure answers ["error", exception_class_name, message].
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "chat_render.h"
#include "logging.h"
#include "model.h"

namespace {

using Fields = std::vector<std::string>;

// Largest request accepted: the messages of one call (images are not sent here).
constexpr uint32_t kMaxFieldBytes = 1u << 30;

bool read_exact(int fd, void * buf, size_t n) {
    auto * p = static_cast<char *>(buf);
    while (n > 0) {
        const ssize_t got = read(fd, p, n);
        if (got <= 0) {
            return false;  // EOF or error: the parent is gone
        }
        p += got;
        n -= static_cast<size_t>(got);
    }
    return true;
}

bool write_exact(int fd, const void * buf, size_t n) {
    const auto * p = static_cast<const char *>(buf);
    while (n > 0) {
        const ssize_t put = write(fd, p, n);
        if (put <= 0) {
            return false;
        }
        p += put;
        n -= static_cast<size_t>(put);
    }
    return true;
}

bool read_u32(int fd, uint32_t & v) {
    unsigned char b[4];
    if (!read_exact(fd, b, 4)) {
        return false;
    }
    v = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
    return true;
}

void put_u32(std::string & out, uint32_t v) {
    for (int i = 0; i < 4; i++) {
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
}

bool read_message(int fd, Fields & fields) {
    uint32_t count = 0;
    if (!read_u32(fd, count) || count > 1 << 20) {
        return false;
    }
    fields.assign(count, {});
    for (auto & f : fields) {
        uint32_t len = 0;
        if (!read_u32(fd, len) || len > kMaxFieldBytes) {
            return false;
        }
        f.resize(len);
        if (len > 0 && !read_exact(fd, f.data(), len)) {
            return false;
        }
    }
    return true;
}

bool write_message(int fd, const Fields & fields) {
    std::string out;
    put_u32(out, static_cast<uint32_t>(fields.size()));
    for (const auto & f : fields) {
        put_u32(out, static_cast<uint32_t>(f.size()));
        out += f;
    }
    return write_exact(fd, out.data(), out.size());
}

Fields rendered(const common_chat_params & p) {
    Fields out = {"ok",
                  p.prompt,
                  std::to_string(static_cast<int>(p.format)),
                  common_chat_format_name(p.format),
                  p.grammar,
                  p.grammar_lazy ? "1" : "0",
                  p.generation_prompt,
                  p.parser,
                  p.supports_thinking ? "1" : "0"};
    out.push_back(std::to_string(p.grammar_triggers.size()));
    for (const auto & t : p.grammar_triggers) {
        out.push_back(std::to_string(static_cast<int>(t.type)));
        out.push_back(t.value);
        out.push_back(std::to_string(t.token));
    }
    out.push_back(std::to_string(p.preserved_tokens.size()));
    out.insert(out.end(), p.preserved_tokens.begin(), p.preserved_tokens.end());
    out.push_back(std::to_string(p.additional_stops.size()));
    out.insert(out.end(), p.additional_stops.begin(), p.additional_stops.end());
    out.push_back(p.thinking_start_tag);
    out.push_back(std::to_string(p.thinking_end_tags.size()));
    out.insert(out.end(), p.thinking_end_tags.begin(), p.thinking_end_tags.end());
    return out;
}

class Worker {
public:
    Fields handle(const Fields & req) {
        if (req.empty()) {
            throw std::invalid_argument("empty request");
        }
        if (req[0] == "load" && req.size() % 2 == 0) {
            lcl::ModelParams params;
            params.path = req[1];
            params.vocab_only = true;  // the template and the special tokens; no weights
            params.use_mmap = false;
            for (size_t i = 2; i + 1 < req.size(); i += 2) {
                params.kv_overrides[req[i]] = req[i + 1];
            }
            renderer_.reset();
            model_ = lcl::Model::load(params, nullptr);
            return {"ok"};
        }
        if (req[0] == "init" && req.size() == 2) {
            if (!model_) {
                throw std::logic_error("init before load");
            }
            renderer_ = std::make_unique<lcl::ChatRenderer>(model_->get(), req[1]);
            return {"ok", renderer_->source()};
        }
        if (req[0] == "apply" && req.size() >= 9 && req.size() % 2 == 1) {
            if (!renderer_) {
                throw std::logic_error("apply before init");
            }
            lcl::RenderRequest r;
            r.messages_json = req[1];
            r.tools_json = req[2];
            r.tool_choice = req[3];
            r.parallel_tool_calls = req[4] == "1";
            r.json_schema = req[5];
            r.add_generation_prompt = req[6] == "1";
            r.enable_thinking = req[7] == "1";
            r.reasoning_format = req[8];
            for (size_t i = 9; i + 1 < req.size(); i += 2) {
                r.template_kwargs[req[i]] = req[i + 1];
            }
            return rendered(renderer_->apply(r));
        }
        throw std::invalid_argument("malformed request");
    }

private:
    std::shared_ptr<lcl::Model> model_;
    std::unique_ptr<lcl::ChatRenderer> renderer_;
};

}  // namespace

int main(int argc, char ** argv) {
    // Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGPIPE, SIG_IGN);
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
#if !defined(__SANITIZE_ADDRESS__)  // ASan reserves terabytes of address space for its shadow memory
    if (argc > 1) {
        const rlim_t bytes = std::strtoull(argv[1], nullptr, 10);
        if (bytes > 0) {
            const rlimit as{bytes, bytes};
            setrlimit(RLIMIT_AS, &as);
        }
    }
#endif
    // The protocol gets private descriptors; anything printed by library code goes to stderr,
    // which the parent discards.
    const int in = dup(STDIN_FILENO);
    const int out = dup(STDOUT_FILENO);
    if (in < 0 || out < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
        return 2;
    }
    lcl::install_log_callback();
    // A parent that dies without stopping us (SIGKILL, os._exit) closes its end of the pipe: leave at
    // once rather than finish a render nobody waits for.
    std::thread([in] {
        pollfd p{in, 0, 0};  // no events requested: poll reports only a hang-up or an error
        while (poll(&p, 1, -1) < 0 || (p.revents & (POLLHUP | POLLERR | POLLNVAL)) == 0) {
        }
        _exit(0);
    }).detach();

    Worker worker;
    Fields request;
    while (read_message(in, request)) {
        Fields reply;
        try {
            reply = worker.handle(request);
        } catch (const lcl::FileNotFound & e) {
            reply = {"error", "FileNotFoundError", e.what()};
        } catch (const std::bad_alloc &) {
            reply = {"error", "MemoryError", "rendering the chat template needed more memory than the sandbox allows"};
        } catch (const std::invalid_argument & e) {
            reply = {"error", "ValueError", e.what()};
        } catch (const std::exception & e) {
            reply = {"error", "RuntimeError", e.what()};
        }
        if (!write_message(out, reply)) {
            return 0;
        }
    }
    return 0;
}
