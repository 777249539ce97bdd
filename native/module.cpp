// Python bindings. Whole tasks are bound (load a model, run a request), not llama.h call by
// call; every call that computes or waits releases the GIL.
#include <cstring>
#include <stdexcept>

#include <nanobind/nanobind.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include "backends.h"
#include "build-info.h"
#include "embeddings.h"
#include "engine.h"
#include "gil.h"
#include "logging.h"
#include "model.h"
#include "placement.h"
#include "prompt_cache.h"
#include "rpc.h"
#include "step_plan.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace lcl {
void register_chat(nb::module_ & m);
}

namespace {

// Token pieces and metadata are bytes from the model: decode leniently, never raise.
nb::str py_str(const std::string & s) {
    PyObject * o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
    if (o == nullptr) {
        throw nb::python_error();
    }
    return nb::steal<nb::str>(o);
}

// Blocks (GIL released) until the request has output (or has ended), looking for signals every
// 50 ms: the main thread's Python handlers run only when it returns to the interpreter, so a
// plain blocking wait would hold Ctrl-C back until the whole generation ended.
void wait_interruptibly(lcl::Request & self, bool until_done) {
    for (;;) {
        bool ready = false;
        {
            lcl::ReleaseGil release;
            ready = self.wait_for(until_done, 50);
        }
        if (ready) {
            return;
        }
        if (PyErr_CheckSignals() != 0) {
            self.cancel();
            throw nb::python_error();
        }
    }
}

// Engine.embed: lists of floats, as LangChain's Embeddings return them, built without per-item lookups.
nb::list embed_as_lists(lcl::Engine & self, const std::vector<std::vector<llama_token>> & inputs, int normalize) {
    std::vector<float> flat;
    {
        lcl::ReleaseGil release;
        flat = self.embed(inputs, normalize);
    }
    const size_t n_embd = static_cast<size_t>(self.n_embd_out());
    // PyList_SetItem (limited API, for the abi3 wheel) steals the item even when it fails.
    auto set_item = [](PyObject * list, size_t i, PyObject * item) {
        if (item == nullptr || PyList_SetItem(list, static_cast<Py_ssize_t>(i), item) != 0) {
            throw nb::python_error();
        }
    };
    nb::list out = nb::steal<nb::list>(PyList_New(static_cast<Py_ssize_t>(inputs.size())));
    if (!out.is_valid()) {
        throw nb::python_error();
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
        PyObject * row = PyList_New(static_cast<Py_ssize_t>(n_embd));
        set_item(out.ptr(), i, row);
        for (size_t j = 0; j < n_embd; ++j) {
            set_item(row, j, PyFloat_FromDouble(flat[i * n_embd + j]));
        }
    }
    return out;
}

void register_model(nb::module_ & m) {
    auto model_params = nb::class_<lcl::ModelParams>(m, "ModelParams", "How to load a GGUF file.").def(nb::init<>());
#define LCL_BIND(type, name, value, doc) model_params.def_rw(#name, &lcl::ModelParams::name, doc);
    LCL_MODEL_PARAMS(LCL_BIND)
#undef LCL_BIND

    nb::class_<lcl::Model>(m, "Model", "Loaded weights and vocabulary, shared by all engines on the same file.")
        .def_static(
            "load",
            [](const lcl::ModelParams & params, std::optional<nb::callable> progress,
               std::optional<lcl::EngineParams> fit_for) {
                lcl::ProgressCallback cb;
                if (progress) {
                    cb = [fn = *progress](float p) -> bool {
                        nb::gil_scoped_acquire gil;
                        nb::object r = fn(p);
                        return r.is_none() || nb::cast<bool>(r);
                    };
                }
                lcl::ReleaseGil release;
                auto model = lcl::Model::load(params, cb, fit_for ? &*fit_for : nullptr);
                if (cb) {
                    // The callable must be released with the GIL held.
                    nb::gil_scoped_acquire gil;
                    cb = nullptr;
                }
                return model;
            },
            "params"_a, "progress"_a = nb::none(), "fit_for"_a = nb::none(),
            "Load a model (or reuse the loaded copy). progress(fraction) may return False to cancel. With "
            "params.fit, the placement is fitted to free device memory for an engine with fit_for's settings.")
        .def("tokenize", &lcl::Model::tokenize, "text"_a, "add_special"_a = true, "parse_special"_a = false,
             nb::call_guard<lcl::ReleaseGil>())
        .def(
            "token_to_piece",
            [](const lcl::Model & self, int token, bool special) {
                const std::string piece = self.token_to_piece(token, special);
                return nb::bytes(piece.data(), piece.size());
            },
            "token"_a, "special"_a = false, "The token's bytes (a piece may be part of a UTF-8 character).")
        .def(
            "detokenize",
            [](const lcl::Model & self, const std::vector<llama_token> & tokens, bool special) {
                return py_str(self.detokenize(tokens, special));
            },
            "tokens"_a, "special"_a = false)
        .def_prop_ro("path", [](const lcl::Model & self) { return self.params().path; })
        .def_prop_ro("params", [](const lcl::Model & self) { return self.params(); }, "The settings it was loaded with (a copy).")
        .def_prop_ro("n_ctx_train", &lcl::Model::n_ctx_train)
        .def_prop_ro("n_vocab", &lcl::Model::n_vocab)
        .def_prop_ro("n_embd", &lcl::Model::n_embd)
        .def_prop_ro("n_layer", &lcl::Model::n_layer)
        .def_prop_ro("size_bytes", &lcl::Model::size_bytes)
        .def_prop_ro("n_params", &lcl::Model::n_params)
        .def_prop_ro("description", [](const lcl::Model & self) { return py_str(self.description()); })
        .def_prop_ro("architecture", [](const lcl::Model & self) { return py_str(self.meta("general.architecture")); })
        .def_prop_ro("name", [](const lcl::Model & self) { return py_str(self.meta("general.name")); })
        .def_prop_ro("bos_token", &lcl::Model::bos)
        .def_prop_ro("eos_token", &lcl::Model::eos)
        .def_prop_ro("add_bos", &lcl::Model::add_bos)
        .def_prop_ro("load_time_ms", &lcl::Model::load_time_ms)
        .def_prop_ro("fit_n_ctx", [](const lcl::Model & self) { return self.fitted().n_ctx; },
                     "The context the fit chose for the engine it fitted for (0: the trained length; -1: none chosen).")
        .def_prop_ro("fit_summary", [](const lcl::Model & self) { return self.fitted().summary; },
                     "What the fit to free device memory chose, or why it did not run; \"\" without params.fit.")
        .def("is_eog", &lcl::Model::is_eog, "token"_a)
        .def_prop_ro("fim_tokens",
                     [](const lcl::Model & self) {
                         const llama_vocab * v = self.vocab();
                         return std::vector<int>{llama_vocab_fim_pre(v), llama_vocab_fim_suf(v), llama_vocab_fim_mid(v)};
                     },
                     "Fill-in-the-middle token ids (prefix, suffix, middle); -1 where the vocabulary has none.")
        .def(
            "chat_template",
            [](const lcl::Model & self, const std::string & name) -> std::optional<nb::str> {
                const std::string t = self.chat_template(name);
                if (t.empty()) {
                    return std::nullopt;
                }
                return py_str(t);
            },
            "name"_a = "", "The model's Jinja chat template (None if it has none).")
        .def("rerank_tokens", &lcl::rerank_tokens, "query"_a, "document"_a, nb::call_guard<lcl::ReleaseGil>(),
             "A query-document pair's tokens as llama-server's /rerank builds them (the model's rerank "
             "template, else [BOS] query [EOS] [SEP] document [EOS] by the vocabulary's flags).")
        .def(
            "metadata",
            [](const lcl::Model & self) {
                nb::dict out;
                for (const auto & [k, v] : self.metadata()) {
                    out[py_str(k)] = py_str(v);
                }
                return out;
            },
            "All GGUF metadata as strings.");
}

void register_params(nb::module_ & m) {
    // Each settings struct is bound from its table (params.h): a field added there is in Python too.
    auto engine_params =
        nb::class_<lcl::EngineParams>(m, "EngineParams", "Context and scheduling settings of an engine.").def(nb::init<>());
#define LCL_BIND(type, name, value, doc) engine_params.def_rw(#name, &lcl::EngineParams::name, doc);
    LCL_ENGINE_PARAMS(LCL_BIND)
#undef LCL_BIND

    nb::class_<lcl::MediaPrompt>(m, "MediaPrompt",
                                 "A prompt with images or audio (Engine.tokenize_media); set it as RequestParams.media.")
        .def_prop_ro("tokens", [](const lcl::MediaPrompt & self) { return self.tokens; },
                     "Token ids, with a negative placeholder at each media position.")
        .def_prop_ro("media",
                     [](const lcl::MediaPrompt & self) {
                         nb::list out;
                         for (const auto & media : self.media) {
                             out.append(nb::make_tuple(media.offset, media.n_tokens, media.id));
                         }
                         return out;
                     },
                     "(offset, n_tokens, sha256) of each media chunk.")
        .def("__len__", [](const lcl::MediaPrompt & self) { return self.tokens.size(); });

    nb::class_<lcl::GrammarTrigger>(m, "GrammarTrigger", "Where a lazy grammar starts to apply (a word, a token, a pattern).")
        .def(nb::init<>())
        .def_rw("type", &lcl::GrammarTrigger::type)
        .def_rw("value", &lcl::GrammarTrigger::value)
        .def_rw("token", &lcl::GrammarTrigger::token);

    auto sampling_params =
        nb::class_<lcl::SamplingParams>(m, "SamplingParams", "llama.cpp's sampler chain settings for one request.")
            .def(nb::init<>());
#define LCL_BIND(type, name, value, doc) sampling_params.def_rw(#name, &lcl::SamplingParams::name, doc);
    LCL_SAMPLING_PARAMS(LCL_BIND)
#undef LCL_BIND

    auto request_params = nb::class_<lcl::RequestParams>(m, "RequestParams", "One generation request.")
                              .def(nb::init<>())
                              .def_rw("media", &lcl::RequestParams::media, nb::arg("media").none(),
                                      "A MediaPrompt; when set, its tokens are the prompt.");
#define LCL_BIND(type, name, value, doc) request_params.def_rw(#name, &lcl::RequestParams::name, doc);
    LCL_REQUEST_PARAMS(LCL_BIND)
#undef LCL_BIND
}

void register_request(nb::module_ & m) {
    auto usage = nb::class_<lcl::Usage>(m, "Usage", "A request's token counts and timings (Request.usage).");
#define LCL_BIND(type, name, doc) usage.def_ro(#name, &lcl::Usage::name, doc);
    LCL_USAGE_FIELDS(LCL_BIND)
#undef LCL_BIND
    nb::list usage_fields;
#define LCL_NAME(type, name, doc) usage_fields.append(#name);
    LCL_USAGE_FIELDS(LCL_NAME)
#undef LCL_NAME
    usage.attr("FIELDS") = nb::tuple(usage_fields);

    nb::class_<lcl::TopLogprob>(m, "TopLogprob", "One of the most likely tokens at a position, with its logprob.")
        .def_ro("token", &lcl::TopLogprob::token)
        .def_prop_ro("text", [](const lcl::TopLogprob & self) { return py_str(self.text); })
        .def_ro("logprob", &lcl::TopLogprob::logprob);

    nb::class_<lcl::Chunk>(m, "Chunk", "Output of one sampled token (text may be empty while held back).")
        .def_prop_ro("text", [](const lcl::Chunk & self) { return py_str(self.text); })
        .def_ro("token", &lcl::Chunk::token)
        .def_prop_ro("logprob",
                     [](const lcl::Chunk & self) -> std::optional<float> {
                         return self.has_logprob ? std::optional<float>(self.logprob) : std::nullopt;
                     })
        .def_ro("top_logprobs", &lcl::Chunk::top);

    nb::class_<lcl::Request>(m, "Request", "A running request: iterate for chunks; dropping it cancels.")
        .def(
            "next",
            [](lcl::Request & self) {
                wait_interruptibly(self, false);
                lcl::ReleaseGil release;
                return self.next();
            },
            "Block until the next chunk; None at the end. Raises RuntimeError on engine errors; "
            "Ctrl-C cancels the request and raises KeyboardInterrupt.")
        .def("poll", &lcl::Request::poll, "Chunks ready now, without blocking.")
        .def_prop_ro("signaled", &lcl::Request::signaled,
                     "Whether output or the end came since the last poll (a byte was written to its notify_fd).")
        .def(
            "wait",
            [](lcl::Request & self) {
                wait_interruptibly(self, true);
                lcl::ReleaseGil release;
                return self.wait();
            },
            "Block until done; the remaining chunks. Ctrl-C cancels the request and raises KeyboardInterrupt.")
        .def("cancel", &lcl::Request::cancel, "Stop generating; the slot is freed within one step.")
        .def("raise_if_failed", &lcl::Request::raise_if_failed)
        .def_prop_ro("done", &lcl::Request::done)
        .def_prop_ro("finish_reason",
                     [](lcl::Request & self) {
                         auto st = self.state();
                         std::lock_guard<std::mutex> lock(st->mutex);
                         return st->finish_reason;
                     })
        .def_prop_ro("stop_string",
                     [](lcl::Request & self) {
                         auto st = self.state();
                         std::lock_guard<std::mutex> lock(st->mutex);
                         return st->stop_string;
                     })
        .def_prop_ro("usage",
                     [](lcl::Request & self) {
                         auto st = self.state();
                         std::lock_guard<std::mutex> lock(st->mutex);
                         return st->usage;
                     },
                     "Token counts and timings so far (a copy).");
}

void register_engine(nb::module_ & m) {
    nb::class_<lcl::Engine>(m, "Engine", "A context with sequence slots and one decoding thread.",
                            nb::is_weak_referenceable())
        .def_static("create", &lcl::Engine::create, "model"_a, "params"_a, "draft"_a.none() = nb::none(),
                    nb::call_guard<lcl::ReleaseGil>(),
                    "An engine on `model`; `draft`: a model with the same vocabulary that drafts tokens for it.")
        .def("submit", &lcl::Engine::submit, "params"_a, "notify_fd"_a = -1, nb::call_guard<lcl::ReleaseGil>(),
             "Queue a request. notify_fd, if given, receives a byte whenever output is ready (for asyncio).")
        .def(
            "tokenize_media",
            [](const lcl::Engine & self, const std::string & text, const std::vector<nb::bytes> & files) {
                std::vector<std::string> data;
                for (const auto & file : files) {
                    data.emplace_back(file.c_str(), file.size());
                }
                lcl::ReleaseGil release;
                return self.tokenize_media(text, data);
            },
            "text"_a, "files"_a,
            "The prompt with the files (image or audio bytes) at its media markers, decoded and checked now.")
        .def_prop_ro("media_marker",
                     [](const lcl::Engine & self) -> std::optional<std::string> {
                         return self.vision() ? std::optional<std::string>(self.vision()->marker()) : std::nullopt;
                     },
                     "The text that stands for a media file in a prompt, or None without a projector.")
        .def_prop_ro("supports_images",
                     [](const lcl::Engine & self) { return self.vision() && self.vision()->supports_images(); })
        .def_prop_ro("supports_audio",
                     [](const lcl::Engine & self) { return self.vision() && self.vision()->supports_audio(); })
        .def("shutdown", &lcl::Engine::shutdown, nb::call_guard<lcl::ReleaseGil>())
        .def("clear_cache", &lcl::Engine::clear_cache, nb::call_guard<lcl::ReleaseGil>(),
             "Forget the cached prompts of idle slots.")
        .def("cached_prompts", &lcl::Engine::cached_prompts, nb::call_guard<lcl::ReleaseGil>())
        .def("evaluate", &lcl::Engine::evaluate, "slot"_a, "tokens"_a, "all_logits"_a = false,
             nb::call_guard<lcl::ReleaseGil>(),
             "Append tokens to an idle slot's sequence; the logits of the last token (or of every token).")
        .def("kv_remove", &lcl::Engine::kv_remove, "slot"_a, "p0"_a, "p1"_a = -1,
             nb::call_guard<lcl::ReleaseGil>(),
             "Drop cells [p0, p1) of a slot's sequence, as slot_tokens lists them (p1=-1: to the end); later "
             "ones shift down. An image with M-RoPE positions (Qwen2-VL and kin) is not cut or moved: ValueError.")
        .def("kv_copy", &lcl::Engine::kv_copy, "src"_a, "dst"_a, nb::call_guard<lcl::ReleaseGil>(),
             "Make slot dst a copy of slot src (shared prefix for branching).")
        .def("slot_tokens", &lcl::Engine::slot_tokens, "slot"_a, nb::call_guard<lcl::ReleaseGil>(),
             "The tokens cached in a slot.")
        .def("embed", &embed_as_lists,
             "inputs"_a, "normalize"_a = 2,
             "Pooled embeddings, one list of floats per input, many inputs per decode. normalize: -1 none, "
             "0 max-abs (int16 range), 2 L2, p > 2 p-norm (llama-embedding's --embd-normalize).")
        .def("rerank", &lcl::rerank_scores, "pairs"_a, nb::call_guard<lcl::ReleaseGil>(),
             "A reranker's relevance score (raw classifier output) for each pair's tokens, many pairs per decode.")
        .def_prop_ro("embed_max_tokens", &lcl::Engine::embed_max_tokens, "The longest text one embedding batch holds.")
        .def_prop_ro("embed_max_texts", &lcl::Engine::embed_max_texts, "The most texts one embedding batch holds.")
        .def_prop_ro("n_embd", &lcl::Engine::n_embd_out, "Length of the embedding vectors (a reranker's: its classifier outputs).")
        .def_prop_ro("pooling", [](lcl::Engine & self) { return self.pooling(); },
                     "The pooling in use (llama_pooling_type: 1 mean, 2 cls, 3 last, 4 rank).")
        .def_prop_ro("model", &lcl::Engine::model)
        .def_prop_ro("n_ctx", &lcl::Engine::n_ctx_per_seq, "Context per sequence.")
        .def_prop_ro("n_ctx_total", &lcl::Engine::n_ctx_total)
        .def_prop_ro("kv_unified", &lcl::Engine::kv_unified, "Whether the slots share one KV pool.")
        .def_prop_ro("n_seq", &lcl::Engine::n_seq)
        .def_prop_ro("n_batch", &lcl::Engine::n_batch)
        .def_prop_ro("n_threads", &lcl::Engine::n_threads)
        .def("stats", &lcl::Engine::stats, "Counters since creation (a copy).");

    auto stats = nb::class_<lcl::EngineStats>(m, "EngineStats", "An engine's counters since creation (Engine.stats).");
#define LCL_BIND(type, name, doc) stats.def_ro(#name, &lcl::EngineStats::name, doc);
    LCL_ENGINE_STATS(LCL_BIND)
#undef LCL_BIND
    nb::list stats_fields;
#define LCL_NAME(type, name, doc) stats_fields.append(#name);
    LCL_ENGINE_STATS(LCL_NAME)
#undef LCL_NAME
    stats.attr("FIELDS") = nb::tuple(stats_fields);  // for a reader that lists them all (the server's /metrics)
}

// The scheduler's pure planners (step_plan.h), private: for tests that check plans with made-up slots.
void register_planner(nb::module_ & m) {
    nb::class_<lcl::SlotView>(m, "_SlotView")
        .def(nb::init<>())
        .def_rw("active", &lcl::SlotView::active)
        .def_rw("generating", &lcl::SlotView::generating)
        .def_rw("cached", &lcl::SlotView::cached)
        .def_rw("reserved", &lcl::SlotView::reserved)
        .def_rw("last_used", &lcl::SlotView::last_used)
        .def_rw("prefix", &lcl::SlotView::prefix)
        .def_rw("n_next", &lcl::SlotView::n_next)
        .def_rw("prompt_left", &lcl::SlotView::prompt_left);
    nb::class_<lcl::PlacementPlan>(m, "_PlacementPlan")
        .def_ro("slot", &lcl::PlacementPlan::slot)
        .def_ro("prefix", &lcl::PlacementPlan::prefix)
        .def_ro("donor", &lcl::PlacementPlan::donor)
        .def_ro("evict", &lcl::PlacementPlan::evict)
        .def_ro("restore", &lcl::PlacementPlan::restore);
    nb::class_<lcl::BatchPlan>(m, "_BatchPlan")
        .def_ro("take", &lcl::BatchPlan::take)
        .def_ro("filler", &lcl::BatchPlan::filler)
        .def_ro("lo", &lcl::BatchPlan::lo)
        .def_ro("hi", &lcl::BatchPlan::hi);
    m.def("_plan_placement", &lcl::plan_placement, "slots"_a, "prompt"_a, "reserve"_a, "unified"_a, "pool"_a,
          "stored"_a = 0);
    // The prompt cache's file check (prompt_cache.h), for its tests and the fuzz suite: (tokens, media
    // offsets, state, granule, exact) or ValueError saying what is wrong.
    m.def(
        "_read_prompt_file",
        [](nb::bytes data, nb::bytes key) {
            lcl::CacheKey k{};
            if (key.size() != k.size()) {
                throw std::invalid_argument("a key is 32 bytes");
            }
            std::memcpy(k.data(), key.c_str(), k.size());
            lcl::StoredPrompt out;
            try {
                out = lcl::read_prompt_file(reinterpret_cast<const uint8_t *>(data.c_str()), data.size(), k);
            } catch (const lcl::BadPromptFile & e) {
                throw std::invalid_argument(e.what());
            }
            std::vector<size_t> offsets;
            for (const auto & m : out.media) {
                offsets.push_back(m.offset);
            }
            return nb::make_tuple(out.tokens, offsets, nb::bytes(reinterpret_cast<const char *>(out.state.data()), out.state.size()),
                                  out.granule, out.exact);
        },
        "data"_a, "key"_a);
    m.def(
        "_plan_batch",
        [](const std::vector<lcl::SlotView> & slots, int n_batch, int n_ctx_seq, bool fill_gaps) {
            return lcl::plan_batch(slots, {n_batch, n_ctx_seq, fill_gaps, lcl::kFillerSlack});
        },
        "slots"_a, "n_batch"_a, "n_ctx_seq"_a, "fill_gaps"_a = true);
}

}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "Native llama.cpp engine for langchain_llamacpp (no LangChain here).";
    lcl::g_main_thread = nb::cast<unsigned long>(nb::module_::import_("threading").attr("main_thread")().attr("ident"));
    if (!lcl::find_is_finalizing()) {
        throw std::runtime_error("this Python exports neither Py_IsFinalizing nor _Py_IsFinalizing");
    }
    // Objects still alive at interpreter exit are expected (cached models); don't print about them.
    nb::set_leak_warnings(false);

    // As nanobind's own translation, except that a message with invalid UTF-8 (a byte from a GGUF
    // key, a grammar, a template) is decoded with replacement instead of raising UnicodeDecodeError.
    nb::register_exception_translator([](const std::exception_ptr & p, void *) {
        auto set = [](PyObject * type, const char * what) {
            PyObject * message = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
            if (message != nullptr) {
                PyErr_SetObject(type, message);
                Py_DECREF(message);
            }
        };
        try {
            std::rethrow_exception(p);
        } catch (const nb::python_error &) {
            throw;  // a Python exception passing through: nanobind restores it
        } catch (const nb::builtin_exception &) {
            throw;
        } catch (const lcl::FileNotFound & e) {
            set(PyExc_FileNotFoundError, e.what());
        } catch (const lcl::ConnectionFailed & e) {
            set(PyExc_ConnectionError, e.what());
        } catch (const std::bad_alloc &) {
            PyErr_NoMemory();
        } catch (const std::invalid_argument & e) {
            set(PyExc_ValueError, e.what());
        } catch (const std::domain_error & e) {
            set(PyExc_ValueError, e.what());
        } catch (const std::length_error & e) {
            set(PyExc_ValueError, e.what());
        } catch (const std::range_error & e) {
            set(PyExc_ValueError, e.what());
        } catch (const std::out_of_range & e) {
            set(PyExc_IndexError, e.what());
        } catch (const std::overflow_error & e) {
            set(PyExc_OverflowError, e.what());
        } catch (const std::exception & e) {
            set(PyExc_RuntimeError, e.what());
        }
    });

    lcl::install_log_callback();
    register_model(m);
    register_params(m);
    register_request(m);
    register_engine(m);
    register_planner(m);
    lcl::register_chat(m);

    m.def(
        "drain_logs",
        [] {
            nb::list out;
            for (const auto & [level, text] : lcl::drain_logs()) {
                out.append(nb::make_tuple(level, py_str(text)));
            }
            return out;
        },
        "Buffered llama.cpp log lines as (ggml_log_level, text); the Python side forwards them to logging.");
    m.def("shutdown", &lcl::shutdown_all_engines, nb::call_guard<lcl::ReleaseGil>(),
          "Stop every engine thread (registered with atexit).");
    m.def(
        "system_info", &lcl::system_info,
        "The backends llama.cpp was built with and the CPU features each uses (AVX2, NEON, ...), as its tools print; "
        "in a wheel, also the CPU backend chosen for this CPU (CPU_BACKEND = libggml-cpu-haswell.so).");
    m.def("rpc_available", &lcl::rpc_available, "Whether this build has llama.cpp's RPC backend (GGML_RPC).");
    m.def("gpu_available", &lcl::has_gpu_device,
          "Whether this build has a device that takes offloaded layers (a GPU backend): there, n_gpu_layers not "
          "given is fitted to free device memory.");
    m.attr("LLAMA_CPP_BUILD") = std::string(llama_build_info());

    // Limits enforced here, for Python to read rather than restate.
    m.attr("MAX_SEQUENCES") = static_cast<int>(llama_max_parallel_sequences());  // n_seq (plan_context)
    m.attr("MAX_DRAFT_TOKENS") = lcl::kMaxDraft;                                // draft_max (check_draft_lengths)
    m.attr("MAX_MEDIA_BYTES") = lcl::kMaxMediaBytes;                           // one image or audio file
    m.def("check_draft_lengths", &lcl::check_draft_lengths, "draft_max"_a, "draft_min"_a,
          "ValueError unless 1 <= draft_max <= MAX_DRAFT_TOKENS and 0 <= draft_min <= draft_max.");
}
