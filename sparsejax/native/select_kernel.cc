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
// a second collects the keys strictly inside it (~5% of them; 64-key blocks
// are tested at once and only their hits are visited), and a histogram of
// those plus nth_element within one bin ranks them. Both passes run in parts
// on XLA's intra-op threads above 512K keys. When the sample
// misses (adversarial order), a three-pass radix select over 11 + 11 + 9 bits
// answers instead. Exact for any data. Populations of at most 16K keys are
// ranked by nth_element directly.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr uint32_t kInfKey = 0x7F800000u;

// Runs body(part) for part in [0, parts) on the caller and on XLA's intra-op
// threads. Parts are claimed from a shared counter, and the caller waits only
// for parts already claimed (running), never for a task still queued: a busy
// pool cannot deadlock it; a task that starts late finds nothing to claim.
struct Parts {
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  int count = 0;
  std::function<void(int)> body;
  void Work() {
    for (int p; (p = next.fetch_add(1)) < count;) {
      body(p);
      done.fetch_add(1);
    }
  }
};

void ParallelFor(ffi::ThreadPool* pool, int parts, std::function<void(int)> body) {
  if (parts <= 1 || pool == nullptr) {
    for (int p = 0; p < parts; ++p) body(p);
    return;
  }
  auto shared = std::make_shared<Parts>();
  shared->count = parts;
  shared->body = std::move(body);
  for (int t = 1; t < parts; ++t) pool->Schedule([shared] { shared->Work(); });
  shared->Work();
  while (shared->done.load() < parts) std::this_thread::yield();
}

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

// The r-th largest (1-based) of `keys`, above which `above` keys lie elsewhere;
// its counts are those of `keys` plus `above`.
Result RankIn(std::vector<uint32_t>& keys, int64_t r, int64_t above) {
  const int64_t m = static_cast<int64_t>(keys.size());
  std::nth_element(keys.begin(), keys.begin() + (m - r), keys.end());
  const uint32_t u = keys[m - r];
  int64_t ge = above, gt = above;
  for (uint32_t a : keys) {
    ge += a >= u;
    gt += a > u;
  }
  return {u, ge, gt};
}

template <class Get>
Result Select(int64_t n, int64_t k, Get get, ffi::ThreadPool* pool, int threads) {
  constexpr int64_t kSample = 4096;
  if (n <= 4 * kSample) {
    std::vector<uint32_t> all(n);
    for (int64_t i = 0; i < n; ++i) all[i] = get(i);
    return RankIn(all, k, 0);
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
  const uint32_t hi = rth_largest(ks - margin) + 1u;  // keys are <= kInfKey + 1
  // Pass 1, in parts: count >= lo, > lo, >= hi.
  const int parts = static_cast<int>(std::clamp<int64_t>(n >> 18, 1, threads));
  auto begin = [&](int p) { return n * p / parts; };
  std::vector<int64_t> c_lo(parts), c_lo1(parts), c_hi(parts);
  ParallelFor(pool, parts, [&, lo, hi](int p) {
    int64_t a = 0, b = 0, c = 0;
    for (int64_t i = begin(p), e = begin(p + 1); i < e;) {
      // 32-bit counters over blocks: the loop vectorizes.
      const int64_t stop = std::min(e, i + 65536);
      uint32_t a32 = 0, b32 = 0, c32 = 0;
      for (; i < stop; ++i) {
        const uint32_t u = get(i);
        a32 += u >= lo;
        b32 += u > lo;
        c32 += u >= hi;
      }
      a += a32;
      b += b32;
      c += c32;
    }
    c_lo[p] = a;
    c_lo1[p] = b;
    c_hi[p] = c;
  });
  int64_t n_lo = 0, n_lo1 = 0, n_hi = 0;
  for (int p = 0; p < parts; ++p) {
    n_lo += c_lo[p];
    n_lo1 += c_lo1[p];
    n_hi += c_hi[p];
  }
  if (n_lo < k || n_hi >= k) return Radix(n, k, get);
  if (n_lo1 < k) return {lo, n_lo, n_lo1};
  // Pass 2, in parts: the keys strictly inside (lo, hi), into one buffer per
  // part sized from pass 1 (+1 for the branch-free store of the tail loop);
  // 64-key blocks are tested at once and only their hits are visited.
  std::vector<std::vector<uint32_t>> got(parts);
  ParallelFor(pool, parts, [&, lo, hi](int p) {
    got[p].resize(c_lo1[p] - c_hi[p] + 1);
    uint32_t* out = got[p].data();
    // lo < u < hi as one unsigned comparison.
    const uint32_t base = lo + 1u, width = hi - lo - 1u;
    int64_t j = 0, i = begin(p);
    const int64_t e = begin(p + 1);
    for (; i + 64 <= e; i += 64) {  // a 64-bit hit mask per block, then its set bits
      uint32_t u[64];
      uint8_t flag[64];
      for (int q = 0; q < 64; ++q) {  // vectorises
        u[q] = get(i + q);
        flag[q] = u[q] - base < width;
      }
      uint64_t hits = 0;
      for (int g = 0; g < 8; ++g) {  // eight 0/1 bytes -> eight bits
        uint64_t f;
        std::memcpy(&f, flag + 8 * g, sizeof(f));
        hits |= ((f * 0x0102040810204080ull) >> 56) << (8 * g);
      }
      while (hits) {
        out[j++] = u[__builtin_ctzll(hits)];
        hits &= hits - 1;
      }
    }
    for (; i < e; ++i) {
      const uint32_t u = get(i);
      out[j] = u;
      j += u - base < width;
    }
    got[p].resize(j);
  });
  // Rank inside the bracket, reading the parts' buffers in place: a histogram
  // of (u - lo) over at most 4096 bins, then the keys of the one bin that
  // holds rank r.
  int64_t r = k - n_hi;  // rank from the top inside the bracket, 1-based
  int shift = 0;
  while (((hi - lo) >> shift) >= 4096) ++shift;
  std::vector<int64_t> h(((hi - lo) >> shift) + 1, 0);
  for (const auto& g : got)
    for (uint32_t a : g) h[(a - lo) >> shift]++;
  int64_t b = static_cast<int64_t>(h.size()) - 1;
  for (; b > 0 && h[b] < r; --b) r -= h[b];
  std::vector<uint32_t> bin;
  bin.reserve(h[b]);
  for (const auto& g : got)
    for (uint32_t a : g)
      if (((a - lo) >> shift) == static_cast<uint32_t>(b)) bin.push_back(a);
  return RankIn(bin, r, k - r);  // k - r keys lie above the bin
}

template <class Get>
void Answer(int64_t n, int64_t k, Get get, ffi::ThreadPool* pool, int threads, int32_t* out) {
  Result r;
  if (k > n) {  // every key, NaN included: v = -1
    r = {0u, n, CountGe(n, 1u, get)};
  } else if (k <= 0) {  // nothing needed: v = the largest key
    r = {kInfKey + 1u, CountGe(n, kInfKey + 1u, get), 0};
  } else {
    r = Select(n, k, get, pool, threads);
  }
  out[0] = static_cast<int32_t>(r.u) - 1;
  out[1] = static_cast<int32_t>(r.ge);
  out[2] = static_cast<int32_t>(r.gt);
}

ffi::Error KthLargestKey(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::S32> k,
                         ffi::Buffer<ffi::PRED> active, ffi::ResultBuffer<ffi::S32> out) {
  int32_t* o = out->typed_data();
  if (!active.typed_data()[0]) {
    o[0] = -1;
    o[1] = 0;
    o[2] = 0;
    return ffi::Error::Success();
  }
  const int64_t n = static_cast<int64_t>(x.element_count());
  const int64_t kk = k.typed_data()[0];
  const int threads = static_cast<int>(std::max<int64_t>(1, pool.num_threads()));
  switch (x.element_type()) {
    case ffi::DataType::F32: {
      const float* f = x.typed_data<float>();
      Answer(n, kk, [f](int64_t i) { return FloatKey(f[i]); }, &pool, threads, o);
      return ffi::Error::Success();
    }
    case ffi::DataType::S32: {
      const int32_t* s = x.typed_data<int32_t>();
      Answer(n, kk, [s](int64_t i) { return IntKey(s[i]); }, &pool, threads, o);
      return ffi::Error::Success();
    }
    default:
      return ffi::Error::InvalidArgument("kth_largest_key: keys must be float32 or int32");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsejaxKthLargestKey, KthLargestKey,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
