"""ONNX models whose tensor data is "external": a file location that onnxruntime reads.

Each builder hides the reference somewhere else in the model (an initializer, a sparse
initializer, a Constant node, an If/Loop subgraph, a model-local function, ...). The tensor is
UINT8 with as many elements as the file has bytes, and the graph returns it as an output, so a
runtime that honours the reference hands the file's bytes back to whoever runs the model.
"""

from __future__ import annotations

from collections.abc import Callable

from onnx import (
    AttributeProto,
    FunctionProto,
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    helper,
)

OPSET = 17
LOCAL_DOMAIN = "local"
Builder = Callable[[str, int], ModelProto]


def external_tensor(
    name: str, location: str, length: int, *, location_field: bool = True, entries: bool = True
) -> TensorProto:
    """A UINT8 [length] tensor whose bytes are `length` bytes of `location` from offset 0."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[length])
    if location_field:
        tensor.data_location = TensorProto.EXTERNAL
    if entries:
        for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return tensor


def _indices(length: int) -> TensorProto:
    return helper.make_tensor("indices", TensorProto.INT64, [length], list(range(length)))


def _model(
    nodes: list[NodeProto],
    length: int,
    *,
    initializers: tuple[TensorProto, ...] = (),
    sparse: tuple[SparseTensorProto, ...] = (),
    functions: tuple[FunctionProto, ...] = (),
) -> ModelProto:
    """X FLOAT [N, 1] -> echo (X) and leak UINT8 [length], computed by `nodes`."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1])
    echo = helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["N", 1])
    leak = helper.make_tensor_value_info("leak", TensorProto.UINT8, [length])
    graph = helper.make_graph(
        [*nodes, helper.make_node("Identity", ["X"], ["echo"])],
        "external",
        [x],
        [echo, leak],
        initializer=list(initializers),
        sparse_initializer=list(sparse),
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(LOCAL_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 8
    return model


def initializer(location: str, length: int) -> ModelProto:
    """The reference in a graph initializer."""
    weight = external_tensor("W", location, length)
    return _model([helper.make_node("Identity", ["W"], ["leak"])], length, initializers=(weight,))


def sparse_initializer(location: str, length: int) -> ModelProto:
    """The reference in the values of a sparse initializer."""
    values = external_tensor("S", location, length)
    sparse = helper.make_sparse_tensor(values, _indices(length), [length])
    return _model([helper.make_node("Identity", ["S"], ["leak"])], length, sparse=(sparse,))


def sparse_indices(location: str, length: int) -> ModelProto:
    """The reference in the indices of a sparse initializer (INT64: a multiple of 8 bytes)."""
    indices = external_tensor("indices", location, length // 8)
    indices.data_type = TensorProto.INT64
    values = helper.make_tensor("S", TensorProto.UINT8, [length // 8], [1] * (length // 8))
    sparse = helper.make_sparse_tensor(values, indices, [length])
    return _model([helper.make_node("Identity", ["S"], ["leak"])], length, sparse=(sparse,))


def constant(location: str, length: int) -> ModelProto:
    """The reference in a Constant node's `value` tensor attribute."""
    node = helper.make_node("Constant", [], ["leak"], value=external_tensor("c", location, length))
    return _model([node], length)


def constant_sparse(location: str, length: int) -> ModelProto:
    """The reference in a Constant node's `sparse_value` attribute."""
    values = external_tensor("c", location, length)
    sparse = helper.make_sparse_tensor(values, _indices(length), [length])
    return _model([helper.make_node("Constant", [], ["leak"], sparse_value=sparse)], length)


def _branch(location: str, length: int, name: str) -> GraphProto:
    out = helper.make_tensor_value_info(f"{name}_out", TensorProto.UINT8, [length])
    node = helper.make_node(
        "Constant", [], [f"{name}_out"], value=external_tensor(name, location, length)
    )
    return helper.make_graph([node], name, [], [out])


def if_branch(location: str, length: int) -> ModelProto:
    """The reference in a Constant inside both branches of an If node."""
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node(
        "If",
        ["cond"],
        ["leak"],
        then_branch=_branch(location, length, "then"),
        else_branch=_branch(location, length, "otherwise"),
    )
    return _model([node], length, initializers=(cond,))


def loop_body(location: str, length: int) -> ModelProto:
    """The reference in a Constant inside a Loop body; the loop carries it out."""
    info = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node(
                "Constant", [], ["v_out"], value=external_tensor("body", location, length)
            ),
        ],
        "body",
        [
            info("i", TensorProto.INT64, []),
            info("cond_in", TensorProto.BOOL, []),
            info("v_in", TensorProto.UINT8, [length]),
        ],
        [info("cond_out", TensorProto.BOOL, []), info("v_out", TensorProto.UINT8, [length])],
    )
    inits = (
        helper.make_tensor("trip", TensorProto.INT64, [], [1]),
        helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        helper.make_tensor("v0", TensorProto.UINT8, [length], [0] * length),
    )
    node = helper.make_node("Loop", ["trip", "cond", "v0"], ["leak"], body=body)
    return _model([node], length, initializers=inits)


def function(location: str, length: int) -> ModelProto:
    """The reference in a Constant inside a model-local function the graph calls."""
    inner = helper.make_node("Constant", [], ["out"], value=external_tensor("f", location, length))
    leak = helper.make_function(
        LOCAL_DOMAIN, "Leak", [], ["out"], [inner], [helper.make_opsetid("", OPSET)]
    )
    call = helper.make_node("Leak", [], ["leak"], domain=LOCAL_DOMAIN)
    return _model([call], length, functions=(leak,))


def location_only(location: str, length: int) -> ModelProto:
    """data_location = EXTERNAL without any external_data entry."""
    weight = external_tensor("W", location, length, entries=False)
    return _model([helper.make_node("Identity", ["W"], ["leak"])], length, initializers=(weight,))


def entries_only(location: str, length: int) -> ModelProto:
    """external_data entries with data_location left at DEFAULT."""
    weight = external_tensor("W", location, length, location_field=False)
    return _model([helper.make_node("Identity", ["W"], ["leak"])], length, initializers=(weight,))


def attribute_tensors(location: str, length: int) -> ModelProto:
    """The reference in a `tensors` (list) attribute of some node."""
    node = helper.make_node("Identity", ["X"], ["leak"])
    node.attribute.append(helper.make_attribute("table", [external_tensor("t", location, length)]))
    return _model([node], length)


def attribute_sparse_tensors(location: str, length: int) -> ModelProto:
    """The reference in a `sparse_tensors` (list) attribute."""
    sparse = helper.make_sparse_tensor(
        external_tensor("v", location, length), _indices(length), [length]
    )
    attribute = AttributeProto(name="tables", type=AttributeProto.SPARSE_TENSORS)
    attribute.sparse_tensors.append(sparse)
    node = helper.make_node("Identity", ["X"], ["leak"])
    node.attribute.append(attribute)
    return _model([node], length)


def attribute_graphs(location: str, length: int) -> ModelProto:
    """The reference in a graph of a `graphs` (list) attribute."""
    attribute = AttributeProto(name="bodies", type=AttributeProto.GRAPHS)
    attribute.graphs.append(_branch(location, length, "listed"))
    node = helper.make_node("Identity", ["X"], ["leak"])
    node.attribute.append(attribute)
    return _model([node], length)


def nested_subgraphs(location: str, length: int) -> ModelProto:
    """The reference two subgraphs down: a Constant in an If inside an If branch."""
    deep = _branch(location, length, "deep")
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    middle = helper.make_graph(
        [helper.make_node("If", ["cond"], ["mid_out"], then_branch=deep, else_branch=deep)],
        "middle",
        [],
        [helper.make_tensor_value_info("mid_out", TensorProto.UINT8, [length])],
    )
    node = helper.make_node("If", ["cond"], ["leak"], then_branch=middle, else_branch=middle)
    return _model([node], length, initializers=(cond,))


def _inline_constant(length: int) -> NodeProto:
    zeros = helper.make_tensor("c", TensorProto.UINT8, [length], [0] * length)
    return helper.make_node("Constant", [], ["leak"], value=zeros)


def function_default_attribute(location: str, length: int) -> ModelProto:
    """The reference in a function's default attribute value (FunctionProto.attribute_proto)."""
    leak = helper.make_function(
        LOCAL_DOMAIN, "Leak", [], ["leak"], [_inline_constant(length)],
        [helper.make_opsetid("", OPSET)],
        attribute_protos=[helper.make_attribute("table", external_tensor("d", location, length))],
    )  # fmt: skip
    call = helper.make_node("Leak", [], ["leak"], domain=LOCAL_DOMAIN)
    return _model([call], length, functions=(leak,))


def training_info(location: str, length: int) -> ModelProto:
    """The reference in the initialization graph of a training_info entry."""
    model = _model([_inline_constant(length)], length)
    model.training_info.add().initialization.CopyFrom(initializer(location, length).graph)
    return model


def inline(length: int) -> ModelProto:
    """The same shape of model with its tensor inline: nothing to refuse."""
    return _model([_inline_constant(length)], length)


# What onnxruntime itself reads when the model is loaded: pushes of these leak the file.
LOADED_BY_ONNXRUNTIME: dict[str, Builder] = {
    "initializer": initializer,
    "sparse_initializer": sparse_initializer,
    "constant": constant,
    "if_branch": if_branch,
    "loop_body": loop_body,
    "function": function,
    "nested_subgraphs": nested_subgraphs,
}


# Every place the ONNX schema lets a tensor live; a scanner must find the reference in each.
EVERY_PLACE: dict[str, Builder] = {
    **LOADED_BY_ONNXRUNTIME,
    "constant_sparse": constant_sparse,
    "sparse_indices": sparse_indices,
    "location_only": location_only,
    "entries_only": entries_only,
    "attribute_tensors": attribute_tensors,
    "attribute_sparse_tensors": attribute_sparse_tensors,
    "attribute_graphs": attribute_graphs,
    "function_default_attribute": function_default_attribute,
    "training_info": training_info,
}

# Where each builder hides the reference, as the scanner names it (ONNX field names).
WHERE = {
    "initializer": "graph.initializer[0] 'W'",
    "sparse_initializer": "graph.sparse_initializer[0].values 'S'",
    "constant": "graph.node[0].attribute[0].t 'c'",
    "if_branch": "graph.node[0].attribute[0].g.node[0].attribute[0].t 'otherwise'",
    "loop_body": "graph.node[0].attribute[0].g.node[1].attribute[0].t 'body'",
    "function": "functions[0].node[0].attribute[0].t 'f'",
    "nested_subgraphs": (
        "graph.node[0].attribute[0].g.node[0].attribute[0].g.node[0].attribute[0].t 'deep'"
    ),
    "constant_sparse": "graph.node[0].attribute[0].sparse_tensor.values 'c'",
    "sparse_indices": "graph.sparse_initializer[0].indices 'indices'",
    "location_only": "graph.initializer[0] 'W'",
    "entries_only": "graph.initializer[0] 'W'",
    "attribute_tensors": "graph.node[0].attribute[0].tensors[0] 't'",
    "attribute_sparse_tensors": "graph.node[0].attribute[0].sparse_tensors[0].values 'v'",
    "attribute_graphs": "graph.node[0].attribute[0].graphs[0].node[0].attribute[0].t 'listed'",
    "function_default_attribute": "functions[0].attribute_proto[0].t 'd'",
    "training_info": "training_info[0].initialization.initializer[0] 'W'",
}
