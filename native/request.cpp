#include "request.h"

#include <unistd.h>

#include <chrono>
#include <stdexcept>

#include "engine.h"

namespace lcl {

void RequestState::notify(bool wake_waiters) {
    if (wake_waiters) {
        cv.notify_all();
    }
    if (notify_fd >= 0 && !signaled.exchange(true)) {
        const char byte = 1;
        [[maybe_unused]] const auto n = ::write(notify_fd, &byte, 1);
    }
}

void RequestState::push(Chunk chunk) {
    bool wake = false;
    {
        std::lock_guard<std::mutex> lock(mutex);
        chunks.push_back(std::move(chunk));
        wake = chunk_waiters > 0;
    }
    notify(wake);
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
    notify(true);
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
