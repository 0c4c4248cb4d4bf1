// CUDA driver: kernels + plain C++ launchers (raster_cuda.h). No torch headers here, so nvcc can
// compile-check this file on any machine with the CUDA toolkit (tests/test_cuda_compile.py).
// All arithmetic comes from core.h, shared with the CPU driver.
//
// Pipeline (raster.md 2, 3, 4): project (one thread per camera x Gaussian) -> count tiles -> exclusive
// scan (torch, in ext.cpp) -> emit (tile | depth) keys -> stable sort (torch, in ext.cpp) -> tile
// offsets -> rasterize (one block per tile, shared-memory batches, block vote to stop early) ->
// backward rasterize (per-pixel recurrence back to front, atomics per Gaussian) -> backward projection
// (one thread per Gaussian, cameras summed in a loop: deterministic).
#include <cuda_runtime.h>

#include "core.h"
#include "raster_cuda.h"

namespace ce_cuda {

namespace {

inline cudaStream_t as_stream(void* s) { return reinterpret_cast<cudaStream_t>(s); }
inline unsigned blocks_for(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }
constexpr int kThreads = 256;

// order-preserving map float -> uint32 (handles negative depths too)
__device__ __forceinline__ uint32_t depth_key(float d) {
  uint32_t u = __float_as_uint(d);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void project_fwd_kernel(int B, int N, const float* __restrict__ means, const float* __restrict__ quats,
                                   const float* __restrict__ scales, const float* __restrict__ viewmats,
                                   const float* __restrict__ Ks, int W, int H, float near, float far, float eps2d,
                                   float* means2d, float* conics, float* depths, int* radii) {
  int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (int64_t)B * N) return;
  int b = (int)(idx / N), n = (int)(idx % N);
  ce::Camera cam = ce::make_camera(viewmats + 16 * b, Ks + 9 * b, W, H);
  ce::ProjOut o;
  ce::project_fwd(means + 3 * n, quats + 4 * n, scales + 3 * n, cam, near, far, eps2d, o);
  depths[idx] = o.depth;
  means2d[2 * idx] = o.mean2d[0];
  means2d[2 * idx + 1] = o.mean2d[1];
  for (int k = 0; k < 3; ++k) conics[3 * idx + k] = o.conic[k];
  radii[2 * idx] = o.radius[0];
  radii[2 * idx + 1] = o.radius[1];
}

__global__ void project_bwd_kernel(int B, int N, const float* __restrict__ means, const float* __restrict__ quats,
                                   const float* __restrict__ scales, const float* __restrict__ viewmats,
                                   const float* __restrict__ Ks, int W, int H, float near, float far, float eps2d,
                                   const int* __restrict__ radii, const float* __restrict__ v_means2d,
                                   const float* __restrict__ v_conics, const float* __restrict__ v_depths,
                                   float* v_means, float* v_quats, float* v_scales) {
  int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float am[3] = {0.f, 0.f, 0.f}, aq[4] = {0.f, 0.f, 0.f, 0.f}, as[3] = {0.f, 0.f, 0.f};
  for (int b = 0; b < B; ++b) {
    int64_t i = (int64_t)b * N + n;
    if (radii[2 * i] <= 0 || radii[2 * i + 1] <= 0) continue;
    ce::Camera cam = ce::make_camera(viewmats + 16 * b, Ks + 9 * b, W, H);
    ce::ProjOut o;
    ce::project_fwd(means + 3 * n, quats + 4 * n, scales + 3 * n, cam, near, far, eps2d, o);
    if (!o.valid) continue;
    float vm[3], vq[4], vs[3];
    ce::project_bwd(quats + 4 * n, scales + 3 * n, cam, o, v_means2d + 2 * i, v_conics + 3 * i, v_depths[i], vm, vq,
                    vs);
    for (int k = 0; k < 3; ++k) am[k] += vm[k];
    for (int k = 0; k < 4; ++k) aq[k] += vq[k];
    for (int k = 0; k < 3; ++k) as[k] += vs[k];
  }
  for (int k = 0; k < 3; ++k) v_means[3 * n + k] = am[k];
  for (int k = 0; k < 4; ++k) v_quats[4 * n + k] = aq[k];
  for (int k = 0; k < 3; ++k) v_scales[3 * n + k] = as[k];
}

__global__ void count_tiles_kernel(int B, int N, const float* __restrict__ means2d, const int* __restrict__ radii,
                                   int tile_size, int tiles_x, int tiles_y, int32_t* counts) {
  int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (int64_t)B * N) return;
  int cnt = 0;
  if (radii[2 * idx] > 0 && radii[2 * idx + 1] > 0) {
    int r[4];
    ce::tile_rect(means2d[2 * idx], means2d[2 * idx + 1], radii[2 * idx], radii[2 * idx + 1], tile_size, tiles_x,
                  tiles_y, r);
    cnt = (r[2] - r[0]) * (r[3] - r[1]);
  }
  counts[idx] = cnt;
}

__global__ void emit_keys_kernel(int B, int N, const float* __restrict__ means2d, const float* __restrict__ depths,
                                 const int* __restrict__ radii, int tile_size, int tiles_x, int tiles_y,
                                 const int64_t* __restrict__ offsets, int64_t* keys, int32_t* vals) {
  int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (int64_t)B * N) return;
  if (radii[2 * idx] <= 0 || radii[2 * idx + 1] <= 0) return;
  int b = (int)(idx / N);
  int r[4];
  ce::tile_rect(means2d[2 * idx], means2d[2 * idx + 1], radii[2 * idx], radii[2 * idx + 1], tile_size, tiles_x,
                tiles_y, r);
  int64_t k = offsets[idx];
  uint32_t dk = depth_key(depths[idx]);
  int64_t tiles = (int64_t)tiles_x * tiles_y;
  for (int y = r[1]; y < r[3]; ++y)
    for (int x = r[0]; x < r[2]; ++x, ++k) {
      int64_t tile = (int64_t)b * tiles + (int64_t)y * tiles_x + x;
      keys[k] = (int64_t)(((uint64_t)tile << 32) | (uint64_t)dk);
      vals[k] = (int32_t)idx;
    }
}

__global__ void tile_offsets_kernel(int64_t n_isects, const int64_t* __restrict__ keys, int n_tiles,
                                    int32_t* offsets) {
  int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n_isects) return;
  int cur = (int)((uint64_t)keys[k] >> 32);
  int prev = k == 0 ? -1 : (int)((uint64_t)keys[k - 1] >> 32);
  for (int t = prev + 1; t <= cur; ++t) offsets[t] = (int32_t)k;
  if (k == n_isects - 1)
    for (int t = cur + 1; t <= n_tiles; ++t) offsets[t] = (int32_t)n_isects;
}

struct SharedG {
  float u, v, q0, q1, q2, o;
};

__global__ void rasterize_fwd_kernel(int N, int C, int W, int H, int tile_size, const float* __restrict__ means2d,
                                     const float* __restrict__ conics, const float* __restrict__ colors,
                                     const float* __restrict__ opacities, const float* __restrict__ background,
                                     const int32_t* __restrict__ tile_offsets, const int32_t* __restrict__ flat_ids,
                                     float* image, float* alpha, float* t_final, int32_t* last) {
  extern __shared__ unsigned char smem_raw[];
  const int bs = blockDim.x * blockDim.y;
  int32_t* s_id = reinterpret_cast<int32_t*>(smem_raw);
  SharedG* s_g = reinterpret_cast<SharedG*>(smem_raw + sizeof(int32_t) * bs);
  const int b = blockIdx.z, tiles_x = gridDim.x, tiles_y = gridDim.y;
  const int64_t bt = ((int64_t)b * tiles_y + blockIdx.y) * tiles_x + blockIdx.x;
  const int tr = threadIdx.y * blockDim.x + threadIdx.x;
  const int i = blockIdx.y * tile_size + threadIdx.y, j = blockIdx.x * tile_size + threadIdx.x;
  const bool inside = i < H && j < W;
  const float px = (float)j + 0.5f, py = (float)i + 0.5f;
  const int start = tile_offsets[bt], end = tile_offsets[bt + 1];
  float acc[kMaxChannels];
  for (int c = 0; c < C; ++c) acc[c] = 0.f;
  float T = 1.f;
  int lst = 0;
  bool done = !inside;
  for (int base = start; base < end; base += bs) {
    if (__syncthreads_count(done) == bs) break;
    int k = base + tr;
    if (k < end) {
      int g = flat_ids[k];
      s_id[tr] = g;
      s_g[tr] = SharedG{means2d[2 * g], means2d[2 * g + 1], conics[3 * g], conics[3 * g + 1], conics[3 * g + 2],
                        opacities[g]};
    }
    __syncthreads();
    int cnt = min(bs, end - base);
    for (int t = 0; t < cnt && !done; ++t) {
      const SharedG& p = s_g[t];
      ce::AlphaEval e;
      if (!ce::eval_alpha(p.u, p.v, p.q0, p.q1, p.q2, p.o, px, py, e)) continue;
      float tn = T * (1.f - e.alpha);
      if (tn < ce::kTMin) {
        done = true;
        break;
      }
      float w = e.alpha * T;
      const float* col = colors + (int64_t)s_id[t] * C;
      for (int c = 0; c < C; ++c) acc[c] += w * col[c];
      T = tn;
      lst = base - start + t + 1;
    }
  }
  if (!inside) return;
  int64_t q = ((int64_t)b * H + i) * W + j;
  for (int c = 0; c < C; ++c) image[q * C + c] = acc[c] + (background ? T * background[b * C + c] : 0.f);
  alpha[q] = 1.f - T;
  t_final[q] = T;
  last[q] = lst;
}

__global__ void rasterize_bwd_kernel(int N, int C, int W, int H, int tile_size, const float* __restrict__ means2d,
                                     const float* __restrict__ conics, const float* __restrict__ colors,
                                     const float* __restrict__ opacities, const float* __restrict__ background,
                                     const int32_t* __restrict__ tile_offsets, const int32_t* __restrict__ flat_ids,
                                     const float* __restrict__ t_final, const int32_t* __restrict__ last,
                                     const float* __restrict__ v_image, const float* __restrict__ v_alpha,
                                     float* v_means2d, float* v_conics, float* v_colors, float* v_opacities) {
  extern __shared__ unsigned char smem_raw[];
  __shared__ int s_max_last;
  const int bs = blockDim.x * blockDim.y;
  int32_t* s_id = reinterpret_cast<int32_t*>(smem_raw);
  SharedG* s_g = reinterpret_cast<SharedG*>(smem_raw + sizeof(int32_t) * bs);
  const int b = blockIdx.z, tiles_x = gridDim.x, tiles_y = gridDim.y;
  const int64_t bt = ((int64_t)b * tiles_y + blockIdx.y) * tiles_x + blockIdx.x;
  const int tr = threadIdx.y * blockDim.x + threadIdx.x;
  const int i = blockIdx.y * tile_size + threadIdx.y, j = blockIdx.x * tile_size + threadIdx.x;
  const bool inside = i < H && j < W;
  const float px = (float)j + 0.5f, py = (float)i + 0.5f;
  const int start = tile_offsets[bt];
  const int64_t q = inside ? ((int64_t)b * H + i) * W + j : 0;
  const float Tf = inside ? t_final[q] : 1.f;
  const int lst = inside ? last[q] : 0;
  float T = Tf;
  float S[kMaxChannels], G[kMaxChannels];
  float bgdot = 0.f;
  for (int c = 0; c < C; ++c) {
    S[c] = 0.f;
    G[c] = inside ? v_image[q * C + c] : 0.f;
    if (background) bgdot += G[c] * background[b * C + c];
  }
  bgdot *= Tf;
  const float vA = inside ? v_alpha[q] : 0.f;
  if (tr == 0) s_max_last = 0;
  __syncthreads();
  atomicMax(&s_max_last, lst);
  __syncthreads();
  const int stop = start + s_max_last;
  for (int top = stop; top > start; top -= bs) {
    const int lo = max(start, top - bs);
    __syncthreads();
    int k = lo + tr;
    if (k < top) {
      int g = flat_ids[k];
      s_id[tr] = g;
      s_g[tr] = SharedG{means2d[2 * g], means2d[2 * g + 1], conics[3 * g], conics[3 * g + 1], conics[3 * g + 2],
                        opacities[g]};
    }
    __syncthreads();
    for (int kk = top - 1; kk >= lo; --kk) {
      if (kk - start >= lst) continue;
      const SharedG& p = s_g[kk - lo];
      ce::AlphaEval e;
      if (!ce::eval_alpha(p.u, p.v, p.q0, p.q1, p.q2, p.o, px, py, e)) continue;
      const int g = s_id[kk - lo];
      const float* col = colors + (int64_t)g * C;
      const float ra = 1.f / (1.f - e.alpha);
      const float Ti = T * ra;
      const float w = e.alpha * Ti;
      float va = 0.f;
      for (int c = 0; c < C; ++c) {
        atomicAdd(&v_colors[(int64_t)g * C + c], w * G[c]);
        va += G[c] * (Ti * col[c] - S[c] * ra);
        S[c] += w * col[c];
      }
      va += (vA * Tf - bgdot) * ra;
      T = Ti;
      float v[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      ce::alpha_bwd(e, p.q0, p.q1, p.q2, p.o, va, v);
      if (!e.clamped) {
        atomicAdd(&v_means2d[2 * g], v[0]);
        atomicAdd(&v_means2d[2 * g + 1], v[1]);
        atomicAdd(&v_conics[3 * g], v[2]);
        atomicAdd(&v_conics[3 * g + 1], v[3]);
        atomicAdd(&v_conics[3 * g + 2], v[4]);
        atomicAdd(&v_opacities[g], v[5]);
      }
    }
  }
}

__global__ void sh_fwd_kernel(int degree, int64_t M, int K, int C, const float* __restrict__ dirs,
                              const float* __restrict__ coeffs, float* out) {
  int64_t m = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= M) return;
  ce::sh_fwd(degree, dirs + 3 * m, coeffs + m * K * C, C, out + m * C);
}

__global__ void sh_bwd_kernel(int degree, int64_t M, int K, int C, const float* __restrict__ dirs,
                              const float* __restrict__ coeffs, const float* __restrict__ v_out, float* v_coeffs,
                              float* v_dirs) {
  int64_t m = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= M) return;
  ce::sh_bwd(degree, dirs + 3 * m, coeffs + m * K * C, C, v_out + m * C, v_coeffs + m * K * C,
             v_dirs ? v_dirs + 3 * m : nullptr);
}

inline size_t raster_smem(int tile_size) {
  return (size_t)tile_size * tile_size * (sizeof(int32_t) + sizeof(SharedG));
}

}  // namespace

void project_fwd(int B, int N, const float* means, const float* quats, const float* scales, const float* viewmats,
                 const float* Ks, int width, int height, float near, float far, float eps2d, float* means2d,
                 float* conics, float* depths, int* radii, void* stream) {
  int64_t n = (int64_t)B * N;
  if (n == 0) return;
  project_fwd_kernel<<<blocks_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      B, N, means, quats, scales, viewmats, Ks, width, height, near, far, eps2d, means2d, conics, depths, radii);
}

void project_bwd(int B, int N, const float* means, const float* quats, const float* scales, const float* viewmats,
                 const float* Ks, int width, int height, float near, float far, float eps2d, const int* radii,
                 const float* v_means2d, const float* v_conics, const float* v_depths, float* v_means,
                 float* v_quats, float* v_scales, void* stream) {
  if (N == 0) return;
  project_bwd_kernel<<<blocks_for(N, kThreads), kThreads, 0, as_stream(stream)>>>(
      B, N, means, quats, scales, viewmats, Ks, width, height, near, far, eps2d, radii, v_means2d, v_conics, v_depths,
      v_means, v_quats, v_scales);
}

void count_tiles(int B, int N, const float* means2d, const int* radii, int width, int height, int tile_size,
                 int32_t* counts, void* stream) {
  int64_t n = (int64_t)B * N;
  if (n == 0) return;
  int tx = (width + tile_size - 1) / tile_size, ty = (height + tile_size - 1) / tile_size;
  count_tiles_kernel<<<blocks_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(B, N, means2d, radii, tile_size,
                                                                                  tx, ty, counts);
}

void emit_keys(int B, int N, const float* means2d, const float* depths, const int* radii, int width, int height,
               int tile_size, const int64_t* offsets, int64_t* keys, int32_t* vals, void* stream) {
  int64_t n = (int64_t)B * N;
  if (n == 0) return;
  int tx = (width + tile_size - 1) / tile_size, ty = (height + tile_size - 1) / tile_size;
  emit_keys_kernel<<<blocks_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(B, N, means2d, depths, radii,
                                                                                tile_size, tx, ty, offsets, keys, vals);
}

void tile_offsets(int64_t n_isects, const int64_t* sorted_keys, int n_tiles_total, int32_t* offsets, void* stream) {
  cudaMemsetAsync(offsets, 0, sizeof(int32_t) * (n_tiles_total + 1), as_stream(stream));
  if (n_isects == 0) return;
  tile_offsets_kernel<<<blocks_for(n_isects, kThreads), kThreads, 0, as_stream(stream)>>>(n_isects, sorted_keys,
                                                                                          n_tiles_total, offsets);
}

void rasterize_fwd(int B, int N, int C, int width, int height, int tile_size, const float* means2d,
                   const float* conics, const float* colors, const float* opacities, const float* background,
                   const int32_t* tile_offsets, const int32_t* flat_ids, float* image, float* alpha, float* t_final,
                   int32_t* last, void* stream) {
  if (B == 0 || width == 0 || height == 0) return;
  dim3 grid((width + tile_size - 1) / tile_size, (height + tile_size - 1) / tile_size, B);
  dim3 block(tile_size, tile_size);
  rasterize_fwd_kernel<<<grid, block, raster_smem(tile_size), as_stream(stream)>>>(
      N, C, width, height, tile_size, means2d, conics, colors, opacities, background, tile_offsets, flat_ids, image,
      alpha, t_final, last);
}

void rasterize_bwd(int B, int N, int C, int width, int height, int tile_size, const float* means2d,
                   const float* conics, const float* colors, const float* opacities, const float* background,
                   const int32_t* tile_offsets, const int32_t* flat_ids, const float* t_final, const int32_t* last,
                   const float* v_image, const float* v_alpha, float* v_means2d, float* v_conics, float* v_colors,
                   float* v_opacities, void* stream) {
  if (B == 0 || width == 0 || height == 0) return;
  dim3 grid((width + tile_size - 1) / tile_size, (height + tile_size - 1) / tile_size, B);
  dim3 block(tile_size, tile_size);
  rasterize_bwd_kernel<<<grid, block, raster_smem(tile_size), as_stream(stream)>>>(
      N, C, width, height, tile_size, means2d, conics, colors, opacities, background, tile_offsets, flat_ids, t_final,
      last, v_image, v_alpha, v_means2d, v_conics, v_colors, v_opacities);
}

void sh_fwd(int degree, int64_t M, int K, int C, const float* dirs, const float* coeffs, float* out, void* stream) {
  if (M == 0) return;
  sh_fwd_kernel<<<blocks_for(M, kThreads), kThreads, 0, as_stream(stream)>>>(degree, M, K, C, dirs, coeffs, out);
}

void sh_bwd(int degree, int64_t M, int K, int C, const float* dirs, const float* coeffs, const float* v_out,
            float* v_coeffs, float* v_dirs, void* stream) {
  if (M == 0) return;
  sh_bwd_kernel<<<blocks_for(M, kThreads), kThreads, 0, as_stream(stream)>>>(degree, M, K, C, dirs, coeffs, v_out,
                                                                             v_coeffs, v_dirs);
}

}  // namespace ce_cuda
