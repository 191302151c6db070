"""A grpcio client for edkd.teacher.v1, with stubs generated from the .proto at run time.

Usage: client.py ADDR PROTO_ROOT < request.json > answer.json

request.json: {"sequences": [{"id", "prompt_ids", "target_ids", "images_hex"?,
"pillow_jpeg"?}], "top_k", "temperature", "value_format": "f32" | "f16" | "bf16"}.
`images_hex`: encoded images (hex strings) sent as they are; `pillow_jpeg`: {"size": [w, h],
"seed": n}, a picture drawn and encoded as JPEG here with Pillow and appended to the
sequence's images. The answer lists, per sequence, the decoded top-k ids and log-probs
([positions][k]), tail log-mass and gold log-prob ([positions]) and the images it sent
(hex), plus the Info response and the codes of two bad requests.
"""

import importlib
import io
import json
import random
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


def pillow_jpeg(spec: dict) -> bytes:
    from PIL import Image, ImageDraw

    w, h = spec["size"]
    rng = random.Random(spec["seed"])
    colour = lambda: tuple(rng.randrange(256) for _ in range(3))  # noqa: E731
    img = Image.new("RGB", (w, h), colour())
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        draw.ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=colour())
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def images_of(s: dict) -> list:
    images = [bytes.fromhex(h) for h in s.get("images_hex", [])]
    if "pillow_jpeg" in s:
        images.append(pillow_jpeg(s["pillow_jpeg"]))
    return images


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
            pb.Sequence(
                id=s["id"],
                prompt_ids=s["prompt_ids"],
                target_ids=s["target_ids"],
                images=images_of(s),
            )
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
            "accepts_images": info.accepts_images,
            "image_token_id": info.image_token_id,
            "tokens_per_image": info.tokens_per_image,
            "max_image_bytes": info.limits.max_image_bytes,
        },
        "request_id": resp.request_id,
        "sequences": [],
    }
    for s, sent in zip(resp.sequences, request.sequences):
        p = s.num_positions
        ids = np.frombuffer(s.topk_ids, dtype="<u4").reshape(p, k)
        answer["sequences"].append(
            {
                "id": s.id,
                "topk_ids": ids.tolist(),
                "topk_logprobs": values(s.topk_logprobs, fmt).reshape(p, k).tolist(),
                "tail_logmass": values(s.tail_logmass, fmt).tolist(),
                "gold_logprob": values(s.gold_logprob, fmt).tolist(),
                "images_hex": [bytes(i).hex() for i in sent.images],
            }
        )
    # An error must come back as a status code, not a crash.
    try:
        stub.Score(pb.ScoreRequest(sequences=request.sequences, top_k=0, temperature=1.0), timeout=30)
        answer["bad_request_code"] = "OK"
    except grpc.RpcError as e:
        answer["bad_request_code"] = e.code().name
    # So must an image that is no image, naming the field.
    if any(s.images for s in request.sequences):
        first = next(i for i, s in enumerate(request.sequences) if s.images)
        bad = pb.ScoreRequest()
        bad.CopyFrom(request)
        bad.sequences[first].images[0] = b"GIF89a"
        try:
            stub.Score(bad, timeout=30)
            answer["bad_image"] = {"code": "OK"}
        except grpc.RpcError as e:
            answer["bad_image"] = {"code": e.code().name, "details": e.details()}
    json.dump(answer, sys.stdout, allow_nan=True)


if __name__ == "__main__":
    main()
