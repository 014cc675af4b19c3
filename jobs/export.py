"""Export a depth checkpoint for deployment (ONNX, Hugging Face transformers, TorchScript, torch.export), then check
the export against PyTorch.

    python jobs/export.py --checkpoint runs/default/student.safetensors --format onnx --out student.onnx
    python jobs/export.py --checkpoint depth_anything_v2_vits.pth --format hf --out dav2-small-hf/
    python jobs/export.py --checkpoint student.safetensors --format torchscript --out student.pt --input-size 266 350
    python jobs/export.py --checkpoint hf://org/repo/model.safetensors --format pt2 --out student.pt2

The model is inferred from the weights (--model to override). Every export takes an ImageNet-normalised image
(B, 3, H, W), H and W multiples of 14 for dav2_* models, and returns disparity (B, H, W). ONNX (opset 20) and pt2
are dynamic in batch, height and width unless --static; TorchScript is traced at --input-size and stays dynamic.
--format hf writes a transformers DepthAnythingForDepthEstimation directory (config.json + model.safetensors) for
dav2_* models only. Afterwards the export is run at the export size and a second size (hf: 518 x 518) on CPU and
compared with PyTorch: max |export - torch| / max |torch| must be below 1e-4 (--no-check skips this).
Needs the export extra: pip install -e ".[export]".
"""

from __future__ import annotations

import argparse
import sys

from dad_ray.logging_utils import setup_logging
from dad_ray.models.export import DEFAULT_SIZE, FORMATS, TOLERANCE, export_model, verify_export


def _load_model(checkpoint: str, name: str | None):
    from dad_ray.models import create_model, load_weights
    from dad_ray.models.weights import infer_model_name

    model = create_model(name or infer_model_name(checkpoint))
    load_weights(model, checkpoint)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="weights: .pth / .safetensors, a transformers dir, hf://")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx | hf | torchscript | pt2")
    parser.add_argument("--out", required=True, help="output file (hf: output directory)")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=list(DEFAULT_SIZE),
        help="export (trace) size, multiples of 14 for dav2_* (default 518 518)",
    )
    parser.add_argument("--model", help="registry name, e.g. dav2_vits or timm:convnext_atto (default: inferred)")
    parser.add_argument("--static", action="store_true", help="ONNX / pt2: fixed batch 1 and --input-size")
    parser.add_argument("--no-check", action="store_true", help="do not run the export against PyTorch")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        model = _load_model(args.checkpoint, args.model)
        path, sizes = export_model(model, args.format, args.out, args.input_size, dynamic=not args.static)
    except (OSError, ValueError, ImportError) as err:  # missing / uncached / mismatched weights, bad size, no extra
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {model.model_name} ({args.format}) to {path}")
    if args.no_check:
        return 0
    errors = verify_export(model, path, args.format, sizes)
    for (h, w), err in errors.items():
        print(f"  {h}x{w}: max relative error {err:.2e} {'ok' if err <= TOLERANCE else 'ABOVE ' + str(TOLERANCE)}")
    return 0 if all(err <= TOLERANCE for err in errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
