// Threshold packing of a saved activation on the CPU, as XLA FFI custom calls.
//
// The same format as sparsejax.ops.compaction.pack / unpack with a tie threshold t
// (SWAT's rule: keep |x| >= t): entry 32 g + j is bit 31 - j of word g.
//   bits:   entries stored as a value (|x| > t, x != 0), and negative ties;
//   ties:   entries with |x| == t (x != 0), which take no value slot;
//   values: the stored values in row-major order, k slots (unused ones 0).
// One pass each way, where the XLA formulation needs popcount prefix sums, a
// scatter and a bisection per slot (a loop of kernels to compile per shape).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The store and tie words of the 32 entries from base (fewer at the end).
inline void Classify(const float* a, int end, float t, uint32_t* store, uint32_t* neg_tie,
                     uint32_t* tie) {
  uint32_t s = 0, nt = 0, tw = 0;
  for (int j = 0; j < end; ++j) {  // branch-free: the compiler vectorises it
    const float xv = a[j];
    const float m = std::fabs(xv);
    const uint32_t bit = 1u << (31 - j);
    const uint32_t kept = ((m >= t) & (xv != 0.f)) ? bit : 0u;
    const uint32_t at_tie = (m == t) ? kept : 0u;
    s |= kept & ~at_tie;
    tw |= at_tie;
    nt |= (xv < 0.f) ? at_tie : 0u;
  }
  *store = s;
  *neg_tie = nt;
  *tie = tw;
}

ffi::Error PackThreshold(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> tie,
                         ffi::ResultBuffer<ffi::U32> bits, ffi::ResultBuffer<ffi::U32> ties,
                         ffi::ResultBuffer<ffi::F32> values) {
  const float* a = x.typed_data();
  const int64_t n = static_cast<int64_t>(x.element_count());
  const float t = tie.typed_data()[0];
  uint32_t* b = bits->typed_data();
  uint32_t* tw = ties->typed_data();
  float* v = values->typed_data();
  const int64_t k = static_cast<int64_t>(values->element_count());
  const int64_t words = static_cast<int64_t>(bits->element_count());
  int64_t c = 0;
  for (int64_t g = 0; g < words; ++g) {
    const int64_t base = g * 32;
    uint32_t store, neg_tie, at_tie;
    Classify(a + base, static_cast<int>(std::min<int64_t>(32, n - base)), t, &store, &neg_tie,
             &at_tie);
    b[g] = store | neg_tie;
    tw[g] = at_tie;
    for (uint32_t w = store; w != 0;) {  // highest bit first: row-major order
      const int j = __builtin_clz(w);
      if (c < k) v[c] = a[base + j];
      ++c;
      w &= ~(0x80000000u >> j);
    }
  }
  std::fill(v + std::min(c, k), v + k, 0.f);
  return ffi::Error::Success();
}

ffi::Error UnpackThreshold(ffi::Buffer<ffi::U32> bits, ffi::Buffer<ffi::U32> ties,
                           ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::F32> tie,
                           ffi::ResultBuffer<ffi::F32> out) {
  const uint32_t* b = bits.typed_data();
  const uint32_t* tw = ties.typed_data();
  const float* v = values.typed_data();
  const int64_t k = static_cast<int64_t>(values.element_count());
  const float t = tie.typed_data()[0];
  float* o = out->typed_data();
  const int64_t n = static_cast<int64_t>(out->element_count());
  const int64_t words = static_cast<int64_t>(bits.element_count());
  std::fill(o, o + n, 0.f);
  int64_t c = 0;
  for (int64_t g = 0; g < words; ++g) {
    const int64_t base = g * 32;
    const uint32_t bw = b[g], twd = tw[g];
    for (uint32_t w = bw & ~twd; w != 0;) {  // highest bit first: row-major order
      const int j = __builtin_clz(w);
      if (c < k) o[base + j] = v[c];
      ++c;
      w &= ~(0x80000000u >> j);
    }
    for (uint32_t w = twd; w != 0;) {
      const int j = __builtin_clz(w);
      const uint32_t bit = 0x80000000u >> j;
      o[base + j] = (bw & bit) ? -t : t;
      w &= ~bit;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsejaxPackThreshold, PackThreshold,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsejaxUnpackThreshold, UnpackThreshold,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
