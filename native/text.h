// Incremental text output: UTF-8 reassembly and stop-string hold-back. Both keep a bounded
// tail, so the cost per token does not grow with the length of the output.
#pragma once

#include <string>
#include <vector>

namespace lcl {

// Token pieces can split a multi-byte character; only complete characters are released.
class Utf8Assembler {
public:
    // Appends bytes and returns the longest prefix of complete characters.
    std::string push(const std::string & bytes);
    // Whatever is left at the end (an incomplete sequence), replaced by U+FFFD.
    std::string flush();

private:
    std::string pending_;
};

// Finds stop strings in streamed text. Text that could be the start of a stop string is held
// back until it is known not to be one, so no part of a stop string is ever released.
class StopMatcher {
public:
    explicit StopMatcher(std::vector<std::string> stops);

    struct Result {
        std::string text;   // text safe to release now
        bool stopped = false;
        std::string stop;   // the stop string that matched
    };

    Result push(const std::string & text);
    // End of generation without a match: release what was held back.
    std::string flush();

private:
    std::vector<std::string> stops_;
    std::string pending_;
};

// Length of the valid UTF-8 prefix of `s` that ends on a character boundary.
size_t utf8_complete_prefix(const std::string & s);

}  // namespace lcl
