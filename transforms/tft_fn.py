"""A feature spec as a tensorflow-transform ``preprocessing_fn``, and its fitted constants.

This is the only module of `transforms` that imports TensorFlow. Each analyzer result (mean,
variance, min, max, quantile boundaries) passes through a ``tf.identity`` named
``riverbeam_fitted__<feature index>__<constant>`` before the feature's arithmetic uses it; after
analysis TFT binds those results into the saved ``transform_fn`` as constants, and
`read_fitted_constants` reads them back from ``saved_model.pb`` so that the online side
(`transforms.fitted`) applies exactly the values TFT applied, without TensorFlow.

Arithmetic runs in float64 on the raw (32-bit float or 64-bit int) inputs and each float output is
cast to float32; quantile boundaries and bucket assignment are float32, as in `tft.bucketize`.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from transforms.spec import FeatureSpec, LabelSpec, consumed_features, pca_sources, raw_columns

FITTED_NODE = re.compile(r"^riverbeam_fitted__(\d+)__([a-z_]+)$")

_TF_TYPES = {"float": tf.float32, "int": tf.int64, "string": tf.string}


def raw_feature_spec(features: list[FeatureSpec], label: LabelSpec | None) -> dict[str, tf.io.FixedLenFeature]:
    """The raw (input) feature spec: one scalar per raw column the spec reads (`transforms.spec.raw_columns`)."""
    return {name: tf.io.FixedLenFeature([], _TF_TYPES[kind]) for name, kind in raw_columns(features, label)}


def raw_metadata(features: list[FeatureSpec], label: LabelSpec | None):
    """`tft.DatasetMetadata` of the raw rows."""
    return tft.DatasetMetadata.from_feature_spec(raw_feature_spec(features, label))


def vocabulary_filename(index: int, feature: FeatureSpec) -> str:
    """Asset file name of a feature's vocabulary (``vocab_<index>_<sanitised name>``).

    >>> vocabulary_filename(3, FeatureSpec(name="store id", type="string", transform="vocabulary"))
    'vocab_3_store_id'
    """
    return f"vocab_{index}_" + re.sub(r"[^A-Za-z0-9_]", "_", feature.name)


def _fitted(index: int, constant: str, tensor: tf.Tensor) -> tf.Tensor:
    return tf.identity(tensor, name=f"riverbeam_fitted__{index}__{constant}")


def _as_text(x: tf.Tensor, feature: FeatureSpec) -> tf.Tensor:
    return tf.strings.as_string(x) if feature.type == "int" else x


def transform_feature(index: int, feature: FeatureSpec, x: tf.Tensor) -> tf.Tensor:
    """The transformed tensor of one feature (inside a ``preprocessing_fn``)."""
    kind = feature.transform
    if kind == "identity":
        return x
    if kind == "hash":
        return tft.hash_strings(_as_text(x, feature), feature.hash_buckets)
    if kind == "vocabulary":
        text = _as_text(x, feature)
        vocab = tft.vocabulary(
            text,
            top_k=feature.top_k,
            frequency_threshold=feature.frequency_threshold,
            vocab_filename=vocabulary_filename(index, feature),
        )
        return tft.apply_vocabulary(text, vocab, default_value=-1, num_oov_buckets=feature.num_oov_buckets or 0)
    if kind == "bucketize":
        x32 = tf.cast(x, tf.float32)
        epsilon = min(1.0 / feature.num_buckets, 0.01)  # tft.bucketize's default
        boundaries = _fitted(index, "boundaries", tft.quantiles(x32, feature.num_buckets, epsilon))
        return tft.apply_buckets(x32, boundaries)
    x64 = tf.cast(x, tf.float64)
    if kind == "log1p":
        out = tf.math.log1p(x64)
    elif kind == "z_score":
        mean = _fitted(index, "mean", tft.mean(x64))
        var = _fitted(index, "var", tft.var(x64))
        std = tf.sqrt(var)
        centred = x64 - mean
        out = tf.where(tf.not_equal(std, 0.0), centred / tf.where(tf.not_equal(std, 0.0), std, 1.0), centred)
    elif kind == "min_max":
        low = _fitted(index, "min", tft.min(x64))
        high = _fitted(index, "max", tft.max(x64))
        spread = high - low
        ok = low < high
        out = tf.where(ok, (x64 - low) / tf.where(ok, spread, 1.0), tf.math.sigmoid(x64))
    else:  # pragma: no cover - the spec's Literal forbids it
        raise ValueError(f"unknown transform {kind}")
    return tf.cast(out, tf.float32)


def encode_index(feature: FeatureSpec, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """An index output in the feature's ``encoding``: as is, one 0/1 float32 column per index, or as text."""
    if feature.encoding == "one_hot":
        return {name: tf.cast(tf.equal(index, i), tf.float32) for i, name in enumerate(feature.output_names)}
    if feature.encoding == "category":
        return {feature.name: tf.strings.as_string(index)}
    return {feature.name: index}


def pca_outputs(index: int, feature: FeatureSpec, columns: list[tf.Tensor]) -> dict[str, tf.Tensor]:
    """``k`` principal components of the stacked input columns (float64), centred/scaled first as asked.

    The matrix is `tft.pca` over the whole data set (its covariance is centred by definition, so
    centring is applied to the projection only); with ``scale`` it is the PCA of the columns
    divided by their standard deviations (`tft.var`). Mean and variance are per column, bound
    like the other fitted constants. This keeps a pca to one analysis phase after its inputs
    (two with ``scale``).
    """
    x = tf.stack([tf.cast(c, tf.float64) for c in columns], axis=1)
    std = None
    if feature.scale:
        std = tf.sqrt(_fitted(index, "var", tft.var(x, reduce_instance_dims=False)))
        std = tf.where(tf.not_equal(std, 0.0), std, tf.ones_like(std))
    matrix = _fitted(index, "matrix", tft.pca(x if std is None else x / std, feature.k, dtype=tf.float64))
    if feature.center or feature.scale:
        x = x - _fitted(index, "mean", tft.mean(x, reduce_instance_dims=False))
    if std is not None:
        x = x / std
    projected = tf.cast(tf.matmul(x, matrix), tf.float32)
    return {name: projected[:, i] for i, name in enumerate(feature.output_names)}


def build_preprocessing_fn(features: list[FeatureSpec], label: LabelSpec | None) -> Callable[[dict], dict]:
    """Compile a feature spec into a tensorflow-transform ``preprocessing_fn``.

    Outputs are named like the inputs (``<name>_<i>`` for one-hot and pca columns); features a pca
    consumes are not written; the label passes through unchanged.
    """
    features = list(features)
    sources = pca_sources(features)
    consumed = consumed_features(features)

    def preprocessing_fn(inputs: dict) -> dict:
        results: dict[int, tf.Tensor] = {}
        outputs: dict[str, tf.Tensor] = {}
        for i, f in enumerate(features):
            if f.transform == "pca":
                columns = [inputs[name] if j is None else results[j] for name, j in zip(f.inputs, sources[i])]
                outputs.update(pca_outputs(i, f, columns))
                continue
            results[i] = transform_feature(i, f, inputs[f.name])
            if i not in consumed:
                outputs.update(encode_index(f, results[i]) if f.transform in ("bucketize", "vocabulary", "hash") else {f.name: results[i]})
        if label is not None:
            outputs[label.name] = tf.identity(inputs[label.name])
        return outputs

    return preprocessing_fn


_UNARY = {"Identity": lambda a: a, "Neg": np.negative, "StopGradient": lambda a: a}
_BINARY = {"Sub": np.subtract, "AddV2": np.add, "Add": np.add, "Mul": np.multiply, "RealDiv": np.divide}


def read_fitted_constants(saved_model_pb: bytes) -> dict[int, dict[str, list | float]]:
    """The analyzer results bound into a saved ``transform_fn``, by feature index and constant.

    TFT captures each analyzer result as a constant of the traced function (the captured inputs
    are the function's last arguments, in the order of its ``bound_inputs``); a few analyzers
    post-process it with simple arithmetic (``tft.min`` is ``0 - max(-x)``), which is evaluated
    here with numpy.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    model.ParseFromString(saved_model_pb)
    found: dict[int, dict[str, list | float]] = {}
    for meta_graph in model.meta_graphs:
        top_nodes = {node.name: node for node in meta_graph.graph_def.node}
        objects = meta_graph.object_graph_def
        for function in meta_graph.graph_def.library.function:
            fitted = [(FITTED_NODE.match(n.name), n) for n in function.node_def if n.op == "Identity"]
            fitted = [(m, n) for m, n in fitted if m]
            if not fitted:
                continue
            nodes = {node.name: node for node in function.node_def}
            args = [arg.name for arg in function.signature.input_arg]
            concrete = objects.concrete_functions.get(function.signature.name)
            bound = list(concrete.bound_inputs) if concrete is not None else []
            captures = dict(zip(args[len(args) - len(bound) :], bound))

            def evaluate(reference: str):
                name = reference.split(":")[0]
                if name in captures:
                    obj = objects.nodes[captures[name]]
                    if obj.WhichOneof("kind") != "constant":
                        raise ValueError(f"{name} is not a captured constant")
                    return tf.make_ndarray(top_nodes[obj.constant.operation].attr["value"].tensor)
                node = nodes[name]
                if node.op == "Const":
                    return tf.make_ndarray(node.attr["value"].tensor)
                if node.op in _UNARY:
                    return _UNARY[node.op](evaluate(node.input[0]))
                if node.op in _BINARY:
                    return _BINARY[node.op](evaluate(node.input[0]), evaluate(node.input[1]))
                if node.op == "Cast":
                    return evaluate(node.input[0]).astype(tf.dtypes.as_dtype(node.attr["DstT"].type).as_numpy_dtype)
                raise ValueError(f"cannot evaluate {node.op} node {name}")

            for match, node in fitted:
                value = np.asarray(evaluate(node.input[0]))
                constant = match.group(2)
                if constant == "matrix":  # pca: input dimension x k, kept as rows
                    found.setdefault(int(match.group(1)), {})[constant] = value.reshape(value.shape[-2], -1).tolist()
                else:
                    found.setdefault(int(match.group(1)), {})[constant] = value.reshape(-1).tolist() if value.ndim else value.item()
    return found
