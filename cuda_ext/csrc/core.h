// Header-only math core of the 3DGS rasterizer: projection, compositing step, spherical harmonics
// and their derivatives. Every function is `CE_HD`, i.e. `__host__ __device__` under nvcc and a plain
// inline function under g++, so the CPU driver (raster_cpu.cpp) and the CUDA driver (raster_cuda.cu)
// run the same arithmetic. No torch headers, no shared memory, no atomics in here.
//
// Math: ../shared/design/raster.md (sections 1, 3, 4, 5); twin: cuda_ext/_torch_impl.py.
// Conventions: quaternions (w, x, y, z); row-major 4x4 world->camera viewmat (OpenCV, +z forward);
// pixel (i, j) has its centre at (j + 0.5, i + 0.5); conic = (Q00, Q01, Q11) of Q = inverse(cov2d).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define CE_HD __host__ __device__ __forceinline__
#else
#define CE_HD inline
#endif

namespace ce {

// Constants shared with _torch_impl.py.
constexpr float kAlphaMax = 0.99f;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kTMin = 1e-4f;
constexpr float kGaussianExtent = 3.33f;
constexpr float kClampFovMargin = 0.3f;
constexpr float kQuatNorm2Min = 1e-24f;
constexpr float kDirNorm2Min = 1e-24f;

struct Camera {
  float R[9];  // row-major world->camera rotation
  float t[3];
  float fx, fy, cx, cy;
  int width, height;
};

CE_HD Camera make_camera(const float* viewmat /*16*/, const float* K /*9*/, int width, int height) {
  Camera c;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c.R[3 * i + j] = viewmat[4 * i + j];
    c.t[i] = viewmat[4 * i + 3];
  }
  c.fx = K[0];
  c.fy = K[4];
  c.cx = K[2];
  c.cy = K[5];
  c.width = width;
  c.height = height;
  return c;
}

// ---- quaternion -> rotation ------------------------------------------------------------------
// q is normalised with a floored norm: |q| -> 0 gives q_hat -> 0, i.e. the identity rotation.
CE_HD void quat_to_rotmat(const float* q, float* R /*9*/, float* qn /*4*/) {
  float q2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
  float inv = 1.0f / sqrtf(fmaxf(q2, kQuatNorm2Min));
  float w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
  qn[0] = w; qn[1] = x; qn[2] = y; qn[3] = z;
  R[0] = 1.f - 2.f * (y * y + z * z); R[1] = 2.f * (x * y - w * z);       R[2] = 2.f * (x * z + w * y);
  R[3] = 2.f * (x * y + w * z);       R[4] = 1.f - 2.f * (x * x + z * z); R[5] = 2.f * (y * z - w * x);
  R[6] = 2.f * (x * z - w * y);       R[7] = 2.f * (y * z + w * x);       R[8] = 1.f - 2.f * (x * x + y * y);
}

// v_R (row-major 9) -> v_q for the raw quaternion q (tangent projection of the normalisation).
CE_HD void quat_to_rotmat_vjp(const float* q, const float* v_R, float* v_q) {
  float q2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
  bool floored = !(q2 > kQuatNorm2Min);
  float inv = 1.0f / sqrtf(fmaxf(q2, kQuatNorm2Min));
  float w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
  const float* v = v_R;
  float gw = 2.f * (-z * v[1] + y * v[2] + z * v[3] - x * v[5] - y * v[6] + x * v[7]);
  float gx = 2.f * (y * v[1] + z * v[2] + y * v[3] - 2.f * x * v[4] - w * v[5] + z * v[6] + w * v[7] - 2.f * x * v[8]);
  float gy = 2.f * (-2.f * y * v[0] + x * v[1] + w * v[2] + x * v[3] + z * v[5] - w * v[6] + z * v[7] - 2.f * y * v[8]);
  float gz = 2.f * (-2.f * z * v[0] - w * v[1] + x * v[2] + w * v[3] - 2.f * z * v[4] + y * v[5] + x * v[6] + y * v[7]);
  float dot = floored ? 0.f : (gw * w + gx * x + gy * y + gz * z);
  v_q[0] = inv * (gw - dot * w);
  v_q[1] = inv * (gx - dot * x);
  v_q[2] = inv * (gy - dot * y);
  v_q[3] = inv * (gz - dot * z);
}

// ---- projection -----------------------------------------------------------------------------
// Everything the backward needs is recomputed from the inputs by `project_fwd` itself.
struct ProjOut {
  float mean2d[2];
  float conic[3];
  float depth;
  int radius[2];
  bool valid;
  // intermediates
  float t[3];        // camera-space mean
  float cov_c[9];    // camera-space covariance
  float M[9];        // R diag(s)
  float Rq[9];       // rotation of the quaternion
  float J[6];        // clamped Jacobian (2x3 row-major)
  float a, b, c;     // cov2d + eps2d I  ([[a, b], [b, c]])
  float det;
  bool clamp_x, clamp_y;
  float tx, ty;      // clamped x, y
};

CE_HD void project_fwd(const float* mean, const float* quat, const float* scale, const Camera& cam, float near,
                       float far, float eps2d, ProjOut& o) {
  float qn[4];
  quat_to_rotmat(quat, o.Rq, qn);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) o.M[3 * i + j] = o.Rq[3 * i + j] * scale[j];
  float cov[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      cov[3 * i + j] = o.M[3 * i + 0] * o.M[3 * j + 0] + o.M[3 * i + 1] * o.M[3 * j + 1] + o.M[3 * i + 2] * o.M[3 * j + 2];
  const float* R = cam.R;
  for (int i = 0; i < 3; ++i) o.t[i] = R[3 * i] * mean[0] + R[3 * i + 1] * mean[1] + R[3 * i + 2] * mean[2] + cam.t[i];
  // cov_c = R cov R^T
  float RC[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) RC[3 * i + j] = R[3 * i] * cov[j] + R[3 * i + 1] * cov[3 + j] + R[3 * i + 2] * cov[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      o.cov_c[3 * i + j] = RC[3 * i] * R[3 * j] + RC[3 * i + 1] * R[3 * j + 1] + RC[3 * i + 2] * R[3 * j + 2];

  float x = o.t[0], y = o.t[1], z = o.t[2];
  o.depth = z;
  o.valid = false;
  o.radius[0] = o.radius[1] = 0;
  o.mean2d[0] = o.mean2d[1] = 0.f;
  o.conic[0] = o.conic[1] = o.conic[2] = 0.f;
  if (!(z >= near && z <= far)) return;  // also rejects NaN

  float rz = 1.f / z;
  float tan_fovx = 0.5f * cam.width / cam.fx, tan_fovy = 0.5f * cam.height / cam.fy;
  float lxp = (cam.width - cam.cx) / cam.fx + kClampFovMargin * tan_fovx;
  float lxn = cam.cx / cam.fx + kClampFovMargin * tan_fovx;
  float lyp = (cam.height - cam.cy) / cam.fy + kClampFovMargin * tan_fovy;
  float lyn = cam.cy / cam.fy + kClampFovMargin * tan_fovy;
  float xr = x * rz, yr = y * rz;
  o.clamp_x = xr < -lxn || xr > lxp;
  o.clamp_y = yr < -lyn || yr > lyp;
  o.tx = z * fminf(fmaxf(xr, -lxn), lxp);
  o.ty = z * fminf(fmaxf(yr, -lyn), lyp);
  o.J[0] = cam.fx * rz; o.J[1] = 0.f; o.J[2] = -cam.fx * o.tx * rz * rz;
  o.J[3] = 0.f; o.J[4] = cam.fy * rz; o.J[5] = -cam.fy * o.ty * rz * rz;
  // cov2d = J cov_c J^T
  float JC[6];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      JC[3 * i + j] = o.J[3 * i] * o.cov_c[j] + o.J[3 * i + 1] * o.cov_c[3 + j] + o.J[3 * i + 2] * o.cov_c[6 + j];
  o.a = JC[0] * o.J[0] + JC[1] * o.J[1] + JC[2] * o.J[2] + eps2d;
  o.b = JC[0] * o.J[3] + JC[1] * o.J[4] + JC[2] * o.J[5];
  o.c = JC[3] * o.J[3] + JC[4] * o.J[4] + JC[5] * o.J[5] + eps2d;
  o.det = o.a * o.c - o.b * o.b;
  if (!(o.det > 0.f)) return;
  float u = cam.fx * x * rz + cam.cx, v = cam.fy * y * rz + cam.cy;
  float rx = ceilf(kGaussianExtent * sqrtf(o.a)), ry = ceilf(kGaussianExtent * sqrtf(o.c));
  if (!(u + rx > 0.f && u - rx < (float)cam.width && v + ry > 0.f && v - ry < (float)cam.height)) return;
  float idet = 1.f / o.det;
  o.valid = true;
  o.mean2d[0] = u;
  o.mean2d[1] = v;
  o.conic[0] = o.c * idet;
  o.conic[1] = -o.b * idet;
  o.conic[2] = o.a * idet;
  o.radius[0] = (int)rx;
  o.radius[1] = (int)ry;
}

// Gradients of (mean2d, conic, depth) -> (mean, quat, scale). Call only for valid Gaussians with the
// ProjOut of the same inputs. v_conic[1] is the gradient of the stored off-diagonal Q01.
CE_HD void project_bwd(const float* quat, const float* scale, const Camera& cam, const ProjOut& o,
                       const float* v_mean2d, const float* v_conic, float v_depth, float* v_mean, float* v_quat,
                       float* v_scale) {
  float a = o.a, b = o.b, c = o.c;
  float idet = 1.f / o.det;
  // conic = (c, -b, a) / det. Chain rule through one shared v_det (the form autograd uses), NOT the
  // expanded products with 1/det^2: for long thin Gaussians those expanded terms are large, nearly
  // cancel when projected on the long axis, and lost up to 10-40% of d/d(scale_long) in float32.
  // Here the large part is v_det * (c, -2b, a), i.e. proportional to the forward's own (a, b, c),
  // which the covariance chain below maps back consistently (stays at float32 rounding up to
  // aspect 1000:1, tests/test_raster_precision.py).
  float g0 = v_conic[0], g1 = v_conic[1], g2 = v_conic[2];
  float v_det = -(g0 * c - g1 * b + g2 * a) * idet * idet;
  float v_a = g2 * idet + c * v_det;
  float v_b = -g1 * idet - 2.f * b * v_det;  // b is the off-diagonal scalar (appears twice in det)
  float v_c = g0 * idet + a * v_det;
  // symmetric gradient of cov2d: G = [[v_a, v_b/2], [v_b/2, v_c]]
  float G[4] = {v_a, 0.5f * v_b, 0.5f * v_b, v_c};
  const float* J = o.J;
  // v_cov_c = J^T G J  (3x3)
  float GJ[6];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) GJ[3 * i + j] = G[2 * i] * J[j] + G[2 * i + 1] * J[3 + j];
  float v_cov_c[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v_cov_c[3 * i + j] = J[i] * GJ[j] + J[3 + i] * GJ[3 + j];
  // v_J = 2 G J cov_c  (2x3)
  float v_J[6];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      v_J[3 * i + j] = 2.f * (GJ[3 * i] * o.cov_c[j] + GJ[3 * i + 1] * o.cov_c[3 + j] + GJ[3 * i + 2] * o.cov_c[6 + j]);

  float x = o.t[0], y = o.t[1], z = o.t[2];
  float rz = 1.f / z, rz2 = rz * rz, rz3 = rz2 * rz;
  float fx = cam.fx, fy = cam.fy;
  float v_t[3] = {0.f, 0.f, v_depth};
  // projected mean (unclamped)
  v_t[0] += fx * rz * v_mean2d[0];
  v_t[1] += fy * rz * v_mean2d[1];
  v_t[2] += -fx * x * rz2 * v_mean2d[0] - fy * y * rz2 * v_mean2d[1];
  // Jacobian entries J00 = fx/z, J11 = fy/z, J02 = -fx tx/z^2, J12 = -fy ty/z^2 with tx = z clamp(x/z)
  v_t[2] += -fx * rz2 * v_J[0] - fy * rz2 * v_J[4];
  if (o.clamp_x) {
    v_t[2] += fx * o.tx * rz3 * v_J[2];
  } else {
    v_t[0] += -fx * rz2 * v_J[2];
    v_t[2] += 2.f * fx * x * rz3 * v_J[2];
  }
  if (o.clamp_y) {
    v_t[2] += fy * o.ty * rz3 * v_J[5];
  } else {
    v_t[1] += -fy * rz2 * v_J[5];
    v_t[2] += 2.f * fy * y * rz3 * v_J[5];
  }
  const float* R = cam.R;
  for (int j = 0; j < 3; ++j) v_mean[j] = R[j] * v_t[0] + R[3 + j] * v_t[1] + R[6 + j] * v_t[2];
  // v_cov = R^T v_cov_c R
  float T1[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      T1[3 * i + j] = R[i] * v_cov_c[j] + R[3 + i] * v_cov_c[3 + j] + R[6 + i] * v_cov_c[6 + j];
  float v_cov[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v_cov[3 * i + j] = T1[3 * i] * R[j] + T1[3 * i + 1] * R[3 + j] + T1[3 * i + 2] * R[6 + j];
  // cov = M M^T -> v_M = (v_cov + v_cov^T) M
  float v_M[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      float s = 0.f;
      for (int k = 0; k < 3; ++k) s += (v_cov[3 * i + k] + v_cov[3 * k + i]) * o.M[3 * k + j];
      v_M[3 * i + j] = s;
    }
  // M = Rq diag(s)
  float v_R[9];
  for (int j = 0; j < 3; ++j) {
    v_scale[j] = o.Rq[j] * v_M[j] + o.Rq[3 + j] * v_M[3 + j] + o.Rq[6 + j] * v_M[6 + j];
    for (int i = 0; i < 3; ++i) v_R[3 * i + j] = v_M[3 * i + j] * scale[j];
  }
  quat_to_rotmat_vjp(quat, v_R, v_quat);
}

// ---- tile rectangle ---------------------------------------------------------------------------
CE_HD void tile_rect(float u, float v, int rx, int ry, int tile_size, int tiles_x, int tiles_y, int* rect /*x0,y0,x1,y1*/) {
  float ts = (float)tile_size;
  int x0 = (int)floorf((u - (float)rx) / ts), x1 = (int)ceilf((u + (float)rx) / ts);
  int y0 = (int)floorf((v - (float)ry) / ts), y1 = (int)ceilf((v + (float)ry) / ts);
  rect[0] = x0 < 0 ? 0 : (x0 > tiles_x ? tiles_x : x0);
  rect[1] = y0 < 0 ? 0 : (y0 > tiles_y ? tiles_y : y0);
  rect[2] = x1 < 0 ? 0 : (x1 > tiles_x ? tiles_x : x1);
  rect[3] = y1 < 0 ? 0 : (y1 > tiles_y ? tiles_y : y1);
}

// ---- exp ----------------------------------------------------------------------------------------
// Host SIMD: 8 floats / ints as GCC vector types for the CPU driver's row loops (one AVX register where the
// CPU driver's AVX2 clone runs, two SSE registers elsewhere), and the three conversions exp_nonpos needs for a
// scalar and a vector argument. CE_INL: always inlined on the host, so the AVX2 clone compiles its own copy.
#if defined(__CUDACC__)
#define CE_INL CE_HD
#else
#define CE_INL inline __attribute__((always_inline))
typedef float vf __attribute__((vector_size(32)));
typedef int vi __attribute__((vector_size(32)));
CE_INL vi to_int(vf x) { return __builtin_convertvector(x, vi); }
CE_INL vf to_float(vi n) { return __builtin_convertvector(n, vf); }
CE_INL vf bits_to_float(vi b) { return (vf)b; }
#endif
CE_INL int to_int(float x) { return (int)x; }
CE_INL float to_float(int n) { return (float)n; }
CE_INL float bits_to_float(int b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

// exp(x) for x <= 0, x a float or a vf (F) with the matching int type I; larger x is taken as 0, smaller as -60
// (exp(-60) ~ 1e-26: the compositing skips alpha < 1/255 long before, and nothing goes subnormal). Cody-Waite
// reduction x = n ln2 + r, |r| <= ln2 / 2, Cephes' degree-6 polynomial for e^r (S. L. Moshier, Cephes Math
// Library, expf.c; relative error <= 1e-7 here), 2^n built from exponent bits. Only +, *, compares, a float->int
// truncation and a bit cast: the scalar form (eval_alpha, the backward pass) and the vf form (the CPU forward
// row loop) round identically lane by lane (IEEE, no contraction: -ffp-contract=off), so both passes see the
// same alphas; libm's expf would be a scalar call per pixel.
template <class F, class I>
CE_INL F exp_nonpos(F x) {
  x = x < -60.f ? -60.f : x;
  x = x > 0.f ? 0.f : x;
  const I n = to_int(x * 1.44269504088896341f - 0.5f);  // round(x / ln2): truncation goes toward 0 and x <= 0
  const F fn = to_float(n);
  F r = x - fn * 0.693359375f;  // ln2 split in two (Cephes C1, C2) so that fn * C1 is exact
  r = r - fn * -2.12194440e-4f;
  F y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.f;
  return y * bits_to_float((n + 127) << 23);  // 2^n, n in [-87, 0]
}

CE_HD float ce_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return exp_nonpos<float, int>(x);
#endif
}

// ---- compositing step -------------------------------------------------------------------------
// One (pixel, Gaussian) evaluation shared by forward and backward so both make identical decisions.
// Returns false when the contribution is skipped (sigma < 0 or alpha < 1/255).
struct AlphaEval {
  float dx, dy, G, alpha;
  bool clamped;
};

CE_HD bool eval_alpha(float mx, float my, float q0, float q1, float q2, float opacity, float px, float py,
                      AlphaEval& e) {
  e.dx = mx - px;
  e.dy = my - py;
  float sigma = 0.5f * (q0 * e.dx * e.dx + q2 * e.dy * e.dy) + q1 * e.dx * e.dy;
  if (sigma < 0.f) return false;
  e.G = ce_exp(-sigma);
  float a = opacity * e.G;
  e.clamped = a > kAlphaMax;
  e.alpha = e.clamped ? kAlphaMax : a;
  return e.alpha >= kAlphaMin;
}

// Gradient of the loss w.r.t. one Gaussian's 2D parameters from one pixel, given dL/dalpha.
// Accumulates into v (layout: mean x, mean y, Q00, Q01, Q11, opacity).
CE_HD void alpha_bwd(const AlphaEval& e, float q0, float q1, float q2, float opacity, float v_alpha, float* v) {
  if (e.clamped) return;  // alpha = ALPHA_MAX does not depend on the parameters
  float v_o = e.G * v_alpha;
  float v_sigma = -opacity * v_o;
  v[0] += v_sigma * (q0 * e.dx + q1 * e.dy);
  v[1] += v_sigma * (q1 * e.dx + q2 * e.dy);
  v[2] += 0.5f * v_sigma * e.dx * e.dx;
  v[3] += v_sigma * e.dx * e.dy;
  v[4] += 0.5f * v_sigma * e.dy * e.dy;
  v[5] += v_o;
}

// ---- spherical harmonics ----------------------------------------------------------------------
constexpr float kShC0 = 0.28209479177387814f;
constexpr float kShC1 = 0.4886025119029199f;

CE_HD int sh_num_bases(int degree) { return (degree + 1) * (degree + 1); }

// Basis values (and optionally d basis / d n, layout [k][3]) at the unit direction n.
CE_HD void sh_basis(int degree, float x, float y, float z, float* B, float* dB /*nullable*/) {
  // local arrays (not namespace-scope constexpr arrays) so device code can read them
  const float kShC2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f, -1.0925484305920792f,
                          0.5462742152960396f};
  const float kShC3[7] = {-0.5900435899266435f, 2.890611442640554f, -0.4570457994644658f, 0.3731763325901154f,
                          -0.4570457994644658f, 1.445305721320277f, -0.5900435899266435f};
  B[0] = kShC0;
  if (dB) { dB[0] = dB[1] = dB[2] = 0.f; }
  if (degree < 1) return;
  B[1] = -kShC1 * y; B[2] = kShC1 * z; B[3] = -kShC1 * x;
  if (dB) {
    float* d = dB + 3;
    d[0] = 0.f; d[1] = -kShC1; d[2] = 0.f;
    d[3] = 0.f; d[4] = 0.f; d[5] = kShC1;
    d[6] = -kShC1; d[7] = 0.f; d[8] = 0.f;
  }
  if (degree < 2) return;
  float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  B[4] = kShC2[0] * xy;
  B[5] = kShC2[1] * yz;
  B[6] = kShC2[2] * (2.f * zz - xx - yy);
  B[7] = kShC2[3] * xz;
  B[8] = kShC2[4] * (xx - yy);
  if (dB) {
    float* d = dB + 12;
    d[0] = kShC2[0] * y; d[1] = kShC2[0] * x; d[2] = 0.f;
    d[3] = 0.f; d[4] = kShC2[1] * z; d[5] = kShC2[1] * y;
    d[6] = -2.f * kShC2[2] * x; d[7] = -2.f * kShC2[2] * y; d[8] = 4.f * kShC2[2] * z;
    d[9] = kShC2[3] * z; d[10] = 0.f; d[11] = kShC2[3] * x;
    d[12] = 2.f * kShC2[4] * x; d[13] = -2.f * kShC2[4] * y; d[14] = 0.f;
  }
  if (degree < 3) return;
  B[9] = kShC3[0] * y * (3.f * xx - yy);
  B[10] = kShC3[1] * xy * z;
  B[11] = kShC3[2] * y * (4.f * zz - xx - yy);
  B[12] = kShC3[3] * z * (2.f * zz - 3.f * xx - 3.f * yy);
  B[13] = kShC3[4] * x * (4.f * zz - xx - yy);
  B[14] = kShC3[5] * z * (xx - yy);
  B[15] = kShC3[6] * x * (xx - 3.f * yy);
  if (dB) {
    float* d = dB + 27;
    d[0] = 6.f * kShC3[0] * xy; d[1] = kShC3[0] * (3.f * xx - 3.f * yy); d[2] = 0.f;
    d[3] = kShC3[1] * yz; d[4] = kShC3[1] * xz; d[5] = kShC3[1] * xy;
    d[6] = -2.f * kShC3[2] * xy; d[7] = kShC3[2] * (4.f * zz - xx - 3.f * yy); d[8] = 8.f * kShC3[2] * yz;
    d[9] = -6.f * kShC3[3] * xz; d[10] = -6.f * kShC3[3] * yz; d[11] = kShC3[3] * (6.f * zz - 3.f * xx - 3.f * yy);
    d[12] = kShC3[4] * (4.f * zz - 3.f * xx - yy); d[13] = -2.f * kShC3[4] * xy; d[14] = 8.f * kShC3[4] * xz;
    d[15] = 2.f * kShC3[5] * xz; d[16] = -2.f * kShC3[5] * yz; d[17] = kShC3[5] * (xx - yy);
    d[18] = kShC3[6] * (3.f * xx - 3.f * yy); d[19] = -6.f * kShC3[6] * xy; d[20] = 0.f;
  }
}

// colors[c] = sum_k B_k coeffs[k * C + c] for one point; coeffs row stride C, K rows (K >= bases).
CE_HD void sh_fwd(int degree, const float* dir, const float* coeffs, int C, float* out) {
  float d2 = dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2];
  float inv = 1.f / sqrtf(fmaxf(d2, kDirNorm2Min));
  float B[16];
  sh_basis(degree, dir[0] * inv, dir[1] * inv, dir[2] * inv, B, nullptr);
  int nb = sh_num_bases(degree);
  for (int c = 0; c < C; ++c) {
    float s = 0.f;
    for (int k = 0; k < nb; ++k) s += B[k] * coeffs[k * C + c];
    out[c] = s;
  }
}

// v_coeffs rows beyond the used bases are left untouched (caller zero-initialises).
CE_HD void sh_bwd(int degree, const float* dir, const float* coeffs, int C, const float* v_out, float* v_coeffs,
                  float* v_dir /*nullable*/) {
  float d2 = dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2];
  bool floored = !(d2 > kDirNorm2Min);
  float inv = 1.f / sqrtf(fmaxf(d2, kDirNorm2Min));
  float n[3] = {dir[0] * inv, dir[1] * inv, dir[2] * inv};
  float B[16], dB[48];
  sh_basis(degree, n[0], n[1], n[2], B, v_dir ? dB : nullptr);
  int nb = sh_num_bases(degree);
  float v_n[3] = {0.f, 0.f, 0.f};
  for (int k = 0; k < nb; ++k) {
    float g = 0.f;
    for (int c = 0; c < C; ++c) {
      v_coeffs[k * C + c] = B[k] * v_out[c];
      g += coeffs[k * C + c] * v_out[c];
    }
    if (v_dir) {
      v_n[0] += g * dB[3 * k];
      v_n[1] += g * dB[3 * k + 1];
      v_n[2] += g * dB[3 * k + 2];
    }
  }
  if (v_dir) {
    float dot = floored ? 0.f : (v_n[0] * n[0] + v_n[1] * n[1] + v_n[2] * n[2]);
    for (int i = 0; i < 3; ++i) v_dir[i] = inv * (v_n[i] - dot * n[i]);
  }
}

}  // namespace ce
