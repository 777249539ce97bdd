// SHA-256 (FIPS 180-4), for the prompt cache's keys and checksums: a few lines here rather than a
// dependency on a file of llama.cpp's tree that moves between versions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace lcl {

class Sha256 {
public:
    Sha256();
    Sha256 & update(const void * data, size_t n);
    Sha256 & update(const std::string & s) { return update(s.data(), s.size()); }
    std::array<uint8_t, 32> digest();  // once; the object is spent after it
    std::string hex();                 // digest() as 64 hex digits

private:
    void block(const uint8_t * p);
    uint32_t h_[8];
    uint8_t buf_[64];
    size_t n_buf_ = 0;
    uint64_t n_bytes_ = 0;
};

std::string to_hex(const uint8_t * data, size_t n);

}  // namespace lcl
