"""DeepSeek-OCR v1 input building, checked against a STAND-IN for its remote code.

`deepseek-ai/DeepSeek-OCR` keeps its modelling code in the checkpoint, which cannot be
downloaded here. `StandInDeepseekOcrV1` is NOT that model: it has the same forward signature
(`input_ids, attention_mask, labels, images, images_seq_mask, images_spatial_crop`) and the
same input contract (per example one `(crops, global_view)` pair and one crop grid; the
image-token count of a view derived from its tensor size, with a newline token per row and a
view separator), and checks it, so a builder that drifts from v1's layout fails here.
"""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from deepsynth.data.collate import SummaryCollator
from deepsynth.model.families import V1Family
from deepsynth.model.tokens import V1_MODES
from deepsynth.model.freezing import freeze_vision


class StandInDeepseekOcrV1(nn.Module):
    """Stand-in for the v1 remote code: same forward signature, checks the input layout."""

    def __init__(self, vocab_size: int, hidden: int = 16):
        super().__init__()
        self.config = SimpleNamespace(model_type="deepseek_vl_v2")
        self.model = nn.Module()
        self.model.sam_model = nn.Conv2d(3, hidden, kernel_size=64, stride=64)  # one feature per 16px patch x4
        self.model.vision_model = nn.Linear(hidden, hidden)
        self.model.projector = nn.Linear(hidden, hidden)
        self.model.image_newline = nn.Parameter(torch.randn(hidden))
        self.model.view_seperator = nn.Parameter(torch.randn(hidden))
        self.model.embed_tokens = nn.Embedding(vocab_size, hidden)
        self.model.layers = nn.ModuleList([nn.Linear(hidden, hidden)])
        self.model.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size)

    def _grid_features(self, views: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
        m = self.model
        grid = m.projector(m.vision_model(m.sam_model(views).flatten(2).transpose(1, 2)))  # (n, q*q, d)
        q = int(grid.shape[1] ** 0.5)
        grid = grid.view(rows, cols, q, q, -1).permute(0, 2, 1, 3, 4).reshape(rows * q, cols * q, -1)
        newline = m.image_newline.expand(rows * q, 1, -1)
        return torch.cat([grid, newline], dim=1).flatten(0, 1)

    def forward(self, input_ids, attention_mask=None, labels=None, images=None, images_seq_mask=None,
                images_spatial_crop=None, **kwargs):
        embeds = self.model.embed_tokens(input_ids)
        for idx, ((crops, global_view), (cols, rows)) in enumerate(zip(images, images_spatial_crop.tolist())):
            parts = []
            if crops.abs().sum() != 0:
                assert crops.shape[0] == cols * rows, "one crop per grid cell"
                parts.append(self._grid_features(crops, cols, rows))
            else:
                assert (cols, rows) == (1, 1), "no crops means a 1x1 grid"
            parts.insert(0, self._grid_features(global_view, 1, 1))
            parts.append(self.model.view_seperator[None])
            features = torch.cat(parts)
            mask = images_seq_mask[idx]
            assert int(mask.sum()) == features.shape[0], f"{int(mask.sum())} image tokens, {features.shape[0]} features"
            embeds[idx] = embeds[idx].masked_scatter(mask[:, None], features)
        hidden = self.model.norm(self.model.layers[0](embeds))
        logits = self.lm_head(hidden)
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)


@pytest.fixture
def tokenizer(tiny):
    return tiny.processor.tokenizer  # has <image>, BOS, EOS and PAD like v1's


@pytest.mark.parametrize(
    "mode,size,expected",
    [
        ("tiny", (900, 1200), 8 * 9 + 1),
        ("small", (640, 640), 10 * 11 + 1),
        ("base", (1240, 1754), 16 * 17 + 1),
        ("large", (500, 500), 20 * 21 + 1),
        ("gundam", (600, 600), 16 * 17 + 1),  # fits one crop: global view only
        ("gundam", (1240, 1754), 16 * 17 + 1 + (10 * 2 + 1) * (10 * 3)),  # A4: a 2x3 grid of 640px crops
    ],
)
def test_v1_token_counts_match_the_published_layout(tokenizer, mode, size, expected):
    assert V1Family(tokenizer, mode).count_visual_tokens(*size) == expected


@pytest.mark.parametrize("mode", sorted(V1_MODES))
def test_v1_inputs_satisfy_the_stand_in(tokenizer, mode):
    family = V1Family(tokenizer, mode)
    model = StandInDeepseekOcrV1(len(tokenizer))
    examples = [
        {"pages": [Image.new("RGB", (1240, 1754), "white")], "summary": "Energy costs rose."},
        {"pages": [Image.new("RGB", (600, 500), "gray")], "summary": "Farm output fell."},
    ]
    batch = SummaryCollator(family, max_length=4096)(examples)
    inputs = batch.inputs
    assert set(inputs) == {"input_ids", "attention_mask", "labels", "images", "images_seq_mask", "images_spatial_crop"}
    assert inputs["images_spatial_crop"].shape == (2, 2)
    view = V1_MODES[mode].base_size if V1_MODES[mode].crop else V1_MODES[mode].image_size
    assert inputs["images"][0][1].shape == (1, 3, view, view)
    assert inputs["input_ids"][0, 0] == tokenizer.bos_token_id
    loss = model(**inputs).loss
    assert torch.isfinite(loss)


def test_v1_gundam_crops_an_a4_page(tokenizer):
    family = V1Family(tokenizer, "gundam")
    encoded = family.encode_prompt([Image.new("RGB", (1240, 1754), "white")], "Summarize.")
    assert encoded.vision["crops"].shape == (6, 3, 640, 640)
    assert encoded.vision["spatial_crop"].tolist() == [2, 3]
    assert sum(t == family.image_token_id for t in encoded.input_ids) == encoded.num_visual_tokens


def test_v1_refuses_multi_page_examples_and_unknown_modes(tokenizer):
    page = Image.new("RGB", (640, 640), "white")
    with pytest.raises(ValueError, match="one page image per example"):
        V1Family(tokenizer).encode_prompt([page, page], "Summarize.")
    with pytest.raises(ValueError, match="gundam"):
        V1Family(tokenizer, "huge")


def test_freeze_vision_on_v1_freezes_sam_and_clip_only(tokenizer):
    model = StandInDeepseekOcrV1(len(tokenizer))
    rows = {row.module: row for row in freeze_vision(model)}
    assert rows["sam_model"].trainable == 0 and rows["vision_model"].trainable == 0
    assert model.model.projector.weight.requires_grad
    assert all(p.requires_grad for p in model.model.layers.parameters())
