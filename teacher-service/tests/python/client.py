"""A grpcio client for edkd.teacher.v1, with stubs generated from the .proto at run time.

Usage: client.py ADDR PROTO_ROOT < request.json > answer.json

request.json: {"sequences": [{"id", "prompt_ids", "target_ids"}], "top_k", "temperature",
"value_format": "f32" | "f16" | "bf16"}. The answer lists, per sequence, the decoded top-k
ids and log-probs ([positions][k]), tail log-mass and gold log-prob ([positions]), plus the
Info response and the health status.
"""

import importlib
import json
import sys
import tempfile

import grpc
import numpy as np
from grpc_tools import protoc

FORMATS = {"f32": 1, "f16": 2, "bf16": 3}


def generate_stubs(proto_root: str, out: str) -> None:
    import grpc_tools

    include = grpc_tools.__path__[0] + "/_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "edkd/teacher/v1/teacher.proto",
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")


def values(raw: bytes, fmt: str) -> np.ndarray:
    if fmt == "f32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if fmt == "f16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64)
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)


def main() -> None:
    addr, proto_root = sys.argv[1], sys.argv[2]
    req = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(proto_root, out)
        sys.path.insert(0, out)
        pb = importlib.import_module("edkd.teacher.v1.teacher_pb2")
        rpc = importlib.import_module("edkd.teacher.v1.teacher_pb2_grpc")
    channel = grpc.insecure_channel(addr)
    stub = rpc.TeacherStub(channel)
    info = stub.Info(pb.InfoRequest(), timeout=30)
    fmt = req.get("value_format", "f32")
    request = pb.ScoreRequest(
        request_id=3,
        sequences=[
            pb.Sequence(id=s["id"], prompt_ids=s["prompt_ids"], target_ids=s["target_ids"])
            for s in req["sequences"]
        ],
        top_k=req["top_k"],
        temperature=req["temperature"],
        value_format=FORMATS[fmt],
        tokenizer_sha256=info.tokenizer_sha256,
    )
    resp = stub.Score(request, timeout=30)
    k = resp.top_k
    answer = {
        "info": {
            "model_id": info.model_id,
            "vocab_size": info.vocab_size,
            "max_top_k": info.limits.max_top_k,
        },
        "request_id": resp.request_id,
        "sequences": [],
    }
    for s in resp.sequences:
        p = s.num_positions
        ids = np.frombuffer(s.topk_ids, dtype="<u4").reshape(p, k)
        answer["sequences"].append(
            {
                "id": s.id,
                "topk_ids": ids.tolist(),
                "topk_logprobs": values(s.topk_logprobs, fmt).reshape(p, k).tolist(),
                "tail_logmass": values(s.tail_logmass, fmt).tolist(),
                "gold_logprob": values(s.gold_logprob, fmt).tolist(),
            }
        )
    # An error must come back as a status code, not a crash.
    try:
        stub.Score(pb.ScoreRequest(sequences=request.sequences, top_k=0, temperature=1.0), timeout=30)
        answer["bad_request_code"] = "OK"
    except grpc.RpcError as e:
        answer["bad_request_code"] = e.code().name
    json.dump(answer, sys.stdout, allow_nan=True)


if __name__ == "__main__":
    main()
