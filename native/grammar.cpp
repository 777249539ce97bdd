#include "grammar.h"

#include <stdexcept>

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

}  // namespace

std::string grammar_error(const llama_vocab * vocab, const std::string & grammar) {
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
