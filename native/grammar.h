#pragma once

#include <cstddef>
#include <string>

struct llama_vocab;

namespace lcl {

// Limits on a grammar, checked before llama.cpp's parser sees it: the parser recurses once per
// nested group and expands repetitions x{m,n} into copies, so a small hostile grammar could
// overflow the stack or ask for billions of elements. Real grammars are far inside them: those in
// llama.cpp's grammars/ nest 2 deep with 21 rules at most, and JSON-schema conversions nest a few
// levels with a rule per property.
constexpr size_t kMaxGrammarBytes = 4 << 20;
constexpr size_t kMaxGrammarNesting = 100;
constexpr size_t kMaxGrammarRules = 10000;
constexpr double kMaxGrammarElements = 2e6;
// llama.cpp tries every alternative of a rule for every candidate token: 100,000 took ~40 s a token.
constexpr size_t kMaxGrammarAlternatives = 10000;

// Ambiguity (grammar.cpp says why): a walk of this many characters from the start, trying at most this
// many characters a step, and for tokens of this many characters at most this many parse paths, with at
// most this many parses at once. Measured: llama.cpp's grammars/ and JSON-schema conversions need at most
// 221 paths, the tool-call grammars of all templates in its models/templates at most 5,534 (Hermes-style:
// runs of optional whitespace), `id ::= [a-z] id*` over ten million.
constexpr size_t kGrammarProbeChars = 48;
constexpr size_t kGrammarProbeBranches = 64;
constexpr size_t kGrammarProbeTokenChars = 12;
constexpr size_t kMaxGrammarPaths = 65536;
constexpr size_t kMaxGrammarParses = 256;

// The limit a grammar breaks, or "" if none.
std::string grammar_limits_error(const std::string & grammar);

// Parses a GBNF grammar the way llama.cpp will, returning the parser's error message ("" when
// valid). llama.cpp's own parser reports errors only by printing to stderr; this keeps that
// message for the exception and keeps stderr quiet.
std::string grammar_error(const llama_vocab * vocab, const std::string & grammar);

}  // namespace lcl
