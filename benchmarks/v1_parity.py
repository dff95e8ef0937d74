"""Parity of our native DeepSeek-OCR v1 with the reference remote code, on one tiny random model.

Not part of the test suite: the reference needs transformers 4.46.3 (its decoder imports
`LlamaFlashAttention2`, gone since 4.48), so it runs in a second, throwaway interpreter. This
script builds a tiny v1 with our code (float32, every weight random, SAM with one global-attention
layer), saves it in the published layout, then runs the reference interpreter on itself: the
reference's own classes (`ImageEncoderViT`, `VitModel`, `MlpProjector`, `DeepseekOCRForCausalLM`)
are built at the same tiny sizes, our weights are loaded into them with `strict=True`, and both
models see the same pages in every mode: tiny, small, base, large (512, 640, 1024, 1280 px views) and gundam (a 1024 px
view plus 640 px crops). It prints the largest absolute logit difference and whether 16 greedy tokens agree.

    python -m venv /tmp/v1ref && /tmp/v1ref/bin/pip install torch==2.13.0 transformers==4.46.3 \\
        einops addict easydict safetensors pillow
    # a folder holding the model repository's modeling_deepseekocr.py, deepencoder.py,
    # modeling_deepseekv2.py, configuration_deepseek_v2.py and conversation.py
    python benchmarks/v1_parity.py --reference-code /tmp/v1src --reference-python /tmp/v1ref/bin/python

torchvision is imported by the reference only for its PIL image transform, which this check does
not use (both models get the same tensors); where it is missing a stand-in module takes its place.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("tiny", "small", "base", "large", "gundam")
NEW_TOKENS = 16
PAGE_TEXT = ("Rail traffic fell 2.1 percent in inland towns. Fell 2.1 percent: rail traffic in inland towns. "
             "Power output rose in the north. Rose 3.4 percent: power output of the coastal plants. ") * 8


def ours(work: Path) -> None:
    """Build, save and run our port; write inputs and results for the reference side."""
    import torch

    from deepsynth.data.render import PageLayout, render_pages
    from deepsynth.model.deepseek_ocr_v1 import DeepseekOCRForCausalLM
    from deepsynth.model.families import V1Family
    from deepsynth.model.tiny import build_tiny_v1_model

    model_dir = work / "model"
    build_tiny_v1_model(model_dir, seed=0, dtype="float32", global_attn_indexes=(1,))
    model = DeepseekOCRForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    # Every weight random and away from its init (norms near 1), so no part can hide behind a zero.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
        # Logits of a few units, so greedy decoding does not settle on one token at once.
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=generator))
    model.save_pretrained(model_dir)
    model.eval()
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(model_dir)
    # A tall page, so gundam mode cuts it into a grid of 640 px crops.
    page = render_pages(PAGE_TEXT, PageLayout(1100, 1600, font_size=22))[0]
    cases = {}
    for mode in MODES:
        family = V1Family(tokenizer, mode=mode)
        encoded = family.encode_prompt([page], "Summarize the document.")
        input_ids = torch.tensor([encoded.input_ids])
        vision = family.merge_vision([encoded], input_ids)
        with torch.no_grad():
            logits = model(input_ids=input_ids, **vision).logits
            generated = model.generate(input_ids=input_ids, **vision, max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, do_sample=False)
        cases[mode] = {"input_ids": input_ids, **vision, "logits": logits,
                       "tokens": generated[0, input_ids.shape[1]:].tolist()}
    torch.save(cases, work / "ours.pt")


def reference(work: Path, code: Path) -> None:
    """In the reference interpreter: build the remote code's model at the tiny sizes, load our weights, compare."""
    import types
    from functools import partial

    import torch
    import transformers  # noqa: F401  (before any stand-in: it probes for torchvision itself)
    from safetensors.torch import load_file

    try:
        import torchvision  # noqa: F401
    except Exception:  # a missing or mismatched build: stand in for the transforms the check never calls
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        stub.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        stub.transforms.functional.InterpolationMode = object
        for name in ("ToTensor", "Normalize", "Compose"):
            setattr(stub.transforms, name, object)
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms,
                            "torchvision.transforms.functional": stub.transforms.functional})

    package = work / "reference_pkg" / "deepseek_ocr_reference"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("modeling_deepseekocr.py", "deepencoder.py", "modeling_deepseekv2.py", "configuration_deepseek_v2.py",
                 "conversation.py"):
        shutil.copy(code / name, package / name)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(package.parent))
    from addict import Dict
    from deepseek_ocr_reference import deepencoder, modeling_deepseekocr as ocr
    from easydict import EasyDict

    config_json = json.loads((work / "model" / "config.json").read_text())
    sam, clip = config_json["vision_config"]["width"]["sam_vit_b"], config_json["vision_config"]["width"]["clip-l-14-224"]
    n_embed = config_json["projector_config"]["n_embed"]

    def tiny_sam():
        encoder = deepencoder.ImageEncoderViT(
            depth=sam["layers"], embed_dim=sam["width"], img_size=1024, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=sam["heads"], patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=sam["global_attn_indexes"], window_size=14,
            out_chans=sam["out_chans"])
        # deepencoder.py builds these two with the published widths (256 -> 512 -> 1024) as constants.
        first, second = sam["downsample_channels"]
        encoder.net_2 = torch.nn.Conv2d(sam["out_chans"], first, kernel_size=3, stride=2, padding=1, bias=False)
        encoder.net_3 = torch.nn.Conv2d(first, second, kernel_size=3, stride=2, padding=1, bias=False)
        return encoder

    def tiny_clip():
        cfg = EasyDict({**deepencoder.vit_model_cfg, "num_layers": clip["layers"], "hidden_size": clip["width"],
                        "num_heads": clip["heads"], "num_attention_heads": clip["heads"],
                        "ffn_hidden_size": 4 * clip["width"]})
        return deepencoder.VitModel(cfg=cfg)

    ocr.build_sam_vit_b, ocr.build_clip_l = tiny_sam, tiny_clip
    config = ocr.DeepseekOCRConfig.from_pretrained(work / "model")
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = ocr.DeepseekOCRForCausalLM(config)
    # modeling_deepseekocr.py sizes these for the published widths (2048 -> 1280) as constants.
    model.model.projector = deepencoder.MlpProjector(Dict(projector_type="linear", input_dim=2 * clip["width"],
                                                          n_embed=n_embed))
    model.model.image_newline = torch.nn.Parameter(torch.zeros(n_embed))
    model.model.view_seperator = torch.nn.Parameter(torch.zeros(n_embed))
    model.load_state_dict(load_file(work / "model" / "model.safetensors"), strict=True)
    model = model.float().eval()

    results = {}
    for mode, case in torch.load(work / "ours.pt").items():
        input_ids = case["input_ids"]
        crops = case.get("pixel_values_local")
        images = [(crops if crops is not None else torch.zeros(1, 3, 640, 640), case["pixel_values"])]
        inputs = dict(images=images, images_seq_mask=input_ids == config_json["image_token_id"],
                      images_spatial_crop=case["images_spatial_crop"])
        with torch.no_grad():
            logits = model(input_ids=input_ids, **inputs).logits
            generated = model.generate(input_ids=input_ids, **inputs, max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
        tokens = generated[0, input_ids.shape[1]:].tolist()
        results[mode] = {
            "visual_tokens": int((input_ids == config_json["image_token_id"]).sum()),
            "crops": 0 if crops is None else int(crops.shape[0]),
            "max_abs_logit_diff": float((logits.float() - case["logits"].float()).abs().max()),
            "logit_scale": float(case["logits"].abs().max()),
            "tokens_equal": tokens == case["tokens"],
            "ours": case["tokens"], "reference": tokens,
        }
    (work / "results.json").write_text(json.dumps(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-code", type=Path, required=True, help="folder with the remote code's .py files")
    parser.add_argument("--reference-python", required=True, help="an interpreter with transformers 4.46.3")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--side", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="v1-parity-"))
    if args.side == "reference":
        reference(work, args.reference_code)
        return 0
    ours(work)
    subprocess.run([args.reference_python, __file__, "--side", "reference", "--work", str(work),
                    "--reference-code", str(args.reference_code), "--reference-python", args.reference_python],
                   check=True)
    results = json.loads((work / "results.json").read_text())
    print(f"{'mode':<8} {'visual tokens':>13} {'crops':>5} {'max |dlogit|':>13} {'max |logit|':>11} {'16 tokens equal':>15}")
    for mode, r in results.items():
        print(f"{mode:<8} {r['visual_tokens']:>13} {r['crops']:>5} {r['max_abs_logit_diff']:>13.2e} "
              f"{r['logit_scale']:>11.2f} {str(r['tokens_equal']):>15}")
    print(json.dumps({mode: {k: v for k, v in r.items() if k not in ("ours", "reference")} for mode, r in results.items()}))
    return 0 if all(r["tokens_equal"] and r["max_abs_logit_diff"] <= 1e-3 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
