"""Local training of a ReLU chain (linear layers with ReLU between, no norm), client-major: the
loop nest that `client_major.py` compiles with numba, one client's whole round per iteration.

Step-major training (`batched.py`) runs every step for all clients as batched torch ops: about 60
passes per step over [clients, batch, width] tensors that do not fit in a core's L2, so they run at
L3 bandwidth. Here a client's weights, momentum, gradients and activations (about 300 KB for
784-[128,128]-10) stay in L2 for all its steps, the elementwise work of a step is fused into a few
loops, the layers' GEMMs are single BLAS calls on operands already in cache, and the clients are
spread over the cores. Imported only where numba is installed (`client_major.py`).

Semantics are those of `train_stacked` for the same chain: torch.optim.SGD (fresh state), the
mean cross-entropy over a step's real samples, HeteroFL's scaler after every hidden linear layer,
absent classes removed from the softmax, `clip_grad_norm_` over all tensors, and the input layer
optionally in data-span form (`data_span_linear.py`: w = a*w0 + E_w^T X_c, with P = X_c w0^T and
K = X_c X_c^T given).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .local import CLIP_EPS

FASTMATH = {"reassoc", "contract", "nsz"}  # vectorized sums; infinities and NaNs keep their meaning


@numba.njit(parallel=True, cache=True, fastmath=FASTMATH)
def train_relu_chain(theta: np.ndarray, outs: np.ndarray, ins: np.ndarray, w_off: np.ndarray, b_off: np.ndarray,
                     x_all: np.ndarray, y_all: np.ndarray, rows: np.ndarray, pos: np.ndarray, mask: np.ndarray,
                     steps: np.ndarray, label_ok: np.ndarray, span: bool, p: np.ndarray, gram: np.ndarray,
                     e_w: np.ndarray, e_v: np.ndarray, a: np.ndarray, c: np.ndarray, hp: np.ndarray, hp64: np.ndarray,
                     clip: float, scaled: bool, loss_sum: np.ndarray) -> None:
    """Train n clients in place. theta [n, T]: every explicitly trained tensor of a client, flat;
    layer layer has weight [outs[layer], ins[layer]] at w_off[layer] (none for layer 0 in span form) and bias at
    b_off[layer]. x_all [N, in] and y_all [N]: the training data; rows, pos [S, n, b]: data rows and
    positions in the client's own samples per step, mask [S, n, b] the real ones; steps [n];
    label_ok [n, classes]. Span form (layer 0): p [n, m, out0], gram [n, m, m], state e_w, e_v
    [n, m, out0] and a, c [n] (float64). hp: (lr, momentum, weight decay, beta) in theta's dtype,
    hp64 the same in float64 (for a and c). loss_sum [n] (float64) gets each step's mean loss."""
    n = theta.shape[0]
    layers = outs.shape[0]
    act_off = np.zeros(layers + 1, np.int64)  # layer l's input rows in a client's activation buffer
    for layer in range(layers):
        act_off[layer + 1] = act_off[layer] + rows.shape[2] * ins[layer]
    for i in numba.prange(n):
        _train_client(i, theta, outs, ins, w_off, b_off, act_off, x_all, y_all, rows, pos, mask, steps, label_ok, span,
                      p, gram, e_w, e_v, a, c, hp, hp64, clip, scaled, loss_sum)


@numba.njit(cache=True, fastmath=FASTMATH)
def _train_client(i: int, theta: np.ndarray, outs: np.ndarray, ins: np.ndarray, w_off: np.ndarray, b_off: np.ndarray,
                  act_off: np.ndarray, x_all: np.ndarray, y_all: np.ndarray, rows: np.ndarray, pos: np.ndarray,
                  mask: np.ndarray, steps: np.ndarray, label_ok: np.ndarray, span: bool, p: np.ndarray,
                  gram: np.ndarray, e_w: np.ndarray, e_v: np.ndarray, a: np.ndarray, c: np.ndarray, hp: np.ndarray,
                  hp64: np.ndarray, clip: float, scaled: bool, loss_sum: np.ndarray) -> None:
    """Client i's whole round (see `train_relu_chain`)."""
    total = theta.shape[1]
    layers = outs.shape[0]
    batch = rows.shape[2]
    width = max(outs.max(), ins.max(), gram.shape[2])
    lr, mu, wd, beta = hp[0], hp[1], hp[2], hp[3]
    th = theta[i]
    mom = np.zeros(total, theta.dtype)
    grad = np.zeros(total, theta.dtype)
    act_buf = np.empty(act_off[layers], theta.dtype)
    t_buf = np.empty(batch * width, theta.dtype)  # a transposed operand or a GEMM result
    dz_buf = np.empty(batch * width, theta.dtype)
    dh_buf = np.empty(batch * width, theta.dtype)
    real = np.empty(batch, np.int64)
    scale = np.empty(1, theta.dtype)  # scalars in theta's dtype, as torch computes with them
    coef = np.ones(1, theta.dtype)
    for s in range(steps[i]):
        nb = 0
        for r in range(batch):
            if mask[s, i, r]:
                real[nb] = r
                nb += 1
        classes = outs[layers - 1]
        logits = dz_buf[: nb * classes].reshape((nb, classes))
        # Forward: activations of layer l + 1 = ReLU(scaler(h_l W_l^T + b_l)).
        for layer in range(layers):
            out_f, in_f = outs[layer], ins[layer]
            bias = th[b_off[layer]: b_off[layer] + out_f]
            z = logits if layer == layers - 1 else act_buf[act_off[layer + 1]: act_off[layer + 1] + nb * out_f].reshape(
                (nb, out_f))
            if layer == 0 and span:
                scale[0] = a[i]
                prod = t_buf[: nb * out_f].reshape((nb, out_f))
                if s > 0:  # K rows @ E_w; E_w is zero before the first step
                    k_rows = dh_buf[: nb * gram.shape[2]].reshape((nb, gram.shape[2]))
                    for rr in range(nb):
                        k_rows[rr] = gram[i, pos[s, i, real[rr]]]
                    np.dot(k_rows, e_w[i], prod)
                for rr in range(nb):
                    q = pos[s, i, real[rr]]
                    for o in range(out_f):
                        z[rr, o] = bias[o] + p[i, q, o] * scale[0]
                        if s > 0:
                            z[rr, o] += prod[rr, o]
            else:
                h = act_buf[act_off[layer]: act_off[layer] + nb * in_f].reshape((nb, in_f))
                if layer == 0:
                    for rr in range(nb):
                        h[rr] = x_all[rows[s, i, real[rr]]]
                h_t = t_buf[: in_f * nb].reshape((in_f, nb))
                for rr in range(nb):
                    for j in range(in_f):
                        h_t[j, rr] = h[rr, j]
                z_t = dh_buf[: out_f * nb].reshape((out_f, nb))
                np.dot(th[w_off[layer]: w_off[layer] + out_f * in_f].reshape((out_f, in_f)), h_t, z_t)
                for rr in range(nb):
                    for o in range(out_f):
                        z[rr, o] = z_t[o, rr] + bias[o]
            if layer < layers - 1:
                for rr in range(nb):
                    for o in range(out_f):
                        v = z[rr, o] / beta if scaled else z[rr, o]
                        z[rr, o] = v if v > 0 else 0.0
        # Loss, and its gradient at the logits, (softmax - onehot) / nb, in place.
        step_loss = 0.0
        count = max(nb, 1)
        for rr in range(nb):
            peak = -np.inf
            for o in range(classes):
                if not label_ok[i, o]:
                    logits[rr, o] = -np.inf
                peak = max(peak, logits[rr, o])
            total_exp = 0.0
            for o in range(classes):
                total_exp += math.exp(logits[rr, o] - peak)
            lse = peak + math.log(total_exp)
            label = y_all[rows[s, i, real[rr]]]
            step_loss += lse - logits[rr, label]
            for o in range(classes):
                logits[rr, o] = (math.exp(logits[rr, o] - lse) - (1.0 if o == label else 0.0)) / count
        loss_sum[i] += step_loss / count
        # Backward: each layer's weight and bias gradient into grad, then dz of the layer below.
        dz = logits
        for layer in range(layers - 1, -1, -1):
            out_f, in_f = outs[layer], ins[layer]
            g_bias = grad[b_off[layer]: b_off[layer] + out_f]
            g_bias[:] = 0.0
            for rr in range(nb):
                for o in range(out_f):
                    g_bias[o] += dz[rr, o]
            if layer == 0 and span:
                break
            h = act_buf[act_off[layer]: act_off[layer] + nb * in_f].reshape((nb, in_f))
            g_weight = grad[w_off[layer]: w_off[layer] + out_f * in_f].reshape((out_f, in_f))
            np.dot(dz.T, h, g_weight)
            if layer == 0:
                break
            dh = dh_buf[: nb * in_f].reshape((nb, in_f))
            np.dot(dz, th[w_off[layer]: w_off[layer] + out_f * in_f].reshape((out_f, in_f)), dh)
            dz = t_buf[: nb * in_f].reshape((nb, in_f))
            for rr in range(nb):  # through the ReLU (and the scaler) of layer l - 1
                for j in range(in_f):
                    if h[rr, j] > 0:
                        dz[rr, j] = dh[rr, j] / beta if scaled else dh[rr, j]
                    else:
                        dz[rr, j] = 0.0
        if clip > 0:
            sq = 0.0
            for k in range(total):
                sq += grad[k] * grad[k]
            if span:  # ||dZ^T X_b||^2 = sum((dZ dZ^T) * (X_b X_b^T)), X_b X_b^T read from K
                for r1 in range(nb):
                    for r2 in range(nb):
                        dot = 0.0
                        for o in range(outs[0]):
                            dot += dz[r1, o] * dz[r2, o]
                        sq += dot * gram[i, pos[s, i, real[r1]], pos[s, i, real[r2]]]
            coef[0] = min(1.0, clip / (math.sqrt(sq) + CLIP_EPS))
        # SGD: d = g + wd*w; buf = mu*buf + d (buf = d at the first step); w -= lr*buf.
        for k in range(total):
            d = grad[k] * coef[0] + wd * th[k]
            mom[k] = mu * mom[k] + d
            th[k] -= lr * mom[k]
        if span:
            c[i] = hp64[1] * c[i] + hp64[2] * a[i]
            a[i] -= hp64[0] * c[i]
            e_vi, e_wi = e_v[i], e_w[i]
            for j in range(e_vi.shape[0]):
                for o in range(outs[0]):
                    e_vi[j, o] = mu * e_vi[j, o] + wd * e_wi[j, o]
            for rr in range(nb):
                q = pos[s, i, real[rr]]
                for o in range(outs[0]):
                    e_vi[q, o] += dz[rr, o] * coef[0]
            for j in range(e_vi.shape[0]):
                for o in range(outs[0]):
                    e_wi[j, o] -= lr * e_vi[j, o]
