// Torch bindings: input checks (device, dtype, contiguity, shapes), output allocation, and dispatch to
// the CPU driver (raster_cpu.cpp) or, when built with CE_WITH_CUDA, the CUDA launchers (raster_cuda.h).
// The autograd Functions live in cuda_ext/_wrapper.py; these are the raw forward/backward ops.
#include <torch/extension.h>

#include "raster_cpu.h"

#ifdef CE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "raster_cuda.h"
#endif

namespace {

using at::Tensor;

#define CE_CHECK_F32(x, name)                                                                           \
  TORCH_CHECK((x).scalar_type() == at::kFloat, "cuda_ext: ", name, " must be float32, got ", (x).scalar_type()); \
  TORCH_CHECK((x).is_contiguous(), "cuda_ext: ", name, " must be contiguous")
#define CE_CHECK_I32(x, name)                                                                           \
  TORCH_CHECK((x).scalar_type() == at::kInt, "cuda_ext: ", name, " must be int32, got ", (x).scalar_type()); \
  TORCH_CHECK((x).is_contiguous(), "cuda_ext: ", name, " must be contiguous")
#define CE_CHECK_SHAPE(x, name, ...)                                                                    \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), "cuda_ext: ", name, " must have shape (",  \
              at::IntArrayRef({__VA_ARGS__}), "), got ", (x).sizes())

void check_same_device(const Tensor& ref, std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  for (auto& p : ts)
    TORCH_CHECK(p.first->device() == ref.device(), "cuda_ext: ", p.second, " is on ", p.first->device(),
                " but the other inputs are on ", ref.device());
}

bool use_cuda(const Tensor& ref) {
  if (ref.is_cpu()) return false;
#ifdef CE_WITH_CUDA
  TORCH_CHECK(ref.is_cuda(), "cuda_ext: unsupported device ", ref.device());
  return true;
#else
  TORCH_CHECK(false, "cuda_ext: this build has no CUDA kernels (tensor on ", ref.device(), ")");
  return false;
#endif
}

#ifdef CE_WITH_CUDA
void* cur_stream() { return (void*)c10::cuda::getCurrentCUDAStream().stream(); }
#endif

void check_projection_inputs(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& viewmats,
                             const Tensor& Ks, int64_t width, int64_t height) {
  const int64_t N = means.size(0), B = viewmats.size(0);
  CE_CHECK_F32(means, "means");
  CE_CHECK_F32(quats, "quats");
  CE_CHECK_F32(scales, "scales");
  CE_CHECK_F32(viewmats, "viewmats");
  CE_CHECK_F32(Ks, "Ks");
  CE_CHECK_SHAPE(means, "means", N, 3);
  CE_CHECK_SHAPE(quats, "quats", N, 4);
  CE_CHECK_SHAPE(scales, "scales", N, 3);
  CE_CHECK_SHAPE(viewmats, "viewmats", B, 4, 4);
  CE_CHECK_SHAPE(Ks, "Ks", B, 3, 3);
  TORCH_CHECK(width > 0 && height > 0, "cuda_ext: width and height must be positive, got ", width, "x", height);
  check_same_device(means, {{&quats, "quats"}, {&scales, "scales"}, {&viewmats, "viewmats"}, {&Ks, "Ks"}});
}

std::vector<Tensor> project_fwd(const Tensor& means, const Tensor& quats, const Tensor& scales,
                                const Tensor& viewmats, const Tensor& Ks, int64_t width, int64_t height, double near,
                                double far, double eps2d) {
  check_projection_inputs(means, quats, scales, viewmats, Ks, width, height);
  if (!use_cuda(means)) return ce_cpu::project_fwd(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d);
#ifdef CE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(means.device());
  const int64_t B = viewmats.size(0), N = means.size(0);
  Tensor means2d = at::empty({B, N, 2}, means.options()), conics = at::empty({B, N, 3}, means.options());
  Tensor depths = at::empty({B, N}, means.options()), radii = at::empty({B, N, 2}, means.options().dtype(at::kInt));
  ce_cuda::project_fwd((int)B, (int)N, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                       viewmats.data_ptr<float>(), Ks.data_ptr<float>(), (int)width, (int)height, (float)near,
                       (float)far, (float)eps2d, means2d.data_ptr<float>(), conics.data_ptr<float>(),
                       depths.data_ptr<float>(), radii.data_ptr<int>(), cur_stream());
  return {means2d, conics, depths, radii};
#else
  return {};  // unreachable: use_cuda() throws without CUDA
#endif
}

std::vector<Tensor> project_bwd(const Tensor& means, const Tensor& quats, const Tensor& scales,
                                const Tensor& viewmats, const Tensor& Ks, int64_t width, int64_t height, double near,
                                double far, double eps2d, const Tensor& radii, const Tensor& v_means2d,
                                const Tensor& v_conics, const Tensor& v_depths) {
  check_projection_inputs(means, quats, scales, viewmats, Ks, width, height);
  const int64_t B = viewmats.size(0), N = means.size(0);
  CE_CHECK_I32(radii, "radii");
  CE_CHECK_SHAPE(radii, "radii", B, N, 2);
  CE_CHECK_F32(v_means2d, "v_means2d");
  CE_CHECK_SHAPE(v_means2d, "v_means2d", B, N, 2);
  CE_CHECK_F32(v_conics, "v_conics");
  CE_CHECK_SHAPE(v_conics, "v_conics", B, N, 3);
  CE_CHECK_F32(v_depths, "v_depths");
  CE_CHECK_SHAPE(v_depths, "v_depths", B, N);
  if (!use_cuda(means))
    return ce_cpu::project_bwd(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d, radii, v_means2d,
                               v_conics, v_depths);
#ifdef CE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(means.device());
  Tensor v_means = at::zeros_like(means), v_quats = at::zeros_like(quats), v_scales = at::zeros_like(scales);
  ce_cuda::project_bwd((int)B, (int)N, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                       viewmats.data_ptr<float>(), Ks.data_ptr<float>(), (int)width, (int)height, (float)near,
                       (float)far, (float)eps2d, radii.data_ptr<int>(), v_means2d.data_ptr<float>(),
                       v_conics.data_ptr<float>(), v_depths.data_ptr<float>(), v_means.data_ptr<float>(),
                       v_quats.data_ptr<float>(), v_scales.data_ptr<float>(), cur_stream());
  return {v_means, v_quats, v_scales};
#else
  return {};  // unreachable: use_cuda() throws without CUDA
#endif
}

void check_raster_inputs(const Tensor& means2d, const Tensor& conics, const Tensor& colors, const Tensor& opacities,
                         const Tensor& radii, const c10::optional<Tensor>& background, int64_t width, int64_t height,
                         int64_t tile_size) {
  TORCH_CHECK(colors.dim() == 3, "cuda_ext: colors must be [B, N, C], got ", colors.sizes());
  const int64_t B = colors.size(0), N = colors.size(1), C = colors.size(2);
  TORCH_CHECK(C >= 1, "cuda_ext: colors need at least one channel");
  CE_CHECK_F32(means2d, "means2d");
  CE_CHECK_SHAPE(means2d, "means2d", B, N, 2);
  CE_CHECK_F32(conics, "conics");
  CE_CHECK_SHAPE(conics, "conics", B, N, 3);
  CE_CHECK_F32(colors, "colors");
  CE_CHECK_F32(opacities, "opacities");
  CE_CHECK_SHAPE(opacities, "opacities", B, N);
  CE_CHECK_I32(radii, "radii");
  CE_CHECK_SHAPE(radii, "radii", B, N, 2);
  if (background.has_value()) {
    CE_CHECK_F32(*background, "background");
    CE_CHECK_SHAPE(*background, "background", B, C);
    check_same_device(means2d, {{&*background, "background"}});
  }
  TORCH_CHECK(width > 0 && height > 0, "cuda_ext: width and height must be positive, got ", width, "x", height);
  TORCH_CHECK(tile_size >= 1 && tile_size <= 32, "cuda_ext: tile_size must be in [1, 32], got ", tile_size);
  TORCH_CHECK(B * N < (int64_t)1 << 31, "cuda_ext: B * N must fit in int32");
  check_same_device(means2d, {{&conics, "conics"}, {&colors, "colors"}, {&opacities, "opacities"}, {&radii, "radii"}});
}

#ifdef CE_WITH_CUDA
const float* opt_ptr(const c10::optional<Tensor>& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }
#endif

std::vector<Tensor> rasterize_fwd(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                  const Tensor& opacities, const Tensor& depths, const Tensor& radii,
                                  const c10::optional<Tensor>& background, int64_t width, int64_t height,
                                  int64_t tile_size) {
  check_raster_inputs(means2d, conics, colors, opacities, radii, background, width, height, tile_size);
  const int64_t B = colors.size(0), N = colors.size(1);
  CE_CHECK_F32(depths, "depths");
  CE_CHECK_SHAPE(depths, "depths", B, N);
  check_same_device(means2d, {{&depths, "depths"}});
  if (!use_cuda(means2d))
    return ce_cpu::rasterize_fwd(means2d, conics, colors, opacities, depths, radii, background, width, height,
                                 tile_size);
#ifdef CE_WITH_CUDA
  const int64_t C = colors.size(2);
  TORCH_CHECK(C <= ce_cuda::kMaxChannels, "cuda_ext: the CUDA rasterizer supports at most ", ce_cuda::kMaxChannels,
              " channels, got ", C);
  const c10::cuda::CUDAGuard guard(means2d.device());
  void* stream = cur_stream();
  const int tx = (int)((width + tile_size - 1) / tile_size), ty = (int)((height + tile_size - 1) / tile_size);
  const int n_tiles = (int)(B * tx * ty);
  auto opt = means2d.options();
  Tensor counts = at::empty({B * N}, opt.dtype(at::kInt));
  ce_cuda::count_tiles((int)B, (int)N, means2d.data_ptr<float>(), radii.data_ptr<int>(), (int)width, (int)height,
                       (int)tile_size, counts.data_ptr<int32_t>(), stream);
  Tensor csum = at::cumsum(counts, 0, at::kLong);
  const int64_t n_isects = B * N > 0 ? csum[-1].item<int64_t>() : 0;  // host sync (as in gsplat / INRIA)
  Tensor offsets = csum - counts.to(at::kLong);
  Tensor keys = at::empty({n_isects}, opt.dtype(at::kLong)), vals = at::empty({n_isects}, opt.dtype(at::kInt));
  ce_cuda::emit_keys((int)B, (int)N, means2d.data_ptr<float>(), depths.data_ptr<float>(), radii.data_ptr<int>(),
                     (int)width, (int)height, (int)tile_size, offsets.data_ptr<int64_t>(), keys.data_ptr<int64_t>(),
                     vals.data_ptr<int32_t>(), stream);
  // stable sort: equal (tile, depth) keys keep ascending Gaussian index, like the CPU driver
  auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  Tensor skeys = std::get<0>(sorted).contiguous();
  Tensor flat_ids = vals.index_select(0, std::get<1>(sorted)).contiguous();
  Tensor tile_offsets = at::empty({n_tiles + 1}, opt.dtype(at::kInt));
  ce_cuda::tile_offsets(n_isects, skeys.data_ptr<int64_t>(), n_tiles, tile_offsets.data_ptr<int32_t>(), stream);
  Tensor image = at::empty({B, height, width, C}, opt), alpha = at::empty({B, height, width, 1}, opt);
  Tensor t_final = at::empty({B, height, width}, opt), last = at::empty({B, height, width}, opt.dtype(at::kInt));
  ce_cuda::rasterize_fwd((int)B, (int)N, (int)C, (int)width, (int)height, (int)tile_size, means2d.data_ptr<float>(),
                         conics.data_ptr<float>(), colors.data_ptr<float>(), opacities.data_ptr<float>(),
                         opt_ptr(background), tile_offsets.data_ptr<int32_t>(), flat_ids.data_ptr<int32_t>(),
                         image.data_ptr<float>(), alpha.data_ptr<float>(), t_final.data_ptr<float>(),
                         last.data_ptr<int32_t>(), stream);
  return {image, alpha, t_final, last, tile_offsets, flat_ids};
#else
  return {};  // unreachable: use_cuda() throws without CUDA
#endif
}

std::vector<Tensor> rasterize_bwd(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                  const Tensor& opacities, const Tensor& radii, const c10::optional<Tensor>& background,
                                  int64_t width, int64_t height, int64_t tile_size, const Tensor& tile_offsets,
                                  const Tensor& flat_ids, const Tensor& t_final, const Tensor& last,
                                  const Tensor& v_image, const Tensor& v_alpha) {
  check_raster_inputs(means2d, conics, colors, opacities, radii, background, width, height, tile_size);
  const int64_t B = colors.size(0), C = colors.size(2);
#ifdef CE_WITH_CUDA
  const int64_t N = colors.size(1);
#endif
  CE_CHECK_I32(tile_offsets, "tile_offsets");
  CE_CHECK_I32(flat_ids, "flat_ids");
  CE_CHECK_F32(t_final, "t_final");
  CE_CHECK_SHAPE(t_final, "t_final", B, height, width);
  CE_CHECK_I32(last, "last");
  CE_CHECK_SHAPE(last, "last", B, height, width);
  CE_CHECK_F32(v_image, "v_image");
  CE_CHECK_SHAPE(v_image, "v_image", B, height, width, C);
  CE_CHECK_F32(v_alpha, "v_alpha");
  CE_CHECK_SHAPE(v_alpha, "v_alpha", B, height, width, 1);
  if (!use_cuda(means2d))
    return ce_cpu::rasterize_bwd(means2d, conics, colors, opacities, background, width, height, tile_size,
                                 tile_offsets, flat_ids, t_final, last, v_image, v_alpha);
#ifdef CE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(means2d.device());
  auto opt = means2d.options();
  Tensor v_means2d = at::zeros({B, N, 2}, opt), v_conics = at::zeros({B, N, 3}, opt);
  Tensor v_colors = at::zeros({B, N, C}, opt), v_op = at::zeros({B, N}, opt);
  ce_cuda::rasterize_bwd((int)B, (int)N, (int)C, (int)width, (int)height, (int)tile_size, means2d.data_ptr<float>(),
                         conics.data_ptr<float>(), colors.data_ptr<float>(), opacities.data_ptr<float>(),
                         opt_ptr(background), tile_offsets.data_ptr<int32_t>(), flat_ids.data_ptr<int32_t>(),
                         t_final.data_ptr<float>(), last.data_ptr<int32_t>(), v_image.data_ptr<float>(),
                         v_alpha.data_ptr<float>(), v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(),
                         v_colors.data_ptr<float>(), v_op.data_ptr<float>(), cur_stream());
  return {v_means2d, v_conics, v_colors, v_op};
#else
  return {};  // unreachable: use_cuda() throws without CUDA
#endif
}

void check_sh_inputs(int64_t degree, const Tensor& dirs, const Tensor& coeffs) {
  TORCH_CHECK(degree >= 0 && degree <= 3, "cuda_ext: SH degree must be 0..3, got ", degree);
  CE_CHECK_F32(dirs, "dirs");
  CE_CHECK_F32(coeffs, "coeffs");
  TORCH_CHECK(dirs.dim() == 2 && dirs.size(1) == 3, "cuda_ext: dirs must be [M, 3], got ", dirs.sizes());
  TORCH_CHECK(coeffs.dim() == 3 && coeffs.size(0) == dirs.size(0), "cuda_ext: coeffs must be [M, K, C], got ",
              coeffs.sizes());
  TORCH_CHECK(coeffs.size(1) >= (degree + 1) * (degree + 1), "cuda_ext: degree ", degree, " needs ",
              (degree + 1) * (degree + 1), " coefficients, got ", coeffs.size(1));
  check_same_device(dirs, {{&coeffs, "coeffs"}});
}

Tensor sh_fwd(int64_t degree, const Tensor& dirs, const Tensor& coeffs) {
  check_sh_inputs(degree, dirs, coeffs);
  if (!use_cuda(dirs)) return ce_cpu::sh_fwd(degree, dirs, coeffs);
#ifdef CE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(dirs.device());
  Tensor out = at::empty({dirs.size(0), coeffs.size(2)}, coeffs.options());
  ce_cuda::sh_fwd((int)degree, dirs.size(0), (int)coeffs.size(1), (int)coeffs.size(2), dirs.data_ptr<float>(),
                  coeffs.data_ptr<float>(), out.data_ptr<float>(), cur_stream());
  return out;
#else
  return Tensor();  // unreachable: use_cuda() throws without CUDA
#endif
}

std::vector<Tensor> sh_bwd(int64_t degree, const Tensor& dirs, const Tensor& coeffs, const Tensor& v_out,
                           bool compute_v_dirs) {
  check_sh_inputs(degree, dirs, coeffs);
  CE_CHECK_F32(v_out, "v_out");
  CE_CHECK_SHAPE(v_out, "v_out", dirs.size(0), coeffs.size(2));
  if (!use_cuda(dirs)) return ce_cpu::sh_bwd(degree, dirs, coeffs, v_out, compute_v_dirs);
#ifdef CE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(dirs.device());
  Tensor v_coeffs = at::zeros_like(coeffs);
  Tensor v_dirs = compute_v_dirs ? at::zeros_like(dirs) : Tensor();
  ce_cuda::sh_bwd((int)degree, dirs.size(0), (int)coeffs.size(1), (int)coeffs.size(2), dirs.data_ptr<float>(),
                  coeffs.data_ptr<float>(), v_out.data_ptr<float>(), v_coeffs.data_ptr<float>(),
                  compute_v_dirs ? v_dirs.data_ptr<float>() : nullptr, cur_stream());
  return {v_coeffs, v_dirs};
#else
  return {};  // unreachable: use_cuda() throws without CUDA
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cuda_ext: 3DGS projection, rasterization and SH kernels (CPU driver + optional CUDA driver)";
#ifdef CE_WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
  // The kernels touch only tensors, so they run without the GIL: a server's event loop thread (aiortc
  // encoding and sending, avatar/serve) and other Python threads go on while a frame is rasterized,
  // as they do during torch's own ops. Arguments are converted before, results after, with the GIL held.
  using release = py::call_guard<py::gil_scoped_release>;
  m.def("project_fwd", &project_fwd, release());
  m.def("project_bwd", &project_bwd, release());
  m.def("rasterize_fwd", &rasterize_fwd, release());
  m.def("rasterize_bwd", &rasterize_bwd, release());
  m.def("sh_fwd", &sh_fwd, release());
  m.def("sh_bwd", &sh_bwd, release());
}
