#include "engine.h"
#include "embeddings.h"

#include "ggml-cpu.h"
#include "llama-context.h"  // llama.cpp internal: the scheduler, for batch_invariant

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <future>
#include <limits>
#include <set>

#include "common.h"
#include "grammar.h"
#include "logging.h"

namespace lcl {

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------------------
// RequestState / Request

void RequestState::notify() {
    cv.notify_all();
    if (notify_fd >= 0 && !signaled.exchange(true)) {
        const char byte = 1;
        [[maybe_unused]] const auto n = ::write(notify_fd, &byte, 1);
    }
}

void RequestState::push(Chunk chunk) {
    {
        std::lock_guard<std::mutex> lock(mutex);
        chunks.push_back(std::move(chunk));
    }
    notify();
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
    notify();
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
    state_->cv.wait(lock, [&] { return !state_->chunks.empty() || state_->done; });
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
    return state_->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                               [&] { return state_->done || (!until_done && !state_->chunks.empty()); });
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

// ---------------------------------------------------------------------------------------
// Engine

struct CachedMedia {
    size_t offset = 0;
    size_t n_tokens = 0;
    std::string id;
};

// Drops the media that reach past `end` (their KV is gone).
void forget_media_after(std::vector<CachedMedia> & media, size_t end) {
    media.erase(std::remove_if(media.begin(), media.end(),
                               [&](const CachedMedia & m) { return m.offset + m.n_tokens > end; }),
                media.end());
}

struct Engine::Slot {
    int id = 0;
    std::vector<llama_token> cache;  // tokens whose KV is in this sequence, in position order
    std::vector<CachedMedia> cached_media;  // media in it (their positions hold placeholders), by offset
    bool active = false;
    bool generating = false;
    std::shared_ptr<RequestState> state;
    RequestParams params;
    common_sampler_ptr sampler;
    std::set<llama_token> render_special;
    size_t n_prompt_done = 0;
    llama_token next_token = LLAMA_TOKEN_NULL;
    int n_decoded = 0;
    int i_batch = -1;
    int n_take = 0;       // tokens this slot puts in the step being built
    bool filler = false;  // holds a filler token in that step
    Utf8Assembler utf8;
    std::unique_ptr<StopMatcher> stop;
    // Plain greedy decoding needs no sampler chain: an argmax over the logits, as llama.cpp's
    // benchmarks do, instead of sorting the whole vocabulary every token.
    bool greedy = false;
    double t_start = 0, t_prompt_done = 0;
    long long last_used = 0;
    size_t reserved = 0;  // unified pool: cells this request may come to hold
    // Speculative decoding: this step's draft (decoded after next_token), where it came from, this
    // request's acceptance of each source, and when to try the draft model again after it stopped paying.
    std::vector<llama_token> draft;
    bool draft_from_model = false;
    llama_token shadow = LLAMA_TOKEN_NULL;  // a lookup draft's first token not used: checked for free
    Acceptance lookup_acceptance, model_acceptance;
    int probe_in = 16, probe_every = 16;
};

struct Engine::Task {
    std::function<void()> fn;
    std::promise<void> done;
};

namespace {

std::mutex g_engines_mutex;
std::vector<std::weak_ptr<Engine>> g_engines;

size_t common_prefix(const std::vector<llama_token> & a, const std::vector<llama_token> & b) {
    const size_t n = std::min(a.size(), b.size());
    size_t i = 0;
    while (i < n && a[i] == b[i]) {
        ++i;
    }
    return i;
}

common_params_sampling to_common(const SamplingParams & s, const llama_vocab * vocab, bool ignore_eos) {
    common_params_sampling p;
    p.ignore_eos = ignore_eos;
    if (ignore_eos) {
        for (llama_token t = 0; t < llama_vocab_n_tokens(vocab); ++t) {
            if (llama_vocab_is_eog(vocab, t)) {
                p.logit_bias.push_back({t, -std::numeric_limits<float>::infinity()});
            }
        }
    }
    p.seed = s.seed < 0 ? LLAMA_DEFAULT_SEED : static_cast<uint32_t>(s.seed);
    p.temp = s.temperature;
    p.top_k = s.top_k;
    p.top_p = s.top_p;
    p.min_p = s.min_p;
    p.typ_p = s.typical_p;
    p.penalty_repeat = s.repeat_penalty;
    p.penalty_last_n = s.repeat_last_n;
    p.penalty_freq = s.frequency_penalty;
    p.penalty_present = s.presence_penalty;
    p.mirostat = s.mirostat;
    p.mirostat_tau = s.mirostat_tau;
    p.mirostat_eta = s.mirostat_eta;
    p.n_prev = std::max(64, s.repeat_last_n);
    for (const auto & [token, bias] : s.logit_bias) {
        if (token < 0 || token >= llama_vocab_n_tokens(vocab)) {
            throw std::invalid_argument("logit_bias names token " + std::to_string(token) +
                                        ", outside the vocabulary (0.." +
                                        std::to_string(llama_vocab_n_tokens(vocab) - 1) + ")");
        }
        p.logit_bias.push_back({token, bias});
    }
    if (!s.grammar.empty()) {
        const std::string error = grammar_error(vocab, s.grammar);
        if (!error.empty()) {
            throw std::invalid_argument("invalid grammar: " + error);
        }
        p.grammar = common_grammar(s.grammar_is_tool_call ? COMMON_GRAMMAR_TYPE_TOOL_CALLS : COMMON_GRAMMAR_TYPE_USER,
                                   s.grammar);
        p.grammar_lazy = s.grammar_lazy;
        p.generation_prompt = s.generation_prompt;
    }
    for (const auto & word : s.preserved_tokens) {
        const auto ids = common_tokenize(vocab, word, false, true);
        if (ids.size() == 1) {
            p.preserved_tokens.insert(ids[0]);
        }
    }
    for (const auto & t : s.grammar_triggers) {
        if (t.type < COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN || t.type > COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL) {
            throw std::invalid_argument("unknown grammar trigger type " + std::to_string(t.type));
        }
        const auto type = static_cast<common_grammar_trigger_type>(t.type);
        if (type == COMMON_GRAMMAR_TRIGGER_TYPE_WORD) {
            const auto ids = common_tokenize(vocab, t.value, false, true);
            if (ids.size() == 1 && p.preserved_tokens.count(ids[0]) != 0) {
                p.grammar_triggers.push_back({COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN, t.value, ids[0]});
                continue;
            }
        }
        p.grammar_triggers.push_back({type, t.value, t.token});
    }
    if (p.grammar_lazy && p.grammar_triggers.empty()) {
        throw std::invalid_argument("a lazy grammar needs at least one trigger");
    }
    return p;
}

void fill_logprobs(Chunk & chunk, llama_context * ctx, const Model & model, int idx, llama_token token, int n_top) {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        return;
    }
    const int n_vocab = model.n_vocab();
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n_vocab; ++i) {
        max_logit = std::max(max_logit, logits[i]);
    }
    double sum = 0.0;
    for (int i = 0; i < n_vocab; ++i) {
        sum += std::exp(static_cast<double>(logits[i] - max_logit));
    }
    const float log_z = max_logit + static_cast<float>(std::log(sum));
    chunk.logprob = logits[token] - log_z;
    chunk.has_logprob = true;
    if (n_top <= 0) {
        return;
    }
    n_top = std::min(n_top, n_vocab);
    std::vector<int> ids(n_vocab);
    for (int i = 0; i < n_vocab; ++i) {
        ids[i] = i;
    }
    std::partial_sort(ids.begin(), ids.begin() + n_top, ids.end(),
                      [&](int a, int b) { return logits[a] > logits[b]; });
    chunk.top.reserve(n_top);
    for (int i = 0; i < n_top; ++i) {
        chunk.top.push_back({ids[i], model.token_to_piece(ids[i], true), logits[ids[i]] - log_z});
    }
}

}  // namespace

Engine::Engine(std::shared_ptr<Model> model, const EngineParams & params) : model_(std::move(model)), params_(params) {}

std::shared_ptr<Engine> Engine::create(std::shared_ptr<Model> model, const EngineParams & params_in,
                                       std::shared_ptr<Model> draft) {
    if (model->params().vocab_only) {
        throw std::invalid_argument("the model was loaded with vocab_only=True: it can tokenize but not generate");
    }
    EngineParams params = params_in;
    if (params.n_seq < 1 || params.n_seq > 256) {
        throw std::invalid_argument("n_seq must be between 1 and 256, got " + std::to_string(params.n_seq));
    }
    if (params.n_ctx == 0) {
        params.n_ctx = model->n_ctx_train();
    } else if (params.n_ctx < 0) {
        params.n_ctx = std::min(4096, model->n_ctx_train());  // a sensible default, not 32k of KV cache
    }
    if (params.embeddings) {
        params = embedding_params(params);
    }
    if (params.n_batch <= 0 || params.n_ubatch <= 0) {
        throw std::invalid_argument("n_batch and n_ubatch must be positive");
    }
    if (params.batch_invariant) {
        if (model->params().repack) {
            throw std::invalid_argument("batch_invariant needs the model loaded without repacked weights (repack=False): "
                                        "their kernels differ between one column and several");
        }
        if (params.flash_attn == 0) {
            throw std::invalid_argument("batch_invariant needs flash attention (its reference path computes each row alone)");
        }
        params.flash_attn = 1;
        params.n_ubatch = params.n_batch = std::max(params.n_batch, 4);
    }
    // Every generating slot decodes a token in each step, so a step may hold n_seq tokens even where
    // the prompt chunk (n_batch) is smaller; llama_decode aborts the process beyond its n_batch.
    params.n_batch = std::max(params.n_batch, params.n_seq);
    params.n_ubatch = std::min(std::max(params.n_ubatch, params.n_seq), params.n_batch);
    if (params.n_threads <= 0) {
        params.n_threads = std::max(1, common_cpu_get_num_math());
    }
    if (params.n_threads_batch <= 0) {
        params.n_threads_batch = params.n_threads;
    }
    // A filler token would advance a recurrent state that cannot be rolled back, and such a state is one
    // per sequence anyway: no unified pool for those.
    const bool recurrent = llama_model_is_recurrent(model->get()) || llama_model_is_hybrid(model->get());
    if (params.kv_unified == 1 && params.batch_invariant) {
        throw std::invalid_argument("batch_invariant needs a KV cache per slot (kv_unified=False): in a shared pool, "
                                    "which cells a sequence gets changes the order of its sums");
    }
    const bool unified = !params.embeddings && (params.kv_unified < 0 ? !params.batch_invariant && !recurrent
                                                                       : params.kv_unified == 1);
    params.kv_unified = unified ? 1 : 0;
    std::shared_ptr<Engine> engine(new Engine(std::move(model), params));

    auto cparams = llama_context_default_params();
    // n_ctx is the longest request either way: a pool of that size, or that much per slot.
    cparams.n_ctx = static_cast<uint32_t>(params.n_ctx) * static_cast<uint32_t>(unified ? 1 : params.n_seq);
    cparams.n_batch = params.n_batch;
    cparams.n_ubatch = params.n_ubatch;
    cparams.n_seq_max = params.n_seq;
    if (params.embeddings) {
        // Many texts share one batch, each its own sequence in one unified cache of n_ctx cells
        // (cleared before every batch), as llama.cpp's llama-embedding does.
        // No more sequences than tokens in a batch: llama.cpp reserves an output per sequence at creation
        // and aborts if that exceeds n_batch outputs.
        cparams.n_seq_max = std::min<uint32_t>(llama_max_parallel_sequences(), params.n_batch);
    }
    cparams.n_threads = params.n_threads;
    cparams.n_threads_batch = params.n_threads_batch;
    cparams.type_k = params.f16_kv ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cparams.type_v = cparams.type_k;
    cparams.flash_attn_type = params.flash_attn < 0   ? LLAMA_FLASH_ATTN_TYPE_AUTO
                              : params.flash_attn == 0 ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                       : LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cparams.rope_freq_base = params.rope_freq_base;
    cparams.rope_freq_scale = params.rope_freq_scale;
    cparams.embeddings = params.embeddings;
    cparams.pooling_type = static_cast<enum llama_pooling_type>(params.pooling);
    cparams.swa_full = params.swa_full;
    cparams.kv_unified = params.embeddings || unified;
    cparams.offload_kqv = params.offload_kqv;
    cparams.no_perf = true;

    ErrorCapture capture;
    engine->ctx_.reset(llama_init_from_model(engine->model_->get(), cparams));
    if (engine->ctx_ && params.embeddings && params.pooling < 0 &&
        llama_pooling_type(engine->ctx_.get()) == LLAMA_POOLING_TYPE_NONE) {
        // A generative model has no pooling of its own: average the token embeddings.
        cparams.pooling_type = LLAMA_POOLING_TYPE_MEAN;
        engine->ctx_.reset(llama_init_from_model(engine->model_->get(), cparams));
    }
    if (engine->ctx_ && params.embeddings && llama_pooling_type(engine->ctx_.get()) == LLAMA_POOLING_TYPE_RANK) {
        throw std::invalid_argument("this is a reranking model (rank pooling): it scores query-document pairs, "
                                    "it does not embed texts; pass pooling mean, cls or last to embed anyway");
    }
    if (!engine->ctx_) {
        throw std::runtime_error("failed to create the llama.cpp context (n_ctx=" + std::to_string(cparams.n_ctx) +
                                 "): " + capture.message("out of memory?"));
    }
    if (!params.lora_path.empty()) {
        std::error_code ec;
        if (!std::filesystem::exists(params.lora_path, ec)) {
            throw FileNotFound("LoRA adapter not found: " + params.lora_path);
        }
        engine->lora_.reset(llama_adapter_lora_init(engine->model_->get(), params.lora_path.c_str()));
        if (!engine->lora_) {
            throw std::invalid_argument("failed to load LoRA adapter " + params.lora_path + ": " +
                                        capture.message("not a LoRA GGUF for this model"));
        }
        llama_adapter_lora * adapters[] = {engine->lora_.get()};
        float scales[] = {params.lora_scale};
        if (llama_set_adapters_lora(engine->ctx_.get(), adapters, 1, scales) != 0) {
            throw std::invalid_argument("failed to apply LoRA adapter " + params.lora_path);
        }
    }
    if (!params.mmproj_path.empty()) {
        if (params.embeddings) {
            throw std::invalid_argument("a projector (mmproj_path) is for generation, not for embeddings");
        }
        engine->vision_ = std::make_unique<Vision>(params.mmproj_path, engine->model_->get(), params.n_threads,
                                                   engine->model_->params().n_gpu_layers != 0);
    }
    if (!params.embeddings && ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU) != nullptr) {
        ggml_threadpool_params tpp;
        ggml_threadpool_params_init(&tpp, params.n_threads);
        ggml_threadpool_params tpp_batch;
        ggml_threadpool_params_init(&tpp_batch, params.n_threads_batch);
        if (!ggml_threadpool_params_match(&tpp, &tpp_batch)) {
            engine->pools_.batch = ggml_threadpool_new(&tpp_batch);
            tpp.paused = true;  // as llama.cpp's common: the batch pool starts, the other waits for work
        }
        engine->pools_.gen = ggml_threadpool_new(&tpp);
        if (engine->pools_.gen != nullptr) {
            llama_attach_threadpool(engine->ctx_.get(), engine->pools_.gen, engine->pools_.batch);
        }
    }
    engine->n_ctx_seq_ = static_cast<int>(llama_n_ctx_seq(engine->ctx_.get()));
    engine->batch_invariant_ = params.batch_invariant;
    if (params.batch_invariant) {
        // llama.h does not reach the context's CPU backend; its scheduler (llama.cpp internal) does.
        // The reference mode computes flash attention one query row at a time, with no split of
        // the KV cells that depends on the batch, and fuses no ops.
        ggml_backend_sched_t sched = engine->ctx_->get_sched();
        for (int i = 0; i < ggml_backend_sched_get_n_backends(sched); ++i) {
            ggml_backend_t backend = ggml_backend_sched_get_backend(sched, i);
            if (!ggml_backend_is_cpu(backend)) {
                throw std::invalid_argument(std::string("batch_invariant is for the CPU backend; this context also runs on ") +
                                            ggml_backend_name(backend) + " (set n_gpu_layers=0)");
            }
            ggml_backend_cpu_set_use_ref(backend, true);
        }
    }
    // In one pool, llama.cpp computes any set of sequences in one pass: no fillers needed.
    engine->unified_ = unified;
    engine->pool_ = static_cast<size_t>(llama_n_ctx(engine->ctx_.get()));
    engine->fill_gaps_ = !recurrent && !unified;
    if (params.batch_invariant && recurrent) {
        throw std::invalid_argument("batch_invariant is not supported for recurrent or hybrid models (their state cannot take a filler token)");
    }
    if (draft || params.prompt_lookup) {
        if (params.embeddings) {
            throw std::invalid_argument("speculative decoding (a draft model, prompt lookup) is for generation, not embeddings");
        }
        if (recurrent) {
            throw std::invalid_argument("speculative decoding needs a KV cache that can drop the drafts the model "
                                        "refuses; a recurrent or hybrid model's state cannot");
        }
        if (params.draft_max < 1 || params.draft_min < 0 || params.draft_min > params.draft_max) {
            throw std::invalid_argument("speculative decoding needs 1 <= draft_max and 0 <= draft_min <= draft_max, got "
                                        "draft_max=" + std::to_string(params.draft_max) +
                                        ", draft_min=" + std::to_string(params.draft_min));
        }
        if (!(params.draft_p_min >= 0.0f && params.draft_p_min <= 1.0f)) {
            throw std::invalid_argument("draft_p_min must be between 0 and 1");
        }
        // A step holds every slot's next token and drafts: the batch must hold them.
        engine->params_.draft_max = std::min(params.draft_max, SpecCost::kMaxBatch - 1);
    }
    if (draft) {
        const int n_ctx_draft = params.draft_n_ctx > 0 ? params.draft_n_ctx : engine->n_ctx_seq_;
        engine->drafter_ = std::make_unique<Drafter>(std::move(draft), *engine->model_, n_ctx_draft, params.n_seq,
                                                     unified, params.n_batch, params.n_threads, params.f16_kv);
        if (engine->pools_.gen != nullptr) {
            engine->drafter_->attach_threadpool(engine->pools_.gen, engine->pools_.batch);
        }
    }
    engine->n_swa_ = params.swa_full ? 0 : std::max(0, static_cast<int>(llama_model_n_swa(engine->model_->get())));
    // llama.cpp may adjust the batch sizes (never more than the context): use what it chose.
    engine->params_.n_batch = static_cast<int>(llama_n_batch(engine->ctx_.get()));
    engine->params_.n_ubatch = static_cast<int>(llama_n_ubatch(engine->ctx_.get()));
    engine->params_.n_ctx = engine->n_ctx_seq_;
    {
        const llama_vocab * vocab = engine->model_->vocab();
        engine->suppressed_.assign(static_cast<size_t>(llama_vocab_n_tokens(vocab)), 0);
        int32_t n_suppress = 0;
        const llama_token * suppress = llama_vocab_get_suppress_tokens(vocab, &n_suppress);
        for (int32_t i = 0; i < n_suppress; ++i) {
            engine->suppressed_[suppress[i]] = 1;
        }
        for (llama_token t = 0; t < llama_vocab_n_tokens(vocab); ++t) {
            if (llama_vocab_is_eog(vocab, t) && engine->suppressed_[t] == 0) {
                engine->suppressed_[t] = 2;
            }
        }
    }
    engine->batch_ = llama_batch_init(engine->params_.n_batch, 0, 1);
    for (int i = 0; i < params.n_seq; ++i) {
        auto slot = std::make_unique<Slot>();
        slot->id = i;
        engine->slots_.push_back(std::move(slot));
    }
    engine->thread_ = std::thread([raw = engine.get()] { raw->loop(); });
    {
        std::lock_guard<std::mutex> lock(g_engines_mutex);
        g_engines.push_back(engine);
    }
    return engine;
}

Engine::ThreadPools::~ThreadPools() {
    if (gen != nullptr) {
        ggml_threadpool_free(gen);
    }
    if (batch != nullptr) {
        ggml_threadpool_free(batch);
    }
}

Engine::~Engine() {
    shutdown();
    if (batch_.token != nullptr) {
        llama_batch_free(batch_);
    }
}

void Engine::shutdown() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_ && !thread_.joinable()) {
            return;
        }
        stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) {
        if (thread_.get_id() == std::this_thread::get_id()) {
            thread_.detach();
        } else {
            thread_.join();
        }
    }
}

void Engine::wake() { cv_.notify_all(); }

int Engine::n_ctx_total() const { return static_cast<int>(llama_n_ctx(ctx_.get())); }

int Engine::n_threads() const { return params_.n_threads; }

Engine::Stats Engine::stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
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
    Pending pending;
    {
        // Built here so that an invalid grammar raises in the caller, with the parser's message.
        ErrorCapture capture;
        auto sparams = to_common(params.sampling, model_->vocab(), params.ignore_eos);
        try {
            pending.sampler.reset(common_sampler_init(model_->get(), sparams));
        } catch (const std::exception & e) {
            throw std::invalid_argument(std::string("invalid grammar: ") + capture.message(e.what()));
        }
        if (!pending.sampler) {
            throw std::invalid_argument("invalid sampling parameters: " + capture.message("sampler initialisation failed"));
        }
    }
    auto state = std::make_shared<RequestState>();
    state->notify_fd = notify_fd;
    state->prompt_tokens = n_prompt;
    if (params.max_tokens == 0) {
        // Nothing to generate: done at once, as llama-server answers n_predict=0 (the prompt is checked).
        state->finish("length");
        return std::make_unique<Request>(state, shared_from_this());
    }
    pending.state = state;
    pending.params = std::move(params);
    pending.t_submit = now_ms();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) {
            throw std::runtime_error("the engine has been shut down");
        }
        pending_.push_back(std::move(pending));
    }
    cv_.notify_all();
    return std::make_unique<Request>(state, shared_from_this());
}

std::shared_ptr<MediaPrompt> Engine::tokenize_media(const std::string & text, const std::vector<std::string> & files) const {
    if (!vision_) {
        throw std::invalid_argument("image and audio input need the model's projector: pass mmproj_path (its mmproj GGUF)");
    }
    return vision_->tokenize(text, files);
}

void Engine::run_on_thread(std::function<void()> fn) {
    auto task = std::make_shared<Task>();
    task->fn = std::move(fn);
    auto future = task->done.get_future();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) {
            throw std::runtime_error("the engine has been shut down");
        }
        tasks_.push_back(task);
    }
    cv_.notify_all();
    future.get();  // rethrows
}

void Engine::run_tasks() {
    std::deque<std::shared_ptr<Task>> tasks;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        tasks.swap(tasks_);
    }
    for (auto & task : tasks) {
        try {
            task->fn();
            task->done.set_value();
        } catch (...) {
            task->done.set_exception(std::current_exception());
        }
    }
}

std::vector<std::vector<llama_token>> Engine::cached_prompts() {
    std::vector<std::vector<llama_token>> out;
    run_on_thread([&] {
        for (const auto & slot : slots_) {
            out.push_back(slot->cache);
        }
    });
    return out;
}

void Engine::clear_cache() {
    run_on_thread([&] {
        for (auto & slot : slots_) {
            if (!slot->active) {
                llama_memory_seq_rm(llama_get_memory(ctx_.get()), slot->id, -1, -1);
                slot->cache.clear();
                slot->cached_media.clear();
            }
        }
    });
}

namespace {
void check_slot_index(int slot, size_t n) {
    if (slot < 0 || static_cast<size_t>(slot) >= n) {
        throw std::out_of_range("slot " + std::to_string(slot) + " does not exist (the engine has " + std::to_string(n) +
                                " slots)");
    }
}
}  // namespace

std::vector<std::vector<float>> Engine::evaluate(int slot_id, const std::vector<llama_token> & tokens, bool all_logits) {
    if (params_.embeddings) {
        throw std::invalid_argument("this engine computes embeddings (embeddings=True); it has no logits to evaluate");
    }
    check_slot_index(slot_id, slots_.size());
    const int n_vocab = model_->n_vocab();
    for (auto t : tokens) {
        if (t < 0 || t >= n_vocab) {
            throw std::invalid_argument("token " + std::to_string(t) + " is outside the vocabulary");
        }
    }
    std::vector<std::vector<float>> out;
    run_on_thread([&] {
        Slot & slot = *slots_[slot_id];
        if (slot.active) {
            throw std::runtime_error("slot " + std::to_string(slot_id) + " is busy with a request");
        }
        if (static_cast<int>(slot.cache.size() + tokens.size()) > n_ctx_seq_) {
            throw std::invalid_argument("evaluating " + std::to_string(tokens.size()) + " more tokens would exceed n_ctx (" +
                                        std::to_string(n_ctx_seq_) + ")");
        }
        if (unified_ && !make_room(slot.cache.size() + tokens.size(), &slot)) {
            throw std::runtime_error("the KV pool is held by running requests: evaluate when they are done");
        }
        size_t done = 0;
        while (done < tokens.size()) {
            batch_.n_tokens = 0;
            const size_t left = tokens.size() - done;
            const size_t end = done + (batch_invariant_ ? invariant_chunk(left) : std::min(left, static_cast<size_t>(params_.n_batch)));
            int n_outputs = 0;
            for (size_t i = done; i < end; ++i) {
                const bool output = all_logits || i + 1 == tokens.size();
                batch_add(batch_, tokens[i], static_cast<llama_pos>(slot.cache.size() + (i - done)), slot.id, output);
                n_outputs += output;
            }
            // As in step_invariant(): no product of one row (room permitting: a full context has none).
            const auto next = static_cast<llama_pos>(slot.cache.size() + (end - done));
            const bool tail = batch_invariant_ && (n_outputs == 1 || batch_.n_tokens == 1) && next < n_ctx_seq_;
            if (tail) {
                batch_add(batch_, 0, next, slot.id, true);
            }
            ErrorCapture capture;
            const int rc = llama_decode(ctx_.get(), batch_);
            if (tail) {
                llama_memory_seq_rm(llama_get_memory(ctx_.get()), slot.id, next, -1);
                batch_.n_tokens--;
            }
            if (rc != 0) {
                throw std::runtime_error("llama_decode failed (code " + std::to_string(rc) + "): " + capture.message("no details"));
            }
            for (int i = 0; i < batch_.n_tokens; ++i) {
                if (batch_.logits[i]) {
                    const float * row = llama_get_logits_ith(ctx_.get(), i);
                    out.emplace_back(row, row + n_vocab);
                }
            }
            slot.cache.insert(slot.cache.end(), tokens.begin() + static_cast<long>(done), tokens.begin() + static_cast<long>(end));
            done = end;
        }
        slot.last_used = ++uses_;
    });
    return out;
}

void Engine::kv_remove(int slot_id, int p0, int p1) {
    check_slot_index(slot_id, slots_.size());
    run_on_thread([&] {
        Slot & slot = *slots_[slot_id];
        if (slot.active) {
            throw std::runtime_error("slot " + std::to_string(slot_id) + " is busy with a request");
        }
        const int size = static_cast<int>(slot.cache.size());
        const int from = std::clamp(p0, 0, size);
        const int to = p1 < 0 ? size : std::clamp(p1, from, size);
        if (from == to) {
            return;
        }
        if (!llama_memory_seq_rm(llama_get_memory(ctx_.get()), slot.id, from, to)) {
            throw std::runtime_error("this model's memory cannot remove a part of a sequence");
        }
        if (to < size) {
            // Later tokens move down so that positions stay contiguous.
            llama_memory_seq_add(llama_get_memory(ctx_.get()), slot.id, to, -1, from - to);
        }
        slot.cache.erase(slot.cache.begin() + from, slot.cache.begin() + to);
        // Media from `from` on are forgotten: their placeholders no longer count as a cached prefix.
        forget_media_after(slot.cached_media, static_cast<size_t>(from));
    });
}

void Engine::kv_copy(int src, int dst) {
    check_slot_index(src, slots_.size());
    check_slot_index(dst, slots_.size());
    if (src == dst) {
        return;
    }
    run_on_thread([&] {
        if (slots_[src]->active || slots_[dst]->active) {
            throw std::runtime_error("both slots must be idle to copy");
        }
        llama_memory_t mem = llama_get_memory(ctx_.get());
        llama_memory_seq_rm(mem, dst, -1, -1);
        llama_memory_seq_cp(mem, src, dst, -1, -1);
        slots_[dst]->cache = slots_[src]->cache;
        slots_[dst]->cached_media = slots_[src]->cached_media;
    });
}

std::vector<llama_token> Engine::slot_tokens(int slot_id) {
    check_slot_index(slot_id, slots_.size());
    std::vector<llama_token> out;
    run_on_thread([&] { out = slots_[slot_id]->cache; });
    return out;
}

bool Engine::assign_pending() {
    std::unique_lock<std::mutex> lock(mutex_);
    bool assigned = false;
    while (!pending_.empty()) {
        // Drop requests cancelled while queued.
        if (pending_.front().state->cancelled) {
            pending_.front().state->finish("cancelled");
            pending_.pop_front();
            continue;
        }
        // The slot that costs least: prompt tokens still to evaluate plus cached tokens thrown
        // away (another conversation may come back for them). A follow-up turn lands on its own
        // conversation's slot; an unrelated prompt takes an empty or least recently used one.
        // In the unified pool a prefix cached in any slot can be shared (llama.cpp's seq_cp tags the same
        // cells with a second sequence: no copy, no memory): a repeated or regenerated prompt reuses it
        // without taking the slot, and the tail, of the conversation that holds it.
        const auto & request = pending_.front().params;
        const auto & prompt = request.prompt;
        Slot * donor = nullptr;
        size_t donor_prefix = 0;
        if (unified_) {
            for (auto & slot : slots_) {
                const size_t prefix = reusable_prefix(*slot, request);
                if (prefix > donor_prefix) {
                    donor = slot.get();
                    donor_prefix = prefix;
                }
            }
        }
        Slot * best = nullptr;
        size_t best_cost = 0;
        size_t best_prefix = 0;
        for (auto & slot : slots_) {
            if (slot->active) {
                continue;
            }
            const size_t prefix = reusable_prefix(*slot, request);
            const size_t cost = (prompt.size() - std::max(prefix, donor_prefix)) + (slot->cache.size() - prefix);
            if (best == nullptr || cost < best_cost ||
                (cost == best_cost && (prefix > best_prefix || (prefix == best_prefix && slot->last_used < best->last_used)))) {
                best = slot.get();
                best_cost = cost;
                best_prefix = prefix;
            }
        }
        if (best == nullptr) {
            break;
        }
        bool share = donor != nullptr && donor_prefix > best_prefix;
        if (unified_) {
            const size_t cells = reservation(request);
            if (share && !make_room(cells - donor_prefix, best, donor)) {
                // No room beside the conversation that holds the prefix: where it is idle, the request takes
                // its slot (its tail gives way) rather than evicting it whole.
                share = false;
                if (!donor->active) {
                    best = donor;
                    best_prefix = donor_prefix;
                }
            }
            if (!share && !make_room(cells, best)) {
                break;  // the running requests hold the pool: this one waits for one of them to end
            }
        }
        if (share) {
            llama_memory_t mem = llama_get_memory(ctx_.get());
            llama_memory_seq_rm(mem, best->id, -1, -1);
            llama_memory_seq_cp(mem, donor->id, best->id, 0, static_cast<llama_pos>(donor_prefix));
            best->cache.assign(donor->cache.begin(), donor->cache.begin() + static_cast<long>(donor_prefix));
            best->cached_media = donor->cached_media;
            forget_media_after(best->cached_media, donor_prefix);
            best_prefix = donor_prefix;
        }
        Pending pending = std::move(pending_.front());
        pending_.pop_front();
        lock.unlock();
        start_slot(*best, std::move(pending), best_prefix);
        assigned = true;
        lock.lock();
    }
    return assigned;
}

size_t Engine::reservation(const RequestParams & request) const {
    const size_t n = request.prompt.size();
    const size_t most = static_cast<size_t>(n_ctx_seq_);
    return request.max_tokens < 0 ? most : std::min(most, n + static_cast<size_t>(request.max_tokens));
}

size_t Engine::cells_in_use() const {
    size_t used = 0;
    for (const auto & slot : slots_) {
        used += slot->active ? std::max(slot->reserved, slot->cache.size()) : slot->cache.size();
    }
    return used;
}

void Engine::evict(Slot & slot) {
    llama_memory_seq_rm(llama_get_memory(ctx_.get()), slot.id, -1, -1);
    slot.cache.clear();
    slot.cached_media.clear();
}

bool Engine::make_room(size_t cells, const Slot * keep, const Slot * protect) {
    // `keep`'s own cache gives way to the request that takes it; `protect`'s is needed (a shared prefix).
    size_t used = cells_in_use() - (keep != nullptr && !keep->active ? keep->cache.size() : 0);
    while (used + cells > pool_) {
        Slot * victim = nullptr;
        for (auto & slot : slots_) {
            if (!slot->active && slot.get() != keep && slot.get() != protect && !slot->cache.empty() &&
                (victim == nullptr || slot->last_used < victim->last_used)) {
                victim = slot.get();
            }
        }
        if (victim == nullptr) {
            return false;
        }
        used -= victim->cache.size();
        evict(*victim);
    }
    return true;
}

size_t Engine::reusable_prefix(const Slot & slot, const RequestParams & request) const {
    const auto & prompt = request.prompt;
    size_t n = common_prefix(slot.cache, prompt);
    // A media position counts only as a whole chunk, cached from the same file as the prompt's.
    for (size_t i = 0; i < n; ++i) {
        if (slot.cache[i] >= 0) {
            continue;
        }
        const MediaChunk * wanted = request.media ? request.media->starting_at(i) : nullptr;
        const auto cached = std::find_if(slot.cached_media.begin(), slot.cached_media.end(),
                                         [&](const CachedMedia & m) { return m.offset == i; });
        if (wanted == nullptr || cached == slot.cached_media.end() || cached->id != wanted->id ||
            cached->n_tokens != wanted->n_tokens || i + wanted->n_tokens > n) {
            n = i;
            break;
        }
        i += wanted->n_tokens - 1;
    }
    if (n >= prompt.size()) {
        n = prompt.size() - 1;  // the last prompt token is evaluated again for its logits
    }
    if (n > 0 && n_swa_ > 0) {
        // A sliding-window cache drops positions that fell out of every window. The token after
        // the prefix attends to the n_swa positions before it: they must all still be there.
        const llama_pos pos_min = llama_memory_seq_pos_min(llama_get_memory(ctx_.get()), slot.id);
        if (pos_min > std::max(0, static_cast<int>(n) - n_swa_)) {
            n = 0;
        }
    }
    return n;
}

void Engine::start_slot(Slot & slot, Pending && pending, size_t n_keep) {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    if (!llama_memory_seq_rm(mem, slot.id, static_cast<llama_pos>(n_keep), -1)) {
        llama_memory_seq_rm(mem, slot.id, -1, -1);  // this memory cannot cut a sequence: start over
        n_keep = 0;
    }
    slot.cache.resize(n_keep);
    forget_media_after(slot.cached_media, n_keep);
    slot.n_prompt_done = n_keep;
    slot.params = std::move(pending.params);
    slot.sampler = std::move(pending.sampler);
    slot.state = std::move(pending.state);
    slot.active = true;
    slot.generating = false;
    slot.next_token = LLAMA_TOKEN_NULL;
    slot.n_decoded = 0;
    slot.i_batch = -1;
    slot.utf8 = Utf8Assembler();
    slot.stop = std::make_unique<StopMatcher>(slot.params.stop);
    slot.render_special.clear();
    for (const auto & word : slot.params.sampling.preserved_tokens) {
        const auto ids = model_->tokenize(word, false, true);
        if (ids.size() == 1) {
            slot.render_special.insert(ids[0]);
        }
    }
    const auto & sp = slot.params.sampling;
    slot.greedy = sp.temperature <= 0.0f && sp.grammar.empty() && sp.repeat_penalty == 1.0f &&
                  sp.frequency_penalty == 0.0f && sp.presence_penalty == 0.0f && sp.logit_bias.empty() &&
                  sp.mirostat == 0;
    slot.t_start = now_ms();
    slot.reserved = unified_ ? reservation(slot.params) : 0;
    slot.draft.clear();
    slot.shadow = LLAMA_TOKEN_NULL;
    slot.lookup_acceptance = {};
    slot.model_acceptance = {};
    slot.probe_in = slot.probe_every = 16;
    slot.state->cached_tokens = static_cast<int>(n_keep);
    slot.state->t_queued_ms = slot.t_start - pending.t_submit;
    // Repetition penalties see the end of the prompt, as in llama.cpp's own tools (a negative
    // repeat_last_n: all of it).
    const auto & prompt = slot.params.prompt;
    const int last_n = slot.params.sampling.repeat_last_n;
    const size_t window = last_n < 0 ? prompt.size() : static_cast<size_t>(std::max(64, last_n));
    const size_t from = prompt.size() > window ? prompt.size() - window : 0;
    for (size_t i = from; i < prompt.size(); ++i) {
        if (prompt[i] >= 0) {  // not a media placeholder
            common_sampler_accept(slot.sampler.get(), prompt[i], false);
        }
    }
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.prompt_tokens_reused += static_cast<long long>(n_keep);
}

void Engine::finish_slot(Slot & slot, const std::string & reason, const std::string & error) {
    if (slot.state) {
        // Release what was held back: an incomplete character, text that was not a stop string.
        Chunk tail;
        tail.text = slot.utf8.flush() + slot.stop->flush();
        if (error.empty() && !tail.text.empty()) {
            slot.state->push(std::move(tail));
        }
        const double t = now_ms();
        if (slot.generating) {
            slot.state->t_gen_ms = t - slot.t_prompt_done;
        } else {
            slot.state->t_prompt_ms = t - slot.t_start;
        }
        slot.state->completion_tokens = slot.n_decoded;
        slot.state->finish(reason, error);
    }
    slot.state.reset();
    slot.sampler.reset();
    slot.reserved = 0;
    slot.active = false;
    slot.generating = false;
    slot.i_batch = -1;
    slot.last_used = ++uses_;
}

void Engine::emit_token(Slot & slot, llama_token token, int batch_index) {
    if (token == LLAMA_TOKEN_NULL) {  // sample(): the grammar is complete
        finish_slot(slot, "stop");
        return;
    }
    slot.n_decoded++;
    Chunk chunk;
    chunk.token = token;
    if (slot.params.n_probs != 0) {
        fill_logprobs(chunk, ctx_.get(), *model_, batch_index, token, slot.params.n_probs);
    }
    if (!slot.params.ignore_eos && model_->is_eog(token)) {
        if (chunk.has_logprob) {
            slot.state->push(std::move(chunk));
        }
        finish_slot(slot, "stop");
        return;
    }
    const bool special = slot.params.render_special || slot.render_special.count(token) != 0;
    auto result = slot.stop->push(slot.utf8.push(model_->token_to_piece(token, special)));
    chunk.text = std::move(result.text);
    slot.state->push(std::move(chunk));
    if (result.stopped) {
        slot.state->stop_string = result.stop;
        finish_slot(slot, "stop");
    } else if (slot.params.max_tokens >= 0 && slot.n_decoded >= slot.params.max_tokens) {
        finish_slot(slot, "length");
    } else if (static_cast<int>(slot.cache.size()) + 1 >= n_ctx_seq_) {
        finish_slot(slot, "length");  // the context is full
    } else {
        slot.next_token = token;
    }
}

// The first index of the largest logit. Two passes the compiler vectorizes (a max over fixed-width
// lanes, then a blockwise search for it) instead of one branchy loop: over Gemma's 262k-token
// vocabulary that is ~40 us instead of ~500 us per token, 3-5% of a step of a small model.
int first_max(const float * x, int n) {
    constexpr int W = 32;
    float lanes[W];
    std::fill(lanes, lanes + W, -std::numeric_limits<float>::infinity());
    int i = 0;
    for (; i + W <= n; i += W) {
        for (int j = 0; j < W; ++j) {
            lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
        }
    }
    float m = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < W; ++j) {
        m = lanes[j] > m ? lanes[j] : m;
    }
    for (; i < n; ++i) {
        m = x[i] > m ? x[i] : m;
    }
    if (!(m > -std::numeric_limits<float>::infinity())) {
        return -1;
    }
    i = 0;
    for (; i + W <= n; i += W) {
        int hit = 0;
        for (int j = 0; j < W; ++j) {
            hit |= x[i + j] == m;
        }
        if (hit) {
            break;
        }
    }
    for (; i < n; ++i) {
        if (x[i] == m) {
            return i;
        }
    }
    return -1;
}

llama_token Engine::argmax(const Slot & slot, int batch_index) const {
    const float * logits = llama_get_logits_ith(ctx_.get(), batch_index);
    if (logits == nullptr) {
        throw std::runtime_error("no logits for this position");
    }
    // Suppressed tokens never win; EOG tokens neither when ignore_eos is set.
    const uint8_t skip_level = slot.params.ignore_eos ? 2 : 1;
    const int n = static_cast<int>(suppressed_.size());
    const int top = first_max(logits, n);
    if (top >= 0 && (suppressed_[top] == 0 || suppressed_[top] > skip_level)) {
        return top;
    }
    // The winner is suppressed (or every logit is -inf): the best of the rest.
    llama_token best = LLAMA_TOKEN_NULL;
    float best_logit = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; ++i) {
        if (logits[i] > best_logit && (suppressed_[i] == 0 || suppressed_[i] > skip_level)) {
            best_logit = logits[i];
            best = i;
        }
    }
    if (best == LLAMA_TOKEN_NULL) {
        throw std::runtime_error("every token is suppressed");
    }
    return best;
}

constexpr size_t kFillerSlack = 512;  // cells; see step()

void Engine::reap_cancelled() {
    for (auto & slot : slots_) {
        if (slot->active && slot->state->cancelled) {
            finish_slot(*slot, "cancelled");
        }
    }
}

void Engine::step() {
    // How many tokens each slot contributes: generating slots one, and prompts share what is left
    // of n_batch, in slot order, so running streams keep flowing.
    int n_gen = 0;
    for (auto & slot : slots_) {
        slot->n_take = 0;
        slot->filler = false;
        if (slot->active && slot->generating && slot->next_token != LLAMA_TOKEN_NULL) {
            slot->n_take = 1;
            n_gen++;
        }
    }
    if (speculating() && n_gen > 0) {
        plan_drafts(params_.n_batch - n_gen);
        n_gen = 0;
        for (auto & slot : slots_) {
            n_gen += slot->n_take > 0 ? slot->n_take : 0;
        }
    }
    if (batch_invariant_) {
        step_invariant();
        return;
    }
    // Media are decoded on their own (embeddings, not tokens), one chunk per slot and step.
    if (vision_) {
        for (auto & slot : slots_) {
            if (slot->active && !slot->generating && slot->params.media && decode_media(*slot)) {
                return;
            }
        }
    }
    int budget = params_.n_batch - n_gen;
    int lo = -1, hi = -1;
    for (auto & slot : slots_) {
        if (slot->active && !slot->generating && budget > 0) {
            const size_t end = slot->params.media ? slot->params.media->next_start(slot->n_prompt_done)
                                                  : slot->params.prompt.size();
            const size_t left = end - slot->n_prompt_done;
            slot->n_take = static_cast<int>(std::min<size_t>(left, static_cast<size_t>(budget)));
            budget -= slot->n_take;
        }
        if (slot->n_take > 0) {
            lo = lo < 0 ? slot->id : lo;
            hi = slot->id;
        }
    }
    if (lo < 0) {
        return;
    }
    // llama.cpp splits a batch that spans several KV streams (one per slot) into micro-batches of
    // consecutive sequence ids with the same number of tokens each: slots 0 and 2 without 1 would
    // be computed one after the other, and tokens out of slot order likewise. So the batch is
    // built in slot order, and an idle slot between two busy ones decodes a filler token that is
    // removed right after (a cell at its next position; the cached tokens stay).
    // A filler is not worth it where its sequence is much longer than the longest in the step:
    // every stream in a micro-batch attends over as many cells as the longest one holds (padded
    // to 256), and a few hundred cells cost less than another pass over the weights.
    const int n_fill = mark_fillers(lo, hi, kFillerSlack);
    // Fillers must fit in n_batch too: prompts give way, from the last slot, down to one token.
    int over = n_fill - budget;
    for (int i = hi; i >= lo && over > 0; --i) {
        Slot & slot = *slots_[i];
        if (slot.active && !slot.generating && slot.n_take > 1) {
            const int cut = std::min(over, slot.n_take - 1);
            slot.n_take -= cut;
            over -= cut;
        }
    }
    decode_slots(lo, hi, -1);
}

bool Engine::decode_media(Slot & slot) {
    const MediaChunk * media = slot.params.media->starting_at(slot.n_prompt_done);
    if (media == nullptr) {
        return false;
    }
    const auto n_past = static_cast<llama_pos>(slot.cache.size());
    const double t0 = now_ms();
    const std::string error = vision_->eval(ctx_.get(), *media, n_past, slot.id, params_.n_batch);
    if (!error.empty()) {
        llama_memory_seq_rm(llama_get_memory(ctx_.get()), slot.id, n_past, -1);
        finish_slot(slot, "error", error);
        return true;
    }
    const auto & prompt = slot.params.prompt;
    const auto begin = prompt.begin() + static_cast<long>(media->offset);
    slot.cache.insert(slot.cache.end(), begin, begin + static_cast<long>(media->n_tokens));
    slot.cached_media.push_back({media->offset, media->n_tokens, media->id});
    slot.n_prompt_done += media->n_tokens;
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.steps++;
    stats_.prompt_tokens_evaluated += static_cast<long long>(media->n_tokens);
    stats_.media_ms += now_ms() - t0;
    return true;
}

int Engine::mark_fillers(int lo, int hi, size_t slack) {
    if (!fill_gaps_) {
        return 0;
    }
    size_t end = 0;
    for (int i = lo; i <= hi; ++i) {
        end = std::max(end, slots_[i]->cache.size() + static_cast<size_t>(slots_[i]->n_take));
    }
    int n_fill = 0;
    for (int i = lo; i <= hi; ++i) {
        Slot & slot = *slots_[i];
        const bool near = slot.cache.size() < end || slot.cache.size() - end < slack;
        slot.filler = slot.n_take == 0 && near && static_cast<int>(slot.cache.size()) < n_ctx_seq_;
        n_fill += slot.filler;
    }
    return n_fill;
}

void Engine::step_invariant() {
    // Every row of every matrix product goes through the same kernel whatever else is decoded:
    // llama.cpp's CPU matmul switches kernels between one column and several (llamafile's
    // tinyBLAS), so every micro-batch here has at least two tokens and, where it computes logits,
    // at least two outputs; a tail filler (the slot's next position, removed after) makes up the
    // second. Generating slots decode together, one token each; each prompt chunk goes alone, so
    // that llama.cpp never splits a call into micro-batches of its own choosing.
    // A slot with a draft decodes alone: its next token and draft make the two rows (or more) by themselves.
    for (auto & slot : slots_) {
        if (slot->generating && slot->n_take > 1) {
            decode_slots(slot->id, slot->id, -1);
            slot->n_take = 0;
        }
    }
    const int n_slots = static_cast<int>(slots_.size());
    for (int lo = 0; lo < n_slots;) {
        if (slots_[lo]->n_take == 0) {
            ++lo;
            continue;
        }
        // A run of generating slots, bridged by fillers wherever one fits.
        int hi = lo;
        for (int j = lo + 1; j < n_slots; ++j) {
            if (slots_[j]->n_take > 0) {
                hi = j;
            } else if (static_cast<int>(slots_[j]->cache.size()) >= n_ctx_seq_) {
                break;  // no cell left for a filler: the run ends here
            }
        }
        mark_fillers(lo, hi, std::numeric_limits<size_t>::max());
        int n_real = 0;
        for (int i = lo; i <= hi; ++i) {
            n_real += slots_[i]->n_take;
        }
        // One output: add a second, and make it a guess at the token after this one (see
        // decode_slots: where the guess is right, two tokens come out of one pass, exactly).
        const llama_token draft = n_real < 2 ? draft_token(*slots_[lo]) : LLAMA_TOKEN_NULL;
        decode_slots(lo, hi, n_real < 2 ? lo : -1, draft);
        lo = hi + 1;
    }
    for (auto & slot : slots_) {
        if (!slot->active || slot->generating) {
            continue;
        }
        const size_t left = slot->params.prompt.size() - slot->n_prompt_done;
        const size_t take = invariant_chunk(left);
        slot->n_take = static_cast<int>(take);
        decode_slots(slot->id, slot->id, take == left ? slot->id : -1);
    }
}

size_t Engine::invariant_chunk(size_t left) const {
    // One micro-batch per call: the last chunk has room for its tail filler, and a chunk before it
    // has at least two tokens (n_ubatch >= 4).
    const auto cap = static_cast<size_t>(params_.n_ubatch);
    return left + 1 <= cap ? left : std::min(left - 1, cap);
}

llama_token Engine::draft_token(const Slot & slot) const {
    // Prompt lookup: the token that followed the last earlier occurrence of the final two tokens
    // (the one about to be decoded included), else of the final one, within the last 2048. Text
    // that quotes or repeats its context (code edits, extraction, lists) guesses right often.
    const auto & c = slot.cache;
    const size_t n = c.size() + 1;  // with next_token
    if (slot.next_token == LLAMA_TOKEN_NULL || c.empty() || static_cast<int>(n) + 2 >= n_ctx_seq_) {
        return LLAMA_TOKEN_NULL;
    }
    const llama_token a = c.back(), b = slot.next_token;
    const size_t stop = n > 2048 ? n - 2048 : 0;
    llama_token after_b = LLAMA_TOKEN_NULL;  // the row is paid for anyway: a weaker guess beats none
    for (size_t i = c.size() - 1; i-- > stop;) {  // c[i], c[i + 1] == a, b and c[i + 2] exists
        if (c[i + 1] == b && i + 2 < c.size()) {
            if (c[i] == a) {
                return c[i + 2];
            }
            after_b = after_b == LLAMA_TOKEN_NULL ? c[i + 2] : after_b;
        }
    }
    return after_b;
}

void Engine::decode_slots(int lo, int hi, int tail_filler, llama_token draft) {
    batch_.n_tokens = 0;
    long long n_prompt_tokens = 0;
    int n_fill = 0;
    for (int i = lo; i <= hi; ++i) {
        Slot & slot = *slots_[i];
        if (slot.filler) {
            batch_add(batch_, 0, static_cast<llama_pos>(slot.cache.size()), slot.id, false);
            n_fill++;
        } else if (slot.n_take == 0) {
            continue;
        } else if (slot.generating) {
            batch_add(batch_, slot.next_token, static_cast<llama_pos>(slot.cache.size()), slot.id, true);
            slot.cache.push_back(slot.next_token);
            slot.next_token = LLAMA_TOKEN_NULL;
            slot.i_batch = batch_.n_tokens - 1;
            // The draft follows, an output row each; its cells join the cache only as they are accepted.
            for (size_t k = 0; k < slot.draft.size(); ++k) {
                batch_add(batch_, slot.draft[k], static_cast<llama_pos>(slot.cache.size() + k), slot.id, true);
            }
        } else {
            const auto & prompt = slot.params.prompt;
            for (int k = 0; k < slot.n_take; ++k) {
                const bool last = slot.n_prompt_done + 1 == prompt.size();
                batch_add(batch_, prompt[slot.n_prompt_done], static_cast<llama_pos>(slot.cache.size()), slot.id, last);
                slot.cache.push_back(prompt[slot.n_prompt_done]);
                slot.n_prompt_done++;
                if (last) {
                    slot.i_batch = batch_.n_tokens - 1;
                }
            }
            n_prompt_tokens += slot.n_take;
        }
        if (i == tail_filler) {
            batch_add(batch_, draft == LLAMA_TOKEN_NULL ? 0 : draft, static_cast<llama_pos>(slot.cache.size()), slot.id, true);
            slot.filler = true;
            n_fill++;
        }
    }
    if (batch_.n_tokens == 0) {
        return;
    }
    ErrorCapture capture;
    const double t_decode = now_ms();
    const int rc = llama_decode(ctx_.get(), batch_);
    if (speculating() && rc == 0 && n_prompt_tokens == 0 && n_fill == 0) {
        spec_cost_.record_decode(batch_.n_tokens, now_ms() - t_decode);  // every row an output
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stats_.steps++;
        stats_.tokens_decoded += batch_.n_tokens - n_fill;
        stats_.fillers += n_fill;
        stats_.prompt_tokens_evaluated += n_prompt_tokens;
        stats_.max_batch = std::max<long long>(stats_.max_batch, batch_.n_tokens - n_fill);
    }
    const auto remove_fillers = [&] {
        llama_memory_t mem = llama_get_memory(ctx_.get());
        for (int i = lo; i <= hi; ++i) {
            if (slots_[i]->filler) {
                llama_memory_seq_rm(mem, i, static_cast<llama_pos>(slots_[i]->cache.size()), -1);
                slots_[i]->filler = false;
            }
        }
    };
    if (rc != 0) {
        remove_fillers();
        for (int i = lo; i <= hi; ++i) {
            slots_[i]->draft.clear();
        }
        const std::string what = rc == 1 ? "no room left in the KV cache" : "llama_decode failed with code " + std::to_string(rc);
        llama_memory_t mem = llama_get_memory(ctx_.get());
        for (auto & slot : slots_) {
            if (slot->active) {
                llama_memory_seq_rm(mem, slot->id, -1, -1);
                slot->cache.clear();
                slot->cached_media.clear();
                finish_slot(*slot, "error", what + ": " + capture.message("no details"));
            }
        }
        return;
    }
    for (int i = lo; i <= hi; ++i) {
        Slot & slot = *slots_[i];
        if (!slot.active || slot.i_batch < 0) {
            continue;
        }
        int idx = slot.i_batch;
        slot.i_batch = -1;
        if (!slot.generating) {
            slot.generating = true;
            slot.t_prompt_done = now_ms();
            slot.state->t_prompt_ms = slot.t_prompt_done - slot.t_start;
        }
        try {
            llama_token token = sample(slot, idx);
            if (i != tail_filler && (!slot.draft.empty() || slot.shadow != LLAMA_TOKEN_NULL)) {
                accept_drafts(slot, token, idx);
                continue;
            }
            if (i == tail_filler && draft != LLAMA_TOKEN_NULL && token == draft) {
                // The guess was right: its cell stays as the slot's next position, and its row holds
                // the next token's logits, computed as the next step would (every row alone) and
                // sampled in order, so two tokens come out of this pass exactly as of two.
                slot.cache.push_back(draft);  // draft_token() left room: "context full" comes as it would
                slot.filler = false;
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    stats_.tokens_decoded++;
                    stats_.drafts_accepted++;
                }
                emit_token(slot, token, idx);
                if (!slot.active) {
                    continue;
                }
                slot.next_token = LLAMA_TOKEN_NULL;  // decoded already
                idx = batch_.n_tokens - 1;
                token = sample(slot, idx);
            }
            emit_token(slot, token, idx);
        } catch (const std::exception & e) {
            finish_slot(slot, "error", std::string("sampling failed: ") + e.what());
        }
    }
    remove_fillers();
}

void Engine::accept_drafts(Slot & slot, llama_token token, int idx) {
    // Down the rows while the model's own choice is the drafted token: each row's logits were computed
    // after the tokens before it, so each token is sampled where plain decoding would sample it.
    const size_t n_draft = slot.draft.size();
    size_t accepted = 0;
    // Counted before the tokens go out: the request may finish on any of them, and its caller then reads these.
    slot.state->draft_n += static_cast<int>(n_draft);
    while (accepted < n_draft && token == slot.draft[accepted]) {
        slot.state->draft_n_accepted++;
        emit_token(slot, token, idx);
        if (!slot.active) {
            break;
        }
        slot.cache.push_back(slot.draft[accepted]);
        slot.next_token = LLAMA_TOKEN_NULL;  // decoded already
        ++accepted;
        ++idx;
        token = sample(slot, idx);
    }
    if (n_draft > 0) {
        // The refused drafts' cells (and, where the slot finished, those after its end) are dropped.
        llama_memory_seq_rm(llama_get_memory(ctx_.get()), slot.id, static_cast<llama_pos>(slot.cache.size()), -1);
        auto & mine = slot.draft_from_model ? slot.model_acceptance : slot.lookup_acceptance;
        auto & all = slot.draft_from_model ? model_acceptance_ : lookup_acceptance_;
        mine.add(static_cast<int>(accepted), static_cast<int>(n_draft));
        all.add(static_cast<int>(accepted), static_cast<int>(n_draft));
        std::lock_guard<std::mutex> lock(mutex_);
        stats_.draft_tokens += static_cast<long long>(n_draft);
        stats_.drafts_accepted += static_cast<long long>(accepted);
        stats_.tokens_decoded -= static_cast<long long>(n_draft - accepted);  // counted as decoded above
    } else if (slot.shadow != LLAMA_TOKEN_NULL) {
        const int hit = token == slot.shadow ? 1 : 0;
        slot.lookup_acceptance.add(hit, 1);
        lookup_acceptance_.add(hit, 1);
    }
    slot.draft.clear();
    slot.shadow = LLAMA_TOKEN_NULL;
    if (slot.active) {
        emit_token(slot, token, idx);
    }
}

int Engine::plan_drafts(int budget) {
    // A slot drafts where the cost model expects more tokens per second from it: the step's measured
    // time with and without k more rows, the draft model's time, and this request's acceptance so far.
    constexpr double kMargin = 0.10;  // estimates are noisy: draft where the gain is clear
    int batch = 0, generating = 0;
    for (const auto & slot : slots_) {
        if (slot->n_take > 0) {
            batch += slot->n_take;
            generating++;
        }
    }
    std::vector<Drafter::Job> jobs;
    std::vector<Slot *> job_slots;
    for (auto & slot_ptr : slots_) {
        Slot & slot = *slot_ptr;
        slot.draft.clear();
        slot.shadow = LLAMA_TOKEN_NULL;
        if (slot.n_take == 0) {
            continue;
        }
        int k_cap = std::min({params_.draft_max, budget, n_ctx_seq_ - static_cast<int>(slot.cache.size()) - 2});
        if (slot.params.max_tokens >= 0) {
            k_cap = std::min(k_cap, slot.params.max_tokens - slot.n_decoded - 1);
        }
        if (k_cap <= 0) {
            continue;
        }
        slot.cache.push_back(slot.next_token);  // the draft continues the text after the next token
        if (params_.prompt_lookup) {
            auto guess = prompt_lookup(slot.cache, k_cap, 2, 4);
            if (!guess.empty()) {
                const double a = slot.lookup_acceptance.rate(lookup_acceptance_.rate(0.6));
                int k = spec_cost_.best_length(batch, generating, a, static_cast<int>(guess.size()), false, kMargin);
                k = std::max(k, std::min(params_.draft_min, static_cast<int>(guess.size())));
                if (k == 0) {
                    slot.shadow = guess[0];
                }
                guess.resize(static_cast<size_t>(k));
                slot.draft = std::move(guess);
                slot.draft_from_model = false;
            }
        }
        if (slot.draft.empty() && drafter_ && slot.cached_media.empty() && !slot.params.media) {
            const double a = slot.model_acceptance.rate(model_acceptance_.rate(0.5));
            int k = std::max(params_.draft_min, spec_cost_.best_length(batch, generating, a, k_cap, true, kMargin));
            if (k > 0) {
                slot.probe_every = 16;  // drafting pays: if it stops paying, look again soon
            } else if (spec_cost_.best_length(batch, generating, 0.95, k_cap, true, kMargin) > 0 && --slot.probe_in <= 0) {
                // Not paying at this acceptance, but it would at a better one: try a short draft now and
                // then, less often each time it does not pay, to notice when the text turns predictable.
                k = std::min(2, k_cap);
                slot.probe_in = slot.probe_every;
                slot.probe_every = std::min(256, slot.probe_every * 2);
            }
            if (k > 0) {
                jobs.push_back({slot.id, &slot.cache, std::min(k, k_cap), std::min(params_.draft_min, k_cap), {}});
                job_slots.push_back(&slot);
            }
        }
        if (jobs.empty() || job_slots.back() != &slot) {
            slot.cache.pop_back();
            slot.n_take = 1 + static_cast<int>(slot.draft.size());
            budget -= static_cast<int>(slot.draft.size());
            batch += static_cast<int>(slot.draft.size());
        }
    }
    int drafted = 0;
    if (!jobs.empty()) {
        const double t0 = now_ms();
        const int decoded = drafter_->draft(jobs, params_.draft_p_min);
        for (size_t j = 0; j < jobs.size(); ++j) {
            Slot & slot = *job_slots[j];
            slot.cache.pop_back();
            auto & d = jobs[j].draft;
            d.resize(std::min(d.size(), static_cast<size_t>(std::max(0, budget))));
            slot.draft = std::move(d);
            slot.draft_from_model = true;
            slot.n_take = 1 + static_cast<int>(slot.draft.size());
            budget -= static_cast<int>(slot.draft.size());
            drafted += static_cast<int>(slot.draft.size());
        }
        if (decoded > 0) {
            spec_cost_.record_draft(std::max(drafted, 1), now_ms() - t0);
        }
    }
    return drafted;
}

llama_token Engine::sample(Slot & slot, int idx) {
    if (slot.greedy) {
        return argmax(slot, idx);
    }
    const llama_token token = common_sampler_sample(slot.sampler.get(), ctx_.get(), idx);
    if (!slot.params.sampling.grammar.empty()) {
        // A complete grammar admits only the end of generation; where that is banned too (ignore_eos,
        // a logit bias) no token is left and the sampler picks one at -inf, which the grammar would
        // then refuse with an error. The output is done: the caller finishes with "stop".
        const llama_token_data_array * cur = common_sampler_get_candidates(slot.sampler.get(), false);
        if (cur->selected >= 0 && cur->data[cur->selected].logit == -std::numeric_limits<float>::infinity()) {
            return LLAMA_TOKEN_NULL;
        }
    }
    common_sampler_accept(slot.sampler.get(), token, true);
    return token;
}

void Engine::loop() {
    while (true) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            cv_.wait(lock, [&] {
                if (stopping_ || !pending_.empty() || !tasks_.empty()) {
                    return true;
                }
                for (const auto & slot : slots_) {
                    if (slot->active) {
                        return true;
                    }
                }
                return false;
            });
            if (stopping_) {
                break;
            }
        }
        run_tasks();
        // Cancelled requests leave first, so that a request sent right after cancelling another
        // (a regenerated answer) finds that slot's cache free instead of taking an empty slot.
        reap_cancelled();
        assign_pending();
        try {
            step();
        } catch (const std::exception & e) {
            for (auto & slot : slots_) {
                if (slot->active) {
                    finish_slot(*slot, "error", std::string("engine error: ") + e.what());
                }
            }
        }
    }
    // Shutting down: nothing may wait forever on this engine.
    for (auto & slot : slots_) {
        if (slot->active) {
            finish_slot(*slot, "cancelled", "the engine was shut down");
        }
    }
    std::deque<Pending> pending;
    std::deque<std::shared_ptr<Task>> tasks;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        pending.swap(pending_);
        tasks.swap(tasks_);
    }
    for (auto & p : pending) {
        p.state->finish("cancelled", "the engine was shut down");
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
