// Exact k-th largest magnitude key on the CPU, as an XLA FFI custom call.
//
// The same contract as sparsejax.select's counting search (_kth): keys are
// the int32 bit patterns of |x| as float32 (NaN -> -1), or int32 keys in
// [-1, 0x7F800000]; the result is the largest key v with count(keys >= v) >= k
// (-1 when k exceeds the population, 0x7F800000 when k <= 0), with
// count(keys >= v) and count(keys > v). A custom call costs XLA no code
// generation, where the counting search compiles a loop of kernels per tensor
// shape (see sparsejax/native/__init__.py).
//
// Method: a sorted strided sample of 4096 keys brackets the target rank
// (four standard deviations either side); one pass counts the bracket's ends,
// a second collects the keys strictly inside it and nth_element ranks them.
// When the sample misses (adversarial order), a three-pass radix select over
// 11 + 11 + 9 bits answers instead. Exact for any data.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr uint32_t kInfKey = 0x7F800000u;

// Keys shifted by one into uint32: NaN (key -1) -> 0, |x| -> bits(|x|) + 1.
inline uint32_t FloatKey(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  b &= 0x7FFFFFFFu;
  return b > kInfKey ? 0u : b + 1u;
}

inline uint32_t IntKey(int32_t key) {
  if (key < -1) return 0u;
  if (key > static_cast<int32_t>(kInfKey)) return kInfKey + 1u;
  return static_cast<uint32_t>(key + 1);
}

struct Result {
  uint32_t u;  // shifted key of the k-th largest
  int64_t ge;  // count(u' >= u)
  int64_t gt;  // count(u' > u)
};

template <class Get>
int64_t CountGe(int64_t n, uint32_t t, Get get) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += get(i) >= t;
  return c;
}

// Three histogram passes over the top 11, middle 11 and low 9 bits.
template <class Get>
Result Radix(int64_t n, int64_t k, Get get) {
  std::vector<int64_t> h(2048);
  int64_t above = 0;
  uint32_t prefix = 0;
  const int shifts[3] = {20, 9, 0};
  const uint32_t widths[3] = {2048, 2048, 512};
  int64_t in_bin = 0;
  for (int level = 0; level < 3; ++level) {
    std::fill(h.begin(), h.end(), 0);
    const int shift = shifts[level];
    const uint32_t mask = widths[level] - 1;
    const int high = level == 0 ? 32 : shifts[level - 1];
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = get(i);
      if (level == 0 || (u >> high) == prefix) h[(u >> shift) & mask]++;
    }
    int64_t b = mask;
    for (; b > 0 && above + h[b] < k; --b) above += h[b];
    prefix = (level == 0 ? 0 : prefix << (high - shift)) | static_cast<uint32_t>(b);
    in_bin = h[b];
  }
  return {prefix, above + in_bin, above};
}

template <class Get>
Result Select(int64_t n, int64_t k, Get get) {
  constexpr int64_t kSample = 4096;
  if (n <= 4 * kSample) {
    std::vector<uint32_t> all(n);
    for (int64_t i = 0; i < n; ++i) all[i] = get(i);
    std::nth_element(all.begin(), all.begin() + (n - k), all.end());
    const uint32_t u = all[n - k];
    int64_t ge = 0, gt = 0;
    for (uint32_t a : all) {
      ge += a >= u;
      gt += a > u;
    }
    return {u, ge, gt};
  }
  // A prime stride visits every channel of a channels-last tensor.
  int64_t stride = n / kSample;
  auto composite = [](int64_t s) {
    for (int64_t d = 2; d * d <= s; ++d)
      if (s % d == 0) return true;
    return false;
  };
  while (stride > 2 && composite(stride)) --stride;
  std::vector<uint32_t> sample(kSample);
  for (int64_t j = 0; j < kSample; ++j) sample[j] = get(j * stride);
  std::sort(sample.begin(), sample.end());
  const double ks = static_cast<double>(k) * kSample / n;
  const double margin = 4.0 * std::sqrt(ks * (1.0 - ks / kSample) + 1.0) + 8.0;
  auto rth_largest = [&](double r) {
    const int64_t ri = std::clamp<int64_t>(std::llround(r), 1, kSample);
    return sample[kSample - ri];
  };
  const uint32_t lo = rth_largest(ks + margin);
  const uint32_t hi_incl = rth_largest(ks - margin);
  const uint32_t hi = hi_incl == UINT32_MAX ? hi_incl : hi_incl + 1;
  int64_t c_lo = 0, c_lo1 = 0, c_hi = 0;  // count >= lo, > lo, >= hi
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = get(i);
    c_lo += u >= lo;
    c_lo1 += u > lo;
    c_hi += u >= hi;
  }
  if (c_lo < k || c_hi >= k) return Radix(n, k, get);
  if (c_lo1 < k) return {lo, c_lo, c_lo1};
  // The answer is strictly inside (lo, hi): rank the keys there.
  const int64_t m = c_lo1 - c_hi;
  std::vector<uint32_t> buf(m + 1);
  int64_t j = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = get(i);
    buf[j] = u;
    j += (u > lo) & (u < hi);
  }
  buf.resize(m);
  const int64_t r = k - c_hi;  // rank from the top inside the bracket, 1-based
  std::nth_element(buf.begin(), buf.begin() + (m - r), buf.end());
  const uint32_t u = buf[m - r];
  int64_t ge = c_hi, gt = c_hi;
  for (uint32_t a : buf) {
    ge += a >= u;
    gt += a > u;
  }
  return {u, ge, gt};
}

template <class Get>
void Answer(int64_t n, int64_t k, Get get, int32_t* out) {
  Result r;
  if (k > n) {  // every key, NaN included: v = -1
    r = {0u, n, CountGe(n, 1u, get)};
  } else if (k <= 0) {  // nothing needed: v = the largest key
    r = {kInfKey + 1u, CountGe(n, kInfKey + 1u, get), 0};
  } else {
    r = Select(n, k, get);
  }
  out[0] = static_cast<int32_t>(r.u) - 1;
  out[1] = static_cast<int32_t>(r.ge);
  out[2] = static_cast<int32_t>(r.gt);
}

ffi::Error KthLargestKey(ffi::AnyBuffer x, ffi::Buffer<ffi::S32> k, ffi::Buffer<ffi::PRED> active,
                         ffi::ResultBuffer<ffi::S32> out) {
  int32_t* o = out->typed_data();
  if (!active.typed_data()[0]) {
    o[0] = -1;
    o[1] = 0;
    o[2] = 0;
    return ffi::Error::Success();
  }
  const int64_t n = static_cast<int64_t>(x.element_count());
  const int64_t kk = k.typed_data()[0];
  switch (x.element_type()) {
    case ffi::DataType::F32: {
      const float* f = x.typed_data<float>();
      Answer(n, kk, [f](int64_t i) { return FloatKey(f[i]); }, o);
      return ffi::Error::Success();
    }
    case ffi::DataType::S32: {
      const int32_t* s = x.typed_data<int32_t>();
      Answer(n, kk, [s](int64_t i) { return IntKey(s[i]); }, o);
      return ffi::Error::Success();
    }
    default:
      return ffi::Error::InvalidArgument("kth_largest_key: keys must be float32 or int32");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsejaxKthLargestKey, KthLargestKey,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
