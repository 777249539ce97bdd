// The engine's inbox, as llama-server's server_queue: requests waiting for a slot and work to run on the
// engine thread, handed over under one mutex. Any thread pushes; the engine thread alone takes. It
// knows nothing of slots or decoding: the scheduler reads the front and takes it once placed.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>

#include "params.h"
#include "request.h"
#include "sampler.h"

namespace lcl {

struct StoredPrompt;

// A request accepted by Engine::submit() and waiting for a slot.
struct Pending {
    RequestParams params;
    std::unique_ptr<RequestSampler> sampler;
    std::shared_ptr<RequestState> request;
    double t_submit = 0;
    // The prompt cache on disk: looked up once; a saved prefix longer than any slot's, being read.
    bool looked_up = false;
    std::shared_future<std::shared_ptr<StoredPrompt>> stored;
};

// Work other than generation, run on the engine thread between steps.
struct EngineTask {
    std::function<void()> fn;
    std::promise<void> done;
};

class RequestQueue {
public:
    // Both throw std::runtime_error once the queue is stopped.
    void push(std::unique_ptr<Pending> pending);
    void push(std::shared_ptr<EngineTask> task);

    // The first request that waits, cancelled ones dropped (finished); null where none waits. The
    // pointer stays valid until pop(): only the engine thread takes.
    Pending * front();
    std::unique_ptr<Pending> pop();
    std::deque<std::shared_ptr<EngineTask>> take_tasks();
    size_t size();  // requests waiting

    // Blocks until there is something to do: a request, a task, `busy()` (asked under the lock), or
    // stop(). Returns false once stopped.
    bool wait(const std::function<bool()> & busy);
    void wake() { cv_.notify_all(); }
    // Stops taking work; returns false where it was stopped already.
    bool stop();
    // After stop(): everything left, to be failed by the caller.
    void drain(std::deque<std::unique_ptr<Pending>> & pending, std::deque<std::shared_ptr<EngineTask>> & tasks);

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::unique_ptr<Pending>> pending_;
    std::deque<std::shared_ptr<EngineTask>> tasks_;
    bool stopped_ = false;
};

}  // namespace lcl
