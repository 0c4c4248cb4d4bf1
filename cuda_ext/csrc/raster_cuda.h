// CUDA driver launchers: plain C++ declarations with raw pointers (no torch, no CUDA headers), so
// ext.cpp can call them and nvcc can compile raster_cuda.cu on a machine without torch's CUDA headers.
// All pointers are device pointers to contiguous float32 / int32 / int64 arrays; outputs that are
// accumulated (gradients) must be zero-initialised by the caller. `stream` is a cudaStream_t.
#pragma once

#include <stdint.h>

namespace ce_cuda {

void project_fwd(int B, int N, const float* means, const float* quats, const float* scales, const float* viewmats,
                 const float* Ks, int width, int height, float near, float far, float eps2d, float* means2d,
                 float* conics, float* depths, int* radii, void* stream);

void project_bwd(int B, int N, const float* means, const float* quats, const float* scales, const float* viewmats,
                 const float* Ks, int width, int height, float near, float far, float eps2d, const int* radii,
                 const float* v_means2d, const float* v_conics, const float* v_depths, float* v_means,
                 float* v_quats, float* v_scales, void* stream);

// tiles touched by each Gaussian (0 when culled) -> counts [B*N]
void count_tiles(int B, int N, const float* means2d, const int* radii, int width, int height, int tile_size,
                 int32_t* counts, void* stream);

// keys = (b*T + tile) << 32 | depth bits, vals = b*N + n, written at offsets[b*N+n] (exclusive scan of counts)
void emit_keys(int B, int N, const float* means2d, const float* depths, const int* radii, int width, int height,
               int tile_size, const int64_t* offsets, int64_t* keys, int32_t* vals, void* stream);

// sorted keys -> tile_offsets [n_tiles_total + 1]
void tile_offsets(int64_t n_isects, const int64_t* sorted_keys, int n_tiles_total, int32_t* offsets, void* stream);

// Maximum channel count of the CUDA rasterizer (per-thread buffers in the backward).
constexpr int kMaxChannels = 64;

void rasterize_fwd(int B, int N, int C, int width, int height, int tile_size, const float* means2d,
                   const float* conics, const float* colors, const float* opacities, const float* background,
                   const int32_t* tile_offsets, const int32_t* flat_ids, float* image, float* alpha, float* t_final,
                   int32_t* last, void* stream);

void rasterize_bwd(int B, int N, int C, int width, int height, int tile_size, const float* means2d,
                   const float* conics, const float* colors, const float* opacities, const float* background,
                   const int32_t* tile_offsets, const int32_t* flat_ids, const float* t_final, const int32_t* last,
                   const float* v_image, const float* v_alpha, float* v_means2d, float* v_conics, float* v_colors,
                   float* v_opacities, void* stream);

void sh_fwd(int degree, int64_t M, int K, int C, const float* dirs, const float* coeffs, float* out, void* stream);

void sh_bwd(int degree, int64_t M, int K, int C, const float* dirs, const float* coeffs, const float* v_out,
            float* v_coeffs, float* v_dirs /*nullable*/, void* stream);

}  // namespace ce_cuda
