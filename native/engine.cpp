#include "engine.h"

#include <algorithm>
#include <future>
#include <stdexcept>

#include "batch.h"
#include "context.h"
#include "logging.h"
#include "prompt_cache.h"
#include "slot.h"

namespace lcl {

namespace {

std::mutex g_engines_mutex;
std::vector<std::weak_ptr<Engine>> g_engines;

}  // namespace

Engine::Engine(std::shared_ptr<Model> model, const EngineParams & params) : model_(std::move(model)), params_(params) {}

std::shared_ptr<Engine> Engine::create(std::shared_ptr<Model> model, const EngineParams & params,
                                       std::shared_ptr<Model> draft) {
    const ContextPlan plan = plan_context(*model, params, draft != nullptr);
    std::shared_ptr<Engine> engine(new Engine(std::move(model), plan.params));
    engine->context_ = std::make_unique<EngineContext>(*engine->model_, plan);
    llama_context * ctx = engine->ctx();
    engine->n_ctx_seq_ = static_cast<int>(llama_n_ctx_seq(ctx));
    engine->unified_ = plan.params.kv_unified == 1;
    engine->fill_gaps_ = plan.fill_gaps;
    engine->batch_invariant_ = plan.params.batch_invariant;
    engine->pool_ = static_cast<size_t>(llama_n_ctx(ctx));
    engine->n_swa_ = plan.params.swa_full ? 0 : std::max(0, static_cast<int>(llama_model_n_swa(engine->model_->get())));
    // llama.cpp may adjust the batch sizes (never more than the context): use what it chose.
    engine->params_.n_batch = static_cast<int>(llama_n_batch(ctx));
    engine->params_.n_ubatch = static_cast<int>(llama_n_ubatch(ctx));
    engine->params_.n_ctx = engine->n_ctx_seq_;
    const EngineParams & p = engine->params_;
    if (!p.mmproj_path.empty()) {
        engine->vision_ = std::make_unique<Vision>(p.mmproj_path, engine->model_->get(), p.n_threads,
                                                   engine->model_->params().n_gpu_layers != 0);
    }
    if (draft) {
        const int n_ctx_draft = p.draft_n_ctx > 0 ? p.draft_n_ctx : engine->n_ctx_seq_;
        engine->drafter_ = std::make_unique<Drafter>(std::move(draft), *engine->model_, n_ctx_draft, p.n_seq,
                                                     engine->unified_, p.n_batch, p.n_threads, plan.type_k, plan.type_v);
        if (engine->context_->pool() != nullptr) {
            engine->drafter_->attach_threadpool(engine->context_->pool(), engine->context_->batch_pool());
        }
    }
    engine->rules_ = std::make_unique<TokenRules>(engine->model_->vocab());
    if (!p.prompt_cache_dir.empty() && !p.embeddings) {
        engine->disk_ = std::make_unique<PromptCache>(p.prompt_cache_dir, static_cast<uint64_t>(p.prompt_cache_max_bytes),
                                                      static_cast<size_t>(p.prompt_cache_min_tokens),
                                                      prompt_cache_key(*engine->model_, p));
        engine->disk_exact_ = plan.recurrent || engine->n_swa_ > 0;
    }
    engine->batch_ = llama_batch_init(p.n_batch, 0, 1);
    for (int i = 0; i < p.n_seq; ++i) {
        engine->slots_.push_back(std::make_unique<Slot>(ctx, i));
    }
    engine->thread_ = std::thread([raw = engine.get()] { raw->loop(); });
    {
        std::lock_guard<std::mutex> lock(g_engines_mutex);
        g_engines.push_back(engine);
    }
    return engine;
}

Engine::~Engine() {
    shutdown();
    if (batch_.token != nullptr) {
        llama_batch_free(batch_);
    }
}

llama_context * Engine::ctx() const { return context_->get(); }

void Engine::shutdown() {
    queue_.stop();
    if (thread_.joinable()) {
        if (thread_.get_id() == std::this_thread::get_id()) {
            thread_.detach();
        } else {
            thread_.join();
        }
    }
    if (disk_) {
        disk_->flush();  // the saves of finished requests reach the disk before the process exits
    }
}

void Engine::wake() { queue_.wake(); }

int Engine::n_ctx_total() const { return static_cast<int>(llama_n_ctx(ctx())); }

int Engine::pooling() const { return static_cast<int>(llama_pooling_type(ctx())); }

Engine::Stats Engine::stats() {
    Stats copy;
    {
        std::lock_guard<std::mutex> lock(stats_mutex_);
        copy = stats_;
    }
    copy.slots_busy = slots_busy_.load();
    copy.queue_length = static_cast<long long>(queue_.size());
    return copy;
}

std::unique_ptr<Request> Engine::submit(RequestParams params, int notify_fd) {
    if (params_.embeddings) {
        throw std::invalid_argument("this engine computes embeddings (embeddings=True); it cannot generate");
    }
    if (params.media) {
        if (!vision_) {
            throw std::invalid_argument("this engine has no projector for images or audio (mmproj_path)");
        }
        if (batch_invariant_) {
            throw std::invalid_argument("images and audio are not supported with batch_invariant");
        }
        params.prompt = params.media->tokens;
        for (const auto & media : params.media->media) {
            const std::string error = vision_->batch_error(media, params_.n_batch, params_.n_ubatch);
            if (!error.empty()) {
                throw std::invalid_argument(error);
            }
        }
    }
    if (params.prompt.empty()) {
        throw std::invalid_argument("the prompt is empty: nothing to evaluate");
    }
    const int n_vocab = model_->n_vocab();
    for (size_t i = 0; i < params.prompt.size(); ++i) {
        const llama_token t = params.prompt[i];
        if (t < 0 && params.media) {
            const MediaChunk * m = params.media->starting_at(i);
            if (m != nullptr) {
                i += m->n_tokens - 1;  // placeholders
                continue;
            }
        }
        if (t < 0 || t >= n_vocab) {
            throw std::invalid_argument("prompt token " + std::to_string(t) + " is outside the vocabulary");
        }
    }
    const int n_prompt = static_cast<int>(params.prompt.size());
    if (n_prompt >= n_ctx_seq_) {
        throw std::invalid_argument("the prompt has " + std::to_string(n_prompt) + " tokens, more than fit in the context (n_ctx=" +
                                    std::to_string(n_ctx_seq_) + "); raise n_ctx or shorten the prompt");
    }
    if (params.max_tokens > 0 && n_prompt + params.max_tokens > n_ctx_seq_) {
        throw std::invalid_argument("the prompt (" + std::to_string(n_prompt) + " tokens) plus max_tokens (" +
                                    std::to_string(params.max_tokens) + ") exceeds the context (n_ctx=" +
                                    std::to_string(n_ctx_seq_) + "); raise n_ctx or lower max_tokens");
    }
    auto pending = std::make_unique<Pending>();
    // Built here so that an invalid grammar raises in the caller, with the parser's message.
    pending->sampler = std::make_unique<RequestSampler>(*model_, *rules_, params);
    auto request = std::make_shared<RequestState>();
    request->notify_fd = notify_fd;
    request->usage.prompt_tokens = n_prompt;
    if (params.max_tokens == 0) {
        // Nothing to generate: done at once, as llama-server answers n_predict=0 (the prompt is checked).
        request->finish("length");
        return std::make_unique<Request>(request, shared_from_this());
    }
    pending->request = request;
    pending->params = std::move(params);
    pending->t_submit = now_ms();
    queue_.push(std::move(pending));
    return std::make_unique<Request>(request, shared_from_this());
}

std::shared_ptr<MediaPrompt> Engine::tokenize_media(const std::string & text, const std::vector<std::string> & files) const {
    if (!vision_) {
        throw std::invalid_argument("image and audio input need the model's projector: pass mmproj_path (its mmproj GGUF)");
    }
    return vision_->tokenize(text, files);
}

void Engine::run_on_thread(std::function<void()> fn) {
    auto task = std::make_shared<EngineTask>();
    task->fn = std::move(fn);
    auto future = task->done.get_future();
    queue_.push(std::move(task));
    future.get();  // rethrows
}

void Engine::run_tasks() {
    for (auto & task : queue_.take_tasks()) {
        try {
            task->fn();
            task->done.set_value();
        } catch (...) {
            task->done.set_exception(std::current_exception());
        }
    }
}

void Engine::start_slot(Slot & slot, Pending && pending, size_t n_keep) {
    n_keep = slot.kv.truncate(n_keep);
    // One slot, no media, from a chunk boundary its cells are exact up to: the prompt is evaluated in a
    // cold run's chunks (plan_batch gives a lone prompt n_batch tokens a step), its cells become exact.
    const size_t granule = exact_granule();
    const bool exact = granule > 0 && !pending.params.media && n_keep % granule == 0 && n_keep == slot.kv.exact();
    const size_t reserve = unified_ ? reservation(pending.params) : 0;
    slot.begin(std::move(pending), n_keep, reserve);
    slot.exact_prompt = exact;
    slot.sampler->prime(slot.params.prompt);
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.prompt_tokens_reused += static_cast<long long>(n_keep);
}

void Engine::finish_slot(Slot & slot, const std::string & reason, const std::string & error) {
    if (slot.request) {
        // Release what was held back: an incomplete character, text that was not a stop string.
        Chunk tail;
        tail.text = slot.utf8.flush() + slot.stop->flush();
        if (error.empty() && !tail.text.empty()) {
            slot.request->push(std::move(tail));
        }
        const double t = now_ms();
        if (slot.generating()) {
            slot.request->usage.generation_ms = t - slot.t_prompt_done;
        } else {
            slot.request->usage.prompt_ms = t - slot.t_start;
        }
        slot.request->usage.completion_tokens = slot.n_decoded;
        slot.request->finish(reason, error);
        if (error.empty()) {
            save_to_disk(slot);
        }
    }
    slot.end(++uses_);
}

void Engine::emit_token(Slot & slot, llama_token token, int batch_index) {
    if (token == LLAMA_TOKEN_NULL) {  // RequestSampler::sample: the grammar is complete
        finish_slot(slot, "stop");
        return;
    }
    slot.n_decoded++;
    Chunk chunk;
    chunk.token = token;
    if (slot.sampler->wants_logprobs()) {
        slot.sampler->fill_logprobs(chunk, ctx(), batch_index, token);
    }
    if (slot.sampler->ends_generation(token)) {
        if (chunk.has_logprob) {
            slot.request->push(std::move(chunk));
        }
        finish_slot(slot, "stop");
        return;
    }
    auto result = slot.stop->push(slot.utf8.push(model_->token_to_piece(token, slot.sampler->special_as_text(token))));
    chunk.text = std::move(result.text);
    slot.request->push(std::move(chunk));
    if (result.stopped) {
        slot.request->stop_string = result.stop;
        finish_slot(slot, "stop");
    } else if (slot.params.max_tokens >= 0 && slot.n_decoded >= slot.params.max_tokens) {
        finish_slot(slot, "length");
    } else if (static_cast<int>(slot.kv.size()) + 1 >= n_ctx_seq_) {
        finish_slot(slot, "length");  // the context is full
    } else {
        slot.next_token = token;
    }
}

void Engine::reap_cancelled() {
    for (auto & slot : slots_) {
        if (slot->active() && slot->request->cancelled) {
            finish_slot(*slot, "cancelled");
        }
    }
}

void Engine::count_busy() {
    const auto busy = std::count_if(slots_.begin(), slots_.end(), [](const auto & slot) { return slot->active(); });
    slots_busy_.store(static_cast<int>(busy));
}

void Engine::loop() {
    // Slots change on this thread only, and count_busy() ran after the last change: the count is current.
    const auto any_active = [&] { return slots_busy_.load() > 0; };
    while (queue_.wait(any_active)) {
        run_tasks();
        // Cancelled requests leave first, so that a request sent right after cancelling another
        // (a regenerated answer) finds that slot's cache free instead of taking an empty slot.
        reap_cancelled();
        assign_pending();
        count_busy();
        try {
            step();
        } catch (const std::exception & e) {
            for (auto & slot : slots_) {
                if (slot->active()) {
                    finish_slot(*slot, "error", std::string("engine error: ") + e.what());
                }
            }
        }
        count_busy();
    }
    // Shutting down: nothing may wait forever on this engine.
    for (auto & slot : slots_) {
        if (slot->active()) {
            finish_slot(*slot, "cancelled", "the engine was shut down");
        }
    }
    std::deque<std::unique_ptr<Pending>> pending;
    std::deque<std::shared_ptr<EngineTask>> tasks;
    queue_.drain(pending, tasks);
    for (auto & p : pending) {
        p->request->finish("cancelled", "the engine was shut down");
    }
    for (auto & t : tasks) {
        t->done.set_exception(std::make_exception_ptr(std::runtime_error("the engine was shut down")));
    }
}

void shutdown_all_engines() {
    std::vector<std::shared_ptr<Engine>> engines;
    {
        std::lock_guard<std::mutex> lock(g_engines_mutex);
        for (auto & weak : g_engines) {
            if (auto e = weak.lock()) {
                engines.push_back(std::move(e));
            }
        }
        g_engines.clear();
    }
    static auto * kept = new std::vector<std::shared_ptr<Engine>>();  // never freed, on purpose
    for (auto & e : engines) {
        e->shutdown();
        if (!e->model()->params().rpc_servers.empty()) {
            kept->push_back(e);  // its KV cache is on an RPC server: see Model::keep_rpc_models_at_exit
        }
    }
    Model::keep_rpc_models_at_exit();
}

}  // namespace lcl
