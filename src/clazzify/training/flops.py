"""Compute of a forward pass, counted from the layer shapes.

XLA's cost analysis of a whole Keras model counted AlexNet@227 at 0.014 GFLOP a
forward image, about 100x too low (it misses convolutions lowered to custom calls),
so the benchmarks' share of the accelerator's peak meant nothing. This counts
multiply-accumulates (MACs) the way papers do: convolutions (grouped, depthwise,
separable) and dense layers; normalisation, activations, pooling and element-wise
ops are left out (about 1% of a CNN's total). One MAC is two FLOPs.
"""

from __future__ import annotations

import math


def _shape(tensors) -> tuple[int, ...]:
    return tuple(1 if d is None else int(d) for d in tensors[0].shape)


def layer_macs(layer, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """MACs of one call of ``layer`` for one example (the batch axis is ignored)."""
    from keras import layers as L

    def split(shape):  # (spatial positions, channels) under the layer's data format
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            return math.prod(shape[2:]), shape[1]
        return math.prod(shape[1:-1]), shape[-1]

    kernel = math.prod(getattr(layer, "kernel_size", (1,)))
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        positions, _ = split(output_shape)
        _, channels_in = split(input_shape)
        depthwise = positions * kernel * channels_in * layer.depth_multiplier
        return depthwise + positions * channels_in * layer.depth_multiplier * layer.filters
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        positions, channels_out = split(output_shape)
        return positions * kernel * channels_out
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        positions, channels_in = split(input_shape)
        return positions * kernel * channels_in * layer.filters
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        positions, channels_out = split(output_shape)
        _, channels_in = split(input_shape)
        return positions * kernel * (channels_in // layer.groups) * channels_out
    if isinstance(layer, L.Dense):
        return math.prod(output_shape[1:-1]) * input_shape[-1] * layer.units
    return 0


def forward_macs(model) -> int:
    """MACs of one example's forward pass through ``model`` (nested models included).

    Each layer is counted for its first call in the graph (the graph it was built in);
    the training-only augmentation has no convolutions and adds nothing.
    """
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        nodes = [n for n in getattr(layer, "_inbound_nodes", []) if n.input_tensors and n.outputs]
        if nodes:
            total += layer_macs(layer, _shape(nodes[0].input_tensors), _shape(nodes[0].outputs))
    return total
