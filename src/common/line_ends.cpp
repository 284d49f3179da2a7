#include "common/line_ends.hpp"

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

#include <algorithm>

namespace postern {

std::uint64_t count_bare_lfs(std::string_view chunk, bool after_cr) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(chunk.data());
  const std::size_t n = chunk.size();
  if (n == 0) {
    return 0;
  }
  std::uint64_t bare = (p[0] == '\n' && !after_cr) ? 1 : 0;
  std::size_t i = 1;
#if defined(__SSE2__) && defined(__x86_64__)
  // 16 bytes at a time: a byte is a bare LF when it is LF and the byte before it (loaded
  // one position back) is not CR. Each such byte compares to 0xFF (-1); subtracting counts
  // it in a per-byte counter, summed (SAD against zero) before any counter can pass 255.
  const __m128i lf = _mm_set1_epi8('\n');
  const __m128i cr = _mm_set1_epi8('\r');
  const __m128i zero = _mm_setzero_si128();
  while (n - i >= 16) {
    const std::size_t blocks = std::min<std::size_t>((n - i) / 16, 255);
    __m128i counts = zero;
    for (std::size_t b = 0; b < blocks; ++b, i += 16) {
      const __m128i cur = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      const __m128i prev = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i - 1));
      const __m128i bare_lf = _mm_andnot_si128(_mm_cmpeq_epi8(prev, cr), _mm_cmpeq_epi8(cur, lf));
      counts = _mm_sub_epi8(counts, bare_lf);
    }
    const __m128i sums = _mm_sad_epu8(counts, zero);
    bare += static_cast<std::uint64_t>(_mm_cvtsi128_si64(sums)) +
            static_cast<std::uint64_t>(_mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums)));
  }
#endif
  for (; i < n; ++i) {
    bare += (p[i] == '\n' && p[i - 1] != '\r') ? 1 : 0;
  }
  return bare;
}

}  // namespace postern
