"""Named models and the text form: what they build, their errors, their gradients."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from functional_bp import layers as fl
from functional_bp import models
from conv_strategies import check_backprop, check_per_example, make_layer_case


def test_the_mnist1d_cnn_is_the_papers():
    net = models.cnn(10)
    assert net.output_shape((40,)) == (10,)
    convs = [layer for layer in net.layers if isinstance(layer, fl.Conv1D)]
    assert [(c.features, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (25, 5, 2, ((1, 1),)), (25, 3, 2, ((1, 1),)), (25, 3, 2, ((1, 1),))]
    # 40 -> 19 -> 10 -> 5 positions: 125 features into the head
    params = net.init(jax.random.key(0), (40,))
    assert params[-1]["W"].shape == (125, 10)
    # 5*1*25 + 25, twice 3*25*25 + 25, 125*10 + 10
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == 150 + 2 * 1900 + 1260


def test_the_mnist1d_mlp_and_resmlp():
    params = models.mlp(10).init(jax.random.key(0), (40,))
    assert [p["W"].shape for p in params if p] == [(40, 100), (100, 100), (100, 10)]
    net = models.resmlp(3, width=8, blocks=3)
    assert net.output_shape((5, 2)) == (3,)
    assert sum(isinstance(layer, fl.Residual) for layer in net.layers) == 3


@pytest.mark.parametrize("text, input_shape, types", [
    ("dense 64, relu, dense 10", (4,), ["Dense", "Activation", "Dense"]),
    ("conv1d:32:5:2,relu,flatten,dense:10", (40, 1),
     ["Conv1D", "Activation", "Flatten", "Dense"]),
    ("reshape 40 1, conv1d 16 3 padding=same, relu, maxpool1d 2, flatten, dense 10", (40,),
     ["Reshape", "Conv1D", "Activation", "MaxPool1D", "Flatten", "Dense"]),
    ("conv2d 8 3x3 stride=2, tanh, avgpool2d 2, flatten, dense 10", (28, 28, 1),
     ["Conv2D", "Activation", "AvgPool2D", "Flatten", "Dense"]),
    ("dense 16, tanh, res(layernorm, dense 16, relu), dense 10", (64,),
     ["Dense", "Activation", "Residual", "Dense"]),
    ("embedding 100 8, flatten, dense 10", (6,), ["Embedding", "Flatten", "Dense"]),
    ("layernorm eps=1e-6, dense 16 scale=1, dense 10", (4,), ["LayerNorm", "Dense", "Dense"]),
    ("embedding 11 12, posemb 8, dense 36, attention 2 causal=false, flatten, dense 10", (5,),
     ["Embedding", "PositionalEmbedding", "Dense", "Attention", "Flatten", "Dense"]),
    ("embedding 11 12, positional 8, dense 36, attention 2, dense 10", (5,),
     ["Embedding", "PositionalEmbedding", "Dense", "Attention", "Dense"]),
    ("resmlp width=8 blocks=1", (5,), [type(layer).__name__
                                       for layer in models.resmlp(10, width=8, blocks=1).layers]),
    ("CNN", (40,), [type(layer).__name__ for layer in models.cnn().layers]),
])
def test_text_form(text, input_shape, types):
    net = models.build(text, 10)
    assert [type(layer).__name__ for layer in net.layers] == types
    assert net.output_shape(input_shape)[-1] == 10
    assert fl.from_config(json.loads(json.dumps(fl.to_config(net)))) == net


def test_text_form_options_reach_the_layers():
    net = models.build("conv2d 4 3x2 2x1 same 1x2, maxpool2d 2 1 padding=1, dropout 0.25", 1)
    conv, pool, drop = net.layers
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation) == (
        (3, 2), (2, 1), "SAME", (1, 2))
    assert (pool.window, pool.stride, pool.padding) == (2, 1, ((1, 1), (1, 1)))
    assert drop.rate == 0.25


def test_text_form_options_come_from_the_dataclass_fields():
    # positional in field order, or name=value, each read by its annotation
    assert models.build("layernorm eps=1e-6", 1).layers == (fl.LayerNorm(eps=1e-6),)
    assert models.build("dense 4 1.5", 1).layers == (fl.Dense(4, scale=1.5),)
    assert models.build("dense 4 scale=1.5", 1).layers == (fl.Dense(4, scale=1.5),)
    assert models.build("attention 2 causal=false", 1).layers == (fl.Attention(2, causal=False),)
    assert models.build("attention 2 0", 1).layers == (fl.Attention(2, causal=False),)
    assert models.build("posemb 8 scale=0.5", 1).layers == (
        fl.PositionalEmbedding(8, scale=0.5),)
    assert models.build("reshape -1 4 1", 1).layers == (fl.Reshape((-1, 4, 1)),)
    assert models.build("maxpool1d 2 stride=none", 1).layers == (fl.MaxPool1D(2),)
    assert models.build("mlp hidden=32,16 activation=tanh", 3) == models.mlp(
        3, hidden=(32, 16), activation="tanh")
    assert models.build("mlp hidden= scale=0.5", 3) == models.mlp(3, hidden=(), scale=0.5)


def test_every_word_is_in_the_error_for_an_unknown_one():
    with pytest.raises(ValueError) as e:
        models.build("swish", 1)
    for word in fl.layer_words():
        assert word in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("dense", r"'dense': dense takes features \[scale\] \[bias\]; missing features"),
    ("dense 16, swish", r"unknown layer 'swish'.*the words are dense, conv1d"),
    ("res(dense 16", r"never closed.*add a '\)'"),
    ("dense 16)", r"unmatched '\)'"),
    ("dense 16,, relu", r"empty layer.*extra comma"),
    ("res(), dense 2", r"res\(\.\.\.\).*is empty"),
    ("relu 3", r"relu takes no arguments"),
    ("conv1d 3 3x3", r"'conv1d 3 3x3': Conv1D\(kernel_size\): a positive integer or 1 of them"),
    ("conv2d 3 3 stride=a", r"'conv2d 3 3 stride=a': Conv2D\(stride\)"),
    ("conv1d 3 3 pad=1", r"unknown option 'pad'; conv1d takes features, kernel_size, stride, "
                         r"padding, dilation, scale"),
    ("conv1d 3 3 padding=full", r"Conv1D\(padding\): 'VALID', 'SAME'"),
    ("dense(3)", r"only res\(\.\.\.\) takes a sub-stack"),
    ("", r"a model is a name \(mlp, resmlp, cnn"),
    ("nosuchmodel", r"unknown layer 'nosuchmodel'.*named model: mlp, resmlp, cnn"),
    # issue 19: one value per option, and named models' options validated
    ("dense 4 features=5", r"'dense 4 features=5': features is given twice \(as the argument 4 "
                           r"and as features=5\)"),
    ("dense 4 scale=1 scale=2", r"scale is given twice \(scale=1 and scale=2\)"),
    ("dense 4 1 true 7", r"dense takes features \[scale\] \[bias\]; got 4 argument"),
    ("layernorm eps=small", r"'layernorm eps=small': eps: a number; got 'small'"),
    ("attention 2 causal=maybe", r"causal: true or false; got 'maybe'"),
    ("dense x", r"'dense x': features: an integer; got 'x'"),
    ("reshape", r"reshape takes shape\.\.\.; missing shape"),
    ("resmlp blocks=-1", r"resmlp\(blocks\): the number of residual blocks, an integer >= 0; "
                         r"got -1"),
    ("resmlp blocks=1 blocks=2", r"blocks is given twice"),
    ("resmlp depth=2", r"resmlp takes width=100, blocks=2, activation=relu"),
    ("resmlp width=wide", r"width \(like its default width=100\): an integer; got 'wide'"),
    ("mlp hidden=64,x", r"hidden \(like its default hidden=100,100\): an integer; got 'x'"),
    ("mlp hidden=64,,8", r"hidden .*: an integer; got ''"),
    ("reshape 4x", r"'reshape 4x': shape: an integer; got '4x'"),
])
def test_text_form_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        models.build(text, 10)


@pytest.mark.parametrize("name", ["mlp", "resmlp", "cnn"])  # the MNIST-1D models (gpt: tokens)
def test_named_models_against_jax_grad(name):
    """Each named model on a small MNIST-1D-shaped batch, float64, every leaf and cotangent."""
    case = make_layer_case(models.build(name, 4), (40,), 3, "softmax_cross_entropy",
                           dtype=jnp.float64, target_kind="labels", seed=0, l2=1e-3)
    with jax.enable_x64(True):
        check_backprop(case)
        check_per_example(case)
