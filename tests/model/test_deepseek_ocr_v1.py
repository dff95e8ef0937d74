"""The native DeepSeek-OCR v1 (`deepsynth.model.deepseek_ocr_v1`) on the tiny v1 and, on `meta`, at full size.

Parity of the numbers with the reference remote code is checked once, outside the suite
(`benchmarks/v1_parity.py`, figures in docs/models.md); these tests hold the names, the layout,
the loss and the generation contract.
"""

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers.core_model_loading import revert_weight_conversion

from deepsynth.data.collate import SummaryCollator
from deepsynth.model.deepseek_ocr_v1 import DeepseekOCRForCausalLM, DeepseekOcrV1Config
from deepsynth.model.freezing import freeze_vision
from deepsynth.model.inputs import placement, to_model
from deepsynth.model.loading import load_model_and_processor


def reference_names(config: DeepseekOcrV1Config) -> set[str]:
    """The state-dict names of the reference module tree (remote code of deepseek-ai/DeepSeek-OCR) for `config`.

    Written from facts about that code, not from ours: `deepencoder.py` builds SAM as
    `ImageEncoderViT` (`patch_embed.proj`, `pos_embed`, `blocks.N` of norm1 / attn.qkv / attn.proj /
    relative-position tables / norm2 / mlp.lin1 / mlp.lin2, a 4-module `neck` of bias-free convs and
    LayerNorm2d, bias-free `net_2`, `net_3`) and CLIP as `VitModel` (`embeddings` with a class
    embedding, a bias-free patch conv, a position table and its persistent `position_ids` buffer,
    `pre_layrnorm`, `transformer.layers.N` with a fused `qkv_proj`); `modeling_deepseekocr.py` adds
    `projector.layers` (linear), `image_newline`, `view_seperator`; `modeling_deepseekv2.py`'s decoder
    layers hold Llama attention without biases and, from `first_k_dense_replace` on, an MoE of a
    `gate`, per-expert `experts.E` MLPs and `shared_experts`.
    """
    sam, clip, lang = config.sam_sizes, config.clip_sizes, config.language_config
    wb = (".weight", ".bias")
    names = {"model.sam_model.patch_embed.proj" + s for s in wb} | {"model.sam_model.pos_embed"}
    for i in range(sam["layers"]):
        block = f"model.sam_model.blocks.{i}."
        names |= {block + m + s for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.lin1", "mlp.lin2") for s in wb}
        names |= {block + "attn.rel_pos_h", block + "attn.rel_pos_w"}
    names |= {"model.sam_model.neck.0.weight", "model.sam_model.neck.2.weight", "model.sam_model.net_2.weight",
              "model.sam_model.net_3.weight"} | {f"model.sam_model.neck.{i}{s}" for i in (1, 3) for s in wb}
    vit = "model.vision_model."
    names |= {vit + "embeddings." + n for n in ("class_embedding", "patch_embedding.weight",
                                                 "position_embedding.weight", "position_ids")}
    names |= {vit + "pre_layrnorm" + s for s in wb}
    for i in range(clip["layers"]):
        layer = f"{vit}transformer.layers.{i}."
        names |= {layer + m + s for m in ("self_attn.qkv_proj", "self_attn.out_proj", "layer_norm1", "layer_norm2",
                                          "mlp.fc1", "mlp.fc2") for s in wb}
    names |= {"model.projector.layers" + s for s in wb} | {"model.image_newline", "model.view_seperator"}
    names |= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    mlp = ("gate_proj", "up_proj", "down_proj")
    for i in range(lang["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        names |= {layer + n + ".weight" for n in ("input_layernorm", "post_attention_layernorm")}
        names |= {f"{layer}self_attn.{p}_proj.weight" for p in "qkvo"}
        if i < lang["first_k_dense_replace"]:
            names |= {f"{layer}mlp.{p}.weight" for p in mlp}
        else:
            names |= {f"{layer}mlp.gate.weight"} | {f"{layer}mlp.shared_experts.{p}.weight" for p in mlp}
            names |= {f"{layer}mlp.experts.{e}.{p}.weight" for e in range(lang["n_routed_experts"]) for p in mlp}
    return names


@pytest.fixture
def tiny_v1(tiny_v1_dir):
    torch.manual_seed(0)
    return load_model_and_processor(str(tiny_v1_dir))


def page(width=900, height=1300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def test_saved_weights_have_the_reference_names(tiny_v1_dir):
    config = DeepseekOcrV1Config.from_pretrained(tiny_v1_dir)
    with safe_open(tiny_v1_dir / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    assert saved == reference_names(config)


def test_published_size_keeps_the_reference_names_and_shapes():
    with torch.device("meta"):
        model = DeepseekOCRForCausalLM(DeepseekOcrV1Config())
    original = revert_weight_conversion(model, model.state_dict())
    assert set(original) == reference_names(model.config)
    # The published shapes: SAM-B's 768 wide blocks, CLIP-L's fused 3 x 1024 projection, a projector
    # from [CLIP, SAM] (2 x 1024) to the decoder's 1280, 64 experts of width 896.
    assert original["model.sam_model.blocks.0.attn.qkv.weight"].shape == (3 * 768, 768)
    assert original["model.sam_model.net_3.weight"].shape == (1024, 512, 3, 3)
    assert original["model.vision_model.transformer.layers.23.self_attn.qkv_proj.weight"].shape == (3072, 1024)
    assert original["model.vision_model.embeddings.position_embedding.weight"].shape == (257, 1024)
    assert original["model.projector.layers.weight"].shape == (1280, 2048)
    assert original["model.layers.11.mlp.experts.63.gate_proj.weight"].shape == (896, 1280)
    assert original["model.layers.0.mlp.gate_proj.weight"].shape == (6848, 1280)
    assert original["lm_head.weight"].shape == (129280, 1280)


def test_loading_the_published_names_and_saving_back_is_exact(tiny_v1, tiny_v1_dir, tmp_path):
    model = tiny_v1.model
    assert next(model.parameters()).dtype == torch.bfloat16, "stored in bf16, loaded as stored"
    with safe_open(tiny_v1_dir / "model.safetensors", "pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
    ours = model.state_dict()
    # The CLIP projections are the fused qkv_proj in thirds; the routed experts the per-expert MLPs stacked.
    qkv = original["model.vision_model.transformer.layers.1.self_attn.qkv_proj.weight"]
    assert torch.equal(ours["model.vision_model.transformer.layers.1.self_attn.k_proj.weight"], qkv.chunk(3)[1])
    gate_up = ours["model.language_model.layers.1.mlp.experts.gate_up_proj"]
    assert torch.equal(gate_up[2], torch.cat([original["model.layers.1.mlp.experts.2.gate_proj.weight"],
                                              original["model.layers.1.mlp.experts.2.up_proj.weight"]]))
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(original)
        assert all(torch.equal(f.get_tensor(k), original[k]) for k in original)


def batch_for(family, mode_pages, summary="Rail traffic fell."):
    return SummaryCollator(family, max_length=4096)([{"pages": [p], "summary": summary} for p in mode_pages])


def test_loss_is_the_token_sum_over_num_items_in_batch(tiny_v1):
    model, _, family = tiny_v1
    model = model.float()
    batch = batch_for(family, [page(), page(700, 600, seed=1)])
    inputs = to_model(batch.inputs, *placement(model))
    out = model(**inputs, num_items_in_batch=1)
    logits, labels = out.logits[:, :-1].float(), inputs["labels"][:, 1:]
    summed = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                               reduction="sum")
    torch.testing.assert_close(out.loss, summed)
    torch.testing.assert_close(model(**inputs, num_items_in_batch=7).loss, summed / 7)
    tokens = int((labels != -100).sum())
    torch.testing.assert_close(model(**inputs).loss, summed / tokens)


def test_gundam_crops_reach_their_positions(tiny_v1):
    model, _, family = tiny_v1
    model = model.float().eval()
    assert family.mode.crop
    tall = page(900, 1300)
    batch = batch_for(family, [tall])
    inputs = to_model(batch.inputs, *placement(model))
    cols, rows = inputs["images_spatial_crop"][0].tolist()
    assert inputs["pixel_values_local"].shape == (cols * rows, 3, 640, 640) and cols * rows > 1
    assert int((inputs["input_ids"] == family.image_token_id).sum()) == family.count_visual_tokens(*tall.size)
    with torch.no_grad():
        before = model(**inputs).logits
        inputs["pixel_values_local"][-1] += 0.5  # the last crop only
        after = model(**inputs).logits
    image_positions = (inputs["input_ids"][0] == family.image_token_id).nonzero().flatten()
    changed = (before[0] - after[0]).abs().amax(-1) > 0
    first_changed = int(changed.nonzero()[0])
    # Crops come first in the layout, the last crop's rows last among them: nothing before its first row moves.
    assert image_positions[0] < first_changed < image_positions[-1]
    assert changed[first_changed:].all()


def test_every_trainable_parameter_gets_a_gradient_and_vision_stays_frozen(tiny_v1):
    model, _, family = tiny_v1
    model = model.float()
    freeze_vision(model, include_projector=False)
    inputs = to_model(batch_for(family, [page(), page(600, 600, seed=2)]).inputs, *placement(model))
    model(**inputs).loss.backward()
    frozen = {id(p) for part in family.vision_parts(model, include_projector=False).values() for p in part.parameters()}
    for name, parameter in model.named_parameters():
        if id(parameter) in frozen:
            assert parameter.grad is None, name
        elif parameter.requires_grad and ".mlp.experts." not in name:  # an unrouted expert has none
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # The projector and the layout embeddings train in full mode when not frozen: no no_grad around them.
    assert model.model.projector.layers.weight.grad.abs().sum() > 0
    assert model.model.image_newline.grad.abs().sum() > 0 and model.model.view_seperator.grad.abs().sum() > 0


def test_generation_with_the_cache_equals_generation_without(tiny_v1):
    model, tokenizer, family = tiny_v1
    model = model.float().eval()
    encoded = family.encode_prompt([page()], "Summarize the document.")
    input_ids = torch.tensor([encoded.input_ids])
    vision = family.merge_vision([encoded], input_ids)
    common = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    cached = model.generate(input_ids=input_ids, **vision, use_cache=True, **common)
    uncached = model.generate(input_ids=input_ids, **vision, use_cache=False, **common)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == input_ids.shape[1] + 8


def test_inputs_move_with_to_and_take_the_model_dtype(tiny_v1):
    model, _, family = tiny_v1
    inputs = to_model(batch_for(family, [page()]).inputs, *placement(model))
    assert all(isinstance(v, torch.Tensor) for v in inputs.values())
    assert inputs["pixel_values"].dtype == inputs["pixel_values_local"].dtype == torch.bfloat16
    assert torch.isfinite(model(**inputs).loss)


def test_unsupported_configurations_are_refused():
    with pytest.raises(ValueError, match="use_mla"):
        DeepseekOcrV1Config(language_config={"use_mla": True})
    with pytest.raises(ValueError, match="must equal CLIP's"):
        DeepseekOcrV1Config(vision_config={"width": {"sam_vit_b": {"downsample_channels": [512, 768]}}})


def test_qlora_quantizes_the_decoder_and_keeps_vision_in_full_precision(tiny_v1_dir):
    import bitsandbytes as bnb

    from deepsynth.model.quantize import Nf4Experts
    from deepsynth.training.modes import load_for_training, prepare_trainable

    model, _, family = load_for_training(str(tiny_v1_dir), "qlora", dtype="float32", device="cpu", v1_mode="base")
    decoder = dict(model.model.language_model.named_modules())
    assert isinstance(decoder["layers.0.self_attn.q_proj"], bnb.nn.Linear4bit)
    assert isinstance(decoder["layers.1.mlp.experts"], Nf4Experts)
    assert all(not isinstance(m, bnb.nn.Linear4bit) for part in family.vision_parts(model, True).values()
               if isinstance(part, torch.nn.Module) for m in part.modules())
    model, _ = prepare_trainable(model, family, "qlora", rank=4, alpha=8)
    inputs = to_model(batch_for(family, [page(1024, 1024)]).inputs, *placement(model))
    model(**inputs).loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values())
    # lora_B starts at zero, so only it has a nonzero gradient on the first step.
    assert all(p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n)
