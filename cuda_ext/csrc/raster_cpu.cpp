// C++ CPU driver: projection, binning, rasterization (forward + backward) and SH on the CPU.
// All arithmetic comes from core.h; this file only organises the loops.
//
// Parallelism (at::parallel_for): projection and SH over Gaussians; rasterization over (image, tile).
// Inside a tile the loop is Gaussian-major: each Gaussian of the sorted list visits only the pixels
// of its opacity-aware box inside the tile, so per-Gaussian gradients of one tile are plain register
// sums (the CPU analogue of gsplat's warp reduction). Each tile writes its per-Gaussian sums into a
// per-intersection slot; a second pass parallel over Gaussians adds the slots in a fixed order.
// Result: no atomics, and gradients bitwise independent of the thread count (raster.md 4.5).
#include "raster_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core.h"

namespace ce_cpu {

using at::Tensor;

namespace {

// Per-Gaussian data packed for the compositing loop (one cache line holds two).
struct Packed {
  float u, v, q0, q1, q2, o;
  float bx, by;  // opacity-aware half extent in pixels (alpha < 1/255 outside it)
  float s2q0;    // 2 q0 s with s = ln(255 o) + margin: row spans (see row_span)
  float detq;    // q0 q2 - q1^2, computed in double (it cancels badly in float for thin Gaussians)
};

constexpr int kGrain = 256;

Packed pack(const float* m2, const float* cn, float o) {
  Packed p;
  p.u = m2[0];
  p.v = m2[1];
  p.q0 = cn[0];
  p.q1 = cn[1];
  p.q2 = cn[2];
  p.o = o;
  // alpha >= 1/255 needs sigma <= ln(255 o); the ellipse sigma <= s spans sqrt(2 s cov_xx) in x.
  // Margins (relative 0.2% + absolute 0.01 on s) keep pixels at alpha ~ 1/255 inside the loop
  // bounds; the bounds only skip work, the per-pixel test in eval_alpha decides.
  float s = std::log(255.f * o);
  double det = (double)cn[0] * cn[2] - (double)cn[1] * cn[1];
  if (!(s >= 0.f) || !(det > 0.0) || !(cn[0] > 0.f)) {
    p.bx = p.by = -1.f;  // never contributes
    p.s2q0 = p.detq = 0.f;
  } else {
    s = s * 1.002f + 0.01f;
    float cxx = (float)(cn[2] / det), cyy = (float)(cn[0] / det);
    p.bx = std::sqrt(2.f * s * cxx) + 0.05f;
    p.by = std::sqrt(2.f * s * cyy) + 0.05f;
    p.s2q0 = 2.f * cn[0] * s;
    p.detq = (float)det;
  }
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
std::vector<Tensor> project_fwd(const Tensor& means, const Tensor& quats, const Tensor& scales,
                                const Tensor& viewmats, const Tensor& Ks, int64_t width, int64_t height, double near,
                                double far, double eps2d) {
  const int64_t B = viewmats.size(0), N = means.size(0);
  auto f32 = means.options();
  Tensor means2d = at::zeros({B, N, 2}, f32);
  Tensor conics = at::zeros({B, N, 3}, f32);
  Tensor depths = at::zeros({B, N}, f32);
  Tensor radii = at::zeros({B, N, 2}, f32.dtype(at::kInt));
  const float *pm = means.data_ptr<float>(), *pq = quats.data_ptr<float>(), *ps = scales.data_ptr<float>();
  const float *pv = viewmats.data_ptr<float>(), *pk = Ks.data_ptr<float>();
  float *o_m = means2d.data_ptr<float>(), *o_c = conics.data_ptr<float>(), *o_d = depths.data_ptr<float>();
  int* o_r = radii.data_ptr<int>();
  for (int64_t b = 0; b < B; ++b) {
    ce::Camera cam = ce::make_camera(pv + 16 * b, pk + 9 * b, (int)width, (int)height);
    at::parallel_for(0, N, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t n = lo; n < hi; ++n) {
        ce::ProjOut o;
        ce::project_fwd(pm + 3 * n, pq + 4 * n, ps + 3 * n, cam, (float)near, (float)far, (float)eps2d, o);
        int64_t i = b * N + n;
        o_d[i] = o.depth;
        if (!o.valid) continue;
        o_m[2 * i] = o.mean2d[0];
        o_m[2 * i + 1] = o.mean2d[1];
        for (int k = 0; k < 3; ++k) o_c[3 * i + k] = o.conic[k];
        o_r[2 * i] = o.radius[0];
        o_r[2 * i + 1] = o.radius[1];
      }
    });
  }
  return {means2d, conics, depths, radii};
}

std::vector<Tensor> project_bwd(const Tensor& means, const Tensor& quats, const Tensor& scales,
                                const Tensor& viewmats, const Tensor& Ks, int64_t width, int64_t height, double near,
                                double far, double eps2d, const Tensor& radii, const Tensor& v_means2d,
                                const Tensor& v_conics, const Tensor& v_depths) {
  const int64_t B = viewmats.size(0), N = means.size(0);
  Tensor v_means = at::zeros_like(means), v_quats = at::zeros_like(quats), v_scales = at::zeros_like(scales);
  const float *pm = means.data_ptr<float>(), *pq = quats.data_ptr<float>(), *ps = scales.data_ptr<float>();
  const float *pv = viewmats.data_ptr<float>(), *pk = Ks.data_ptr<float>();
  const int* pr = radii.data_ptr<int>();
  const float *gm = v_means2d.data_ptr<float>(), *gc = v_conics.data_ptr<float>(), *gd = v_depths.data_ptr<float>();
  float *om = v_means.data_ptr<float>(), *oq = v_quats.data_ptr<float>(), *os = v_scales.data_ptr<float>();
  std::vector<ce::Camera> cams(B);
  for (int64_t b = 0; b < B; ++b) cams[b] = ce::make_camera(pv + 16 * b, pk + 9 * b, (int)width, (int)height);
  // parallel over Gaussians, cameras summed inside: deterministic, no atomics
  at::parallel_for(0, N, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      for (int64_t b = 0; b < B; ++b) {
        int64_t i = b * N + n;
        if (pr[2 * i] <= 0 || pr[2 * i + 1] <= 0) continue;  // culled: zero gradient (depth included)
        ce::ProjOut o;
        ce::project_fwd(pm + 3 * n, pq + 4 * n, ps + 3 * n, cams[b], (float)near, (float)far, (float)eps2d, o);
        if (!o.valid) continue;
        float vm[3], vq[4], vs[3];
        ce::project_bwd(pq + 4 * n, ps + 3 * n, cams[b], o, gm + 2 * i, gc + 3 * i, gd[i], vm, vq, vs);
        for (int k = 0; k < 3; ++k) om[3 * n + k] += vm[k];
        for (int k = 0; k < 4; ++k) oq[4 * n + k] += vq[k];
        for (int k = 0; k < 3; ++k) os[3 * n + k] += vs[k];
      }
    }
  });
  return {v_means, v_quats, v_scales};
}

// ---------------------------------------------------------------------------------------------
// Pixels whose centres lie in a Gaussian's opacity-aware box, [j0, j1] x [i0, i1] inclusive, clipped to the
// W x H image (false: none). The one definition of that box: binning and the per-tile test both use it.
static inline bool pixel_box(const Packed& p, int W, int H, int& j0, int& j1, int& i0, int& i1) {
  if (!(p.bx >= 0.f)) return false;
  // pixel centre j + 0.5 within [u - bx, u + bx]; clamped before the int conversion (far off-screen boxes)
  auto lo = [](float x, int n) { return (int)std::ceil(std::min(std::max(x, -1.f), (float)n)); };
  auto hi = [](float x, int n) { return (int)std::floor(std::min(std::max(x, -1.f), (float)n)); };
  j0 = std::max(0, lo(p.u - p.bx - 0.5f, W));
  j1 = std::min(W - 1, hi(p.u + p.bx - 0.5f, W));
  i0 = std::max(0, lo(p.v - p.by - 0.5f, H));
  i1 = std::min(H - 1, hi(p.v + p.by - 0.5f, H));
  return j0 <= j1 && i0 <= i1;
}

// Binning: per image, visible Gaussians sorted once by (depth, index), then scattered tile by tile
// in that order, so every tile list comes out sorted with no per-tile sort (raster.md 2, option b).
// A Gaussian goes to the tiles its opacity-aware box (pixel_box) touches, not those of its 3-sigma radius:
// a faint Gaussian's alpha reaches 1/255 well inside 3 sigma, and at the head crop's native size the radius
// boxes made a sixth of the forward pass box tests that found nothing (the same idea as gsplat's projection
// when it is given the opacities: an opacity-aware bounding box). The pixels composited are the same.
// Returns tile_offsets [B*T+1] int32 and flat_ids [n_isects] int32 (global index b*N+n).
static void bin_gaussians(const Packed* pk, const float* dep, const int* rad, int64_t B, int64_t N, int W, int H,
                          int ts, std::vector<int>& tile_offsets, std::vector<int>& flat_ids) {
  const int tx_n = (W + ts - 1) / ts, ty_n = (H + ts - 1) / ts, T = tx_n * ty_n;
  tile_offsets.assign(B * T + 1, 0);
  std::vector<std::vector<int>> orders(B);
  std::vector<int> rects(B * N * 4);
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      std::vector<int>& order = orders[b];
      for (int64_t n = 0; n < N; ++n) {
        int64_t i = b * N + n;
        if (rad[2 * i] <= 0 || rad[2 * i + 1] <= 0) continue;
        int j0, j1, i0, i1;
        if (!pixel_box(pk[i], W, H, j0, j1, i0, i1)) continue;
        int* r = &rects[4 * i];
        r[0] = j0 / ts;
        r[1] = i0 / ts;
        r[2] = j1 / ts + 1;
        r[3] = i1 / ts + 1;
        order.push_back((int)n);
      }
      const float* d = dep + b * N;
      std::sort(order.begin(), order.end(), [d](int a, int c) { return d[a] < d[c] || (d[a] == d[c] && a < c); });
      int* cnt = tile_offsets.data() + 1 + b * T;
      for (int n : order) {
        const int* r = &rects[4 * (b * N + n)];
        for (int y = r[1]; y < r[3]; ++y)
          for (int x = r[0]; x < r[2]; ++x) cnt[y * tx_n + x]++;
      }
    }
  });
  for (int64_t k = 0; k < B * T; ++k) tile_offsets[k + 1] += tile_offsets[k];
  flat_ids.resize(tile_offsets[B * T]);
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      std::vector<int> cursor(tile_offsets.begin() + b * T, tile_offsets.begin() + (b + 1) * T);
      for (int n : orders[b]) {
        const int* r = &rects[4 * (b * N + n)];
        for (int y = r[1]; y < r[3]; ++y)
          for (int x = r[0]; x < r[2]; ++x) flat_ids[cursor[y * tx_n + x]++] = (int)(b * N + n);
      }
    }
  });
}

// pixel range of a Gaussian's box inside a tile: [j0, j1] x [i0, i1] inclusive, clipped
static inline bool box_in_tile(const Packed& p, int x_lo, int x_hi, int y_lo, int y_hi, int W, int H, int& j0,
                               int& j1, int& i0, int& i1) {
  if (!pixel_box(p, W, H, j0, j1, i0, i1)) return false;
  j0 = std::max(x_lo, j0);
  j1 = std::min(x_hi - 1, j1);
  i0 = std::max(y_lo, i0);
  i1 = std::min(y_hi - 1, i1);
  return j0 <= j1 && i0 <= i1;
}

// Dynamic schedule over n tasks: tile costs vary a lot (face vs background), so threads pull tasks
// from a shared counter instead of taking fixed halves. Results stay deterministic because every task
// writes only its own outputs. `body(task, scratch)` gets a per-thread scratch object.
template <class Scratch, class MakeScratch, class Body>
static void dynamic_for(int64_t n, MakeScratch make_scratch, Body body) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), n);
  at::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      Scratch scratch = make_scratch();
      for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) body(t, scratch);
    }
  });
}

// Pixels of row `py` inside the ellipse sigma <= s: 0.5 q0 dx^2 + q1 dy dx + 0.5 q2 dy^2 <= s with
// dx = u - px, dy = v - py, i.e. dx in (-q1 dy -+ sqrt(2 q0 s - det(Q) dy^2)) / q0. Clipped to [j0, j1].
static inline bool row_span(const Packed& p, float py, int& j0, int& j1) {
  const float dy = p.v - py;
  const float D = p.s2q0 - p.detq * dy * dy;
  if (D < 0.f) return false;
  const float r = std::sqrt(D), c = -p.q1 * dy;
  const float dl = (c - r) / p.q0, dh = (c + r) / p.q0;  // dx range
  // px = j + 0.5 in [u - dh, u - dl], 0.05 px margin
  j0 = std::max(j0, (int)std::ceil(p.u - dh - 0.55f));
  j1 = std::min(j1, (int)std::floor(p.u - dl - 0.45f));
  return j0 <= j1;
}

static std::vector<Packed> pack_all(const float* m2, const float* cn, const float* op, int64_t BN) {
  std::vector<Packed> pk(BN);
  at::parallel_for(0, BN, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) pk[i] = pack(m2 + 2 * i, cn + 3 * i, op[i]);
  });
  return pk;
}

// Per-tile work, templated on the channel count CC (0 = runtime C) so the common RGB / RGB+depth
// cases keep their accumulators in registers.
struct TileGeom {
  int64_t b;
  int x_lo, y_lo, x_hi, y_hi, tw;
};

static inline TileGeom tile_geom(int64_t bt, int T, int tx_n, int ts, int W, int H) {
  TileGeom g;
  g.b = bt / T;
  const int t = (int)(bt % T), tx = t % tx_n, ty = t / tx_n;
  g.x_lo = tx * ts;
  g.y_lo = ty * ts;
  g.x_hi = std::min(W, g.x_lo + ts);
  g.y_hi = std::min(H, g.y_lo + ts);
  g.tw = g.x_hi - g.x_lo;
  return g;
}

// ---- forward row step, 8 pixels at a time ------------------------------------------------------
// One Gaussian composited front to back into pixels x = x0 .. x0 + n - 1 (n a multiple of kLanes) of tile row
// py, for the pixels in [ja, jb] not yet done: ce::eval_alpha's arithmetic in the same order on ce::vf lanes
// (exp by ce::exp_nonpos, as the scalar path), so every alpha is bit-identical to the one the backward pass
// evaluates pixel by pixel. Every lane is computed and the update selected by a mask; lanes outside the span
// or done are left as they were. Returns the lanes' weights alpha * T in w (> 0 exactly where the Gaussian was
// composited, else 0), marks pixels whose transmittance would fall below kTMin as done (dn != 0) and returns
// how many did.
constexpr int kLanes = 8;
using ce::vf;
using ce::vi;
#define CE_INL_CPU static inline __attribute__((always_inline))

CE_INL_CPU vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
CE_INL_CPU vi vload(const int* p) {
  vi v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
CE_INL_CPU void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
CE_INL_CPU void vstore(int* p, vi v) { std::memcpy(p, &v, sizeof v); }

CE_INL_CPU int fwd_row(const Packed& p, float py, int x0, int ja, int jb, int n, float* Tr, int* dn, float* w) {
  const float dy = p.v - py;
  const vf half = {0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f};  // pixel centres of the lanes (exact)
  const vi step = {0, 1, 2, 3, 4, 5, 6, 7};
  vi stops = {};
  for (int t = 0; t < n; t += kLanes) {
    const vi x = (x0 + t) + step;
    const vf dx = p.u - ((float)(x0 + t) + half);
    const vf sigma = 0.5f * (p.q0 * dx * dx + p.q2 * dy * dy) + p.q1 * dx * dy;
    const vf a0 = p.o * ce::exp_nonpos<vf, vi>(-sigma);
    const vf a = a0 > ce::kAlphaMax ? ce::kAlphaMax : a0;
    const vi d = vload(dn + t);
    const vi ok = (x >= ja) & (x <= jb) & (d == 0) & (sigma >= 0.f) & (a >= ce::kAlphaMin);
    const vf T0 = vload(Tr + t);
    const vf tn = T0 * (1.f - a);
    const vi stop = ok & (tn < ce::kTMin);
    const vi use = ok & ~stop;
    vstore(w + t, use ? a * T0 : 0.f);
    vstore(Tr + t, use ? tn : T0);
    vstore(dn + t, d | stop);
    stops -= stop;  // masks are -1 where true
  }
  int sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += stops[l];
  return sum;
}

struct FwdArgs {
  const Packed* pk;
  const float* col;
  const float* bg;
  const int *offs, *ids;
  int C, W, H, ts, T, tx_n;
  float *o_img, *o_a, *o_t;
  int* o_last;
};

// Tile scratch rows have stride row_stride(ts) (ts rounded up to kLanes) so a lane group never runs past its row.
static inline int row_stride(int ts) { return (ts + kLanes - 1) / kLanes * kLanes; }

template <int CC>
CE_INL_CPU void fwd_tile(const FwdArgs& A, int64_t bt, float* Tp, float* Cp, int* lastp, int* done, float* w) {
  const int C = CC > 0 ? CC : A.C;
  const TileGeom tg = tile_geom(bt, A.T, A.tx_n, A.ts, A.W, A.H);
  const int rs = row_stride(A.ts), PS = rs * A.ts;  // Cp is planar: channel ch at Cp + ch * PS
  std::fill(Tp, Tp + PS, 1.f);
  std::fill(Cp, Cp + PS * C, 0.f);
  std::fill(lastp, lastp + PS, 0);
  std::fill(done, done + PS, 0);
  int remaining = tg.tw * (tg.y_hi - tg.y_lo);
  const int start = A.offs[bt], end = A.offs[bt + 1];
  for (int k = start; k < end && remaining > 0; ++k) {
    const int g = A.ids[k];
    const Packed& p = A.pk[g];
    int j0, j1, i0, i1;
    if (!box_in_tile(p, tg.x_lo, tg.x_hi, tg.y_lo, tg.y_hi, A.W, A.H, j0, j1, i0, i1)) continue;
    const float* c = A.col + (int64_t)g * C;
    const vi idx = vi{} + (k - start + 1);
    for (int i = i0; i <= i1; ++i) {
      const float py = (float)i + 0.5f;
      int ja = j0, jb = j1;
      if (!row_span(p, py, ja, jb)) continue;
      // whole lane groups from the one holding ja to the one holding jb (tile-relative)
      const int g0 = (ja - tg.x_lo) / kLanes * kLanes, n = ((jb - tg.x_lo) / kLanes + 1) * kLanes - g0;
      const int base = (i - tg.y_lo) * rs + g0;
      remaining -= fwd_row(p, py, tg.x_lo + g0, ja, jb, n, Tp + base, done + base, w);
      for (int t = 0; t < n; t += kLanes) {
        const vf wt = vload(w + t);
        const vi lt = vload(lastp + base + t);
        vstore(lastp + base + t, wt > 0.f ? idx : lt);
        for (int ch = 0; ch < C; ++ch) {
          float* cp = Cp + ch * PS + base + t;
          vstore(cp, vload(cp) + wt * c[ch]);
        }
      }
    }
  }
  for (int i = tg.y_lo; i < tg.y_hi; ++i)
    for (int j = tg.x_lo; j < tg.x_hi; ++j) {
      const int pi = (i - tg.y_lo) * rs + (j - tg.x_lo);
      const int64_t q = (tg.b * A.H + i) * A.W + j;
      for (int ch = 0; ch < C; ++ch)
        A.o_img[q * C + ch] = Cp[ch * PS + pi] + (A.bg ? Tp[pi] * A.bg[tg.b * C + ch] : 0.f);
      A.o_a[q] = 1.f - Tp[pi];
      A.o_t[q] = Tp[pi];
      A.o_last[q] = lastp[pi];
    }
}

// One forward tile task, compiled twice (GCC function multiversioning, resolved once at load time by the CPU's
// features): an AVX2 clone, where the 8-lane row step is one register wide, and the x86-64 baseline (SSE2, two
// registers). Both run the same IEEE operations without contraction, so their images are bit-identical.
__attribute__((target_clones("avx2", "default"))) static void fwd_task(const FwdArgs& A, int64_t bt, float* Tp,
                                                                      float* Cp, int* lastp, int* done, float* w) {
  switch (A.C) {
    case 1: fwd_tile<1>(A, bt, Tp, Cp, lastp, done, w); break;
    case 2: fwd_tile<2>(A, bt, Tp, Cp, lastp, done, w); break;
    case 3: fwd_tile<3>(A, bt, Tp, Cp, lastp, done, w); break;
    case 4: fwd_tile<4>(A, bt, Tp, Cp, lastp, done, w); break;
    default: fwd_tile<0>(A, bt, Tp, Cp, lastp, done, w);
  }
}

struct BwdArgs {
  const Packed* pk;
  const float* col;
  const float* bg;
  const int *offs, *ids, *plast;
  const float *ptf, *gimg, *ga;
  int C, W, H, ts, T, tx_n;
  float* slots;  // [n_isects, 6 + C]
};

struct BwdScratch {
  std::vector<float> Tp, Sp, Gp, bgdot, vA, Tf, accc;
  std::vector<int> lastp;
};

template <int CC>
static void bwd_tile(const BwdArgs& A, int64_t bt, BwdScratch& sc) {
  const int C = CC > 0 ? CC : A.C;
  const int S = 6 + C;
  const int start = A.offs[bt], end = A.offs[bt + 1];
  if (start == end) return;
  const TileGeom tg = tile_geom(bt, A.T, A.tx_n, A.ts, A.W, A.H);
  float *Tp = sc.Tp.data(), *Sp = sc.Sp.data(), *Gp = sc.Gp.data(), *bgdot = sc.bgdot.data();
  float *vA = sc.vA.data(), *Tf = sc.Tf.data();
  int* lastp = sc.lastp.data();
  int max_last = 0;
  for (int i = tg.y_lo; i < tg.y_hi; ++i)
    for (int j = tg.x_lo; j < tg.x_hi; ++j) {
      const int pi = (i - tg.y_lo) * tg.tw + (j - tg.x_lo);
      const int64_t q = (tg.b * A.H + i) * A.W + j;
      Tp[pi] = Tf[pi] = A.ptf[q];
      lastp[pi] = A.plast[q];
      max_last = std::max(max_last, A.plast[q]);
      vA[pi] = A.ga[q];
      float dot = 0.f;
      for (int ch = 0; ch < C; ++ch) {
        Gp[pi * C + ch] = A.gimg[q * C + ch];
        Sp[pi * C + ch] = 0.f;
        if (A.bg) dot += A.gimg[q * C + ch] * A.bg[tg.b * C + ch];
      }
      // dL/dalpha_i gets (v_alpha T_N - T_N bg . v_img) / (1 - alpha_i) from the background and alpha outputs
      bgdot[pi] = (vA[pi] - dot) * Tf[pi];
    }
  constexpr int kStackC = CC > 0 ? CC : 1;
  float acc_stack[kStackC];
  float* accc = CC > 0 ? acc_stack : sc.accc.data();
  for (int k = start + max_last - 1; k >= start; --k) {
    const int idx = k - start;
    const int g = A.ids[k];
    const Packed& p = A.pk[g];
    int j0, j1, i0, i1;
    if (!box_in_tile(p, tg.x_lo, tg.x_hi, tg.y_lo, tg.y_hi, A.W, A.H, j0, j1, i0, i1)) continue;
    const float* c = A.col + (int64_t)g * C;
    float v[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int ch = 0; ch < C; ++ch) accc[ch] = 0.f;
    bool any = false;
    for (int i = i0; i <= i1; ++i) {
      const float py = (float)i + 0.5f;
      int ja = j0, jb = j1;
      if (!row_span(p, py, ja, jb)) continue;
      int pi = (i - tg.y_lo) * tg.tw + (ja - tg.x_lo);
      for (int j = ja; j <= jb; ++j, ++pi) {
        if (idx >= lastp[pi]) continue;
        ce::AlphaEval e;
        if (!ce::eval_alpha(p.u, p.v, p.q0, p.q1, p.q2, p.o, (float)j + 0.5f, py, e)) continue;
        any = true;
        const float ra = 1.f / (1.f - e.alpha);
        const float Ti = Tp[pi] * ra;
        const float w = e.alpha * Ti;
        float* sp = Sp + pi * C;
        const float* gp = Gp + pi * C;
        float v_alpha_px = bgdot[pi] * ra;
        for (int ch = 0; ch < C; ++ch) {
          accc[ch] += w * gp[ch];
          v_alpha_px += gp[ch] * (Ti * c[ch] - sp[ch] * ra);
          sp[ch] += w * c[ch];
        }
        Tp[pi] = Ti;
        ce::alpha_bwd(e, p.q0, p.q1, p.q2, p.o, v_alpha_px, v);
      }
    }
    if (any) {
      float* dst = A.slots + (int64_t)k * S;
      for (int m = 0; m < 6; ++m) dst[m] = v[m];
      for (int ch = 0; ch < C; ++ch) dst[6 + ch] = accc[ch];
    }
  }
}

std::vector<Tensor> rasterize_fwd(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                  const Tensor& opacities, const Tensor& depths, const Tensor& radii,
                                  const c10::optional<Tensor>& background, int64_t width, int64_t height,
                                  int64_t tile_size) {
  const int64_t B = colors.size(0), N = colors.size(1), C = colors.size(2);
  const int W = (int)width, H = (int)height, ts = (int)tile_size;
  const int tx_n = (W + ts - 1) / ts, ty_n = (H + ts - 1) / ts, T = tx_n * ty_n;
  const float *m2 = means2d.data_ptr<float>(), *cn = conics.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();

  std::vector<Packed> pk = pack_all(m2, cn, op, B * N);
  std::vector<int> offs, ids;
  bin_gaussians(pk.data(), depths.data_ptr<float>(), radii.data_ptr<int>(), B, N, W, H, ts, offs, ids);

  auto f32 = colors.options();
  Tensor image = at::empty({B, H, W, C}, f32);
  Tensor alpha = at::empty({B, H, W, 1}, f32);
  Tensor t_final = at::empty({B, H, W}, f32);
  Tensor last = at::empty({B, H, W}, f32.dtype(at::kInt));

  FwdArgs A{pk.data(), colors.data_ptr<float>(), background.has_value() ? background->data_ptr<float>() : nullptr,
            offs.data(), ids.data(), (int)C, W, H, ts, T, tx_n, image.data_ptr<float>(), alpha.data_ptr<float>(),
            t_final.data_ptr<float>(), last.data_ptr<int>()};
  struct FwdScratch {
    std::vector<float> Tp, Cp, w;
    std::vector<int> lastp, done;
  };
  const int PS = row_stride(ts) * ts;
  auto make_fwd = [&]() {
    return FwdScratch{std::vector<float>(PS), std::vector<float>(PS * C), std::vector<float>(row_stride(ts)),
                      std::vector<int>(PS), std::vector<int>(PS)};
  };
  dynamic_for<FwdScratch>(B * T, make_fwd, [&](int64_t bt, FwdScratch& sc) {
    float *Tp = sc.Tp.data(), *Cp = sc.Cp.data(), *w = sc.w.data();
    int *lastp = sc.lastp.data(), *done = sc.done.data();
    fwd_task(A, bt, Tp, Cp, lastp, done, w);
  });
  auto i32 = f32.dtype(at::kInt);
  Tensor t_offs = at::from_blob(offs.data(), {(int64_t)offs.size()}, i32).clone();
  Tensor t_ids = at::from_blob(ids.data(), {(int64_t)ids.size()}, i32).clone();
  return {image, alpha, t_final, last, t_offs, t_ids};
}

std::vector<Tensor> rasterize_bwd(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                  const Tensor& opacities, const c10::optional<Tensor>& background, int64_t width,
                                  int64_t height, int64_t tile_size, const Tensor& tile_offsets,
                                  const Tensor& flat_ids, const Tensor& t_final, const Tensor& last,
                                  const Tensor& v_image, const Tensor& v_alpha) {
  const int64_t B = colors.size(0), N = colors.size(1), C = colors.size(2);
  const int W = (int)width, H = (int)height, ts = (int)tile_size;
  const int tx_n = (W + ts - 1) / ts, ty_n = (H + ts - 1) / ts, T = tx_n * ty_n;
  const int* ids = flat_ids.data_ptr<int>();
  const int64_t n_isects = flat_ids.size(0);
  const int S = 6 + (int)C;  // slot layout: mean2d x,y, conic 3, opacity, colour C
  std::vector<Packed> pk = pack_all(means2d.data_ptr<float>(), conics.data_ptr<float>(),
                                    opacities.data_ptr<float>(), B * N);
  std::vector<float> slots(n_isects * S, 0.f);

  BwdArgs A{pk.data(), colors.data_ptr<float>(), background.has_value() ? background->data_ptr<float>() : nullptr,
            tile_offsets.data_ptr<int>(), ids, last.data_ptr<int>(), t_final.data_ptr<float>(),
            v_image.data_ptr<float>(), v_alpha.data_ptr<float>(), (int)C, W, H, ts, T, tx_n, slots.data()};
  const int P2 = ts * ts;
  auto make_bwd = [&]() {
    return BwdScratch{std::vector<float>(P2), std::vector<float>(P2 * C), std::vector<float>(P2 * C),
                      std::vector<float>(P2), std::vector<float>(P2), std::vector<float>(P2),
                      std::vector<float>(C), std::vector<int>(P2)};
  };
  dynamic_for<BwdScratch>(B * T, make_bwd, [&](int64_t bt, BwdScratch& sc) {
    switch (C) {
      case 1: bwd_tile<1>(A, bt, sc); break;
      case 2: bwd_tile<2>(A, bt, sc); break;
      case 3: bwd_tile<3>(A, bt, sc); break;
      case 4: bwd_tile<4>(A, bt, sc); break;
      default: bwd_tile<0>(A, bt, sc);
    }
  });

  // deterministic reduction: CSR from Gaussian to its intersection slots, summed in ascending k
  const int64_t BN = B * N;
  std::vector<int> g_off(BN + 1, 0);
  for (int64_t k = 0; k < n_isects; ++k) g_off[ids[k] + 1]++;
  for (int64_t i = 0; i < BN; ++i) g_off[i + 1] += g_off[i];
  std::vector<int> g_slots(n_isects);
  {
    std::vector<int> cur(g_off.begin(), g_off.end() - 1);
    for (int64_t k = 0; k < n_isects; ++k) g_slots[cur[ids[k]]++] = (int)k;
  }
  auto f32 = colors.options();
  Tensor v_means2d = at::zeros({B, N, 2}, f32), v_conics = at::zeros({B, N, 3}, f32);
  Tensor v_colors = at::zeros({B, N, C}, f32), v_op = at::zeros({B, N}, f32);
  float *om = v_means2d.data_ptr<float>(), *oc = v_conics.data_ptr<float>(), *ocol = v_colors.data_ptr<float>();
  float* oo = v_op.data_ptr<float>();
  at::parallel_for(0, BN, 1024, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(S);
    for (int64_t g = lo; g < hi; ++g) {
      if (g_off[g] == g_off[g + 1]) continue;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int s = g_off[g]; s < g_off[g + 1]; ++s) {
        const float* src = &slots[(int64_t)g_slots[s] * S];
        for (int c = 0; c < S; ++c) acc[c] += src[c];
      }
      om[2 * g] = acc[0];
      om[2 * g + 1] = acc[1];
      oc[3 * g] = acc[2];
      oc[3 * g + 1] = acc[3];
      oc[3 * g + 2] = acc[4];
      oo[g] = acc[5];
      for (int c = 0; c < C; ++c) ocol[g * C + c] = acc[6 + c];
    }
  });
  return {v_means2d, v_conics, v_colors, v_op};
}

// ---------------------------------------------------------------------------------------------
Tensor sh_fwd(int64_t degree, const Tensor& dirs, const Tensor& coeffs) {
  const int64_t M = dirs.size(0), K = coeffs.size(1), C = coeffs.size(2);
  Tensor out = at::empty({M, C}, coeffs.options());
  const float *pd = dirs.data_ptr<float>(), *pc = coeffs.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, M, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t m = lo; m < hi; ++m) ce::sh_fwd((int)degree, pd + 3 * m, pc + m * K * C, (int)C, po + m * C);
  });
  return out;
}

std::vector<Tensor> sh_bwd(int64_t degree, const Tensor& dirs, const Tensor& coeffs, const Tensor& v_out,
                           bool compute_v_dirs) {
  const int64_t M = dirs.size(0), K = coeffs.size(1), C = coeffs.size(2);
  Tensor v_coeffs = at::zeros_like(coeffs);
  Tensor v_dirs = compute_v_dirs ? at::zeros_like(dirs) : at::Tensor();
  const float *pd = dirs.data_ptr<float>(), *pc = coeffs.data_ptr<float>(), *pg = v_out.data_ptr<float>();
  float* ovc = v_coeffs.data_ptr<float>();
  float* ovd = compute_v_dirs ? v_dirs.data_ptr<float>() : nullptr;
  at::parallel_for(0, M, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t m = lo; m < hi; ++m)
      ce::sh_bwd((int)degree, pd + 3 * m, pc + m * K * C, (int)C, pg + m * C, ovc + m * K * C,
                 ovd ? ovd + 3 * m : nullptr);
  });
  return {v_coeffs, v_dirs};
}

}  // namespace ce_cpu
