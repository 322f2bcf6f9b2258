// drcl_fast.training._step_cpp: a CPU training step (SPL's or RSC's) in one call, the GIL released.
//
// The same ATen ops, in the same order, as the Python closed-form step
// (drcl_fast/training/encoder_step.py with the tails of rsc.py and spl.py, and the restructured
// loss of drcl_fast/ops/restructured.py), so the same bits: tests/training/test_step_cpp.py holds
// them equal. What it saves is the Python between the ops, and, with units training at
// once in threads, the waits for the GIL around each of them. The cases the restructured
// loss sends elsewhere (a clamp that may bind, sparse label products, the logits route to
// P) return an empty list: the caller then runs the Python step, which handles them.
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using torch::indexing::Slice;

// The constants of drcl_fast/ops/restructured.py, passed in from there (one source of truth).
struct LossLimits {
  int64_t panel_rows, min_split_rows, sum_chunk, sparse_labels_above, logits_route_min_classes;
  double logits_route_max_condition, cos_eps;
  int64_t dense_above;   // drcl_fast/ops/recast.py
};

// Swallows warnings: torch's one-time note that sparse CSR support is in beta, which the Python
// step silences too (recast.scaled_residual).
struct QuietWarnings : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

Tensor sum_of_squares(const Tensor& x, int64_t sum_chunk) {
  const int64_t rows = std::max<int64_t>(1, sum_chunk / std::max<int64_t>(1, x.size(1)));
  Tensor total;
  for (int64_t i = 0; i < x.size(0); i += rows) {
    Tensor part = x.slice(0, i, std::min(i + rows, x.size(0))).square().sum();
    total = total.defined() ? total + part : part;
  }
  return total.defined() ? total : at::zeros({}, x.options());
}

void panel_gram(Tensor out, const Tensor& a, const Tensor& f_j, const Tensor& f_i, int64_t min_split_rows) {
  const int64_t half = f_i.size(0) / 2;
  if (half < min_split_rows) {
    at::addmm_out(out, a, f_j, f_i.t(), 1.0, -1.0);
    return;
  }
  Tensor lower = out.slice(0, half);
  at::addmm_out(lower, a.slice(0, half), f_j.slice(0, half), f_i.t(), 1.0, -1.0);
  Tensor top = at::empty({half, half}, out.options());
  Tensor f_top = f_i.slice(0, 0, half);
  panel_gram(top, a.slice(0, 0, half).slice(1, 0, half), f_top, f_top, min_split_rows);
  out.slice(0, 0, half).slice(1, 0, half).copy_(top);
  out.slice(0, 0, half).slice(1, half).copy_(out.slice(0, half, f_i.size(0)).slice(1, 0, half).t());
}

// restructured.gce_value_and_grad: {the mean GCE, its gradient for the logits}.
std::pair<Tensor, Tensor> gce_value_and_grad(const Tensor& logits, const Tensor& targets, double q) {
  Tensor probs = at::softmax(logits, 1);
  Tensor s = (targets * probs).sum(1);
  Tensor row_loss = q == 0.0 ? at::neg(at::log(s)) : at::rsub(s.pow(q), 1.0) / q;
  Tensor ds = at::neg(s.pow(q - 1.0)) / logits.size(0);
  Tensor d_logits = probs.mul_(targets - s.unsqueeze(1)).mul_(ds.unsqueeze(1));
  return {row_loss.mean(), d_logits};
}

// restructured.RestructuredEngine.forward(need_grad=True) for dense labels and P by the product,
// then kernels/fused_loss.combine with `weights`: {terms, dJ/dfeatures, dJ/dlogits}, or {}.
std::vector<Tensor> loss_gradients(const Tensor& features, const Tensor& targets, const Tensor& logits,
                                   const Tensor& pinv, const Tensor& gram, double condition, double q,
                                   const std::vector<double>& weights, const LossLimits& lim) {
  const int64_t b = features.size(0), c = targets.size(1);
  // recast.sparse_rows: the most nonzeros of a row
  const int64_t nonzeros = targets.numel() ? (targets != 0).sum(1).max().item<int64_t>() : 0;
  const bool sparse = !(nonzeros == 0 || nonzeros * lim.dense_above > c);
  if (sparse && nonzeros * lim.sparse_labels_above <= c) return {};   // Labels.of keeps them sparse
  if (!(c < lim.logits_route_min_classes || condition > lim.logits_route_max_condition)) return {};
  Tensor classes, label_weights;
  if (sparse) std::tie(label_weights, classes) = targets.topk(nonzeros, 1);

  Tensor yk = at::mm(targets.to(gram.scalar_type()), gram.t());
  Tensor nf = at::linalg_vector_norm(features, 2, {1}, false);
  Tensor p = at::mm(features, pinv.t());
  Tensor nr = (yk * targets).sum(1).clamp_min(0.0).sqrt().to(features.scalar_type());   // fused_loss.prepare
  Tensor yk_f = yk.to(features.scalar_type());
  // restructured.clamp_may_bind
  Tensor smallest_recast = at::where(nr > 0, nr, std::numeric_limits<double>::infinity()).min();
  if ((at::minimum(nf.min(), smallest_recast).pow(2) < lim.cos_eps).item<bool>()) return {};

  Tensor inv_nf = nf.reciprocal().unsqueeze(1);
  Tensor inv_nr = at::where(nr > 0, nr.reciprocal(), 0.0).unsqueeze(1);
  Tensor stack = at::empty({b + pinv.size(0), features.size(1)}, features.options());
  Tensor f_hat = stack.slice(0, 0, b);
  at::mul_out(f_hat, features, inv_nf);
  stack.slice(0, b).copy_(pinv);
  Tensor unit_labels = targets * inv_nr;

  // restructured.cross_terms
  Tensor wide_labels = unit_labels.to(at::kDouble), wide_p = (p * inv_nf).to(at::kDouble);
  Tensor pg = at::mm(wide_p, at::mm(wide_labels.t(), wide_labels));
  Tensor n = at::mm(wide_labels.t(), wide_p).t();
  const double bb = static_cast<double>(b) * static_cast<double>(b);
  Tensor j_cross = ((wide_p * pg).sum() - (n * n.t()).sum()).mul(8.0 / bb).to(features.scalar_type());
  Tensor d_p = pg.sub_(at::mm(wide_labels, n)).mul_(16.0 / bb).to(features.scalar_type());

  // restructured.within_terms
  const double scale = 16.0 / bb;
  Tensor yk_hat = yk_f * inv_nr;
  Tensor grad = at::empty(f_hat.sizes(), f_hat.options());
  Tensor sums = at::zeros({}, stack.options());
  for (int64_t i0 = 0; i0 < b; i0 += lim.panel_rows) {
    const int64_t i1 = std::min(i0 + lim.panel_rows, b);
    Tensor f_i = f_hat.slice(0, i0, i1), f_j = f_hat.slice(0, i0);
    Tensor panel = at::empty({stack.size(0) - i0, i1 - i0}, stack.options());
    Tensor w1 = panel.slice(0, 0, b - i0);
    panel_gram(w1, at::mm(unit_labels.slice(0, i0), yk_hat.slice(0, i0, i1).t()), f_j, f_i, lim.min_split_rows);
    sums += sum_of_squares(w1, lim.sum_chunk) + sum_of_squares(w1.slice(0, i1 - i0), lim.sum_chunk);
    Tensor below = panel.slice(0, b - i0);
    at::mul_out(below, d_p.slice(0, i0, i1).t(), -1.0 / scale);
    const double first = i0 == 0 ? 0.0 : 1.0;
    grad.slice(0, i0, i1).addmm_(panel.t(), stack.slice(0, i0), first, -scale);
    grad.slice(0, i1).addmm_(w1.slice(0, i1 - i0), f_i, first, -scale);
  }
  Tensor j_d = sums * (scale / 4.0) + j_cross;

  // restructured.finish_rows and recast.scaled_residual
  const double mse_scale = -2.0 / static_cast<double>(features.numel());
  Tensor row_dots = at::bmm(f_hat.unsqueeze(1), grad.unsqueeze(2)).view({-1, 1});
  grad.addcmul_(f_hat, row_dots, -1.0).mul_(inv_nf);
  Tensor labels = targets;
  if (sparse) {
    Tensor crow = at::arange(0, b * nonzeros + 1, nonzeros, classes.options());
    QuietWarnings quiet;
    c10::WarningUtils::WarningHandlerGuard guard(&quiet);
    labels = at::sparse_csr_tensor(crow, classes.reshape(-1), label_weights.reshape(-1), targets.sizes(),
                                   label_weights.options().layout(at::kSparseCsr));
  }
  Tensor d_mse = at::addmm_out(f_hat, features, labels, pinv, -mse_scale, mse_scale);
  Tensor j_mse = sum_of_squares(d_mse, lim.sum_chunk) / (mse_scale * mse_scale * static_cast<double>(features.numel()));

  auto [j_l, d_logits] = gce_value_and_grad(logits, targets, q);
  Tensor terms = at::stack({j_l, j_d, j_mse});
  // kernels/fused_loss.combine, the weights rounded to the terms' dtype as torch.tensor(weights, dtype) rounds them
  Tensor w = at::tensor(weights, terms.options().dtype(at::kDouble)).to(terms.scalar_type());
  Tensor d_features = (grad * w[1]).addcmul_(d_mse, w[2]);
  return {terms, d_features, d_logits * w[0]};
}

// The layers as the products take them: in a bf16 run (operands of another dtype than the float32
// master weights), refreshed from the weights, and x cast alike (encoder_step.EncoderStep._refresh_operands).
Tensor product_input(const Tensor& x, const std::vector<Tensor>& layers, const std::vector<Tensor>& operands) {
  if (operands[0].scalar_type() == layers[0].scalar_type()) return x;
  for (size_t i = 0; i < layers.size(); ++i) operands[i].copy_(layers[i]);
  return x.to(operands[0].scalar_type());
}

// encoder_step.EncoderStep._forward: h1, h2 and z into the caller's buffers; {|z|, z, z / |z|}, z in the
// master weights' dtype.
std::tuple<Tensor, Tensor, Tensor> encoder_forward(const Tensor& x, const std::vector<Tensor>& layers,
                                                   const std::vector<Tensor>& operands,
                                                   const std::vector<Tensor>& buffers) {
  Tensor h1 = buffers[0], h2 = buffers[1], z_buffer = buffers[3];
  at::addmm_out(h1, operands[1], x, operands[0].t()).relu_();
  at::addmm_out(h2, operands[3], h1, operands[2].t()).relu_();
  Tensor z = at::mm_out(z_buffer, h2, operands[4].t()).to(layers[0].scalar_type());
  Tensor norms = at::linalg_vector_norm(z, 2, {1}, true);
  return {norms, z, z / norms};
}

// encoder_step.EncoderStep._backward, the gradients written into `grads` (no accumulation).
void encoder_backward(const Tensor& x, const std::vector<Tensor>& layers, const std::vector<Tensor>& operands,
                      const std::vector<Tensor>& buffers, std::vector<Tensor> grads, const Tensor& norms,
                      Tensor z, const Tensor& unit, const Tensor& d_unit) {
  Tensor h1 = buffers[0], h2 = buffers[1], d_h = buffers[2];
  const bool low = operands[0].scalar_type() != layers[0].scalar_type();
  const auto low_type = operands[0].scalar_type();
  // Each weight's gradient: straight into its buffer in float32 and float64; a bf16 product cast into it.
  auto mm_grad = [&](Tensor grad, const Tensor& a, const Tensor& b) {
    if (low) grad.copy_(at::mm(a, b)); else at::mm_out(grad, a, b);
  };
  auto sum_grad = [&](Tensor grad, const Tensor& a) {
    if (low) grad.copy_(at::sum(a, {0})); else at::sum_out(grad, a, {0});
  };
  Tensor row_dots = at::bmm(unit.unsqueeze(1), d_unit.unsqueeze(2)).view({-1, 1});
  Tensor d_z = at::addcmul_out(z, d_unit, unit, row_dots, -1.0).div_(norms).to(low_type);
  at::mm_out(d_h, d_z, operands[4]);
  mm_grad(grads[4], d_z.t(), h2);
  Tensor d_a = at::threshold_backward_out(h2, d_h, h2, 0);
  at::mm_out(d_h, d_a, operands[2]);
  mm_grad(grads[2], d_a.t(), h1);
  sum_grad(grads[3], d_a);
  d_a = at::threshold_backward_out(h1, d_h, h1, 0);
  mm_grad(grads[0], d_a.t(), x);
  sum_grad(grads[1], d_a);
}

// rsc.batch_gradients with the loss's gradients by hand: {loss, terms}, or {} where the Python step must run.
std::vector<Tensor> rsc_step(const Tensor& x, const Tensor& targets, const Tensor& permutation, double gamma,
                             const Tensor& prior, const Tensor& pinv, const Tensor& gram, double condition, double q,
                             double eta, double alpha, double beta, const std::vector<Tensor>& layers,
                             const std::vector<Tensor>& operands, const std::vector<Tensor>& buffers,
                             const std::vector<Tensor>& grads, const std::vector<int64_t>& ints,
                             const std::vector<double>& doubles) {
  pybind11::gil_scoped_release no_gil;
  at::NoGradGuard no_grad;
  const LossLimits lim{ints[0], ints[1], ints[2], ints[3], ints[4], doubles[0], doubles[1], ints[5]};
  const Tensor input = product_input(x, layers, operands);
  auto [norms, z, unit] = encoder_forward(input, layers, operands, buffers);
  Tensor mixed_f = unit.mul(gamma) + at::index_select(unit, 0, permutation).mul(1.0 - gamma);
  Tensor mixed_t = targets.mul(gamma) + at::index_select(targets, 0, permutation).mul(1.0 - gamma);
  auto found = loss_gradients(mixed_f, mixed_t, at::mm(mixed_f, prior), pinv, gram, condition, q, {eta, alpha, beta},
                              lim);
  if (found.empty()) return {};
  Tensor terms = found[0], d_mixed = found[1];
  d_mixed.addmm_(found[2], prior.t());
  Tensor d_unit = at::mul(d_mixed, gamma).index_add_(0, permutation, d_mixed, 1.0 - gamma);
  Tensor loss = terms[0].mul(eta) + terms[1].mul(alpha) + terms[2].mul(beta);
  encoder_backward(input, layers, operands, buffers, grads, norms, z, unit, d_unit);
  return {loss, terms};
}

// spl.batch_gradients by hand: {loss}, the prior's gradient into prior_grad.
std::vector<Tensor> spl_step(const Tensor& x, const Tensor& targets, const Tensor& prior, double q,
                             const std::vector<Tensor>& layers, const std::vector<Tensor>& operands,
                             const std::vector<Tensor>& buffers, const std::vector<Tensor>& grads,
                             Tensor prior_grad) {
  pybind11::gil_scoped_release no_gil;
  at::NoGradGuard no_grad;
  const Tensor input = product_input(x, layers, operands);
  auto [norms, z, unit] = encoder_forward(input, layers, operands, buffers);
  auto [loss, d_logits] = gce_value_and_grad(at::mm(unit, prior), targets, q);
  at::mm_out(prior_grad, unit.t(), d_logits);
  encoder_backward(input, layers, operands, buffers, grads, norms, z, unit, at::mm(d_logits, prior.t()));
  return {loss};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "drcl_fast's CPU training steps in one call each (see csrc/README.md)";
  m.def("rsc_step", &rsc_step, "One RSC step's loss, terms and gradients, or [] where the Python step must run");
  m.def("spl_step", &spl_step, "One SPL step's loss and gradients");
}
