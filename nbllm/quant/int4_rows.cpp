// nbllm::int4_rows and nbllm::int8_rows: x @ w.T on quantized CPU weights with exact float32 group scales.
//
// The weight is w = scale * q + c for 4-bit or 8-bit q in groups of 32 along K, with scale and c
// exactly as the checkpoint has them (GGUF stores them as float16; torch's own kernel rounds them to
// bfloat16). The caller passes, per block of 64 output rows and per group, their scales and then their
// offsets as float32 [N / 64, K / 32, 2, 64]: each block's in one piece. The products are AVX-512 BF16
// dot products: each q becomes an exact bfloat16 v, two consecutive k of 16 output rows go into one
// vdpbf16ps against the pair (x[k], x[k + 1]), and per group
//     sum_k w x = scale * sum_k v x + offset * sum_k x.
// 4-bit q become v = 128 + q (exact: bfloat16 has unit spacing in [128, 256), so that is an OR with
// 0x4300) and offset = c - 128 * scale; 8-bit q become v = q through float32 (bfloat16 holds every
// integer up to 256) and offset = c. Products of a bfloat16 activation and v are exact in float32;
// sums are float32, and so is the output.
//
// Two paths, one arithmetic. Few rows of x (decode steps) convert the weights on the fly, in each pass
// of up to 3 rows over a block of 64 weight rows (block_rows); from kConvertMinRows rows on (4 for int4,
// 10 for int8), each block is converted once into a scratch buffer and tiles of 4 rows read it
// (block_rows_converted): for int4, 1.1x at 4 rows, 1.7x at 64 and 1.9x at 256-2048 (the default
// model's four layer shapes, 2-core AMD EPYC, about 330-360 GFLOP/s). Both run every row through the
// same dot products in the same order, so a row's result does not depend on the other rows of the
// product, nor on which path served it.
//
// Layouts, for blocks of 64 output rows; N must be a multiple of 64 and K of 32 (callers check,
// nbllm/quant/int4pack.py):
// - int4 (torch's packed layout): byte k * 32 + n % 32 of block n / 64 holds q[n, k] in its low nibble
//   for n % 64 < 32 and in its high nibble otherwise;
// - int8: byte (k / 2) * 128 + 2 * (n % 64) + k % 2 of block n / 64 holds q[n, k], so that each k pair
//   of 16 rows is 32 consecutive bytes, in the order the dot products take them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace {

constexpr int kGroup = 32;
constexpr int kBlock = 64;

// Converters turn one k pair (k, k + 1) of a 64-row block, kPairBytes at `at`, into the bfloat16
// pairs the dot products take: four vectors of 16 output rows each, j = 0..3 (rows 16 j .. 16 j + 15
// of the block), each lane pair holding (v[n, k], v[n, k + 1]).

// 4-bit values, v = 128 + q: two cache lines of torch's layout.
class PairConverter {
 public:
  static constexpr int64_t kPairBytes = 64;
  static constexpr int64_t kConvertMinRows = 4;  // below, converting a block costs more than it saves (measured)

  PairConverter() {
    // 16-bit lane 2i takes element i of the first source, lane 2i + 1 element i of the second
    alignas(64) uint16_t first_half[32], second_half[32];
    for (int i = 0; i < 16; ++i) {
      first_half[2 * i] = i; first_half[2 * i + 1] = 32 + i;
      second_half[2 * i] = 16 + i; second_half[2 * i + 1] = 48 + i;
    }
    pair_first_ = _mm512_load_si512(first_half);
    pair_second_ = _mm512_load_si512(second_half);
  }

  void convert(const uint8_t* at, __m512i out[4]) const {
    const __m512i w0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)at));
    const __m512i w1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(at + 32)));
    const __m512i lo0 = _mm512_ternarylogic_epi32(w0, low_nibble_, base_, 0xEA);  // (w & 15) | base
    const __m512i lo1 = _mm512_ternarylogic_epi32(w1, low_nibble_, base_, 0xEA);
    const __m512i hi0 = _mm512_or_si512(_mm512_srli_epi16(w0, 4), base_);
    const __m512i hi1 = _mm512_or_si512(_mm512_srli_epi16(w1, 4), base_);
    out[0] = _mm512_permutex2var_epi16(lo0, pair_first_, lo1);  // rows 0-31 are the low nibbles
    out[1] = _mm512_permutex2var_epi16(lo0, pair_second_, lo1);
    out[2] = _mm512_permutex2var_epi16(hi0, pair_first_, hi1);  // rows 32-63 the high ones
    out[3] = _mm512_permutex2var_epi16(hi0, pair_second_, hi1);
  }

 private:
  const __m512i low_nibble_ = _mm512_set1_epi16(0x000F);
  const __m512i base_ = _mm512_set1_epi16(0x4300);  // bfloat16 128.0
  __m512i pair_first_, pair_second_;
};

// 8-bit values, v = q: 128 bytes of the int8 layout, each 32 of them one vector's 16 rows.
class BytePairConverter {
 public:
  static constexpr int64_t kPairBytes = 128;
  // its conversion costs more than the 4-bit one: on the fly (in chunks of 3 rows) is faster up to 8 rows,
  // level at 10 (the default model's lm_head, 49152 x 576, 2-core AMD EPYC)
  static constexpr int64_t kConvertMinRows = 10;

  void convert(const uint8_t* at, __m512i out[4]) const {
    for (int j = 0; j < 4; ++j)  // the low 16 bfloat16 from the first 16 bytes
      out[j] = (__m512i)_mm512_cvtne2ps_pbh(to_float(at + 32 * j + 16), to_float(at + 32 * j));
  }

 private:
  static __m512 to_float(const uint8_t* at) {  // 16 bytes, exactly
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)at)));
  }
};

template <class Converter, int M>
void block_rows(const uint16_t* x, int64_t K, const uint8_t* block, const float* scale_offset, int64_t N,
                int64_t n0, const float* xsum, float* out) {
  const Converter converter;
  __m512 acc[M][4];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
  const int64_t groups = K / kGroup;
  for (int64_t g = 0; g < groups; ++g) {
    __m512 dot[M][4], dot2[M][4];  // two independent chains per output vector: even and odd k pairs
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) dot[m][j] = dot2[m][j] = _mm512_setzero_ps();
    for (int64_t k = g * kGroup; k < (g + 1) * kGroup; k += 4) {
      __m512i pairs[2][4];
      for (int h = 0; h < 2; ++h)  // k pairs (k, k + 1) and (k + 2, k + 3)
        converter.convert(block + (k / 2 + h) * Converter::kPairBytes, pairs[h]);
      for (int m = 0; m < M; ++m) {
        int32_t x_pair[2];
        std::memcpy(x_pair, x + m * K + k, sizeof(x_pair));
        const __m512bh xa = (__m512bh)_mm512_set1_epi32(x_pair[0]);
        const __m512bh xb = (__m512bh)_mm512_set1_epi32(x_pair[1]);
        for (int j = 0; j < 4; ++j) {
          dot[m][j] = _mm512_dpbf16_ps(dot[m][j], (__m512bh)pairs[0][j], xa);
          dot2[m][j] = _mm512_dpbf16_ps(dot2[m][j], (__m512bh)pairs[1][j], xb);
        }
      }
    }
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) dot[m][j] = _mm512_add_ps(dot[m][j], dot2[m][j]);
    // this block's 64 scales, then its 64 offsets, for group g
    const float* group_scales = scale_offset + (n0 / kBlock) * groups * 2 * kBlock + 2 * g * kBlock;
    for (int j = 0; j < 4; ++j) {
      const __m512 scale = _mm512_loadu_ps(group_scales + 16 * j);
      const __m512 offset = _mm512_loadu_ps(group_scales + kBlock + 16 * j);
      for (int m = 0; m < M; ++m) {
        acc[m][j] = _mm512_fmadd_ps(dot[m][j], scale, acc[m][j]);
        acc[m][j] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xsum[m * groups + g]), acc[m][j]);
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + m * N + n0 + 16 * j, acc[m][j]);
}

// Converts one block's values into the bfloat16 pairs block_rows feeds its dot products, in the order
// the tiled path reads them: [half][k / 4][h][j % 2] zmm vectors, where half is j / 2 (output rows
// 32 * half .. 32 * half + 31 of the block) and h picks the pair (k, k + 1) or (k + 2, k + 3).
// K * 128 bytes.
template <class Converter>
void convert_block(const uint8_t* block, int64_t K, __m512i* pairs_out) {
  const Converter converter;
  const int64_t quads = K / 4;
  for (int64_t kq = 0; kq < quads; ++kq) {
    for (int h = 0; h < 2; ++h) {
      __m512i pairs[4];
      converter.convert(block + (2 * kq + h) * Converter::kPairBytes, pairs);
      for (int j = 0; j < 4; ++j) pairs_out[((j / 2) * quads + kq) * 4 + 2 * h + j % 2] = pairs[j];
    }
  }
}

// block_rows' arithmetic for R rows, on pairs converted once by convert_block, one half of the block
// (32 output rows) at a time: the same dot products in the same order, so the same results.
template <int R>
void block_rows_converted(const uint16_t* x, int64_t K, const __m512i* pairs, const float* scale_offset,
                          int64_t N, int64_t n0, const float* xsum, float* out) {
  const int64_t groups = K / kGroup, quads = K / 4;
  for (int half = 0; half < 2; ++half) {
    const __m512i* hp = pairs + half * quads * 4;
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m512 dot[R][2], dot2[R][2];
      for (int r = 0; r < R; ++r) dot[r][0] = dot[r][1] = dot2[r][0] = dot2[r][1] = _mm512_setzero_ps();
      for (int64_t kq = g * (kGroup / 4); kq < (g + 1) * (kGroup / 4); ++kq) {
        const __m512i* q = hp + kq * 4;
        const __m512bh a0 = (__m512bh)_mm512_load_si512(q), a1 = (__m512bh)_mm512_load_si512(q + 1);
        const __m512bh b0 = (__m512bh)_mm512_load_si512(q + 2), b1 = (__m512bh)_mm512_load_si512(q + 3);
        for (int r = 0; r < R; ++r) {
          int32_t x_pair[2];
          std::memcpy(x_pair, x + r * K + 4 * kq, sizeof(x_pair));
          const __m512bh xa = (__m512bh)_mm512_set1_epi32(x_pair[0]);
          const __m512bh xb = (__m512bh)_mm512_set1_epi32(x_pair[1]);
          dot[r][0] = _mm512_dpbf16_ps(dot[r][0], a0, xa);
          dot[r][1] = _mm512_dpbf16_ps(dot[r][1], a1, xa);
          dot2[r][0] = _mm512_dpbf16_ps(dot2[r][0], b0, xb);
          dot2[r][1] = _mm512_dpbf16_ps(dot2[r][1], b1, xb);
        }
      }
      const float* group_scales = scale_offset + (n0 / kBlock) * groups * 2 * kBlock + 2 * g * kBlock;
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * half + jj;
        const __m512 scale = _mm512_loadu_ps(group_scales + 16 * j);
        const __m512 offset = _mm512_loadu_ps(group_scales + kBlock + 16 * j);
        for (int r = 0; r < R; ++r) {
          acc[r][jj] = _mm512_fmadd_ps(_mm512_add_ps(dot[r][jj], dot2[r][jj]), scale, acc[r][jj]);
          acc[r][jj] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xsum[r * groups + g]), acc[r][jj]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int jj = 0; jj < 2; ++jj) _mm512_storeu_ps(out + r * N + n0 + 16 * (2 * half + jj), acc[r][jj]);
  }
}

constexpr int kTileRows = 4;  // rows per tile of the converted path: 4 x 2 x 2 accumulators + 4 pair vectors fit the 32 registers

void rows_range_converted(const uint16_t* x, int64_t m0, int64_t m1, int64_t K, const __m512i* pairs,
                          const float* scale_offset, int64_t N, int64_t n0, const float* xsum, float* out) {
  const int64_t groups = K / kGroup;
  for (int64_t m = m0; m < m1; m += kTileRows) {
    const uint16_t* xm = x + m * K;
    const float* sm = xsum + m * groups;
    float* om = out + m * N;
    switch (std::min<int64_t>(kTileRows, m1 - m)) {
      case 1: block_rows_converted<1>(xm, K, pairs, scale_offset, N, n0, sm, om); break;
      case 2: block_rows_converted<2>(xm, K, pairs, scale_offset, N, n0, sm, om); break;
      case 3: block_rows_converted<3>(xm, K, pairs, scale_offset, N, n0, sm, om); break;
      default: block_rows_converted<4>(xm, K, pairs, scale_offset, N, n0, sm, om); break;
    }
  }
}

// Blocks are the outer loop: a block's weights (64 rows x K / 2 or K bytes, or K * 128 bytes converted)
// stay in the core's cache while every tile of rows uses them.
template <class Converter>
void all_blocks(const uint16_t* x, int64_t M, int64_t K, const uint8_t* packed, const float* scale_offset,
                int64_t N, const float* xsum, float* out) {
  const int64_t blocks = N / kBlock, block_bytes = K / 2 * Converter::kPairBytes;
  if (M >= Converter::kConvertMinRows) {
    // work items: (block, slice of rows). Two slices, each converting its block again, where there are
    // many rows, or enough rows and blocks that do not split evenly over the threads: 4% faster at
    // 16-64 rows of the default model's layer shapes (9 and 15 blocks) on 2 cores.
    const bool uneven = blocks % at::get_num_threads() != 0;
    const int64_t slices = (M >= 128 || (uneven && M >= 16)) ? 2 : 1;
    const int64_t slice_rows = ((M + slices - 1) / slices + kTileRows - 1) / kTileRows * kTileRows;
    at::parallel_for(0, blocks * slices, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<__m512i[]> pairs(new __m512i[K * 2]);  // C++17: aligned to 64 bytes
      int64_t converted = -1;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / slices, s = item % slices;
        const int64_t m0 = std::min(M, s * slice_rows), m1 = std::min(M, m0 + slice_rows);
        if (m0 >= m1) continue;
        if (converted != b) {
          convert_block<Converter>(packed + b * block_bytes, K, pairs.get());
          converted = b;
        }
        rows_range_converted(x, m0, m1, K, pairs.get(), scale_offset, N, b * kBlock, xsum, out);
      }
    });
    return;
  }
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* block = packed + b * block_bytes;
      for (int64_t m = 0; m < M; m += 3) {  // chunks of up to 3 rows, each converting the block again
        const uint16_t* xm = x + m * K;
        const float* sm = xsum + m * (K / kGroup);
        float* om = out + m * N;
        switch (std::min<int64_t>(3, M - m)) {
          case 1: block_rows<Converter, 1>(xm, K, block, scale_offset, N, b * kBlock, sm, om); break;
          case 2: block_rows<Converter, 2>(xm, K, block, scale_offset, N, b * kBlock, sm, om); break;
          default: block_rows<Converter, 3>(xm, K, block, scale_offset, N, b * kBlock, sm, om); break;
        }
      }
    }
  });
}

template <class Converter>
at::Tensor rows_product(const char* name, const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& scales_offsets) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              name, ": x must be a contiguous bfloat16 [M, K] tensor");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const int64_t row_bytes = K / 2 * Converter::kPairBytes / kBlock;
  TORCH_CHECK(K % kGroup == 0 && N % kBlock == 0 && weight.dim() == 2 && weight.size(1) == row_bytes &&
                  weight.scalar_type() == at::kByte && weight.is_contiguous(),
              name, ": the weight must be uint8 [N, ", row_bytes, "] with N a multiple of 64 and K of 32");
  TORCH_CHECK(scales_offsets.scalar_type() == at::kFloat && scales_offsets.is_contiguous() &&
                  scales_offsets.dim() == 4 && scales_offsets.size(0) == N / kBlock &&
                  scales_offsets.size(1) == K / kGroup && scales_offsets.size(2) == 2 && scales_offsets.size(3) == kBlock,
              name, ": scales_offsets must be contiguous float32 [N / 64, K / 32, 2, 64]");
  const int64_t groups = K / kGroup;
  at::Tensor out = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  std::vector<float> xsum(M * groups);  // sum of each row's activations in each group, in order
  at::parallel_for(0, M * groups, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float sum = 0.0f;
      for (int t = 0; t < kGroup; ++t) {
        const uint32_t bits = static_cast<uint32_t>(xp[i * kGroup + t]) << 16;  // bfloat16 -> float32, exact
        float value;
        std::memcpy(&value, &bits, sizeof(value));
        sum += value;
      }
      xsum[i] = sum;
    }
  });
  all_blocks<Converter>(xp, M, K, weight.data_ptr<uint8_t>(), scales_offsets.data_ptr<float>(), N, xsum.data(),
                        out.data_ptr<float>());
  return out;
}

at::Tensor int4_rows(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales_offsets) {
  return rows_product<PairConverter>("int4_rows", x, packed, scales_offsets);
}

at::Tensor int8_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales_offsets) {
  return rows_product<BytePairConverter>("int8_rows", x, weight, scales_offsets);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nbllm, m) {
  m.def("int4_rows(Tensor x, Tensor packed, Tensor scales_offsets) -> Tensor");
  m.def("int8_rows(Tensor x, Tensor weight, Tensor scales_offsets) -> Tensor");
}

TORCH_LIBRARY_IMPL(nbllm, CPU, m) {
  m.impl("int4_rows", &int4_rows);
  m.impl("int8_rows", &int8_rows);
}
