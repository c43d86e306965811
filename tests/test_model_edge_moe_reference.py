"""moevit against an independent float reference of Edge-MoE's network.

The reference below is plain numpy (float64; no torch, no moevit model code),
written from Edge-MoE's sources (sharc-lab/Edge-MoE @984b23b): ``src/conv.cpp``
(token 0 is ``pos_embed[0]`` alone), pre-norm blocks with LayerNorm epsilon
1e-6 and attention scale ``head_dim ** -0.5`` (``src/ViT_compute.cpp``), erf
GELU (``src/gelu.cpp`` tabulates it), and the MoE layer of ``src/moe.cpp``:
gate scores ``x @ w_gate_T.T`` without bias, the top-k by strict ``>``
(equal scores: the lower index), each selected expert weighted by
``exp(score - max) / sum`` over **all** experts, not renormalised. moevit's
final norm and heads (``norm_*``, ``head_task{t}_*``, its additions to the
naming) follow, then the patches' pixels in (class, row, col) order.

A random dump in Edge-MoE's file naming, of an Edge-MoE-shaped model at small
size (patch 16, 3 heads, 16 experts, top-2, expert hidden = 2 x dim, MoE in
the odd blocks, 7-class semseg + depth), is written here from numpy and read
by moevit's importer. Measured (2 tasks x 2 images): moevit (float32) is
within 1.9e-6 to 2.3e-6 of the reference on outputs up to 3.1-4.3 in
magnitude, the final tokens likewise, and it selects the same experts for
every token in both MoE layers; ``TOLERANCE`` (1e-4) leaves room for
float32 rounding only. The same network with the renormalised rule differs
from moevit's output by 0.07-0.09, over 700 times the tolerance: the comparison
tells the rules apart.
"""

import math

import numpy as np
import pytest
import torch

from moevit.model.config import get_config
from moevit.model.importers import import_edge_moe

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = get_config("edge-moe").replace(
    name="edge-moe-small", image_size=(32, 64), dim=48, depth=4, mlp_hidden=192,
    expert_hidden=96, moe_blocks=(1, 3),
)
TOLERANCE = 1e-4  # largest absolute difference, float32 against float64


# The reference ----------------------------------------------------------------
_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layernorm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def linear(x, w, name):
    return x @ w[f"{name}_weight"].T + w[f"{name}_bias"]


def moe(x, w, layer, task, k, renormalise):
    """src/moe.cpp: the softmax over all experts' scores, the top-k keep theirs."""
    scores = x @ w[f"{layer}_w_gate_T_task{task}"].T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    probs = softmax(scores)
    out = np.zeros_like(x)
    for token, experts in enumerate(top):
        weights = probs[token, experts]
        if renormalise:  # the other rule, to show that the test tells them apart
            weights = softmax(scores[token, experts])
        for weight, e in zip(weights, experts):
            hidden = gelu(x[token] @ w[f"{layer}_htoh4_weight"][e].T + w[f"{layer}_htoh4_bias"][e])
            out[token] += weight * (hidden @ w[f"{layer}_h4toh_weight"][e].T + w[f"{layer}_h4toh_bias"][e])
    return out, top


def reference(w, image, task, renormalise=False):
    """Prediction (classes, H, W), final tokens (T, dim) and each MoE layer's top-k (T, k)."""
    c = CONFIG
    p, (gh, gw), hd = c.patch, c.grid, c.head_dim
    patches = image.reshape(c.in_chans, gh, p, gw, p).transpose(1, 3, 0, 2, 4).reshape(gh * gw, -1)
    x = patches @ w["patch_embed_weight"].reshape(c.dim, -1).T + w["patch_embed_bias"]
    x = np.concatenate([np.zeros((1, c.dim)), x]) + w["pos_embed"]  # token 0: pos_embed[0] alone
    selections = []
    for i in range(c.depth):
        layer = f"l{i}"
        h = layernorm(x, w[f"{layer}_norm1_weight"], w[f"{layer}_norm1_bias"])
        q, key, v = np.split(linear(h, w, f"{layer}_qkv"), 3, axis=1)
        heads = [
            softmax(q[:, j * hd : (j + 1) * hd] @ key[:, j * hd : (j + 1) * hd].T * hd**-0.5) @ v[:, j * hd : (j + 1) * hd]
            for j in range(c.heads)
        ]
        x = x + linear(np.concatenate(heads, axis=1), w, f"{layer}_attn_proj")
        h = layernorm(x, w[f"{layer}_norm2_weight"], w[f"{layer}_norm2_bias"])
        if i % 2:  # Edge-MoE's MoE blocks: the odd ones
            out, top = moe(h, w, layer, task, c.top_k, renormalise)
            selections.append(top)
            x = x + out
        else:
            x = x + linear(gelu(linear(h, w, f"{layer}_fc1")), w, f"{layer}_fc2")
    x = layernorm(x, w["norm_weight"], w["norm_bias"])
    classes = c.tasks[task].classes
    out = linear(x[1:], w, f"head_task{task}")  # patch tokens
    prediction = out.reshape(gh, gw, classes, p, p).transpose(2, 0, 3, 1, 4).reshape(classes, *c.image_size)
    return prediction, x, selections


# The dump ---------------------------------------------------------------------
def edge_moe_dump(folder, seed=0):
    """Random weights as Edge-MoE's ``<name>.float32.bin`` files; returns them as float64."""
    c, rng = CONFIG, np.random.default_rng(seed)
    shapes = {
        "patch_embed_weight": (c.dim, c.in_chans, c.patch, c.patch),
        "patch_embed_bias": (c.dim,),
        "pos_embed": (c.tokens, c.dim),
        "norm_weight": (c.dim,),
        "norm_bias": (c.dim,),
    }
    for t, task in enumerate(c.tasks):
        shapes[f"head_task{t}_weight"] = (task.classes * c.patch**2, c.dim)
        shapes[f"head_task{t}_bias"] = (task.classes * c.patch**2,)
    for i in range(c.depth):
        layer = f"l{i}"
        shapes.update({
            f"{layer}_qkv_weight": (3 * c.dim, c.dim), f"{layer}_qkv_bias": (3 * c.dim,),
            f"{layer}_attn_proj_weight": (c.dim, c.dim), f"{layer}_attn_proj_bias": (c.dim,),
            f"{layer}_norm1_weight": (c.dim,), f"{layer}_norm1_bias": (c.dim,),
            f"{layer}_norm2_weight": (c.dim,), f"{layer}_norm2_bias": (c.dim,),
        })
        if i % 2:
            e, hidden = c.experts, c.expert_hidden
            shapes.update({
                f"{layer}_htoh4_weight": (e, hidden, c.dim), f"{layer}_htoh4_bias": (e, hidden),
                f"{layer}_h4toh_weight": (e, c.dim, hidden), f"{layer}_h4toh_bias": (e, c.dim),
            })
            shapes.update({f"{layer}_w_gate_T_task{t}": (e, c.dim) for t in range(len(c.tasks))})
        else:
            shapes.update({
                f"{layer}_fc1_weight": (c.mlp_hidden, c.dim), f"{layer}_fc1_bias": (c.mlp_hidden,),
                f"{layer}_fc2_weight": (c.dim, c.mlp_hidden), f"{layer}_fc2_bias": (c.dim,),
            })
    weights = {}
    for name, shape in shapes.items():
        fan_in = shape[-1] if len(shape) > 1 else 1
        if "norm" in name and name.endswith("_weight"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif "w_gate" in name:
            value = 2.0 * rng.standard_normal(shape) / math.sqrt(fan_in)  # peaked, as trained gates
        elif name.endswith("_bias") or name == "pos_embed":
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / math.sqrt(np.prod(shape[1:]))
        value = value.astype("<f4")
        value.tofile(folder / f"{name}.float32.bin")
        weights[name] = value.astype(np.float64)
    return weights


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge-moe-small")
    weights = edge_moe_dump(folder)
    model = import_edge_moe(folder, CONFIG).eval()
    images = np.random.default_rng(1).standard_normal((2, CONFIG.in_chans, *CONFIG.image_size)).astype(np.float32)
    return weights, model, images


def moevit_run(model, image, task):
    """moevit's prediction, final tokens and each MoE layer's selected experts."""
    chosen = []

    def spy(route):
        def recorded(x, t, noise=None):
            result = route(x, t, noise)
            chosen.append(result[0].numpy())
            return result

        return recorded

    x = torch.from_numpy(image[None])
    for layer in model.moe_layers:
        layer.route = spy(layer.route)  # the instance attribute shadows the method
    try:
        with torch.no_grad():
            prediction = model(x, task)[0].double().numpy()
    finally:
        for layer in model.moe_layers:
            del layer.route
    with torch.no_grad():
        tokens = model.forward_features(x, task)[0].double().numpy()
    return prediction, tokens, chosen


@pytest.mark.parametrize("task", [0, 1])
def test_moevit_computes_edge_moe_network(dump, task):
    weights, model, images = dump
    assert model.config.gate == "vmoe"
    for image in images:
        expected, tokens, selections = reference(weights, image.astype(np.float64), task)
        got, got_tokens, got_selections = moevit_run(model, image, task)
        assert np.abs(expected).max() > 0.5  # a real signal
        diff = np.abs(got - expected).max()
        print(f"task {task}: largest difference {diff:.2e} on outputs up to {np.abs(expected).max():.2f}")
        assert diff < TOLERANCE
        assert np.abs(got_tokens - tokens).max() < TOLERANCE
        for layer, (ours, theirs) in enumerate(zip(got_selections, selections)):
            assert np.array_equal(ours, theirs), f"MoE layer {layer}: other experts selected"
        # the renormalised rule computes something else: the comparison tells them apart
        other, _, _ = reference(weights, image.astype(np.float64), task, renormalise=True)
        print(f"  renormalised rule: {np.abs(got - other).max():.3f}")
        assert np.abs(got - other).max() > 100 * TOLERANCE
