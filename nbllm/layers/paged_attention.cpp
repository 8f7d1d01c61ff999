// nbllm::paged_decode_attention: one new query token per sequence attending to its context where
// the paged KV cache holds it, without gathering the context into a padded copy first.
//
// q [B, Hq, D] float32; key_cache and value_cache [num_blocks, block_size, Hkv, D] float32 (one
// layer of the pool); block_tables [>= B, max_blocks] int32, row b the blocks of sequence b in
// order; seq_lens [B] int64, the tokens of context each query sees (its own included). With
// window > 0 a query sees only the last `window` of them. Returns [B, Hq, D]: for each query head,
// softmax(scale * q . k) over its context, times v. Query head i reads kv head i / (Hq / Hkv).
//
// Each key and value row is read once, straight from its block, for all the query heads that
// share its kv head. Scores are float32 dot products over D (16 lanes at
// a time, D a multiple of 16), the softmax is float32 with the maximum subtracted (e^x by a vectorised
// polynomial, about 1 ulp), and a sequence's result does not depend on the other sequences of the step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

float dot(const float* a, const float* b, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
  return _mm512_reduce_add_ps(acc);
}

// e^x for x <= 0 (scores minus their maximum), 16 at a time: x = n ln 2 + r with |r| <= ln 2 / 2,
// e^r by Cephes' expf polynomial (about 1 ulp), times 2^n by vscalefps. Below -87 it gives 0.
__m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// s[i] = e^(s[i] - max s) over n scores; returns their sum
float softmax_numerators(float* s, int64_t n) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes, s + i));
  }
  const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + i), shift));
    _mm512_mask_storeu_ps(s + i, lanes, e);
    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(lanes, e));
  }
  return _mm512_reduce_add_ps(total);
}

void axpy(float p, const float* x, float* y, int64_t D) {  // y += p * x
  const __m512 pv = _mm512_set1_ps(p);
  for (int64_t d = 0; d < D; d += 16)
    _mm512_storeu_ps(y + d, _mm512_fmadd_ps(pv, _mm512_loadu_ps(x + d), _mm512_loadu_ps(y + d)));
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& key_cache, const at::Tensor& value_cache,
                                  const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale,
                                  int64_t window) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(),
              "paged_decode_attention: q must be a contiguous float32 [B, Hq, D] tensor");
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.scalar_type() == at::kFloat && key_cache.is_contiguous() &&
                  value_cache.sizes() == key_cache.sizes() && value_cache.scalar_type() == at::kFloat &&
                  value_cache.is_contiguous(),
              "paged_decode_attention: the caches must be contiguous float32 [num_blocks, block_size, Hkv, D]");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t num_blocks = key_cache.size(0), block_size = key_cache.size(1), Hkv = key_cache.size(2);
  TORCH_CHECK(key_cache.size(3) == D && D % 16 == 0 && Hkv > 0 && Hq % Hkv == 0,
              "paged_decode_attention: head sizes differ, are not a multiple of 16, or Hq is not a multiple of Hkv");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.scalar_type() == at::kInt && block_tables.is_contiguous() &&
                  block_tables.size(0) >= B,
              "paged_decode_attention: block_tables must be contiguous int32 [>= B, max_blocks]");
  TORCH_CHECK(seq_lens.dim() == 1 && seq_lens.size(0) == B && seq_lens.scalar_type() == at::kLong,
              "paged_decode_attention: seq_lens must be int64 [B]");
  const int64_t max_blocks = block_tables.size(1);
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= max_blocks * block_size,
                "paged_decode_attention: a sequence length is outside its block table");
  at::Tensor out = at::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = key_cache.data_ptr<float>();
  const float* vp = value_cache.data_ptr<float>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  const int64_t group = Hq / Hkv, row_stride = Hkv * D;
  const float fscale = static_cast<float>(scale);
  // Work items: a sequence with all its kv heads, so each token's keys (then values) are read as one
  // contiguous row; with too few sequences to keep the threads busy, (sequence, kv head) items.
  const int64_t heads_per_item = B >= 2 * at::get_num_threads() ? Hkv : 1, chunks = Hkv / heads_per_item;
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, totals(Hq);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, h0 = (item % chunks) * heads_per_item, len = lens[b];
      const int64_t start = window > 0 ? std::max<int64_t>(0, len - window) : 0, n = len - start;
      const int64_t heads = heads_per_item * group;  // query heads of this item: h0 * group onwards
      const int32_t* table = tables + b * max_blocks;
      const float* queries = qp + (b * Hq + h0 * group) * D;
      scores.resize(heads * n);
      for (int64_t t = start; t < len; ++t) {
        const int64_t block = table[t / block_size];
        TORCH_CHECK(block >= 0 && block < num_blocks, "paged_decode_attention: a block id is outside the cache");
        const float* keys = kp + (block * block_size + t % block_size) * row_stride + h0 * D;
        for (int64_t i = 0; i < heads; ++i) scores[i * n + t - start] = fscale * dot(queries + i * D, keys + (i / group) * D, D);
      }
      float* outs = op + (b * Hq + h0 * group) * D;
      std::fill(outs, outs + heads * D, 0.0f);
      for (int64_t i = 0; i < heads; ++i) totals[i] = softmax_numerators(scores.data() + i * n, n);
      for (int64_t t = start; t < len; ++t) {
        const int64_t block = table[t / block_size];
        const float* values = vp + (block * block_size + t % block_size) * row_stride + h0 * D;
        for (int64_t i = 0; i < heads; ++i) axpy(scores[i * n + t - start], values + (i / group) * D, outs + i * D, D);
      }
      for (int64_t i = 0; i < heads; ++i) {
        const float inverse = 1.0f / totals[i];
        for (int64_t d = 0; d < D; ++d) outs[i * D + d] *= inverse;
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nbllm, m) {
  m.def("paged_decode_attention(Tensor q, Tensor key_cache, Tensor value_cache, Tensor block_tables, "
        "Tensor seq_lens, float scale, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(nbllm, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
}
