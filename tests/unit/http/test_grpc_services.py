"""Reading the user's services from their generated ``add_<Service>Servicer_to_server``."""

from __future__ import annotations

import pytest

pytest.importorskip("grpc_tools")

from modelplex._http.grpc_services import collect, import_servicer  # noqa: E402

from ...grpc_protos import compile_proto  # noqa: E402


def test_every_method_is_found_with_how_it_streams_and_deserializes(tmp_path):
    pb2, _ = compile_proto(tmp_path)
    methods = {m.name: m for m in collect(["inference_pb2_grpc.add_InferenceServicer_to_server"])}
    assert set(methods) == {"Infer", "Stream", "Fail", "Missing", "Upload"}
    infer, stream, upload = methods["Infer"], methods["Stream"], methods["Upload"]
    assert infer.path == "/modelplex.test.Inference/Infer"
    assert (infer.request_streaming, infer.response_streaming) == (False, False)
    assert (stream.request_streaming, stream.response_streaming) == (False, True)
    assert (upload.request_streaming, upload.response_streaming) == (True, False)
    wire = pb2.InferRequest(text="hi", count=2).SerializeToString()
    assert infer.request_deserializer(wire) == pb2.InferRequest(text="hi", count=2)


def test_a_bad_servicer_path_says_what_to_check():
    with pytest.raises(ModuleNotFoundError, match="can't be imported"):
        import_servicer("no_such_pb2_grpc.add_XServicer_to_server")
    with pytest.raises(ValueError, match="is not a callable function"):
        import_servicer("os.sep")
