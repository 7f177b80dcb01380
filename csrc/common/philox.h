// Philox4x32-10 counter-based random numbers (Salmon et al., SC'11), usable on host and device.
//
// A counter-based generator maps (key, counter) -> 4 random 32-bit words with no state, so any pair of
// the loss can be (re)generated independently by any thread, in forward and in backward, on CPU and GPU.
#pragma once

#include <cstdint>

#include "macros.h"

namespace cellulus_fast {

struct Words4 {
  uint32_t v[4];
};

CF_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

CF_HD Words4 philox4x32_10(uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kW0;
    k1 += kW1;
  }
  return Words4{{c0, c1, c2, c3}};
}

// Uniform integer in [0, n) from one 32-bit word (multiply-shift; bias < n / 2^32, i.e. < 1e-6 here).
CF_HD uint32_t uniform_below(uint32_t word, uint32_t n) { return mulhi32(word, n); }

}  // namespace cellulus_fast
