"""data.augment: each transform's behaviour, the text changes under fuzzing, mixing, determinism and exact resume,
augmentation off leaving training untouched, and config misfits as one clear ConfigError."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.config.augment import AugmentConfig
from modelfoundry.data import augment_image as ops
from modelfoundry.data.augment import Augmenter, Mix, build_augmenter, check_augment_task, scaled_columns
from modelfoundry.data.augment_text import TokenChanges, change_tokens
from modelfoundry.data.prepare import prepare_data
from modelfoundry.errors import ConfigError
from modelfoundry.models import build_model
from modelfoundry.train.loop import fit
from modelfoundry.train.runtime import seed_everything


def image_augmenter(seed=0, **image):
    return Augmenter(["image"], seed, image=AugmentConfig.model_validate({"image": image}).image)


# ----------------------------------------------------------------------------------------------------- images
def test_a_flip_mirrors_every_chosen_row():
    x = torch.randn(6, 2, 5, 7)
    (out,), _ = image_augmenter(flip={"p": 1.0})((x,), 1, 0)
    torch.testing.assert_close(out, x.flip(-1), rtol=0, atol=0)
    (out,), _ = image_augmenter(flip={"p": 1.0, "horizontal": False, "vertical": True})((x,), 1, 0)
    torch.testing.assert_close(out, x.flip(-2), rtol=0, atol=0)
    (out,), _ = image_augmenter(flip={"p": 0.0})((x,), 1, 0)
    torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_rotating_by_90_degrees_turns_the_image_counter_clockwise():
    x = torch.randn(3, 1, 6, 6)
    maps = ops.affine_inverse(torch.full((3,), 90.0), torch.zeros(3, 2), torch.ones(3), torch.zeros(3), 6, 6)
    torch.testing.assert_close(ops.warp(x, maps, fill=-1.0), torch.rot90(x, 1, (-2, -1)), rtol=0, atol=1e-5)


def test_a_shift_moves_pixels_and_fills_with_black():
    x = torch.arange(1.0, 65.0).reshape(1, 1, 8, 8)
    maps = ops.affine_inverse(torch.zeros(1), torch.tensor([[0.25, 0.0]]), torch.ones(1), torch.zeros(1), 8, 8)
    out = ops.warp(x, maps, fill=-3.0)  # a quarter of 8 pixels: 2 to the right
    torch.testing.assert_close(out[..., 2:], x[..., :6], rtol=0, atol=1e-5)
    assert torch.all(out[..., :2] == -3.0)


def test_a_crop_shows_only_its_part_stretched_to_the_full_size():
    x = torch.arange(8.0).expand(1, 1, 8, 8).clone()  # each pixel holds its column number
    maps = ops.crop_map(torch.tensor([0.25]), torch.tensor([1.0]), torch.tensor([[-1.0, -1.0]]))  # top-left quarter
    out = ops.warp(x, maps, fill=-1.0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 3.5  # columns 0-3 only
    assert out[0, 0, 0, -1] > out[0, 0, 0, 0]  # still increasing left to right: stretched, not tiled
    whole = ops.crop_map(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([[0.3, -0.7]]))
    torch.testing.assert_close(ops.warp(x, whole, fill=-1.0), x, rtol=0, atol=1e-5)


def test_cutout_sets_a_square_of_the_right_size_to_the_image_mean():
    x = torch.randn(5, 1, 8, 8)
    (out,), _ = image_augmenter(cutout={"p": 1.0, "size": 0.25, "holes": 1})((x,), 1, 0)
    for row in range(5):
        changed = (out[row, 0] != x[row, 0]).nonzero()
        assert len(changed) == 4  # a 2 x 2 square
        assert (changed.max(0).values - changed.min(0).values).tolist() == [1, 1]
        assert torch.allclose(out[row, 0][out[row, 0] != x[row, 0]], x[row].mean())


def test_noise_and_color_change_only_the_chosen_rows():
    x = torch.randn(64, 1, 4, 4)
    augmenter = image_augmenter(noise={"p": 0.5, "std": 0.1}, color={"p": 0.5})
    (out,), _ = augmenter((x,), 1, 0)
    changed = (out != x).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 60  # about 3/4 of the rows get one or both
    noise = image_augmenter(noise={"p": 1.0, "std": 0.1})((x,), 1, 0)[0][0] - x
    assert noise.std().item() == pytest.approx(0.1, rel=0.1)


# ------------------------------------------------------------------------------------------------------- text
SPECIAL = torch.tensor([0, 1, 2, 3])  # pad, unknown, separator, a [CLS]-like token


def text_changes(**chances):
    values = {"delete": 0.0, "swap": 0.0, "mask": 0.0, "replace": 0.0, **chances}
    return TokenChanges(**values, unknown_id=1, pad_id=0, special=SPECIAL, vocabulary=torch.arange(4, 50))


def texts(rows):
    """(tokens, mask): each row [CLS] words... [SEP] then padding."""
    lengths = [len(r) + 2 for r in rows]
    tokens = torch.zeros(len(rows), max(lengths) + 2, dtype=torch.int64)
    for i, words in enumerate(rows):
        tokens[i, :lengths[i]] = torch.tensor([3, *words, 2])
    mask = (torch.arange(tokens.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    return tokens, mask


def test_delete_shifts_left_keeps_the_mask_consistent_and_never_touches_padding_or_specials():
    tokens, mask = texts([list(range(10, 30)), [10, 11, 12], [40]])
    out, out_mask = change_tokens(tokens, mask, text_changes(delete=0.5), torch.Generator().manual_seed(0))
    for row in range(3):
        n = int(out_mask[row].sum())
        assert out_mask[row, :n].all() and not out_mask[row, n:].any()
        assert (out[row, n:] == 0).all()  # padding after the text
        kept = out[row, :n].tolist()
        assert kept[0] == 3 and kept[-1] == 2  # [CLS] and [SEP] stay at the ends
        words = tokens[row, 1:int(mask[row].sum()) - 1].tolist()
        assert 1 <= len(kept) - 2 <= len(words)
        assert kept[1:-1] == [w for w in words if w in kept[1:-1]]  # the words left are in their order
    assert int(out_mask[0].sum()) < int(mask[0].sum())  # half of 20 words: some were dropped
    assert out[2, :3].tolist() == [3, 40, 2]  # a row never loses its only word


def test_replace_draws_from_the_vocabulary_and_never_emits_special_ids():
    tokens, mask = texts([list(range(10, 40))] * 8)
    changes = TokenChanges(0, 0, 0, 0.5, 1, 0, SPECIAL, torch.tensor([7, 8]))
    out, out_mask = change_tokens(tokens, mask, changes, torch.Generator().manual_seed(1))
    replaced = (out != tokens) & (mask == 1)
    assert replaced.sum() > 50 and set(out[replaced].tolist()) <= {7, 8}
    torch.testing.assert_close(out_mask, mask)
    masked, _ = change_tokens(tokens, mask, text_changes(mask=0.5), torch.Generator().manual_seed(1))
    assert set(masked[(masked != tokens)].tolist()) == {1}


def test_swap_moves_each_token_at_most_one_place():
    tokens, mask = texts([list(range(10, 40))] * 4)
    out, out_mask = change_tokens(tokens, mask, text_changes(swap=0.5), torch.Generator().manual_seed(2))
    assert (out != tokens).any()
    for row in range(4):
        assert sorted(out[row].tolist()) == sorted(tokens[row].tolist())
        for pos in (out[row] != tokens[row]).nonzero().flatten().tolist():
            assert out[row, pos] in (tokens[row, pos - 1], tokens[row, pos + 1])
    torch.testing.assert_close(out_mask, mask)


@st.composite
def token_batches(draw):
    rows, length = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    windows = draw(st.sampled_from([None, 1, 3]))
    shape = (rows, length) if windows is None else (rows, windows, length)
    lengths = draw(st.lists(st.integers(0, length), min_size=int(np.prod(shape[:-1])),
                            max_size=int(np.prod(shape[:-1]))))
    ids = draw(st.lists(st.integers(0, 59), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long().reshape(shape)
    tokens = torch.tensor(ids).reshape(shape) * mask  # padding is id 0
    return tokens, mask


@settings(max_examples=60, deadline=None)
@given(batch=token_batches(), chances=st.tuples(*[st.sampled_from([0.0, 0.2, 0.5])] * 4), seed=st.integers(0, 99))
def test_text_changes_keep_masks_ones_then_zeros_and_ids_in_range(batch, chances, seed):
    tokens, mask = batch
    delete, swap, mask_p, replace = chances
    out, out_mask = change_tokens(tokens, mask, text_changes(delete=delete, swap=swap, mask=mask_p, replace=replace),
                                  torch.Generator().manual_seed(seed))
    assert out.shape == tokens.shape and out_mask.shape == mask.shape
    flat, flat_mask = out_mask.reshape(-1, mask.shape[-1]), mask.reshape(-1, mask.shape[-1])
    assert torch.equal(flat, flat.sort(dim=1, descending=True).values)  # ones, then zeros
    assert (flat.sum(1) <= flat_mask.sum(1)).all() and (out[out_mask == 0] == 0).all()
    assert out.min() >= 0 and out.max() < 60
    before = tokens.reshape(-1, tokens.shape[-1])
    after = out.reshape(-1, out.shape[-1])
    for row in range(len(before)):  # special tokens: the same ones, in the same order
        keep = lambda t, m: [v for v, on in zip(t.tolist(), m.tolist()) if on and v in (1, 2, 3)]
        specials_before = [v for v in keep(before[row], flat_mask[row]) if v != 1] if mask_p else \
            keep(before[row], flat_mask[row])
        specials_after = [v for v in keep(after[row], flat[row]) if v != 1] if mask_p else keep(after[row], flat[row])
        assert specials_after == specials_before


# ------------------------------------------------------------------------------------------------ tabular, mixing
@pytest.fixture
def mixed_table(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    import pandas as pd

    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(10, 3, size=n), "raw": rng.normal(size=n),
                          "colour": rng.choice(["red", "green", "blue"], size=n), "y": rng.integers(0, 2, size=n)})
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def test_tabular_noise_changes_only_the_scaled_numeric_columns(make_config, mixed_table):
    cfg = make_config(data={"source": str(mixed_table), "target": "y", "cache": False,
                            "features": {"raw": {"scale": "none"}}})
    data = prepare_data(cfg.data, cfg.seed)
    names = data.preprocessor.feature_names_
    scaled = scaled_columns(data.preprocessor.desc)
    assert [n for n, s in zip(names, scaled) if s] == ["a", "b"]
    augment = AugmentConfig.model_validate({"tabular": {"noise": {"p": 1.0, "std": 0.5}}})
    augmenter = build_augmenter(augment, data.task, data.input_spec, data.preprocessor.desc, data.X["train"], 0)
    x = torch.from_numpy(data.X["train"]["numeric"])
    (out,), mix = augmenter((x,), 1, 0)
    changed = (out != x).any(0).numpy()
    assert mix is None and changed.tolist() == scaled.tolist()


def test_mix_loss_is_the_convex_combination_of_the_two_targets_losses():
    out, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    perm, rows = torch.randperm(8, generator=torch.Generator().manual_seed(0)), torch.arange(100, 108)
    seen = []

    def loss_fn(pred, targets, which):
        seen.append(which)
        return torch.nn.functional.cross_entropy(pred, targets)

    mixed = Mix(perm, 0.3, "mixup").loss(loss_fn, out, y, rows)
    expected = 0.3 * torch.nn.functional.cross_entropy(out, y) + 0.7 * torch.nn.functional.cross_entropy(out, y[perm])
    torch.testing.assert_close(mixed, expected)
    assert torch.equal(seen[1], rows[perm])  # a distillation loss sees the partner rows' teacher outputs


def test_mixup_blends_rows_with_the_proportion_it_reports():
    x = torch.randn(16, 5)
    augmenter = Augmenter(["numeric"], 0, mixup=AugmentConfig.model_validate({"mixup": {"p": 1.0}}).mixup)
    (out,), mix = augmenter((x,), 1, 0)
    torch.testing.assert_close(out, mix.lam * x + (1 - mix.lam) * x[mix.perm])
    assert 0 <= mix.lam <= 1 and sorted(mix.perm.tolist()) == list(range(16))


def test_cutmix_pastes_a_rectangle_and_reports_the_share_kept():
    x = torch.randn(8, 1, 10, 10)
    augmenter = Augmenter(["image"], 3, cutmix=AugmentConfig.model_validate({"cutmix": {"p": 1.0, "alpha": 1.0}}).cutmix)
    (out,), mix = augmenter((x,), 1, 0)
    pasted = (out == x[mix.perm]) & (out != x)
    kept = 1 - pasted[0].float().mean().item()
    assert mix.kind == "cutmix" and kept == pytest.approx(mix.lam)


def test_draws_depend_on_seed_epoch_and_step_only():
    x = torch.randn(8, 1, 8, 8)
    first = image_augmenter(affine={"p": 1.0}, noise={"p": 1.0})
    torch.manual_seed(1)
    a = first((x,), 2, 5)[0][0]
    torch.manual_seed(99)  # the global stream plays no part
    torch.testing.assert_close(first((x,), 2, 5)[0][0], a, rtol=0, atol=0)
    assert not torch.equal(first((x,), 2, 6)[0][0], a) and not torch.equal(first((x,), 3, 5)[0][0], a)
    assert not torch.equal(image_augmenter(seed=1, affine={"p": 1.0}, noise={"p": 1.0})((x,), 2, 5)[0][0], a)


# ------------------------------------------------------------------------------------------------ in training
def train(cfg, data, augmenter=None, **kwargs):
    seed_everything(cfg.seed, True)
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    return fit(model, data.X, data.y, cfg.training, task=data.task, seed=cfg.seed, progress=False,
               augmenter=augmenter, **kwargs)


def test_an_augmenter_that_never_fires_leaves_training_bit_identical(make_config):
    """Augmentation draws from its own generator: an augmenter whose chances are all 0 trains exactly what no
    augmenter trains (dropout's draws included), so adding the feature changed nothing when it is off."""
    cfg = make_config(model={"name": "mlp", "hidden": [16], "dropout": 0.3}, training={"epochs": 3})
    data = prepare_data(cfg.data, cfg.seed)
    plain = train(cfg, data).model.state_dict()
    silent = build_augmenter(AugmentConfig.model_validate({"tabular": {"noise": {"p": 0.0}}, "mixup": {"p": 0.0}}),
                             data.task, data.input_spec, data.preprocessor.desc, data.X["train"], cfg.seed)
    quiet = train(cfg, data, silent).model.state_dict()
    for name, value in plain.items():
        torch.testing.assert_close(quiet[name], value, rtol=0, atol=0)
    noisy = build_augmenter(AugmentConfig.model_validate({"tabular": {"noise": {"p": 1.0}}}), data.task,
                            data.input_spec, data.preprocessor.desc, data.X["train"], cfg.seed)
    changed = train(cfg, data, noisy).model.state_dict()
    assert any(not torch.equal(changed[name], value) for name, value in plain.items())


def test_an_augmented_fit_resumed_within_an_epoch_equals_an_uncut_one(make_config, tmp_path):
    import signal

    cfg = make_config(model={"name": "mlp", "hidden": [16], "dropout": 0.2},
                      training={"epochs": 3, "batch_size": 8, "optimizer": {"lr": 0.01},
                                "checkpoint": {"min_interval_s": 0, "every_steps": 2}})
    data = prepare_data(cfg.data, cfg.seed)
    augment = AugmentConfig.model_validate({"tabular": {"noise": {"p": 0.7, "std": 0.2}}, "mixup": {"p": 0.5}})

    def augmenter():
        return build_augmenter(augment, data.task, data.input_spec, data.preprocessor.desc, data.X["train"], cfg.seed)

    straight = train(cfg, data, augmenter(), run_dir=tmp_path / "a")
    batches = -(-len(data.y["train"]) // 8)
    seed_everything(cfg.seed, True)
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    calls = []

    def press_ctrl_c(module, inputs):
        if module.training:
            calls.append(1)
            if len(calls) == batches + 5:  # within epoch 2
                signal.raise_signal(signal.SIGINT)

    handle = model.register_forward_pre_hook(press_ctrl_c)
    first = fit(model, data.X, data.y, cfg.training, task=data.task, seed=cfg.seed, progress=False,
                augmenter=augmenter(), run_dir=tmp_path / "b")
    handle.remove()
    assert first.interrupted and len(first.history) == 1
    torch.manual_seed(1234)  # a resumed process starts from unrelated RNG state
    resumed = train(cfg, data, augmenter(), run_dir=tmp_path / "b", resume=True)
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in straight.history],
                                                                       abs=1e-6)
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, straight.model.state_dict()[name], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ config errors
def test_transforms_that_do_not_fit_the_data_are_one_config_error(make_config):
    cfg = make_config()
    data = prepare_data(cfg.data, cfg.seed)  # iris: numeric columns only
    augment = AugmentConfig.model_validate({"image": {"affine": {"p": 0.5}}, "cutmix": {"p": 0.5},
                                            "text": {"delete": 0.1}})
    with pytest.raises(ConfigError) as caught:
        build_augmenter(augment, data.task, data.input_spec, data.preprocessor.desc, data.X["train"], 0)
    message = caught.value.message
    assert "data.augment.image: the data has no image input (its inputs are numeric)" in message
    assert "data.augment.cutmix" in message and "data.augment.text: the data has no text input" in message
    assert "type: image" in message  # says how to get an image input


def test_text_augmentation_is_refused_for_a_frozen_encoder_and_mixup_for_text(make_config, tmp_path):
    import pandas as pd

    words = ["good", "bad", "fine", "great", "awful", "ok"]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"text": [" ".join(rng.choice(words, 5)) for _ in range(60)], "y": rng.integers(0, 2, 60)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = make_config(data={"source": str(tmp_path / "t.csv"), "target": "y", "cache": False,
                            "features": {"text": {"type": "text"}}, "text": {"min_freq": 1}})
    data = prepare_data(cfg.data, cfg.seed)
    augment = AugmentConfig.model_validate({"text": {"replace": 0.2}, "mixup": {}})
    with pytest.raises(ConfigError) as caught:
        build_augmenter(augment, data.task, data.input_spec, data.preprocessor.desc, data.X["train"], 0,
                        frozen_encoder=True)
    assert "data.augment.mixup: token ids cannot be blended" in caught.value.message
    assert "encoder is frozen" in caught.value.message
    text_only = build_augmenter(AugmentConfig.model_validate({"text": {"replace": 0.5, "mask": 0.2}}), data.task,
                                data.input_spec, data.preprocessor.desc, data.X["train"], 0)
    tokens, mask = (torch.from_numpy(data.X["train"][k]) for k in ("tokens", "attention_mask"))
    (new_tokens, new_mask), _ = text_only((tokens, mask), 1, 0)
    assert text_only.text.unknown_id == 1 and set(text_only.text.special.tolist()) >= {0, 1, 2}
    assert (new_tokens != tokens).any() and torch.equal(new_mask, mask)


@pytest.mark.parametrize("section, message", [
    ({"task": "causal_lm"}, "a causal language model's examples"),
    ({"time_series": {"time": "t", "window": 4}}, "a time series' windows"),
])
def test_augmentation_is_refused_where_it_cannot_apply(make_config, section, message):
    from modelfoundry.config import DataConfig

    raw = {"source": "x.csv", "target": "y", "augment": {"mixup": {}}, **section}
    with pytest.raises(ConfigError, match=message):
        check_augment_task(DataConfig.model_validate(raw))


def test_a_pretrained_tokenizers_special_tokens_are_kept_and_its_mask_token_used(make_config, tmp_path):
    """With a model's own tokenizer ([CLS] text [SEP], a [MASK] token), masking writes [MASK] and no change
    touches [CLS], [SEP] or padding; a model whose frozen encoder caches its outputs refuses augmentation."""
    import pandas as pd
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    from modelfoundry.experiment import build_augmenter as for_model

    words = ["good", "bad", "fine", "great", "awful", "movie", "plot"]
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"text": [" ".join(rng.choice(words, 8)) for _ in range(50)], "y": rng.integers(0, 2, 50)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(frame["text"], trainers.WordPieceTrainer(
        vocab_size=60, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", 2), ("[SEP]", 3)])
    cfg = make_config(data={"source": str(tmp_path / "t.csv"), "target": "y", "cache": False,
                            "features": {"text": {"type": "text"}},
                            "augment": {"text": {"mask": 0.3, "delete": 0.2, "swap": 0.2}}})
    data = prepare_data(cfg.data, cfg.seed, tokenizer=tokenizer.to_str())
    augmenter = for_model(cfg, data, torch.nn.Linear(1, 1))
    assert augmenter.text.unknown_id == 4 and {0, 1, 2, 3, 4} <= set(augmenter.text.special.tolist())
    tokens, mask = (torch.from_numpy(data.X["train"][k]) for k in ("tokens", "attention_mask"))
    (out, out_mask), _ = augmenter((tokens, mask), 1, 0)
    assert (out == 4).any() and (out_mask.sum(1) < mask.sum(1)).any()
    lengths = out_mask.sum(1)
    assert (out[:, 0] == 2).all() and (out[torch.arange(len(out)), lengths - 1] == 3).all()

    class FrozenModel(torch.nn.Module):
        def frozen_features(self):
            return object()

    with pytest.raises(ConfigError, match="encoder is frozen"):
        for_model(cfg, data, FrozenModel())
