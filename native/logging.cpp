#include "logging.h"

#include <pthread.h>

#include <deque>
#include <mutex>
#include <new>

#include "ggml.h"
#include "llama.h"
#include "log.h"

namespace lcl {
namespace {

constexpr size_t kMaxBufferedLines = 4096;

std::mutex g_mutex;
std::deque<std::pair<int, std::string>> g_lines;
std::string g_partial;  // llama.cpp emits lines in pieces (GGML_LOG_LEVEL_CONT)
int g_partial_level = GGML_LOG_LEVEL_INFO;
thread_local ErrorCapture * t_capture = nullptr;

void push_line(int level, std::string line) {
    if (g_lines.size() >= kMaxBufferedLines) {
        g_lines.pop_front();  // nobody is draining: keep the newest
    }
    g_lines.emplace_back(level, std::move(line));
}

void log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (text == nullptr) {
        return;
    }
    if (level == GGML_LOG_LEVEL_ERROR) {
        capture_error(text);
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    if (level != GGML_LOG_LEVEL_CONT) {
        if (!g_partial.empty()) {
            push_line(g_partial_level, std::move(g_partial));
            g_partial.clear();
        }
        g_partial_level = level;
    }
    g_partial += text;
    size_t newline;
    while ((newline = g_partial.find('\n')) != std::string::npos) {
        std::string line = g_partial.substr(0, newline);
        g_partial.erase(0, newline + 1);
        if (!line.empty()) {
            push_line(g_partial_level, std::move(line));
        }
    }
}

}  // namespace

void capture_error(const char * text) {
    if (t_capture == nullptr) {
        return;
    }
    std::string piece(text);
    while (!piece.empty() && (piece.back() == '\n' || piece.back() == ' ')) {
        piece.pop_back();
    }
    if (piece.empty()) {
        return;
    }
    if (!t_capture->text_.empty()) {
        t_capture->text_ += "; ";
    }
    t_capture->text_ += piece;
}

// fork() copies only the calling thread: an engine thread holding the log lock at that moment would
// leave it locked for good in the child. Hold it across fork; the child starts with a fresh lock and
// without the parent's lines (the parent forwards them).
void before_fork() { g_mutex.lock(); }
void after_fork_in_parent() { g_mutex.unlock(); }
void after_fork_in_child() {
    new (&g_mutex) std::mutex();
    g_lines.clear();
    g_partial.clear();
}

void install_log_callback() {
    static const int registered = pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
    (void) registered;
    llama_log_set(log_callback, nullptr);
    // common's logger prints from its own thread straight to the terminal: keep it quiet; the
    // errors it would report surface as exceptions instead.
    common_log_set_verbosity_thold(-1);
}

void log_to_buffer(ggml_log_level level, const char * text, void * user_data) { log_callback(level, text, user_data); }

void log_line(int level, const std::string & text) {
    std::lock_guard<std::mutex> lock(g_mutex);
    push_line(level, text);
}

std::vector<std::pair<int, std::string>> drain_logs() {
    std::lock_guard<std::mutex> lock(g_mutex);
    std::vector<std::pair<int, std::string>> out(std::make_move_iterator(g_lines.begin()),
                                                 std::make_move_iterator(g_lines.end()));
    g_lines.clear();
    return out;
}

ErrorCapture::ErrorCapture() : previous_(t_capture) { t_capture = this; }

ErrorCapture::~ErrorCapture() { t_capture = previous_; }

std::string ErrorCapture::message(const std::string & fallback) const {
    return text_.empty() ? fallback : text_;
}

}  // namespace lcl
