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

bool end_of_alternative(const llama_grammar_element & e) {
    return e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT;
}

// llama.cpp checks for left recursion, but counts a rule as able to match nothing only when one of
// its alternatives is empty as written, so `r2 ::= r1 r1 (r2 r2)?` with `r1 ::= "a"?` slips through
// and llama.cpp then expands its parse stacks without end. Not every left recursion hangs it: when
// the recursive reference ends its alternative (`rec ::= g rec |`, which is how it writes `(g)*`,
// with g able to match nothing, as in its own tool-call grammars) the stack keeps its depth and
// llama.cpp's de-duplication of stacks ends the expansion. So this looks for a left-recursive cycle
// through a reference that is followed by more of its alternative, following "may match nothing"
// through references. Returns a rule on such a cycle, or -1.
int left_recursive_rule(const llama_grammar_rules & rules) {
    const size_t n = rules.size();
    std::vector<char> nullable(n, 0);
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t r = 0; r < n; r++) {
            if (nullable[r]) {
                continue;
            }
            bool all_nullable = true;  // so far in the current alternative
            for (const auto & e : rules[r]) {
                if (end_of_alternative(e)) {
                    if (all_nullable) {
                        nullable[r] = 1;
                        changed = true;
                        break;
                    }
                    all_nullable = true;
                } else if (e.type != LLAMA_GRETYPE_RULE_REF || e.value >= n || !nullable[e.value]) {
                    all_nullable = false;
                }
            }
        }
    }
    // The rules each rule may start with; `growing` marks references followed by more elements.
    struct Edge {
        uint32_t to;
        bool growing;
    };
    std::vector<std::vector<Edge>> starts(n);
    std::vector<std::vector<uint32_t>> reverse(n);
    for (size_t r = 0; r < n; r++) {
        bool at_start = true;
        const auto & rule = rules[r];
        for (size_t i = 0; i < rule.size(); i++) {
            const auto & e = rule[i];
            if (end_of_alternative(e)) {
                at_start = true;
            } else if (at_start && e.type == LLAMA_GRETYPE_RULE_REF && e.value < n) {
                const bool growing = i + 1 < rule.size() && !end_of_alternative(rule[i + 1]);
                starts[r].push_back({e.value, growing});
                reverse[e.value].push_back(static_cast<uint32_t>(r));
                at_start = nullable[e.value] != 0;
            } else {
                at_start = false;
            }
        }
    }
    // Strongly connected components (Kosaraju, iterative): a growing edge inside one is on a cycle.
    std::vector<uint32_t> order;
    std::vector<char> seen(n, 0);
    std::vector<std::pair<uint32_t, size_t>> path;
    for (size_t root = 0; root < n; root++) {
        if (seen[root]) {
            continue;
        }
        seen[root] = 1;
        path.emplace_back(static_cast<uint32_t>(root), 0);
        while (!path.empty()) {
            auto & [rule, next] = path.back();
            if (next == starts[rule].size()) {
                order.push_back(rule);
                path.pop_back();
                continue;
            }
            const uint32_t to = starts[rule][next++].to;
            if (!seen[to]) {
                seen[to] = 1;
                path.emplace_back(to, 0);
            }
        }
    }
    std::vector<int> component(n, -1);
    std::vector<uint32_t> todo;
    int n_components = 0;
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        if (component[*it] >= 0) {
            continue;
        }
        component[*it] = n_components;
        todo.push_back(*it);
        while (!todo.empty()) {
            const uint32_t rule = todo.back();
            todo.pop_back();
            for (const uint32_t from : reverse[rule]) {
                if (component[from] < 0) {
                    component[from] = n_components;
                    todo.push_back(from);
                }
            }
        }
        n_components++;
    }
    for (size_t r = 0; r < n; r++) {
        for (const auto & edge : starts[r]) {
            if (edge.growing && component[edge.to] == component[r]) {
                return static_cast<int>(r);
            }
        }
    }
    return -1;
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
    size_t alternatives = 0;  // in the current rule
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
            alternatives = 0;
            p += 3;
        } else if (c == '|') {
            if (++alternatives > kMaxGrammarAlternatives) {
                return "a rule of the grammar has more than " + std::to_string(kMaxGrammarAlternatives) +
                       " alternatives (llama.cpp checks each one for every token)";
            }
            p++;
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
            if (comma && n >= 0 && n < m) {
                return "a repetition x{m,n} has n < m (llama.cpp would expand it without end)";
            }
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
        const int looping = left_recursive_rule(parser.rules);
        if (looping >= 0) {
            for (const auto & [name, id] : parser.symbol_ids) {
                if (id == static_cast<uint32_t>(looping)) {
                    return "rule '" + name + "' is left-recursive (llama.cpp would expand it without end)";
                }
            }
            return "the grammar is left-recursive (llama.cpp would expand it without end)";
        }
    } catch (const std::exception & e) {
        std::string what = e.what();
        if (what.size() > 200) {
            size_t cut = 200;
            while (cut > 0 && (static_cast<unsigned char>(what[cut]) & 0xC0) == 0x80) {
                cut--;  // not inside a UTF-8 character
            }
            what = what.substr(0, cut) + "...";
        }
        return what;
    }
    return {};
}

}  // namespace lcl
