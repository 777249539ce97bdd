// Rendering OpenAI-style messages through a model's chat template with llama.cpp's `common`
// (Jinja interpreter, tool-call formats, grammar generation). Shared by the extension's in-process
// ChatTemplates and by the sandbox process (template_worker.cpp) that ChatLlamaCpp renders in:
// a template is code from whoever made the GGUF file, and llama.cpp's Jinja engine has no budget
// of its own, so the package runs it where a crash, an endless loop or a memory bomb cannot reach
// the caller's process.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chat.h"
#include "params.h"

namespace lcl {

// Limits checked on a template's source before llama.cpp's recursive-descent parser sees it.
// Real templates (every one in llama.cpp's models/templates) nest to depth 12 at most and are
// under 40 KB; these leave an order of magnitude or more of room.
constexpr size_t kMaxTemplateBytes = 1 << 20;
constexpr int kMaxTemplateNesting = 200;

// Throws std::invalid_argument naming the problem if the source is too large, nests too deeply,
// or does not parse. `what` names the template in messages ("the model's chat template").
// Returns the deepest nesting found.
int check_template_source(const std::string & source, const std::string & what);

struct RenderRequest {
    std::string messages_json;  // OpenAI-style messages
    std::string tools_json;     // OpenAI-style tools, or empty
    std::string tool_choice = "auto";
    bool parallel_tool_calls = false;
    std::string json_schema;  // structured output, or empty
    bool add_generation_prompt = true;
    bool enable_thinking = true;
    std::string reasoning_format = "auto";  // "none": thinking stays in the content
    std::map<std::string, std::string> template_kwargs;
};

// Limits on JSON from callers (messages, tool definitions, schemas): llama.cpp's JSON-schema
// conversion and message parsing recurse once per level. Real schemas nest a dozen levels.
constexpr size_t kMaxJsonBytes = 256u << 20;
constexpr int kMaxJsonNesting = 64;

// Throws std::invalid_argument if `text` is too large or nests too deeply (it is not parsed).
void check_json_text(const std::string & text, const std::string & what);

// X(type, name, doc): what a render gives the caller (from common_chat_params). The same table makes the
// struct, its binding (RenderResult) and its encoding, by field name, for the trip from the template worker.
#define LCL_RENDER_RESULT(X)                                                                                        \
    X(std::string, prompt, "The rendered prompt.")                                                                  \
    X(int, format, "llama.cpp's chat format (common_chat_format), for ChatParser.")                                 \
    X(std::string, format_name, "The chat format's name.")                                                          \
    X(std::string, grammar, "GBNF for tool calls or the JSON schema; empty: none.")                                 \
    X(bool, grammar_lazy, "The grammar applies from a trigger on.")                                                 \
    X(GrammarTriggers, grammar_triggers, "Where a lazy grammar starts.")                                            \
    X(std::string, generation_prompt, "The text the template adds to start the reply (the parser's prefix).")       \
    X(std::string, parser, "llama.cpp's serialized output parser for the format, or empty.")                        \
    X(bool, supports_thinking, "Whether the template has a reasoning block.")                                       \
    X(Strings, preserved_tokens, "Special tokens of the template that are output as text.")                         \
    X(Strings, additional_stops, "Stop strings the template adds.")                                                \
    X(std::string, thinking_start_tag, "The tag that opens the template's thinking block (\"<think>\"), or empty.")  \
    X(Strings, thinking_end_tags, "The tags that close it.")

#define LCL_RENDER_FIELD(type, name, doc) type name{};

bool operator==(const GrammarTrigger & a, const GrammarTrigger & b);

struct RenderResult {
    LCL_RENDER_RESULT(LCL_RENDER_FIELD)

    bool operator==(const RenderResult & other) const;
    // Fields as (name, value) pairs in one length-prefixed byte string, and back. decode throws
    // std::invalid_argument naming a field that is missing, unknown or malformed: none is dropped silently.
    std::string encode() const;
    static RenderResult decode(const std::string & bytes);
};

class ChatRenderer {
public:
    // `override_template` empty: the model's own template(s); a template with a tool_use variant
    // keeps both, as llama.cpp's server does.
    ChatRenderer(const llama_model * model, const std::string & override_template);

    RenderResult apply(const RenderRequest & request) const;

    std::string source() const;
    std::map<std::string, bool> caps() const;

private:
    common_chat_templates_ptr tmpls_;
};

}  // namespace lcl
