// CPU driver entry points (called by ext.cpp after the input checks). Float32, contiguous tensors.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace ce_cpu {

std::vector<at::Tensor> project_fwd(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height,
                                    double near, double far, double eps2d);

std::vector<at::Tensor> project_bwd(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height,
                                    double near, double far, double eps2d, const at::Tensor& radii,
                                    const at::Tensor& v_means2d, const at::Tensor& v_conics,
                                    const at::Tensor& v_depths);

// -> image [B,H,W,C], alpha [B,H,W,1], t_final [B,H,W], last [B,H,W] int32, tile_offsets [B*T+1] int32,
//    flat_ids [n_isects] int32
std::vector<at::Tensor> rasterize_fwd(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                      const at::Tensor& opacities, const at::Tensor& depths, const at::Tensor& radii,
                                      const c10::optional<at::Tensor>& background, int64_t width, int64_t height,
                                      int64_t tile_size);

// -> v_means2d [B,N,2], v_conics [B,N,3], v_colors [B,N,C], v_opacities [B,N]
std::vector<at::Tensor> rasterize_bwd(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                      const at::Tensor& opacities, const c10::optional<at::Tensor>& background,
                                      int64_t width, int64_t height, int64_t tile_size,
                                      const at::Tensor& tile_offsets, const at::Tensor& flat_ids,
                                      const at::Tensor& t_final, const at::Tensor& last, const at::Tensor& v_image,
                                      const at::Tensor& v_alpha);

at::Tensor sh_fwd(int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs);
std::vector<at::Tensor> sh_bwd(int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs,
                               const at::Tensor& v_out, bool compute_v_dirs);

}  // namespace ce_cpu
