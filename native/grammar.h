#pragma once

#include <string>

struct llama_vocab;

namespace lcl {

// Parses a GBNF grammar the way llama.cpp will, returning the parser's error message ("" when
// valid). llama.cpp's own parser reports errors only by printing to stderr; this keeps that
// message for the exception and keeps stderr quiet.
std::string grammar_error(const llama_vocab * vocab, const std::string & grammar);

}  // namespace lcl
