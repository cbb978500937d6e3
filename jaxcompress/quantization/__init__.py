"""Quantization: fake quant (STE), LSQ, observers, calibration, PTQ/QAT, integer conversion and inference.

>>> import jax.numpy as jnp
>>> import jaxcompress.quantization as jq
>>> params = {"Dense_0": {"kernel": jnp.array([[0.7, -1.4], [0.23, 0.5]]), "bias": jnp.zeros(2)}}
>>> t = jq.quantize_weights(jq.QuantSpec(bits=4))
>>> w = t.apply(params, t.init(params))["Dense_0"]["kernel"]
>>> [[round(v, 3) for v in row] for row in w.tolist()]
[[0.7, -1.4], [0.2, 0.6]]

Weights of any shape take their axes from the model's layout (``jaxcompress.layout.trace``):
pass ``layout=`` to :func:`quantize_weights`, :func:`lsq_weights`, :func:`lsq_init_params`,
:func:`convert` and :func:`resolve_specs`; with it only the layout's weights are touched and
"per channel" is one scale per output position. Integer inference (:func:`integer_apply`,
:func:`int_qat_apply`) reports ``num_integer_ops`` and raises rather than running in float.
"""

from jaxcompress.quantization.activations import capture_inputs, hooked_apply, hooked_model, quantize_activations
from jaxcompress.quantization.calibrate import calibrate, calibration_batches
from jaxcompress.quantization.convert import QArray, convert, dequantize_tree, load, pack, quantize_array, save, unpack
from jaxcompress.quantization.fake import fake_quant, fake_quant_dynamic, lsq_fake_quant
from jaxcompress.quantization.grid import compute_scale_zero_point, dequantize, minmax, quantize, quantize_dequantize
from jaxcompress.quantization.integer import IntegerFn, int_qat_apply, integer_apply
from jaxcompress.quantization.observers import (
    OBSERVERS,
    entropy_range,
    make_observer,
    minmax_range,
    mse_range,
    percentile_range,
)
from jaxcompress.quantization.spec import QuantSpec, qrange
from jaxcompress.quantization.transform import (
    lsq_init_params,
    lsq_weights,
    quantize_weights,
    resolve_specs,
    set_bits,
    weight_scale_zero_point,
)

__all__ = [
    "QuantSpec", "qrange", "compute_scale_zero_point", "quantize", "dequantize", "quantize_dequantize", "minmax",
    "fake_quant", "fake_quant_dynamic", "lsq_fake_quant", "OBSERVERS", "make_observer", "minmax_range",
    "percentile_range", "mse_range", "entropy_range", "calibrate", "calibration_batches", "capture_inputs",
    "hooked_apply", "hooked_model", "quantize_activations", "quantize_weights", "set_bits", "resolve_specs",
    "weight_scale_zero_point", "lsq_init_params", "lsq_weights", "QArray", "convert", "dequantize_tree", "save",
    "load", "pack", "unpack", "quantize_array", "integer_apply", "int_qat_apply", "IntegerFn",
]
