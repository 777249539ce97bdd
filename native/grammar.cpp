#include "grammar.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
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

// Rules that may match nothing, following references (llama.cpp looks only at alternatives empty as
// written).
std::vector<char> nullable_rules(const llama_grammar_rules & rules) {
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
    return nullable;
}

// A reference from one rule to another; `flagged` marks the kind a check looks for on a cycle.
struct Edge {
    uint32_t to;
    bool flagged;
};

// A rule with a flagged edge to a rule of its own strongly connected component (so the edge is on a
// cycle), or -1. Kosaraju's algorithm, iterative.
int flagged_cycle_rule(const std::vector<std::vector<Edge>> & edges) {
    const size_t n = edges.size();
    std::vector<std::vector<uint32_t>> reverse(n);
    for (size_t r = 0; r < n; r++) {
        for (const auto & edge : edges[r]) {
            reverse[edge.to].push_back(static_cast<uint32_t>(r));
        }
    }
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
            if (next == edges[rule].size()) {
                order.push_back(rule);
                path.pop_back();
                continue;
            }
            const uint32_t to = edges[rule][next++].to;
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
        for (const auto & edge : edges[r]) {
            if (edge.flagged && component[edge.to] == component[r]) {
                return static_cast<int>(r);
            }
        }
    }
    return -1;
}

// llama.cpp checks for left recursion, but counts a rule as able to match nothing only when one of
// its alternatives is empty as written, so `r2 ::= r1 r1 (r2 r2)?` with `r1 ::= "a"?` slips through
// and llama.cpp then expands its parse stacks without end. Not every left recursion hangs it: when
// the recursive reference ends its alternative (`rec ::= g rec |`, which is how it writes `(g)*`,
// with g able to match nothing, as in its own tool-call grammars) the stack keeps its depth and
// llama.cpp's de-duplication of stacks ends the expansion. So this looks for a left-recursive cycle
// through a reference that is followed by more of its alternative (flagged), following "may match
// nothing" through references. Returns a rule on such a cycle, or -1.
int left_recursive_rule(const llama_grammar_rules & rules, const std::vector<char> & nullable) {
    const size_t n = rules.size();
    std::vector<std::vector<Edge>> starts(n);  // the rules each rule may start with
    for (size_t r = 0; r < n; r++) {
        bool at_start = true;
        const auto & rule = rules[r];
        for (size_t i = 0; i < rule.size(); i++) {
            const auto & e = rule[i];
            if (end_of_alternative(e)) {
                at_start = true;
            } else if (at_start && e.type == LLAMA_GRETYPE_RULE_REF && e.value < n) {
                starts[r].push_back({e.value, i + 1 < rule.size() && !end_of_alternative(rule[i + 1])});
                at_start = nullable[e.value] != 0;
            } else {
                at_start = false;
            }
        }
    }
    return flagged_cycle_rule(starts);
}

// Recursion that may pile up parse frames which match nothing: in `id ::= [a-z] id*` (llama.cpp writes
// `id*` as `id_1 ::= id id_1 |`), each letter may start a nested `id` whose rest (`id_1`) may be
// empty, so after n letters a parse may be n frames deep, and the next letter may close any number of
// them: one text, ever more parses, and llama.cpp's sampler follows each (see ambiguity_error). This
// looks for a cycle of references, each either ending its alternative (the stack keeps its depth) or
// followed by a rest that may match nothing (flagged: the stack grows by a frame that may vanish),
// with at least one of the latter. Returns a rule on such a cycle, or -1.
int vanishing_frames_rule(const llama_grammar_rules & rules, const std::vector<char> & nullable) {
    const size_t n = rules.size();
    std::vector<std::vector<Edge>> edges(n);
    for (size_t r = 0; r < n; r++) {
        const auto & rule = rules[r];
        for (size_t i = 0; i < rule.size(); i++) {
            if (rule[i].type != LLAMA_GRETYPE_RULE_REF || rule[i].value >= n) {
                continue;
            }
            size_t end = i + 1;  // the rest of the alternative: nothing, or only rules that may match nothing
            while (end < rule.size() && !end_of_alternative(rule[end]) && rule[end].type == LLAMA_GRETYPE_RULE_REF &&
                   rule[end].value < n && nullable[rule[end].value]) {
                end++;
            }
            if (end == rule.size() || end_of_alternative(rule[end])) {
                edges[r].push_back({rule[i].value, end > i + 1});
            }
        }
    }
    return flagged_cycle_rule(edges);
}

// A rule's name as the grammar's author wrote it: llama.cpp names the rules it makes for groups and
// repetitions after the rule they are in, plus `_N`.
std::string rule_name(const llama_grammar_parser & parser, int rule) {
    for (const auto & [name, id] : parser.symbol_ids) {
        if (id == static_cast<uint32_t>(rule)) {
            const size_t cut = name.find_last_of('_');
            const bool generated = cut != std::string::npos && cut + 1 < name.size() &&
                                   name.find_first_not_of("0123456789", cut + 1) == std::string::npos &&
                                   parser.symbol_ids.count(name.substr(0, cut)) > 0;
            return "rule '" + (generated ? name.substr(0, cut) : name) + "'";
        }
    }
    return "a rule";
}

// -- Ambiguity ----------------------------------------------------------------------------------
// llama.cpp's sampler checks every candidate token against every parse stack, character by character,
// and at each character follows every stack that character leads to, without merging paths that meet
// again (llama_grammar_reject_candidates). When one text has many parses, as every split of a word has
// in `id ::= [a-z] id*`, that work grows with the product of the parses over a token's characters: a
// dozen tokens took a minute, and no deadline can interrupt a sampling call. So a grammar is walked
// before use: from the start, each step takes the character that leaves the most parses, and at each
// point the paths the sampler would follow for a token spelled like the next characters are counted.

bool match_char(const llama_grammar_element * pos, uint32_t chr) {
    const bool positive = pos->type == LLAMA_GRETYPE_CHAR || pos->type == LLAMA_GRETYPE_CHAR_ANY;
    bool found = false;
    do {
        if (pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
            found = found || (pos->value <= chr && chr <= pos[1].value);
            pos += 2;
        } else if (pos->type == LLAMA_GRETYPE_CHAR_ANY) {
            found = true;
            pos += 1;
        } else {
            found = found || pos->value == chr;
            pos += 1;
        }
    } while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
    return found == positive;
}

bool is_char_element(const llama_grammar_element * pos) {
    return pos->type == LLAMA_GRETYPE_CHAR || pos->type == LLAMA_GRETYPE_CHAR_NOT ||
           pos->type == LLAMA_GRETYPE_CHAR_ANY;
}

// Characters that stand for what the element at the top of a stack accepts: each listed character and
// each range's ends, or for [^...] and "." the first printable ASCII character it accepts.
void sample_chars(const llama_grammar_element * pos, std::vector<uint32_t> & out) {
    if (pos->type == LLAMA_GRETYPE_CHAR) {
        const llama_grammar_element * p = pos;
        do {
            out.push_back(p->value);
            if (p[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
                out.push_back(p[1].value);
                p += 2;
            } else {
                p += 1;
            }
        } while (p->type == LLAMA_GRETYPE_CHAR_ALT);
        return;
    }
    for (uint32_t c = 'a'; c < 'a' + 95; c++) {
        const uint32_t chr = 32 + (c - 32) % 95;  // from 'a' round to '`'
        if (match_char(pos, chr)) {
            out.push_back(chr);
            return;
        }
    }
}

struct GrammarFree {
    void operator()(llama_grammar * g) const { llama_grammar_free_impl(g); }
};

class AmbiguityProbe {
  public:
    explicit AmbiguityProbe(llama_grammar * grammar) : grammar_(grammar) {}

    llama_grammar_stacks step(const llama_grammar_stacks & from, uint32_t chr) {
        llama_grammar_get_stacks(grammar_) = from;
        llama_grammar_accept(grammar_, chr);
        return llama_grammar_get_stacks(grammar_);
    }

    // The stacks the sampler's recursion visits checking `n` characters from `stack`, up to `cap`.
    size_t paths(const llama_grammar_stack & stack, const uint32_t * chars, size_t n, size_t cap) {
        size_t visited = 1;
        if (n == 0 || stack.empty() || !is_char_element(stack.back())) {
            return visited;
        }
        for (const auto & next : step({stack}, chars[0])) {
            visited += paths(next, chars + 1, n - 1, cap - std::min(cap, visited));
            if (visited >= cap) {
                break;
            }
        }
        return visited;
    }

  private:
    llama_grammar * grammar_;
};

std::string printable(const std::vector<uint32_t> & chars) {
    std::string out;
    for (uint32_t c : chars) {
        if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (c >= 32 && c < 127 && c != '\'' && c != '\\') {
            out += static_cast<char>(c);
        } else {
            char hex[16];
            snprintf(hex, sizeof(hex), "\\u{%X}", c);
            out += hex;
        }
    }
    return out;
}

std::string ambiguity_error(const llama_vocab * vocab, const llama_grammar_parser & parser) {
    auto c_rules = parser.c_rules();
    const std::unique_ptr<llama_grammar, GrammarFree> grammar(
        llama_grammar_init_impl(vocab, c_rules.data(), c_rules.size(), parser.symbol_ids.at("root")));
    if (!grammar) {
        return {};  // llama.cpp refuses it itself, with its own message
    }
    AmbiguityProbe probe(grammar.get());
    std::vector<llama_grammar_stacks> states{llama_grammar_get_stacks(grammar.get())};
    std::vector<uint32_t> text;
    std::vector<uint32_t> chars;
    for (size_t i = 0; i < kGrammarProbeChars; i++) {
        chars.clear();
        for (const auto & stack : states.back()) {
            if (!stack.empty() && is_char_element(stack.back())) {
                sample_chars(stack.back(), chars);
            }
        }
        std::sort(chars.begin(), chars.end());
        chars.erase(std::unique(chars.begin(), chars.end()), chars.end());
        chars.resize(std::min(chars.size(), kGrammarProbeBranches));
        llama_grammar_stacks best;
        uint32_t best_chr = 0;
        for (uint32_t chr : chars) {
            auto next = probe.step(states.back(), chr);
            if (next.size() > best.size()) {
                best = std::move(next);
                best_chr = chr;
            }
        }
        if (best.empty()) {
            break;
        }
        text.push_back(best_chr);
        states.push_back(std::move(best));
        if (states.back().size() > kMaxGrammarParses) {
            return "the grammar is ambiguous: the text '" + printable(text) + "' has more than " +
                   std::to_string(kMaxGrammarParses) + " parses (write it so that each text has one)";
        }
    }
    for (size_t t = 0; t < text.size(); t++) {
        const size_t n = std::min(kGrammarProbeTokenChars, text.size() - t);
        size_t visited = 0;
        for (const auto & stack : states[t]) {
            visited += probe.paths(stack, text.data() + t, n, kMaxGrammarPaths - std::min(kMaxGrammarPaths, visited));
            if (visited >= kMaxGrammarPaths) {
                const std::vector<uint32_t> token(text.begin() + t, text.begin() + t + n);
                const std::string where =
                    t == 0 ? "at its start"
                           : "after '" + std::string(t > 24 ? "..." : "") +
                                 printable({text.begin() + (t > 24 ? t - 24 : 0), text.begin() + t}) + "'";
                return "the grammar is ambiguous: " + where + ", a token spelled '" + printable(token) + "' has more than " +
                       std::to_string(kMaxGrammarPaths) +
                       " parse paths, which llama.cpp's sampler would follow one by one for every such "
                       "token (write it so that each text has one parse, e.g. `x+` rather than `x x*` "
                       "inside a repetition)";
            }
        }
    }
    return {};
}

}  // namespace

namespace {

// A structural pass that mirrors what the parser will build: nesting depth, rule count and the number
// of elements once repetitions x{m,n} are expanded (llama.cpp copies the repeated part). Each step reads
// one item at p and returns an error message, or "".
class GrammarShape {
public:
    GrammarShape(const char * p, const char * end) : p_(p), end_(end) {}

    std::string scan() {
        while (p_ < end_) {
            std::string error = step();
            if (error.empty() && (elements_ + stack_.front().total > kMaxGrammarElements ||
                                  stack_.back().total > kMaxGrammarElements)) {
                error = "the grammar expands to more than " + std::to_string(static_cast<long>(kMaxGrammarElements)) +
                        " elements (check repetition counts x{m,n})";
            }
            if (!error.empty()) {
                return error;
            }
        }
        return {};
    }

private:
    struct Level {
        double total = 0;  // elements in this group so far
        double last = 0;   // elements in the last item (what a repetition applies to)
    };

    std::string step() {
        const char c = *p_;
        if (c == '#') {
            while (p_ < end_ && *p_ != '\n' && *p_ != '\r') {
                p_++;
            }
        } else if (c == '"' || c == '[') {
            p_ = skip_quoted(p_, end_);
            item(1);
        } else if (c == ':' && end_ - p_ >= 3 && p_[1] == ':' && p_[2] == '=') {
            return rule();
        } else if (c == '|') {
            p_++;
            if (++alternatives_ > kMaxGrammarAlternatives) {
                return "a rule of the grammar has more than " + std::to_string(kMaxGrammarAlternatives) +
                       " alternatives (llama.cpp checks each one for every token)";
            }
        } else if (c == '(' || c == ')') {
            return group(c);
        } else if (c == '{') {
            return repetition();
        } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') {
            name(c);
        } else {
            p_++;
        }
        return {};
    }

    void item(double n) {
        stack_.back().total += n;
        stack_.back().last = n;
    }

    std::string rule() {
        p_ += 3;
        if (++rules_ > kMaxGrammarRules) {
            return "the grammar has more than " + std::to_string(kMaxGrammarRules) + " rules";
        }
        for (const auto & level : stack_) {
            elements_ += level.total;
        }
        stack_.assign(1, Level{});
        alternatives_ = 0;
        return {};
    }

    std::string group(char c) {
        p_++;
        if (c == '(') {
            stack_.emplace_back();
            if (stack_.size() > kMaxGrammarNesting) {
                return "the grammar nests groups more than " + std::to_string(kMaxGrammarNesting) + " deep";
            }
        } else if (stack_.size() > 1) {
            const double inner = stack_.back().total;
            stack_.pop_back();
            item(inner);
        }
        return {};
    }

    std::string repetition() {
        // {m}, {m,}, {m,n}: the item is copied max(m, n) times (m + 1 for an open bound).
        double m = 0;
        double n = -1;
        bool comma = false;
        for (p_++; p_ < end_ && *p_ != '}'; p_++) {
            if (*p_ >= '0' && *p_ <= '9') {
                double & v = comma ? n : m;
                v = (v < 0 ? 0 : v) * 10 + (*p_ - '0');
                v = std::min(v, 1e15);
            } else if (*p_ == ',') {
                comma = true;
            }
        }
        p_ = p_ < end_ ? p_ + 1 : end_;
        if (comma && n >= 0 && n < m) {
            return "a repetition x{m,n} has n < m (llama.cpp would expand it without end)";
        }
        const double copies = std::max(1.0, comma ? (n < 0 ? m + 1 : std::max(m, n)) : m);
        Level & level = stack_.back();
        level.total += level.last * (copies - 1);
        level.last *= copies;
        return {};
    }

    void name(char c) {
        while (p_ < end_ && (std::isalnum(static_cast<unsigned char>(*p_)) || *p_ == '-' || *p_ == '_')) {
            p_++;
        }
        if (c == '.') {
            p_++;
        }
        item(1);
    }

    const char * p_;
    const char * end_;
    std::vector<Level> stack_ = std::vector<Level>(1);
    double elements_ = 0;
    size_t rules_ = 0;
    size_t alternatives_ = 0;  // in the current rule
};

}  // namespace

std::string grammar_limits_error(const std::string & grammar) {
    if (grammar.size() > kMaxGrammarBytes) {
        return "the grammar is " + std::to_string(grammar.size()) + " bytes, over the limit of " +
               std::to_string(kMaxGrammarBytes);
    }
    return GrammarShape(grammar.c_str(), grammar.c_str() + grammar.size()).scan();
}

namespace {

std::string check_grammar(const llama_vocab * vocab, const std::string & grammar) {
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
        const std::vector<char> nullable = nullable_rules(parser.rules);
        const int looping = left_recursive_rule(parser.rules, nullable);
        if (looping >= 0) {
            return rule_name(parser, looping) + " is left-recursive (llama.cpp would expand it without end)";
        }
        const int piling = vanishing_frames_rule(parser.rules, nullable);
        if (piling >= 0) {
            return "the grammar is ambiguous: " + rule_name(parser, piling) +
                   " recurses through parts that may match nothing, so one text has ever more parses as it "
                   "grows, and llama.cpp's sampler follows each (write it so that each text has one parse, "
                   "e.g. `id ::= [a-z]+` rather than `id ::= [a-z] id*`)";
        }
        const std::string ambiguous = ambiguity_error(vocab, parser);
        if (!ambiguous.empty()) {
            return ambiguous;
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

}  // namespace

std::string grammar_error(const llama_vocab * vocab, const std::string & grammar) {
    // The same grammar comes with every call that uses the same tools or schema, and its checks take
    // up to tens of milliseconds: remember the last answers, per vocabulary.
    static std::mutex mutex;
    static std::unordered_map<std::string, std::string> checked;
    std::string key(reinterpret_cast<const char *>(&vocab), sizeof(vocab));
    key += std::to_string(vocab ? llama_vocab_n_tokens(vocab) : 0) + ":" + grammar;
    {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = checked.find(key);
        if (it != checked.end()) {
            return it->second;
        }
    }
    std::string error = check_grammar(vocab, grammar);
    std::lock_guard<std::mutex> lock(mutex);
    if (checked.size() >= 64) {
        checked.clear();
    }
    checked.emplace(std::move(key), error);
    return error;
}

}  // namespace lcl
