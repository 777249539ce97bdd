#include "chat_render.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "json.h"
#include "logging.h"

namespace lcl {

namespace {

// How a statement's keyword changes the nesting of blocks: +1 opens one, -1 closes one.
int block_nesting(const std::string & keyword) {
    for (const char * opens : {"if", "for", "macro", "call", "filter", "generation"}) {
        if (keyword == opens) {
            return 1;
        }
    }
    return keyword.rfind("end", 0) == 0 && keyword != "endset" ? -1 : 0;
}

}  // namespace

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
                depth += statement_start ? block_nesting(tok.value) : 0;
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

namespace {

// Text as valid UTF-8, each invalid byte replaced by U+FFFD: a template's literals come from the GGUF file's
// author, and Python reads these fields as str.
std::string valid_utf8(const std::string & s) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        bool ok = n > 0 && i + n <= s.size();
        for (size_t k = 1; ok && k < n; ++k) {
            ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
        }
        if (ok && n > 1) {  // no overlong forms, surrogates or code points past U+10FFFF
            uint32_t cp = c & (0xff >> (n + 1));
            for (size_t k = 1; k < n; ++k) {
                cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
            }
            static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
            ok = cp >= kMin[n] && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff);
        }
        if (ok) {
            out.append(s, i, n);
            i += n;
        } else {
            out += "\xef\xbf\xbd";
            i += 1;
        }
    }
    return out;
}

Strings valid_utf8(const std::vector<std::string> & items) {
    Strings out;
    for (const auto & item : items) {
        out.push_back(valid_utf8(item));
    }
    return out;
}

RenderResult result_of(const common_chat_params & p) {
    RenderResult r;
    r.prompt = valid_utf8(p.prompt);
    r.format = static_cast<int>(p.format);
    r.format_name = common_chat_format_name(p.format);
    r.grammar = valid_utf8(p.grammar);
    r.grammar_lazy = p.grammar_lazy;
    for (const auto & t : p.grammar_triggers) {
        r.grammar_triggers.push_back({static_cast<int>(t.type), valid_utf8(t.value), t.token});
    }
    r.generation_prompt = valid_utf8(p.generation_prompt);
    r.parser = valid_utf8(p.parser);
    r.supports_thinking = p.supports_thinking;
    r.preserved_tokens = valid_utf8(p.preserved_tokens);
    r.additional_stops = valid_utf8(p.additional_stops);
    r.thinking_start_tag = valid_utf8(p.thinking_start_tag);
    r.thinking_end_tags = valid_utf8(p.thinking_end_tags);
    return r;
}

// The encoding of a RenderResult: a little-endian u32 count, then per item a u32 length and its bytes;
// the items are (name, value) pairs, a list's value is such a sequence itself.
void put_u32(std::string & out, uint32_t v) {
    for (int i = 0; i < 4; i++) {
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
}

std::string pack(const std::vector<std::string> & items) {
    std::string out;
    put_u32(out, static_cast<uint32_t>(items.size()));
    for (const auto & item : items) {
        put_u32(out, static_cast<uint32_t>(item.size()));
        out += item;
    }
    return out;
}

std::vector<std::string> unpack(const std::string & bytes) {
    size_t pos = 0;
    auto u32 = [&] {
        if (bytes.size() - pos < 4) {
            throw std::invalid_argument("truncated");
        }
        uint32_t v = 0;
        for (int i = 0; i < 4; i++) {
            v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[pos + i])) << (8 * i);
        }
        pos += 4;
        return v;
    };
    const uint32_t count = u32();
    std::vector<std::string> items;
    for (uint32_t i = 0; i < count; i++) {
        const uint32_t size = u32();
        if (bytes.size() - pos < size) {
            throw std::invalid_argument("truncated");
        }
        items.push_back(bytes.substr(pos, size));
        pos += size;
    }
    if (pos != bytes.size()) {
        throw std::invalid_argument("trailing bytes");
    }
    return items;
}

std::string encode_value(const std::string & v) { return v; }
std::string encode_value(int v) { return std::to_string(v); }
std::string encode_value(bool v) { return v ? "1" : "0"; }
std::string encode_value(const GrammarTrigger & t) {
    return pack({encode_value(t.type), t.value, encode_value(t.token)});
}
template <typename T>
std::string encode_value(const std::vector<T> & items) {
    std::vector<std::string> parts;
    for (const auto & item : items) {
        parts.push_back(encode_value(item));
    }
    return pack(parts);
}

void decode_value(const std::string & s, std::string & v) { v = s; }
void decode_value(const std::string & s, int & v) {
    size_t end = 0;
    v = std::stoi(s, &end);
    if (end != s.size()) {
        throw std::invalid_argument("not an integer");
    }
}
void decode_value(const std::string & s, bool & v) {
    if (s != "0" && s != "1") {
        throw std::invalid_argument("not 0 or 1");
    }
    v = s == "1";
}
void decode_value(const std::string & s, GrammarTrigger & t) {
    const auto parts = unpack(s);
    if (parts.size() != 3) {
        throw std::invalid_argument("not a trigger");
    }
    decode_value(parts[0], t.type);
    t.value = parts[1];
    decode_value(parts[2], t.token);
}
template <typename T>
void decode_value(const std::string & s, std::vector<T> & items) {
    for (const auto & part : unpack(s)) {
        decode_value(part, items.emplace_back());
    }
}

using EncodedFields = std::map<std::string, std::string>;

template <typename T>
void decode_field(EncodedFields & fields, const char * name, T & value) {
    const auto it = fields.find(name);
    if (it == fields.end()) {
        throw std::invalid_argument(std::string("the render result lacks its field ") + name);
    }
    try {
        decode_value(it->second, value);
    } catch (const std::exception & e) {
        throw std::invalid_argument(std::string("the render result's field ") + name + " is malformed (" + e.what() + ")");
    }
    fields.erase(it);
}

}  // namespace

bool operator==(const GrammarTrigger & a, const GrammarTrigger & b) {
    return a.type == b.type && a.value == b.value && a.token == b.token;
}

bool RenderResult::operator==(const RenderResult & other) const {
#define LCL_SAME(type, name, doc) &&name == other.name
    return true LCL_RENDER_RESULT(LCL_SAME);
#undef LCL_SAME
}

std::string RenderResult::encode() const {
    std::vector<std::string> items;
#define LCL_ENCODE(type, name, doc)  \
    items.emplace_back(#name);        \
    items.push_back(encode_value(name));
    LCL_RENDER_RESULT(LCL_ENCODE)
#undef LCL_ENCODE
    return pack(items);
}

RenderResult RenderResult::decode(const std::string & bytes) {
    std::vector<std::string> items;
    try {
        items = unpack(bytes);
    } catch (const std::exception & e) {
        throw std::invalid_argument(std::string("a malformed render result (") + e.what() + ")");
    }
    EncodedFields fields;
    for (size_t i = 0; i + 1 < items.size(); i += 2) {
        if (!fields.emplace(items[i], items[i + 1]).second) {
            throw std::invalid_argument("the render result has its field " + items[i] + " twice");
        }
    }
    RenderResult r;
#define LCL_DECODE(type, name, doc) decode_field(fields, #name, r.name);
    LCL_RENDER_RESULT(LCL_DECODE)
#undef LCL_DECODE
    if (items.size() % 2 != 0 || !fields.empty()) {
        throw std::invalid_argument("the render result has a field this build does not know: " +
                                    (fields.empty() ? items.back() : fields.begin()->first));
    }
    return r;
}

RenderResult ChatRenderer::apply(const RenderRequest & r) const {
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
        return result_of(common_chat_templates_apply(tmpls_.get(), inputs));
    } catch (const std::exception & e) {
        throw std::invalid_argument(std::string("chat template failed: ") + capture.message(e.what()));
    }
}

std::string ChatRenderer::source() const { return common_chat_templates_source(tmpls_.get()); }

std::map<std::string, bool> ChatRenderer::caps() const { return common_chat_templates_get_caps(tmpls_.get()); }

}  // namespace lcl
