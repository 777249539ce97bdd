#include "text.h"

#include <algorithm>

namespace lcl {

size_t utf8_complete_prefix(const std::string & s) {
    // Walk back over at most 3 trailing bytes to find the lead byte of the last character.
    const size_t n = s.size();
    size_t back = 0;
    while (back < n && back < 4) {
        const auto c = static_cast<unsigned char>(s[n - 1 - back]);
        if ((c & 0xC0) != 0x80) {
            size_t len = 1;
            if ((c & 0xE0) == 0xC0) {
                len = 2;
            } else if ((c & 0xF0) == 0xE0) {
                len = 3;
            } else if ((c & 0xF8) == 0xF0) {
                len = 4;
            }
            return back + 1 >= len ? n : n - back - 1;
        }
        ++back;
    }
    return n;  // only continuation bytes: invalid input, release as is
}

std::string Utf8Assembler::push(const std::string & bytes) {
    pending_ += bytes;
    const size_t complete = utf8_complete_prefix(pending_);
    std::string out = pending_.substr(0, complete);
    pending_.erase(0, complete);
    return out;
}

std::string Utf8Assembler::flush() {
    if (pending_.empty()) {
        return {};
    }
    pending_.clear();
    return "\xEF\xBF\xBD";
}

StopMatcher::StopMatcher(std::vector<std::string> stops) {
    for (auto & s : stops) {
        if (!s.empty()) {
            stops_.push_back(std::move(s));
        }
    }
}

StopMatcher::Result StopMatcher::push(const std::string & text) {
    Result result;
    if (stops_.empty()) {
        result.text = text;
        return result;
    }
    pending_ += text;
    // The earliest complete match wins.
    size_t best = std::string::npos;
    for (const auto & stop : stops_) {
        const size_t pos = pending_.find(stop);
        if (pos != std::string::npos && pos < best) {
            best = pos;
            result.stop = stop;
        }
    }
    if (best != std::string::npos) {
        result.text = pending_.substr(0, best);
        result.stopped = true;
        pending_.clear();
        return result;
    }
    // Hold back the longest tail that is a proper prefix of some stop string.
    size_t hold = 0;
    for (const auto & stop : stops_) {
        const size_t max_len = std::min(stop.size() - 1, pending_.size());
        for (size_t len = max_len; len > hold; --len) {
            if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
                hold = len;
                break;
            }
        }
    }
    result.text = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return result;
}

std::string StopMatcher::flush() {
    std::string out;
    out.swap(pending_);
    return out;
}

}  // namespace lcl
