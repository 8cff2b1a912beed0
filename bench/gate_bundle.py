"""The gate's trained GAN and oracles as a few small files, so later calls need not retrain them.

    python -m bench.gate_bundle export --work runs/gate --out $OUT/gate   # after bench.gan_gate passed
    python -m bench.gate_bundle restore --bundle gate --work runs/gate    # then bench.gan2shape --gate runs/gate

A GPU call returns at most eight files of 16 MiB each, and what travels to the next call is bounded
too, so the bundle is flat and small: G_ema's weights in fp16 split into parts under ``--part-mib``,
the oracle run's exported models as they are (the oracle's answers stay bit-exact), and
``manifest.json`` with the generator's architecture, the oracle's ``method.json``, its scores, the
gate's curve and a SHA-256 per file. ``restore`` checks every file before it writes anything, and
never replaces an existing generator or oracle.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import torch

from renderloop.models.stylegan2.io import (
    generator_from_record,
    generator_record,
    generator_trained_on,
    load_generator,
    save_generator,
)

BUNDLE_FORMAT = "renderloop-gate-bundle"
MAX_FILES = 8
"""What one GPU call can return: the manifest and the weight files together."""


class BundleError(RuntimeError):
    """A bundle that cannot be written or trusted."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _serialized(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _parts(state: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """``state`` in key order, cut into dicts whose tensors hold at most ``limit`` bytes each."""
    parts, current, size = [], {}, 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > limit:
            raise BundleError(f"{key}: {nbytes} bytes, more than one part may hold ({limit})")
        if current and size + nbytes > limit:
            parts.append(current)
            current, size = {}, 0
        current[key], size = tensor, size + nbytes
    return parts + ([current] if current else [])


def _named(files: dict[str, bytes], prefix: str) -> list[str]:
    return sorted(name for name in files if name.startswith(prefix))


def export(work: Path, out: Path, part_mib: float = 15.0) -> dict:
    """Write ``<work>``'s generator (``gan/eval/generator.pt``) and oracle run to ``out``."""
    generator, oracle = work / "gan" / "eval" / "generator.pt", work / "oracle"
    for needed in (generator, oracle / "method.json", oracle / "models"):
        if not needed.exists():
            raise BundleError(f"{needed} is missing: run bench.gan_gate (train and eval) first")
    saved = generator_record(load_generator(generator))
    half = {k: v.half() if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    files = {}
    limit = int(part_mib * 2**20)
    for i, part in enumerate(_parts(half, int(limit * 0.8))):  # room for torch.save's own records
        files[f"generator-{i}.pt"] = _serialized(part)
    for model in sorted((oracle / "models").glob("*.pt")):
        files[f"oracle-{model.name}"] = model.read_bytes()
    too_big = [name for name, data in files.items() if len(data) > limit]
    if too_big or len(files) + 1 > MAX_FILES:
        raise BundleError(f"{len(files) + 1} files (at most {MAX_FILES}); over {part_mib} MiB: {too_big or 'none'}")
    curve = work / "curve.jsonl"
    scores = oracle / "eval" / "oracle_eval.json"
    manifest = {
        "format": BUNDLE_FORMAT,
        "generator": {
            "config": saved["config"],
            "dtype": "float16",
            "parts": _named(files, "generator-"),
            "trained_on": generator_trained_on(generator),
        },
        "oracle": {
            "method": json.loads((oracle / "method.json").read_text()),
            "models": _named(files, "oracle-"),
            "scores": json.loads(scores.read_text()) if scores.exists() else None,
        },
        "curve": [json.loads(line) for line in curve.read_text().splitlines()] if curve.exists() else [],
        "sha256": {name: _sha256(data) for name, data in files.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def restore(bundle: Path, work: Path) -> dict:
    """Rebuild ``<work>/gan/eval/generator.pt`` (fp32 from the fp16 parts), ``<work>/oracle`` and
    ``<work>/curve.jsonl`` from a bundle, checking every file first."""
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{bundle} has no manifest.json")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    data = {}
    for name, digest in manifest["sha256"].items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path} is missing")
        data[name] = path.read_bytes()
        if _sha256(data[name]) != digest:
            raise BundleError(f"{path}: checksum mismatch (corrupt or from another bundle)")
    generator, oracle = work / "gan" / "eval" / "generator.pt", work / "oracle"
    for existing in (generator, oracle / "models"):
        if existing.exists():
            raise BundleError(f"{existing} exists; restore into an empty --work")
    state = {}
    for name in manifest["generator"]["parts"]:
        state.update(torch.load(io.BytesIO(data[name]), map_location="cpu", weights_only=True))
    save_generator(generator_from_record(manifest["generator"]["config"], state), generator,
                   manifest["generator"].get("trained_on"))  # fmt: skip
    (oracle / "models").mkdir(parents=True)
    (oracle / "method.json").write_text(json.dumps(manifest["oracle"]["method"], indent=1) + "\n")
    for name in manifest["oracle"]["models"]:
        (oracle / "models" / name.removeprefix("oracle-")).write_bytes(data[name])
    if manifest["oracle"]["scores"] is not None:
        (oracle / "eval").mkdir(exist_ok=True)
        (oracle / "eval" / "oracle_eval.json").write_text(json.dumps(manifest["oracle"]["scores"]) + "\n")
    if manifest["curve"]:
        (work / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in manifest["curve"]))
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("export", "restore"))
    p.add_argument("--work", required=True, help="a bench.gan_gate --work folder")
    p.add_argument("--out", help="export: the bundle's folder")
    p.add_argument("--bundle", help="restore: the bundle's folder")
    p.add_argument("--part-mib", type=float, default=15.0, help="export: the largest file")
    args = p.parse_args()
    try:
        if args.action == "export":
            manifest = export(Path(args.work), Path(args.out or p.error("export needs --out")), args.part_mib)
        else:
            manifest = restore(Path(args.bundle or p.error("restore needs --bundle")), Path(args.work))
    except BundleError as err:
        raise SystemExit(f"gate_bundle {args.action}: {err}") from None
    last = manifest["curve"][-1] if manifest["curve"] else {}
    print(f"{args.action}: {len(manifest['sha256'])} weight files; the gate's last point: "
          f"{last.get('steps', '?')} steps, gate {last.get('gate', '?')}")  # fmt: skip


if __name__ == "__main__":
    main()
