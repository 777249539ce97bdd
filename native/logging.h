// Bridge from llama.cpp / ggml logging to Python: messages are buffered here and drained by
// Python (`drain_logs`), so no native thread ever has to take the GIL to log.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "ggml.h"

namespace lcl {

void capture_error(const char * text);

// Installs the llama.cpp log callback and silences common's own logger. Idempotent.
void install_log_callback();

// The callback itself, for libraries with their own log hook (libmtmd).
void log_to_buffer(ggml_log_level level, const char * text, void * user_data);

// Adds a line of our own to the buffer, as if llama.cpp had logged it.
void log_line(int level, const std::string & text);

// Drains buffered, complete log lines as (ggml_log_level, text).
std::vector<std::pair<int, std::string>> drain_logs();

// While alive, error-level messages logged on this thread are also collected, so that a failure
// reported by llama.cpp only through its log (a grammar parse error, a bad GGUF) reaches the
// Python exception text.
class ErrorCapture {
public:
    ErrorCapture();
    ~ErrorCapture();
    ErrorCapture(const ErrorCapture &) = delete;
    ErrorCapture & operator=(const ErrorCapture &) = delete;
    // Captured error lines joined with "; ", or `fallback` if none.
    std::string message(const std::string & fallback) const;

private:
    std::string text_;
    ErrorCapture * previous_;
    friend void capture_error(const char * text);
};

}  // namespace lcl
