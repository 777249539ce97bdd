#include "grammar.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <vector>

#include "llama-grammar.h"  // llama.cpp internal: the GBNF parser

namespace lcl {
namespace {

// Same as llama.cpp's parse_space (static there).
const char * skip_space(const char * pos) {
    while (*pos == ' ' || *pos == '\t' || *pos == '#' || *pos == '\r' || *pos == '\n') {
        if (*pos == '#') {
            while (*pos && *pos != '\r' && *pos != '\n') {
                pos++;
            }
        } else {
            pos++;
        }
    }
    return pos;
}

// Skips a "..." literal or [...] class starting at `p` (backslash escapes as llama.cpp reads them).
const char * skip_quoted(const char * p, const char * end) {
    const char close = *p == '"' ? '"' : ']';
    for (p++; p < end && *p != close; p++) {
        if (*p == '\\' && p + 1 < end) {
            p++;
        }
    }
    return p < end ? p + 1 : end;
}

}  // namespace

std::string grammar_limits_error(const std::string & grammar) {
    if (grammar.size() > kMaxGrammarBytes) {
        return "the grammar is " + std::to_string(grammar.size()) + " bytes, over the limit of " +
               std::to_string(kMaxGrammarBytes);
    }
    // A structural pass that mirrors what the parser will build: nesting depth, rule count and the
    // number of elements once repetitions x{m,n} are expanded (llama.cpp copies the repeated part).
    struct Level {
        double total = 0;  // elements in this group so far
        double last = 0;   // elements in the last item (what a repetition applies to)
    };
    std::vector<Level> stack(1);
    double elements = 0;
    size_t rules = 0;
    const char * p = grammar.c_str();
    const char * end = p + grammar.size();
    auto item = [&](double n) {
        stack.back().total += n;
        stack.back().last = n;
    };
    while (p < end) {
        const char c = *p;
        if (c == '#') {
            while (p < end && *p != '\n' && *p != '\r') {
                p++;
            }
        } else if (c == '"' || c == '[') {
            p = skip_quoted(p, end);
            item(1);
        } else if (c == ':' && end - p >= 3 && p[1] == ':' && p[2] == '=') {
            if (++rules > kMaxGrammarRules) {
                return "the grammar has more than " + std::to_string(kMaxGrammarRules) + " rules";
            }
            for (const auto & level : stack) {
                elements += level.total;
            }
            stack.assign(1, Level{});
            p += 3;
        } else if (c == '(') {
            stack.emplace_back();
            if (stack.size() > kMaxGrammarNesting) {
                return "the grammar nests groups more than " + std::to_string(kMaxGrammarNesting) + " deep";
            }
            p++;
        } else if (c == ')') {
            if (stack.size() > 1) {
                const double inner = stack.back().total;
                stack.pop_back();
                item(inner);
            }
            p++;
        } else if (c == '{') {
            // {m}, {m,}, {m,n}: the item is copied max(m, n) times (m + 1 for an open bound).
            double m = 0;
            double n = -1;
            bool comma = false;
            for (p++; p < end && *p != '}'; p++) {
                if (*p >= '0' && *p <= '9') {
                    double & v = comma ? n : m;
                    v = (v < 0 ? 0 : v) * 10 + (*p - '0');
                    v = std::min(v, 1e15);
                } else if (*p == ',') {
                    comma = true;
                }
            }
            p = p < end ? p + 1 : end;
            const double copies = std::max(1.0, comma ? (n < 0 ? m + 1 : std::max(m, n)) : m);
            Level & level = stack.back();
            level.total += level.last * (copies - 1);
            level.last *= copies;
        } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') {
            while (p < end && (std::isalnum(static_cast<unsigned char>(*p)) || *p == '-' || *p == '_')) {
                p++;
            }
            if (c == '.') {
                p++;
            }
            item(1);
        } else {
            p++;
        }
        if (elements + stack.front().total > kMaxGrammarElements || stack.back().total > kMaxGrammarElements) {
            return "the grammar expands to more than " + std::to_string(static_cast<long>(kMaxGrammarElements)) +
                   " elements (check repetition counts x{m,n})";
        }
    }
    return {};
}

std::string grammar_error(const llama_vocab * vocab, const std::string & grammar) {
    std::string limits = grammar_limits_error(grammar);
    if (!limits.empty()) {
        return limits;
    }
    llama_grammar_parser parser(vocab);
    try {
        const char * pos = skip_space(grammar.c_str());
        while (*pos) {
            pos = parser.parse_rule(pos);
        }
        for (const auto & rule : parser.rules) {
            if (rule.empty()) {
                return "undefined rule";
            }
            for (const auto & elem : rule) {
                if (elem.type == LLAMA_GRETYPE_RULE_REF &&
                    (elem.value >= parser.rules.size() || parser.rules[elem.value].empty())) {
                    for (const auto & [name, id] : parser.symbol_ids) {
                        if (id == elem.value) {
                            return "undefined rule '" + name + "'";
                        }
                    }
                    return "undefined rule";
                }
            }
        }
        if (parser.symbol_ids.find("root") == parser.symbol_ids.end()) {
            return "the grammar has no 'root' rule";
        }
    } catch (const std::exception & e) {
        std::string what = e.what();
        if (what.size() > 200) {
            what = what.substr(0, 200) + "...";
        }
        return what;
    }
    return {};
}

}  // namespace lcl
