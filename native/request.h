// The channel between the engine thread and a caller: the chunks of one request, its counters and its end.
// The engine pushes and finishes; the caller's Request handle takes, waits and cancels.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace lcl {

struct TopLogprob {
    int token;
    std::string text;
    float logprob;
};

struct Chunk {
    std::string text;
    int token = -1;
    float logprob = 0.0f;
    bool has_logprob = false;
    std::vector<TopLogprob> top;
};

// X(type, name, doc): a request's counters and timings, as the caller reads them (Request.usage); the same
// table makes the struct and its binding.
#define LCL_USAGE_FIELDS(X)                                                                                         \
    X(int, prompt_tokens, "Tokens in the prompt.")                                                                  \
    X(int, cached_tokens, "Of which were reused from the slot's cache, not evaluated.")                             \
    X(int, completion_tokens, "Tokens generated.")                                                                  \
    X(int, draft_n, "Tokens drafted for this request (speculative decoding).")                                      \
    X(int, draft_n_accepted, "Of which the model accepted.")                                                        \
    X(double, queued_ms, "From submit to a slot.")                                                                  \
    X(double, prompt_ms, "Evaluating the prompt (to the first token).")                                             \
    X(double, generation_ms, "From the first token to the end.")

#define LCL_DECLARE_COUNTER(type, name, doc) type name = 0;

struct Usage {
    LCL_USAGE_FIELDS(LCL_DECLARE_COUNTER)
};

// Shared between the engine thread and the Python handle.
struct RequestState {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<Chunk> chunks;
    bool done = false;
    std::string error;
    std::string finish_reason;
    std::string stop_string;
    Usage usage;
    std::atomic<bool> cancelled{false};
    std::atomic<bool> signaled{false};
    int notify_fd = -1;
    // Callers blocked until a chunk comes (next(), wait_for(until_done=false)), under `mutex`. A caller
    // waiting for the end only is not woken per token: each wake-up takes a core from ggml's threads.
    int chunk_waiters = 0;

    void push(Chunk chunk);
    void finish(std::string reason, std::string error_text = {});
    // at_once: write the wake-up byte now even inside a DeferredWakeups scope (the end of a request).
    void notify(bool wake_waiters, bool at_once);
};

// The wake-up bytes of one decode step's tokens, written together when the scope ends (one per distinct
// descriptor): an event loop whose requests share a pipe then wakes once per step, not once per stream
// (the loop woke ~1.2 tokens at a time, each wake-up a context switch beside ggml's threads). Per thread.
class DeferredWakeups {
public:
    DeferredWakeups();
    ~DeferredWakeups();
    DeferredWakeups(const DeferredWakeups &) = delete;
    DeferredWakeups & operator=(const DeferredWakeups &) = delete;
    // Inside a scope on this thread: remember fd and return true; otherwise false (write it now).
    static bool defer(int fd);

private:
    std::vector<int> fds_;
    DeferredWakeups * outer_;
};

class Engine;  // woken by a cancel

class Request {
public:
    Request(std::shared_ptr<RequestState> state, std::shared_ptr<Engine> engine);
    ~Request();
    // Blocks until a chunk is ready; nullopt at the end. Rethrows an engine error.
    std::optional<Chunk> next();
    // Waits up to timeout_ms for a chunk or the end (until_done: for the end only); true if it came.
    // Lets a binding wait in slices and look for signals (Ctrl-C) in between.
    bool wait_for(bool until_done, int timeout_ms);
    // Output (or the end) came since the last poll(): a wake-up byte was written for it. Lets one pipe
    // serve many requests: its reader wakes only the requests that have something.
    bool signaled() const { return state_->signaled.load(); }
    // Non-blocking: all chunks ready now.
    std::vector<Chunk> poll();
    // Blocks until the request finished; all remaining chunks.
    std::vector<Chunk> wait();
    void cancel();
    bool done();
    void raise_if_failed();
    std::shared_ptr<RequestState> state() const { return state_; }

private:
    std::shared_ptr<RequestState> state_;
    std::shared_ptr<Engine> engine_;
};

}  // namespace lcl
