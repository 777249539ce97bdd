#include "chat_render.h"

#include <algorithm>
#include <stdexcept>

#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "json.h"
#include "logging.h"

namespace lcl {

int check_template_source(const std::string & source, const std::string & what) {
    if (source.size() > kMaxTemplateBytes) {
        throw std::invalid_argument(what + " is " + std::to_string(source.size()) + " bytes, over the limit of " +
                                    std::to_string(kMaxTemplateBytes));
    }
    jinja::lexer_result lexed;
    try {
        jinja::lexer lexer;
        lexed = lexer.tokenize(source);
    } catch (const std::exception & e) {
        throw std::invalid_argument(what + " cannot be parsed by llama.cpp's Jinja engine (" + e.what() + ")");
    }
    // llama.cpp's parser and interpreter recurse once per level of brackets and blocks, so a
    // template nested thousands deep overflows the stack: count before parsing.
    int depth = 0;
    int deepest = 0;
    bool statement_start = false;
    for (const auto & tok : lexed.tokens) {
        switch (tok.t) {
            case jinja::token::open_paren:
            case jinja::token::open_square_bracket:
            case jinja::token::open_curly_bracket:
                depth++;
                break;
            case jinja::token::close_paren:
            case jinja::token::close_square_bracket:
            case jinja::token::close_curly_bracket:
                depth--;
                break;
            case jinja::token::identifier:
                if (statement_start) {
                    const auto & kw = tok.value;
                    if (kw == "if" || kw == "for" || kw == "macro" || kw == "call" || kw == "filter" ||
                        kw == "generation") {
                        depth++;
                    } else if (kw.rfind("end", 0) == 0 && kw != "endset") {
                        depth--;
                    }
                }
                break;
            default:
                break;
        }
        statement_start = tok.t == jinja::token::open_statement;
        deepest = std::max(deepest, depth);
        if (depth > kMaxTemplateNesting) {
            throw std::invalid_argument(what + " nests brackets or blocks more than " +
                                        std::to_string(kMaxTemplateNesting) + " deep");
        }
    }
    try {
        jinja::parse_from_tokens(lexed);
    } catch (const std::exception & e) {
        throw std::invalid_argument(what + " cannot be parsed by llama.cpp's Jinja engine (" + e.what() + ")");
    }
    return deepest;
}

void check_json_text(const std::string & text, const std::string & what) {
    if (text.size() > kMaxJsonBytes) {
        throw std::invalid_argument(what + " is " + std::to_string(text.size()) + " bytes, over the limit of " +
                                    std::to_string(kMaxJsonBytes));
    }
    int depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); i++) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > kMaxJsonNesting) {
                throw std::invalid_argument(what + " nests more than " + std::to_string(kMaxJsonNesting) + " levels deep");
            }
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
}

ChatRenderer::ChatRenderer(const llama_model * model, const std::string & override_template) {
    const bool own = override_template.empty();
    const std::string what = own ? "the model's chat template" : "the chat_template given";
    if (own) {
        for (const char * name : {static_cast<const char *>(nullptr), "tool_use"}) {
            const char * src = llama_model_chat_template(model, name);
            if (src != nullptr) {
                check_template_source(src, what);
            }
        }
    } else {
        check_template_source(override_template, what);
    }
    ErrorCapture capture;
    try {
        tmpls_ = common_chat_templates_init(model, override_template);
    } catch (const std::exception & e) {
        throw std::invalid_argument("invalid chat template: " + capture.message(e.what()));
    }
    if (!tmpls_) {
        throw std::invalid_argument("invalid chat template: " + capture.message("could not be parsed"));
    }
}

common_chat_params ChatRenderer::apply(const RenderRequest & r) const {
    check_json_text(r.messages_json, "the messages");
    check_json_text(r.tools_json, "the tool definitions");
    check_json_text(r.json_schema, "the JSON schema");
    ErrorCapture capture;
    try {
        common_chat_templates_inputs inputs;
        inputs.messages = common_chat_msgs_parse_oaicompat(common_json::parse(r.messages_json));
        if (!r.tools_json.empty()) {
            inputs.tools = common_chat_tools_parse_oaicompat(common_json::parse(r.tools_json));
        }
        inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(r.tool_choice.empty() ? "auto" : r.tool_choice);
        inputs.parallel_tool_calls = r.parallel_tool_calls;
        inputs.json_schema = r.json_schema;
        inputs.add_generation_prompt = r.add_generation_prompt;
        inputs.use_jinja = true;
        inputs.enable_thinking = r.enable_thinking;
        inputs.chat_template_kwargs = r.template_kwargs;
        inputs.reasoning_format = common_reasoning_format_from_name(r.reasoning_format);
        return common_chat_templates_apply(tmpls_.get(), inputs);
    } catch (const std::exception & e) {
        throw std::invalid_argument(std::string("chat template failed: ") + capture.message(e.what()));
    }
}

std::string ChatRenderer::source() const { return common_chat_templates_source(tmpls_.get()); }

std::map<std::string, bool> ChatRenderer::caps() const { return common_chat_templates_get_caps(tmpls_.get()); }

}  // namespace lcl
