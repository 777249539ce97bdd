// Chat templates, tool-call parsing and JSON-schema-to-grammar from llama.cpp's `common`.
// All use of common/chat.h lives in this file. Templates run in llama.cpp's own Jinja
// interpreter (no Python, no code execution from a downloaded file).
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <unistd.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>

#include "chat.h"
#include "ggml.h"
#include "chat_render.h"
#include "gil.h"
#include "grammar.h"
#include "json-schema-to-grammar.h"
#include "json.h"
#include "logging.h"
#include "model.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace lcl {
namespace {

// In-process rendering, for the low-level API and trusted templates. ChatLlamaCpp renders in the
// sandbox process instead (template_worker.cpp), where a hostile template cannot hurt the caller.
class ChatTemplates {
public:
    ChatTemplates(std::shared_ptr<Model> model, const std::string & override_template)
        : model_(std::move(model)), renderer_(model_->get(), override_template) {}

    nb::dict apply(const std::string & messages_json, const std::string & tools_json, const std::string & tool_choice,
                   bool parallel_tool_calls, const std::string & json_schema, bool add_generation_prompt,
                   const std::map<std::string, std::string> & template_kwargs, bool enable_thinking,
                   const std::string & reasoning_format) {
        RenderRequest request;
        request.messages_json = messages_json;
        request.tools_json = tools_json;
        request.tool_choice = tool_choice;
        request.parallel_tool_calls = parallel_tool_calls;
        request.json_schema = json_schema;
        request.add_generation_prompt = add_generation_prompt;
        request.template_kwargs = template_kwargs;
        request.enable_thinking = enable_thinking;
        request.reasoning_format = reasoning_format;
        common_chat_params params;
        {
            lcl::ReleaseGil release;
            params = renderer_.apply(request);
        }
        nb::dict out;
        out["prompt"] = params.prompt;
        out["format"] = static_cast<int>(params.format);
        out["format_name"] = std::string(common_chat_format_name(params.format));
        out["grammar"] = params.grammar;
        out["grammar_lazy"] = params.grammar_lazy;
        out["generation_prompt"] = params.generation_prompt;
        out["parser"] = params.parser;
        out["supports_thinking"] = params.supports_thinking;
        nb::list triggers;
        for (const auto & t : params.grammar_triggers) {
            triggers.append(nb::make_tuple(static_cast<int>(t.type), t.value, t.token));
        }
        out["grammar_triggers"] = triggers;
        out["preserved_tokens"] = params.preserved_tokens;
        out["additional_stops"] = params.additional_stops;
        out["thinking_start_tag"] = params.thinking_start_tag;
        out["thinking_end_tags"] = params.thinking_end_tags;
        return out;
    }

    std::string source() const { return renderer_.source(); }

    std::map<std::string, bool> caps() const { return renderer_.caps(); }

private:
    std::shared_ptr<Model> model_;
    ChatRenderer renderer_;
};

// Parses model output back into a message (content, reasoning, tool calls), also on partial
// output while streaming.
class ChatParser {
public:
    ChatParser(int format, const std::string & parser, const std::string & generation_prompt, bool parse_tool_calls,
               const std::string & reasoning_format) {
        params_.format = static_cast<common_chat_format>(format);
        params_.generation_prompt = generation_prompt;
        params_.parse_tool_calls = parse_tool_calls;
        try {
            params_.reasoning_format = common_reasoning_format_from_name(reasoning_format);
        } catch (const std::exception & e) {
            throw std::invalid_argument(e.what());
        }
        if (!parser.empty()) {
            params_.parser.load(parser);
        }
    }

    // The message as OpenAI-style JSON text.
    std::string parse(const std::string & text, bool is_partial) const {
        ErrorCapture capture;
        try {
            return common_chat_parse(text, is_partial, params_).to_json_oaicompat().dump();
        } catch (const std::exception & e) {
            throw std::invalid_argument(std::string("could not parse the model output: ") + capture.message(e.what()));
        }
    }

private:
    common_chat_parser_params params_;
};

// llama.cpp's JSON-schema conversion prints "WARNING: JSON schema conversion was incomplete" to
// stderr itself (a pattern it cannot express, say). Keep stderr quiet: what it prints goes to the
// log as a warning (Python's logging, see _engine.flush_native_logs). Serialized, since stderr is
// the process's; ChatLlamaCpp converts its schemas in the template worker, whose stderr is discarded.
std::string quiet_stderr(const std::function<std::string()> & fn) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    std::fflush(stderr);
    FILE * tmp = std::tmpfile();
    const int saved = tmp != nullptr ? dup(STDERR_FILENO) : -1;
    if (saved < 0 || dup2(fileno(tmp), STDERR_FILENO) < 0) {
        if (tmp != nullptr) {
            std::fclose(tmp);
        }
        if (saved >= 0) {
            close(saved);
        }
        return fn();
    }
    std::string result;
    std::exception_ptr error;
    try {
        result = fn();
    } catch (...) {
        error = std::current_exception();
    }
    std::fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    std::rewind(tmp);
    std::string printed;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), tmp)) > 0;) {
        printed.append(buf, n);
    }
    std::fclose(tmp);
    while (!printed.empty() && (printed.back() == '\n' || printed.back() == ' ')) {
        printed.pop_back();
    }
    if (!printed.empty()) {
        log_line(GGML_LOG_LEVEL_WARN, printed);
    }
    if (error) {
        std::rethrow_exception(error);
    }
    return result;
}

}  // namespace

void register_chat(nb::module_ & m) {
    nb::class_<ChatTemplates>(m, "ChatTemplates", "A model's chat template(s), rendered in this process by llama.cpp's Jinja engine (trusted templates only: "
                                   "ChatLlamaCpp renders in a sandbox process).")
        .def(nb::init<std::shared_ptr<Model>, const std::string &>(), "model"_a, "override_template"_a = "",
             nb::call_guard<lcl::ReleaseGil>())
        .def("apply", &ChatTemplates::apply, "messages_json"_a, "tools_json"_a = "", "tool_choice"_a = "auto",
             "parallel_tool_calls"_a = false, "json_schema"_a = "", "add_generation_prompt"_a = true,
             "template_kwargs"_a = std::map<std::string, std::string>(), "enable_thinking"_a = true,
             "reasoning_format"_a = "auto",
             "Render OpenAI-style messages; returns the prompt and the grammar/trigger/parser settings.")
        .def_prop_ro("source", &ChatTemplates::source)
        .def("caps", &ChatTemplates::caps);

    nb::class_<ChatParser>(m, "ChatParser", "Parses generated text into content and tool calls.")
        .def(nb::init<int, const std::string &, const std::string &, bool, const std::string &>(), "format"_a,
             "parser"_a, "generation_prompt"_a = "", "parse_tool_calls"_a = true, "reasoning_format"_a = "auto")
        .def("parse", &ChatParser::parse, "text"_a, "is_partial"_a = false, nb::call_guard<lcl::ReleaseGil>());

    m.def(
        "grammar_error",
        [](const std::shared_ptr<Model> & model, const std::string & grammar) {
            return grammar_error(model->vocab(), grammar);
        },
        "model"_a, "grammar"_a, nb::call_guard<lcl::ReleaseGil>(),
        "Why llama.cpp would reject a GBNF grammar (its limits, then its parser), or \"\" if it is valid.");

    m.def(
        "check_chat_template",
        [](const std::string & source) { return check_template_source(source, "the chat template"); }, "source"_a,
        "Check a chat template's size, nesting and syntax without running it; returns its deepest nesting.");

    m.def(
        "json_schema_to_grammar",
        [](const std::string & schema_json) {
            check_json_text(schema_json, "the JSON schema");
            ErrorCapture capture;
            try {
                return quiet_stderr([&] { return json_schema_to_grammar(common_json::parse(schema_json)); });
            } catch (const std::exception & e) {
                throw std::invalid_argument(std::string("invalid JSON schema: ") + capture.message(e.what()));
            }
        },
        "schema_json"_a, "A GBNF grammar that accepts exactly the JSON documents matching the schema.");
}

}  // namespace lcl
