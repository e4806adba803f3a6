"""Graft masks, in-place grafting with exact revert, baselines, stitching and the localization step."""
from __future__ import annotations

from contextlib import contextmanager

import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_llama
from skillgraft import grafting, masks, models
from skillgraft.localization import GraftConfig, localize
from skillgraft.masks import Mask
from skillgraft.localization import init_scores, relaxed_frac


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(torch.int32)


def same_bits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Every parameter bit-identical to ``state`` (tells -0.0 from +0.0, unlike torch.equal)."""
    return all(torch.equal(bits(p), bits(state[n])) for n, p in model.named_parameters())


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def small_delta(model: nn.Module, seed: int = 1, scale: float = 1e-2) -> dict[str, torch.Tensor]:
    """θ_ft = θ_pre·(1 + noise): same sign, within a factor 2, so θ_pre + (θ_ft − θ_pre) == θ_ft exactly."""
    gen = torch.Generator().manual_seed(seed)
    pre = grafting.snapshot(model)
    ft = {n: p * (1 + scale * torch.randn(p.shape, generator=gen)) for n, p in pre.items()}
    return grafting.compute_delta(pre, ft), ft


# ---------------------------------------------------------------------------- graftable parameters, masks
def test_graftable_parameters_are_the_blocks_only(tiny_llama, tiny_roberta):
    names = list(models.graftable_parameters(tiny_llama))
    assert names and all(n.startswith("model.layers.") for n in names)
    assert "model.embed_tokens.weight" not in names and not any("lm_head" in n for n in names)
    assert any("layernorm" in n for n in names)  # norms are graftable
    total = sum(p.numel() for p in tiny_llama.parameters())
    n = models.num_graftable(tiny_llama)
    assert 0 < n < total
    rob = models.graftable_parameters(tiny_roberta)
    assert any(k.endswith("bias") for k in rob) and not any("embeddings" in k for k in rob)


def test_sparsity_counts_graftable_parameters_only(tiny_llama):
    delta, _ = small_delta(tiny_llama)
    n = models.num_graftable(tiny_llama)
    mask = masks.top_movement(delta, 0.1)
    assert mask.total == n and mask.count == round(0.1 * n)
    assert mask.sparsity == pytest.approx(round(0.1 * n) / n)
    assert Mask.full(delta, True).sparsity == 1.0 and Mask.full(delta, False).count == 0


def test_top_movement_exact_count_and_largest(tiny_llama):
    delta, _ = small_delta(tiny_llama)
    for s in (0.0, 1e-3, 0.013, 0.5, 1.0):
        mask = masks.top_movement(delta, s)
        assert mask.count == round(s * models.num_graftable(tiny_llama))
    mask = masks.top_movement(delta, 0.05)
    inside = torch.cat([d.abs()[mask[n]] for n, d in delta.items()])
    outside = torch.cat([d.abs()[~mask[n]] for n, d in delta.items()])
    assert inside.min() >= outside.max()


def test_top_movement_breaks_ties_by_order():
    delta = {"a": torch.ones(4), "b": torch.ones(3), "c": torch.full((2,), 2.0)}
    mask = masks.top_movement(delta, 5 / 9)  # 5 entries: both 2.0s, then the first three 1.0s
    assert mask["c"].all() and mask["a"].tolist() == [True, True, True, False] and not mask["b"].any()
    with pytest.raises(ValueError, match=r"sparsity must be a fraction in \[0, 1\]"):
        masks.top_movement(delta, 1.5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        masks.top_movement({"a": torch.tensor([float("nan"), 1.0])}, 0.5)


@pytest.mark.parametrize("k", [1, 7, 50, 333, 999, 1000])
def test_top_k_matches_a_full_sort_with_ties(k):
    """The sampled-bound top-k equals a stable full sort, ties to earlier parameters and positions."""
    gen = torch.Generator().manual_seed(k)
    scores = {"a": torch.randint(0, 40, (300,), generator=gen).float(),       # many ties
              "b": torch.randn(20, 20, generator=gen), "c": torch.full((300,), 5.0)}
    flat = torch.cat([t.reshape(-1) for t in scores.values()])
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:k]
    want = torch.zeros(flat.numel(), dtype=torch.bool)
    want[order] = True
    got = masks.top_k(lambda: iter(scores.items()), k).to_dense()
    assert torch.equal(torch.cat([m.reshape(-1) for m in got.values()]), want)
    got_small_sample = masks._kth_largest(lambda: iter(scores.items()), k, sample=16)  # bound often too high
    assert float(got_small_sample) == float(flat.sort(descending=True).values[k - 1])


def test_random_mask_exact_count_and_seeded(tiny_llama):
    delta, _ = small_delta(tiny_llama)
    n = models.num_graftable(tiny_llama)
    a, b, c = (masks.random_mask(delta, 0.02, seed=s) for s in (0, 0, 1))
    assert a.count == round(0.02 * n) == c.count
    assert a.equal(b) and not a.equal(c)


@pytest.mark.parametrize("sparsity", [0.05, 0.5])  # the draw-stream path and the permutation path
def test_random_mask_is_uniform_over_positions(sparsity):
    """Over many seeds every position is picked about sparsity·seeds times, in every parameter."""
    delta = {"a": torch.zeros(30), "b": torch.zeros(5, 10), "c": torch.zeros(20)}
    seeds = 2000
    hits = sum(torch.cat([m.reshape(-1).double() for _, m in masks.random_mask(delta, sparsity, seed=s).items()])
               for s in range(seeds))
    assert hits.sum() == seeds * round(sparsity * 100)            # exact count every time
    expected = seeds * sparsity
    sd = (seeds * sparsity * (1 - sparsity)) ** 0.5
    assert float((hits - expected).abs().max()) < 5 * sd          # no position favoured or starved
    assert float(hits[:30].mean()) == pytest.approx(expected, rel=0.1)   # nor a parameter
    assert float(hits[80:].mean()) == pytest.approx(expected, rel=0.1)


def test_sampling_without_replacement_is_distinct_and_in_range():
    gen = torch.Generator().manual_seed(0)
    for n, k in [(10, 10), (1000, 3), (10**8, 5000), (7, 0)]:
        picks = masks._sample_without_replacement(n, k, gen)
        assert picks.numel() == k == picks.unique().numel()
        assert k == 0 or (0 <= int(picks.min()) and int(picks.max()) < n)


def test_set_operations_and_overlap():
    m1 = Mask({"x": torch.tensor([1, 1, 0, 0], dtype=torch.bool)})
    m2 = Mask({"x": torch.tensor([0, 1, 1, 1], dtype=torch.bool)})
    assert m1.union(m2).count == 4 and m1.intersection(m2).count == 1
    assert m1.overlap(m2) == pytest.approx(1 / 3) and m2.overlap(m1) == pytest.approx(1 / 2)  # asymmetric
    assert m1.jaccard(m2) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="missing"):
        m1.union(Mask({"y": torch.ones(4, dtype=torch.bool)}))
    with pytest.raises(ValueError, match="must be torch.bool"):
        Mask({"x": torch.ones(3)})


def test_by_layer_module(tiny_llama, tiny_roberta):
    for model in (tiny_llama, tiny_roberta):
        params = models.graftable_parameters(model)
        mask = Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) < 0.3
                     for n, p in params.items()})
        df = mask.by_layer_module()
        assert set(df["module"]) == {"attention", "mlp", "norm"} and sorted(set(df["layer"])) == [0, 1]
        assert df["count"].sum() == mask.count and df["params"].sum() == mask.total
        assert df["share"].sum() == pytest.approx(1.0)
    norm = models.graftable_parameters(tiny_llama)["model.layers.1.post_attention_layernorm.weight"]
    only = Mask({n: (torch.ones_like(p, dtype=torch.bool) if p is norm else torch.zeros_like(p, dtype=torch.bool))
                 for n, p in models.graftable_parameters(tiny_llama).items()})
    row = only.by_layer_module().query("count > 0")
    assert row[["layer", "module"]].values.tolist() == [[1, "norm"]]


# ---------------------------------------------------------------------------- grafting in place
def test_all_ones_gives_finetuned_all_zeros_gives_pretrained(tiny_llama):
    delta, ft = small_delta(tiny_llama)
    before = full_state(tiny_llama)
    params = models.graftable_parameters(tiny_llama)
    with grafting.grafted(tiny_llama, delta, Mask.full(delta, True)):
        assert all(torch.equal(params[n], ft[n]) for n in ft)
        assert torch.equal(tiny_llama.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert same_bits(tiny_llama, before)
    with grafting.grafted(tiny_llama, delta, Mask.full(delta, False)):
        assert same_bits(tiny_llama, before)
    mask = masks.top_movement(delta, 0.1)
    with grafting.grafted(tiny_llama, delta, mask):
        changed = sum(int((params[n] != before[n]).sum()) for n in params)
        assert 0 < changed <= mask.count
    assert same_bits(tiny_llama, before)


def test_revert_is_bit_exact_also_on_error(tiny_llama):
    delta, _ = small_delta(tiny_llama)
    before = full_state(tiny_llama)
    with pytest.raises(RuntimeError, match="boom"):
        with grafting.grafted(tiny_llama, delta, masks.random_mask(delta, 0.3)):
            raise RuntimeError("boom")
    assert same_bits(tiny_llama, before)
    with pytest.raises(RuntimeError, match="boom"):
        with grafting.apply_delta(tiny_llama, delta):
            raise RuntimeError("boom")
    assert same_bits(tiny_llama, before)


def test_apply_delta_exact_revert_with_rounding_and_signed_zeros(tiny_llama):
    params = models.graftable_parameters(tiny_llama)
    name = next(iter(params))
    with torch.no_grad():
        params[name].view(-1)[:3] = torch.tensor([-0.0, 1e-30, 3.0])  # sign of zero and tiny values get lost in p + x − x
    before = full_state(tiny_llama)
    gen = torch.Generator().manual_seed(0)
    for scale, size in ((1.0, 1e-3), (0.5, 1.0), (1.0, 100.0)):  # sparse undo log ... dense fallback
        delta = {n: size * torch.randn(p.shape, generator=gen) for n, p in params.items()}
        with grafting.apply_delta(tiny_llama, delta, scale=scale):
            assert all(torch.equal(p, before[n] + scale * delta[n]) for n, p in params.items())
        assert same_bits(tiny_llama, before)


def test_grafted_refuses_foreign_delta(tiny_llama, tiny_roberta):
    delta, _ = small_delta(tiny_roberta)
    with pytest.raises(ValueError, match="unexpected name"):
        with grafting.grafted(tiny_llama, delta, Mask.full(delta, True)):
            pass


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tiny_llama, tmp_path):
    """One file per mask: its positions (8 bytes per grafted entry), with shapes, counts and meta in its header."""
    from safetensors import safe_open

    delta, _ = small_delta(tiny_llama)
    mask = masks.random_mask(delta, 0.1, seed=3)
    path = mask.save(tmp_path / "sub" / "mask.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        assert sum(f.get_tensor(n).numel() for n in f.keys()) == mask.count
    assert header["format"] == masks.FORMAT and int(header["count"]) == mask.count
    assert json.loads(header["meta"]) == {"method": "random", "sparsity": 0.1, "seed": 3}
    for loaded in (Mask.load(path), Mask.load(path, model=tiny_llama)):
        assert loaded.equal(mask) and loaded.meta == mask.meta
        assert all(m.dtype == torch.bool for _, m in loaded.items())
    assert [p.name for p in path.parent.iterdir()] == ["mask.safetensors"]  # no temp files left


def test_load_names_the_file_that_is_not_a_whole_mask(tiny_llama, tmp_path):
    from safetensors.torch import save_file

    delta, _ = small_delta(tiny_llama)
    path = masks.random_mask(delta, 0.1, seed=3).save(tmp_path / "mask.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"cut\.safetensors is not a readable mask file \(truncated"):
        Mask.load(cut)
    save_file({"w": torch.ones(3)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"weights\.safetensors is not a skillgraft mask file"):
        Mask.load(tmp_path / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="no mask file at"):
        Mask.load(tmp_path / "absent.safetensors")


def test_positions_are_checked():
    with pytest.raises(ValueError, match="fall outside its 4 entries"):
        Mask.from_positions({"w": torch.tensor([0, 4])}, {"w": (2, 2)})
    m = Mask.from_positions({"w": torch.tensor([3, 1, 1])}, {"w": (2, 2)})  # sorted, duplicates dropped
    assert m.count == 2 and m.equal(Mask({"w": torch.tensor([[False, True], [False, True]])}))


def test_load_refuses_mask_of_another_model(tiny_llama, tiny_roberta, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Mask.full(models.graftable_parameters(tiny_llama), True).save(tmp_path / "llama.safetensors")
    with pytest.raises(ValueError, match=r"missing name\(s\).*roberta\.encoder.*unexpected name\(s\).*model\.layers"):
        Mask.load(path, model=tiny_roberta)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match=r"shape mismatch for 'model\.layers\.0\.mlp\.gate_proj\.weight': "
                                         r"\(32, 16\) here, \(48, 16\) expected"):
        Mask.load(path, model=wider)
    deeper = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                          num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match=r"9 missing name\(s\) \(e\.g\. \['model\.layers\.2\."):
        Mask.load(path, model=deeper)


# ---------------------------------------------------------------------------- stitching
def test_stitch_averages_overlaps():
    m1 = Mask({"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool)})
    m2 = Mask({"w": torch.tensor([0, 1, 1, 0], dtype=torch.bool)})
    d1, d2 = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}, {"w": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    mask, delta = grafting.stitch({"a": m1, "b": m2}, {"a": d1, "b": d2})
    assert mask["w"].tolist() == [True, True, True, False] and mask.meta["tasks"] == ["a", "b"]
    assert delta["w"].tolist() == [1.0, 11.0, 30.0, 0.0]
    with pytest.raises(ValueError, match="one mask and one delta per task"):
        grafting.stitch({"a": m1}, {"b": d1})


# ---------------------------------------------------------------------------- localization on a toy
class Toy(nn.Module):
    """Names like a Llama: w (model.layers.0) decides the label; u (model.layers.1) never matters."""

    def __init__(self, d: int = 8, m: int = 64):
        super().__init__()
        self.config = SimpleNamespace(model_type="llama")
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(4, 2)  # not graftable
        self.model.layers = nn.ModuleList([nn.Module(), nn.Module()])
        self.model.layers[0].w = nn.Parameter(torch.zeros(d))
        self.model.layers[1].u = nn.Parameter(torch.zeros(m))


class ToyClassifier:
    """The duck-typed classifier localize needs: lm.model, encode, loss, accuracy, length_order, casting."""

    def __init__(self, model: Toy):
        self.lm = SimpleNamespace(model=model)

    def encode(self, examples):
        return {"x": torch.tensor(examples["x"]), "labels": torch.tensor(examples["label"])}

    @contextmanager
    def casting(self):
        yield

    def length_order(self, dataset):
        return sorted(range(len(dataset)), key=lambda i: float(np.abs(dataset[i]["x"]).sum()))  # any order serves

    def class_logits(self, batch):
        layers = self.lm.model.model.layers
        z = batch["x"] @ layers[0].w + 0.0 * layers[1].u.sum()  # u gets an exactly-zero gradient
        return torch.stack([-z, z], dim=1)

    def loss(self, batch):
        return F.cross_entropy(self.class_logits(batch), batch["labels"])

    def accuracy(self, dataset, batch_size=32):
        with torch.no_grad():
            batch = self.encode(dataset[:])
            return float((self.class_logits(batch).argmax(1) == batch["labels"]).float().mean())


def toy_problem(seed: int = 0, n: int = 64):
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(8, generator=gen)
    x = torch.randn(2 * n, 8, generator=gen)
    y = (x @ w_star > 0).long()
    data = [datasets.Dataset.from_dict({"x": x[i:i + n].tolist(), "label": y[i:i + n].tolist()}) for i in (0, n)]
    model = Toy()
    with torch.no_grad():
        model.model.layers[0].w.copy_(0.3 * torch.randn(8, generator=gen))  # a poor pre-trained w
    delta = {"model.layers.0.w": 0.05 * w_star - model.model.layers[0].w.detach(),  # small, decisive
             "model.layers.1.u": torch.ones(64)}                                    # large, irrelevant
    return ToyClassifier(model), delta, data[0], data[1]


def test_update_rule_matches_hand_computed_step():
    clf, delta, train, dev = toy_problem()
    model = clf.lm.model
    cfg = GraftConfig(sparsity=4 / 72, lr=2e5, epochs=1, batch_size=16, seed=7, keep_scores=True, select="last")
    before = full_state(model)
    res = localize(clf, delta, train, dev, cfg, progress=False)
    assert same_bits(model, before)
    # by hand: θ = θ_pre + frac⊙δ, g = mean over the 4 batches of ∇θL ⊙ δ, one step on S
    s0 = init_scores(delta, 7)
    gamma = masks.top_movement(delta, cfg.sparsity).to_dense()
    theta = {n: (before[n] + relaxed_frac(s0[n], gamma[n], 10.0) * delta[n]).requires_grad_() for n in delta}
    grads = {n: torch.zeros_like(t) for n, t in theta.items()}
    for i in range(0, len(train), 16):
        b = clf.encode(train[i:i + 16])
        z = b["x"] @ theta["model.layers.0.w"] + 0.0 * theta["model.layers.1.u"].sum()
        for n, g in zip(theta, torch.autograd.grad(F.cross_entropy(torch.stack([-z, z], 1), b["labels"]),
                                                   list(theta.values()))):
            grads[n] += g / 4
    for n in delta:
        sig = torch.sigmoid(s0[n] - 10.0)
        expected = s0[n] - (1 - 2 * gamma[n].float()) * 2e5 * grads[n] * delta[n] * sig * (1 - sig)
        torch.testing.assert_close(res.scores[n], expected, rtol=1e-5, atol=1e-6)
    moved = (res.scores["model.layers.0.w"] - s0["model.layers.0.w"]).abs()
    assert moved.max() > 0.1  # the step is not negligible, so the comparison means something
    # zero gradient: S unmoved (up to the rounding of holding S − b in fp32: ulp(10) ≈ 1e-6)
    torch.testing.assert_close(res.scores["model.layers.1.u"], s0["model.layers.1.u"], rtol=0, atol=2e-6)
    assert list(res.history["epoch"]) == [0, 1] and res.best_epoch == 1


def test_step_on_the_patch_matches_a_float64_reference():
    """σ'(S − b) as σ·(1 − σ): on the base patch frac = 1 − σ ≈ 1, where frac − frac² would lose
    about three digits of the step; against a float64 reference the step keeps ~5."""
    clf, delta, train, dev = toy_problem()
    delta = {**delta, "model.layers.1.u": 1e-3 * torch.ones(64)}  # the patch now sits on w, where gradients live
    model = clf.lm.model
    cfg = GraftConfig(sparsity=4 / 72, lr=1e7, epochs=1, batch_size=64, seed=7, keep_scores=True, select="last")
    before = full_state(model)
    res = localize(clf, delta, train, dev, cfg, progress=False)
    s0 = init_scores(delta, 7)
    gamma = masks.top_movement(delta, cfg.sparsity).to_dense()
    name = "model.layers.0.w"
    on = gamma[name]
    assert int(on.sum()) == 4
    w = (before[name].double() + relaxed_frac(s0[name].double(), on, 10.0) * delta[name].double()).requires_grad_()
    b = clf.encode(train[:])
    z = b["x"].double() @ w
    (g,) = torch.autograd.grad(F.cross_entropy(torch.stack([-z, z], 1), b["labels"]), [w])
    sig = torch.sigmoid(s0[name].double() - 10.0)
    want = (1 - 2 * on.double()) * 1e7 * g * delta[name].double() * sig * (1 - sig)
    got = (s0[name] - res.scores[name]).double()
    assert want[on].abs().min() > 1e-2  # steps large next to the fp32 rounding of S − b (ulp(10) ≈ 1e-6)
    torch.testing.assert_close(got[on], want[on], rtol=1e-4, atol=4e-6)


def test_localize_beats_top_movement_on_synthetic_problem():
    clf, delta, train, dev = toy_problem()
    model = clf.lm.model
    before = full_state(model)
    cfg = GraftConfig(sparsity=8 / 72, lr=1e9, epochs=3, batch_size=16)
    res = localize(clf, delta, train, dev, cfg, progress=False)
    assert same_bits(model, before)
    base = masks.top_movement(delta, cfg.sparsity)
    assert base.equal(res.base) and base["model.layers.1.u"].sum() == 8  # the base patch is all irrelevant
    with grafting.grafted(model, delta, base):
        acc_base = clf.accuracy(dev)
    with grafting.grafted(model, delta, res.mask):
        acc_graft = clf.accuracy(dev)
    with grafting.apply_delta(model, delta):
        acc_ft = clf.accuracy(dev)
    assert acc_ft == 1.0
    assert acc_graft >= 0.9 and acc_graft - acc_base >= 0.25
    assert res.mask["model.layers.0.w"].sum() >= 6 and res.best_epoch > 0
    h = res.history
    assert h.loc[0, "count"] == 8 and h["added"].iloc[-1] >= 6 and h["removed"].iloc[-1] == 0
    assert h["gd_abs_max"].iloc[1] > 0 and h["step_abs_max"].iloc[1] > 10


def test_l1_removes_the_base_patch():
    clf, delta, train, dev = toy_problem()
    cfg = GraftConfig(sparsity=8 / 72, lr=0.0, l1=1e6, epochs=1, select="last")
    res = localize(clf, delta, train, dev, cfg, progress=False)
    assert res.base.count == 8 and res.mask.count == 0


def test_localize_selects_first_best_and_keeps_base_when_nothing_helps():
    clf, delta, train, dev = toy_problem()
    res = localize(clf, delta, train, dev, GraftConfig(sparsity=8 / 72, lr=1e-3, epochs=2), progress=False)
    assert res.best_epoch == 0 and res.mask.equal(res.base)  # ties: the first best (epoch 0) is kept
    assert res.mask.meta["method"] == "localize" and res.mask.meta["epoch"] == 0


def test_gradient_base_picks_the_entries_that_help_the_task():
    """Top −∇θL(θ_pre)⊙δ on the train set: the decisive w entries, not the large irrelevant u."""
    clf, delta, train, dev = toy_problem()
    model = clf.lm.model
    before = full_state(model)
    res = localize(clf, delta, train, dev, GraftConfig(sparsity=4 / 72, epochs=0, base="gradient", batch_size=16),
                   progress=False)
    assert same_bits(model, before) and all(p.grad is None for p in model.parameters())
    w = before["model.layers.0.w"].clone().requires_grad_()
    b = clf.encode(train[:])
    z = b["x"] @ w
    (g,) = torch.autograd.grad(F.cross_entropy(torch.stack([-z, z], 1), b["labels"], reduction="sum"), [w])
    want = (-(g * delta["model.layers.0.w"])).topk(4).indices.sort().values
    got = res.base["model.layers.0.w"].nonzero().squeeze(1)
    assert res.base.count == 4 and res.base["model.layers.1.u"].sum() == 0
    assert torch.equal(got, want) and res.base.meta["method"] == "gradient"
    with grafting.grafted(model, delta, res.base):
        acc_gradient = clf.accuracy(dev)
    with grafting.grafted(model, delta, masks.top_movement(delta, 4 / 72)):
        acc_movement = clf.accuracy(dev)
    assert acc_gradient > acc_movement


def test_graft_config_validation():
    with pytest.raises(ValueError, match=r"base must be one of \('movement', 'gradient'\)"):
        GraftConfig(base="random")
    with pytest.raises(ValueError, match=r"select must be one of \('train\+dev', 'dev', 'last'\)"):
        GraftConfig(select="best")
    with pytest.raises(ValueError, match="sparsity must be a fraction"):
        GraftConfig(sparsity=2.0)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        GraftConfig(lr=float("inf"))
    with pytest.raises(ValueError, match="epochs must be an integer"):
        GraftConfig(epochs=2.5)


def test_localize_on_tiny_llama_restores_weights(tokenizer):
    from skillgraft.models import LM
    from skillgraft.prompt import Prompt, PromptClassifier

    model = make_llama()
    lm = LM(model=model, tokenizer=tokenizer, name="tiny", kind="causal")
    clf = PromptClassifier(lm, Prompt("review : {text} . sentiment :", (" negative", " positive")))
    words = [("great fun lovely", 1), ("good fun", 1), ("awful dull", 0), ("boring bad plot", 0)]
    data = datasets.Dataset.from_dict({"text": [f"the movie was {w}" for w, _ in words] * 3,
                                       "label": [lab for _, lab in words] * 3})
    delta, _ = small_delta(model, scale=0.5)
    before = full_state(model)
    model.train()  # localize runs in eval mode and gives the mode back
    res = localize(clf, delta, data, data, GraftConfig(sparsity=0.01, lr=1e8, epochs=2, batch_size=4),
                   progress=False)
    assert model.training and same_bits(model, before)
    assert all(p.grad is None for p in model.parameters())
    assert res.mask.total == models.num_graftable(model) and res.base.count == round(0.01 * res.mask.total)
    assert list(res.history.columns) == ["epoch", "count", "sparsity", "added", "removed", "train_acc", "dev_acc",
                                         "loss", "gd_abs_mean", "gd_abs_max", "step_abs_max", "seconds_step",
                                         "seconds_eval"]
    assert np.isfinite(res.history["loss"].iloc[1:]).all() and len(res.history) == 3


class CountingClassifier(ToyClassifier):
    """The toy classifier, counting the examples it scores."""

    scored = 0

    def accuracy(self, dataset, batch_size=32):
        self.scored += len(dataset)
        return super().accuracy(dataset, batch_size)


@pytest.mark.parametrize("select", ["train+dev", "dev"])
def test_bounded_scoring_keeps_the_mask_that_full_scoring_keeps(select):
    """Scoring stops once a mask cannot beat the kept one: same kept mask and epoch as scoring
    every mask in full, fewer examples scored, and the skipped accuracies marked NaN."""
    kept, skipped = set(), 0
    for seed, lr in [(4, 1e7), (6, 1e7), (7, 3e6), (9, 3e6)]:
        runs = {}
        for score_all in (True, False):
            clf, delta, train, dev = toy_problem(seed)
            clf.__class__ = CountingClassifier
            cfg = GraftConfig(sparsity=8 / 72, lr=lr, epochs=6, batch_size=16, eval_batch_size=8, select=select,
                              score_all=score_all)
            runs[score_all] = (localize(clf, delta, train, dev, cfg, progress=False), clf.scored)
        (full, n_full), (lazy, n_lazy) = runs[True], runs[False]
        assert lazy.best_epoch == full.best_epoch and lazy.mask.equal(full.mask)
        assert full.history[["train_acc", "dev_acc"]].notna().all().all()
        for col in ("train_acc", "dev_acc"):  # what was scored is what full scoring measured
            known = lazy.history[col].notna()
            assert (lazy.history.loc[known, col] == full.history.loc[known, col]).all()
        assert lazy.history.loc[0, ["train_acc", "dev_acc"]].notna().all()  # the first mask: in full
        assert n_lazy <= n_full
        skipped += n_full - n_lazy
        kept.add(full.best_epoch)
    assert skipped > 0 and len(kept) > 1  # the bound did cut work, on problems that keep different epochs


def test_a_mask_seen_again_is_not_scored_again(monkeypatch):
    """Rounded masks that come back (here base, +a, base, +a, +b) are scored once each, even
    when another mask came between; the history repeats their accuracies."""
    from skillgraft import localization

    clf, delta, train, dev = toy_problem(4)
    clf.__class__ = CountingClassifier
    calls = iter(range(100))

    def rounded(z, base):
        name = next(iter(base.index))
        free = [i for i in range(base.shapes[name][0]) if i not in set(base.index[name].tolist())]

        def plus(i):
            return Mask._of({**base.index, name: torch.cat([base.index[name], torch.tensor([i])]).sort().values},
                            base.shapes)
        return [plus(free[0]), base, plus(free[0]), plus(free[1])][next(calls)]
    monkeypatch.setattr(localization, "_rounded", rounded)
    res = localize(clf, delta, train, dev, GraftConfig(sparsity=2 / 72, lr=1e7, epochs=4, batch_size=16,
                                                      score_all=True), progress=False)
    assert clf.scored == 3 * (len(train) + len(dev))  # three distinct masks: base, +a, +b
    h = res.history.set_index("epoch")
    for again, first in ((2, 0), (3, 1)):
        assert h.loc[again, ["train_acc", "dev_acc"]].tolist() == h.loc[first, ["train_acc", "dev_acc"]].tolist()
