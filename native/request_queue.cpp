#include "request_queue.h"

#include <stdexcept>

namespace lcl {

void RequestQueue::push(std::unique_ptr<Pending> pending) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopped_) {
            throw std::runtime_error("the engine has been shut down");
        }
        pending_.push_back(std::move(pending));
    }
    cv_.notify_all();
}

void RequestQueue::push(std::shared_ptr<EngineTask> task) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopped_) {
            throw std::runtime_error("the engine has been shut down");
        }
        tasks_.push_back(std::move(task));
    }
    cv_.notify_all();
}

Pending * RequestQueue::front() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!pending_.empty() && pending_.front()->request->cancelled) {
        pending_.front()->request->finish("cancelled");
        pending_.pop_front();
    }
    return pending_.empty() ? nullptr : pending_.front().get();
}

std::unique_ptr<Pending> RequestQueue::pop() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::unique_ptr<Pending> out = std::move(pending_.front());
    pending_.pop_front();
    return out;
}

std::deque<std::shared_ptr<EngineTask>> RequestQueue::take_tasks() {
    std::deque<std::shared_ptr<EngineTask>> out;
    std::lock_guard<std::mutex> lock(mutex_);
    out.swap(tasks_);
    return out;
}

size_t RequestQueue::size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return pending_.size();
}

bool RequestQueue::wait(const std::function<bool()> & busy) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return stopped_ || !pending_.empty() || !tasks_.empty() || busy(); });
    return !stopped_;
}

bool RequestQueue::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopped_) {
            return false;
        }
        stopped_ = true;
    }
    cv_.notify_all();
    return true;
}

void RequestQueue::drain(std::deque<std::unique_ptr<Pending>> & pending, std::deque<std::shared_ptr<EngineTask>> & tasks) {
    std::lock_guard<std::mutex> lock(mutex_);
    pending.swap(pending_);
    tasks.swap(tasks_);
}

}  // namespace lcl
