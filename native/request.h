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

// Shared between the engine thread and the Python handle.
struct RequestState {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<Chunk> chunks;
    bool done = false;
    std::string error;
    std::string finish_reason;
    std::string stop_string;
    int prompt_tokens = 0;
    int cached_tokens = 0;
    int completion_tokens = 0;
    int draft_n = 0;           // tokens drafted for this request (speculative decoding)
    int draft_n_accepted = 0;  // of which the model accepted
    double t_queued_ms = 0, t_prompt_ms = 0, t_gen_ms = 0;
    std::atomic<bool> cancelled{false};
    std::atomic<bool> signaled{false};
    int notify_fd = -1;
    // Callers blocked until a chunk comes (next(), wait_for(until_done=false)), under `mutex`. A caller
    // waiting for the end only is not woken per token: each wake-up takes a core from ggml's threads.
    int chunk_waiters = 0;

    void push(Chunk chunk);
    void finish(std::string reason, std::string error_text = {});
    void notify(bool wake_waiters);
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
