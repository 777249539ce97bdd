#include "request.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "engine.h"

namespace lcl {

namespace {

thread_local DeferredWakeups * t_wakeups = nullptr;

void write_wakeup(int fd) {
    const char byte = 1;
    [[maybe_unused]] const auto n = ::write(fd, &byte, 1);
}

}  // namespace

DeferredWakeups::DeferredWakeups() : outer_(t_wakeups) { t_wakeups = this; }

DeferredWakeups::~DeferredWakeups() {
    t_wakeups = outer_;
    for (const int fd : fds_) {
        write_wakeup(fd);
    }
}

bool DeferredWakeups::defer(int fd) {
    if (t_wakeups == nullptr) {
        return false;
    }
    auto & fds = t_wakeups->fds_;
    if (std::find(fds.begin(), fds.end(), fd) == fds.end()) {
        fds.push_back(fd);
    }
    return true;
}

void RequestState::notify(bool wake_waiters, bool at_once) {
    if (wake_waiters) {
        cv.notify_all();
    }
    if (notify_fd < 0) {
        return;
    }
    const bool first = !signaled.exchange(true);
    // The end is written at once, even if a token's byte waits in the step's scope: the reader learns
    // of it before anything the engine does after (a prompt saved to the disk cache).
    if (at_once || (first && !DeferredWakeups::defer(notify_fd))) {
        write_wakeup(notify_fd);
    }
}

void RequestState::push(Chunk chunk) {
    bool wake = false;
    {
        std::lock_guard<std::mutex> lock(mutex);
        chunks.push_back(std::move(chunk));
        wake = chunk_waiters > 0;
    }
    notify(wake, false);
}

void RequestState::finish(std::string reason, std::string error_text) {
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (done) {
            return;
        }
        finish_reason = std::move(reason);
        error = std::move(error_text);
        done = true;
    }
    notify(true, true);
}

Request::Request(std::shared_ptr<RequestState> state, std::shared_ptr<Engine> engine)
    : state_(std::move(state)), engine_(std::move(engine)) {}

Request::~Request() {
    // A handle dropped before the end (a closed stream) stops its sequence.
    cancel();
}

void Request::cancel() {
    if (!state_->done && !state_->cancelled.exchange(true)) {
        engine_->wake();
    }
}

bool Request::done() {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->done && state_->chunks.empty();
}

void Request::raise_if_failed() {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->done && !state_->error.empty() && state_->chunks.empty()) {
        throw std::runtime_error(state_->error);
    }
}

std::optional<Chunk> Request::next() {
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->chunk_waiters++;
    state_->cv.wait(lock, [&] { return !state_->chunks.empty() || state_->done; });
    state_->chunk_waiters--;
    if (!state_->chunks.empty()) {
        Chunk chunk = std::move(state_->chunks.front());
        state_->chunks.pop_front();
        return chunk;
    }
    if (!state_->error.empty()) {
        throw std::runtime_error(state_->error);
    }
    return std::nullopt;
}

bool Request::wait_for(bool until_done, int timeout_ms) {
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->chunk_waiters += until_done ? 0 : 1;
    const bool came = state_->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                                          [&] { return state_->done || (!until_done && !state_->chunks.empty()); });
    state_->chunk_waiters -= until_done ? 0 : 1;
    return came;
}

std::vector<Chunk> Request::poll() {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->signaled = false;  // before taking: a later push signals again
    std::vector<Chunk> out(std::make_move_iterator(state_->chunks.begin()),
                           std::make_move_iterator(state_->chunks.end()));
    state_->chunks.clear();
    return out;
}

std::vector<Chunk> Request::wait() {
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->cv.wait(lock, [&] { return state_->done; });
    std::vector<Chunk> out(std::make_move_iterator(state_->chunks.begin()),
                           std::make_move_iterator(state_->chunks.end()));
    state_->chunks.clear();
    if (!state_->error.empty()) {
        throw std::runtime_error(state_->error);
    }
    return out;
}

}  // namespace lcl
