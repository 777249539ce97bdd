// Chat templates, tool-call parsing and JSON-schema-to-grammar from llama.cpp's `common`.
// All use of common/chat.h lives in this file. Templates run in llama.cpp's own Jinja
// interpreter (no Python, no code execution from a downloaded file).
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "chat.h"
#include "gil.h"
#include "json-schema-to-grammar.h"
#include "json.h"
#include "logging.h"
#include "model.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace lcl {
namespace {

class ChatTemplates {
public:
    ChatTemplates(std::shared_ptr<Model> model, const std::string & override_template) : model_(std::move(model)) {
        // Parse first ourselves: common_chat_templates_init reports a parse error only to its
        // (silenced) log and rethrows it sliced to a bare std::exception.
        const std::string source = override_template.empty() ? model_->chat_template("") : override_template;
        if (!source.empty()) {
            try {
                common_chat_template probe(source, "", "");
            } catch (const std::exception & e) {
                throw std::invalid_argument(
                    std::string(override_template.empty() ? "the model's chat template" : "the chat_template given") +
                    " cannot be parsed by llama.cpp's Jinja engine (" + e.what() +
                    "); pass chat_template=... with a template that works");
            }
        }
        ErrorCapture capture;
        try {
            tmpls_ = common_chat_templates_init(model_->get(), override_template);
        } catch (const std::exception & e) {
            throw std::invalid_argument(std::string("invalid chat template: ") + capture.message(e.what()));
        }
        if (!tmpls_) {
            throw std::invalid_argument("invalid chat template: " + capture.message("could not be parsed"));
        }
    }

    nb::dict apply(const std::string & messages_json, const std::string & tools_json, const std::string & tool_choice,
                   bool parallel_tool_calls, const std::string & json_schema, bool add_generation_prompt,
                   const std::map<std::string, std::string> & template_kwargs, bool enable_thinking) {
        common_chat_params params;
        {
            lcl::ReleaseGil release;
            ErrorCapture capture;
            try {
                common_chat_templates_inputs inputs;
                inputs.messages = common_chat_msgs_parse_oaicompat(common_json::parse(messages_json));
                if (!tools_json.empty()) {
                    inputs.tools = common_chat_tools_parse_oaicompat(common_json::parse(tools_json));
                }
                inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(tool_choice.empty() ? "auto" : tool_choice);
                inputs.parallel_tool_calls = parallel_tool_calls;
                inputs.json_schema = json_schema;
                inputs.add_generation_prompt = add_generation_prompt;
                inputs.use_jinja = true;
                inputs.enable_thinking = enable_thinking;
                inputs.chat_template_kwargs = template_kwargs;
                inputs.reasoning_format = COMMON_REASONING_FORMAT_AUTO;
                params = common_chat_templates_apply(tmpls_.get(), inputs);
            } catch (const std::exception & e) {
                throw std::invalid_argument(std::string("chat template failed: ") + capture.message(e.what()));
            }
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
        return out;
    }

    std::string source() const { return common_chat_templates_source(tmpls_.get()); }

    std::map<std::string, bool> caps() const { return common_chat_templates_get_caps(tmpls_.get()); }

private:
    std::shared_ptr<Model> model_;
    common_chat_templates_ptr tmpls_;
};

// Parses model output back into a message (content, reasoning, tool calls), also on partial
// output while streaming.
class ChatParser {
public:
    ChatParser(int format, const std::string & parser, const std::string & generation_prompt, bool parse_tool_calls) {
        params_.format = static_cast<common_chat_format>(format);
        params_.generation_prompt = generation_prompt;
        params_.parse_tool_calls = parse_tool_calls;
        params_.reasoning_format = COMMON_REASONING_FORMAT_AUTO;
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

}  // namespace

void register_chat(nb::module_ & m) {
    nb::class_<ChatTemplates>(m, "ChatTemplates", "A model's chat template(s), rendered by llama.cpp's Jinja engine.")
        .def(nb::init<std::shared_ptr<Model>, const std::string &>(), "model"_a, "override_template"_a = "",
             nb::call_guard<lcl::ReleaseGil>())
        .def("apply", &ChatTemplates::apply, "messages_json"_a, "tools_json"_a = "", "tool_choice"_a = "auto",
             "parallel_tool_calls"_a = false, "json_schema"_a = "", "add_generation_prompt"_a = true,
             "template_kwargs"_a = std::map<std::string, std::string>(), "enable_thinking"_a = true,
             "Render OpenAI-style messages; returns the prompt and the grammar/trigger/parser settings.")
        .def_prop_ro("source", &ChatTemplates::source)
        .def("caps", &ChatTemplates::caps);

    nb::class_<ChatParser>(m, "ChatParser", "Parses generated text into content and tool calls.")
        .def(nb::init<int, const std::string &, const std::string &, bool>(), "format"_a, "parser"_a,
             "generation_prompt"_a = "", "parse_tool_calls"_a = true)
        .def("parse", &ChatParser::parse, "text"_a, "is_partial"_a = false, nb::call_guard<lcl::ReleaseGil>());

    m.def(
        "json_schema_to_grammar",
        [](const std::string & schema_json) {
            ErrorCapture capture;
            try {
                return json_schema_to_grammar(common_json::parse(schema_json));
            } catch (const std::exception & e) {
                throw std::invalid_argument(std::string("invalid JSON schema: ") + capture.message(e.what()));
            }
        },
        "schema_json"_a, "A GBNF grammar that accepts exactly the JSON documents matching the schema.");
}

}  // namespace lcl
