"""Prompt-based fine-tuning of the graftable parameters: configs, determinism, exact restore, variants."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from conftest import make_llama, make_roberta
from skillgraft import grafting, models
from skillgraft.finetune import (FinetuneConfig, finetune, finetune_multitask, finetune_sequential, interleave,
                                 optimizer_groups)
from skillgraft.models import LM
from skillgraft.prompt import Prompt, PromptClassifier

SENTIMENT = [("great fun lovely", 1), ("good fun", 1), ("lovely acting", 1), ("great plot", 1),
             ("awful dull", 0), ("boring bad plot", 0), ("terrible acting", 0), ("dull boring", 0)]
TOPIC = [("game match", 0), ("sport match", 0), ("market business", 1), ("business vote", 1)]


def data(rows, prefix="the movie was"):
    return datasets.Dataset.from_dict({"text": [f"{prefix} {w}" for w, _ in rows], "label": [y for _, y in rows]})


def classifier(model, tokenizer, template="review : {text} . sentiment :", words=(" negative", " positive")):
    kind = "causal" if model.config.model_type == "llama" else "masked"
    return PromptClassifier(LM(model=model, tokenizer=tokenizer, name="tiny", kind=kind), Prompt(template, words))


def state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same_bits(model, before):
    return all(torch.equal(p.detach().view(torch.int32), before[n].view(torch.int32))
               for n, p in model.named_parameters())


FAST = dict(lr=0.1, steps=6, batch_size=4, eval_every=3, fit_loss=None)  # tiny models rarely fit: no gate


def test_config_validation():
    with pytest.raises(ValueError, match=r"optimizer must be one of \('sgd', 'adamw'\), got 'adam'"):
        FinetuneConfig(optimizer="adam")
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        FinetuneConfig(lr=0.0)
    with pytest.raises(ValueError, match="steps must be an integer ≥ 1"):
        FinetuneConfig(steps=0)
    with pytest.raises(ValueError, match=r"max_grad_norm must be a finite number > 0, got -1.0 \(or None\)"):
        FinetuneConfig(max_grad_norm=-1.0)
    with pytest.raises(ValueError, match=r"ties must be one of \('later', 'first'\), got 'last'"):
        FinetuneConfig(ties="last")
    with pytest.raises(ValueError, match="keep_best must be True or False"):
        FinetuneConfig(keep_best="yes")
    assert FinetuneConfig(max_grad_norm=1.0, weight_decay=0.0).max_grad_norm == 1.0


def test_only_graftable_parameters_change_and_model_is_restored(tokenizer):
    model = make_llama()
    clf = classifier(model, tokenizer)
    before = state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    res = finetune(clf, data(SENTIMENT), data(SENTIMENT), FinetuneConfig(**FAST), progress=False)
    assert same_bits(model, before) and not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert list(res.delta) == list(models.graftable_parameters(model))  # no embedding, no head
    assert all(float(d.abs().max()) > 0 for n, d in res.delta.items() if "layernorm" not in n)
    assert list(res.history.columns) == ["step", "task", "train_loss", "seconds", "dev_acc", "fit_loss", "fit_acc"]
    assert len(res.history) == 6
    assert res.history["dev_acc"].notna().tolist() == [False, False, True, False, False, True]


def test_same_seed_same_delta_other_seed_other_delta(tokenizer):
    model = make_llama()
    clf = classifier(model, tokenizer)
    train = data(SENTIMENT)
    runs = [finetune(clf, train, train, FinetuneConfig(seed=s, **FAST), progress=False) for s in (0, 0, 1)]
    assert all(torch.equal(runs[0].delta[n], runs[1].delta[n]) for n in runs[0].delta)
    assert runs[0].history["train_loss"].tolist() == runs[1].history["train_loss"].tolist()
    assert any(not torch.equal(runs[0].delta[n], runs[2].delta[n]) for n in runs[0].delta)


def test_weight_decay_not_on_biases_and_norms():
    for model in (make_llama(), make_roberta()):
        decay, rest = optimizer_groups(models.graftable_parameters(model), 1e-4)
        assert decay["weight_decay"] == 1e-4 and rest["weight_decay"] == 0.0
        assert decay["param_names"] and all(p.ndim == 2 for p in decay["params"])
        assert not any(n.endswith("bias") or "norm" in n.lower() for n in decay["param_names"])
        assert any("norm" in n.lower() for n in rest["param_names"]) and all(p.ndim == 1 for p in rest["params"])
    roberta = optimizer_groups(models.graftable_parameters(make_roberta()), 1e-4)[1]["param_names"]
    assert any(n.endswith("dense.bias") for n in roberta) and any(n.endswith("LayerNorm.weight") for n in roberta)


def test_loss_decreases_on_a_learnable_toy(tokenizer):
    model = make_llama()
    clf = classifier(model, tokenizer)
    train = data(SENTIMENT)
    batch = clf.encode(train[:])

    def loss():
        with torch.no_grad():
            return float(clf.loss(batch))
    res = finetune(clf, train, train, FinetuneConfig(optimizer="adamw", lr=1e-2, steps=20, eval_every=10,
                                                     fit_loss=None), progress=False)
    with grafting.apply_delta(model, res.delta):
        tuned = loss()
        acc = clf.accuracy(train)
    assert tuned < 0.75 * loss() and acc == 1.0
    assert res.best_dev_acc == 1.0 and res.best_step in (10, 20)


def test_keep_best_keeps_the_best_dev_checkpoint(tokenizer):
    model = make_llama()
    clf = classifier(model, tokenizer)
    train, dev = data(SENTIMENT[::2]), data(SENTIMENT[1::2])
    cfg = dict(optimizer="adamw", lr=3e-2, steps=12, batch_size=2, eval_every=2, fit_loss=None)  # dev acc goes up and down
    best = finetune(clf, train, dev, FinetuneConfig(keep_best=True, **cfg), progress=False)
    last = finetune(clf, train, dev, FinetuneConfig(keep_best=False, **cfg), progress=False)
    h = best.history.dropna(subset=["dev_acc"])
    assert best.best_step < 12 and best.best_dev_acc > h["dev_acc"].iloc[-1]  # so keeping the best matters
    later = int(h.loc[h["dev_acc"] == h["dev_acc"].max(), "step"].max())  # ties go to the later check (official)
    assert best.best_dev_acc == h["dev_acc"].max() and best.best_step == later
    with grafting.apply_delta(model, best.delta):
        assert clf.accuracy(dev) == best.best_dev_acc
    with grafting.apply_delta(model, last.delta):
        assert clf.accuracy(dev) == h["dev_acc"].iloc[-1]


def test_multitask_mixes_tasks_on_one_model(tokenizer):
    model = make_llama()
    sent = classifier(model, tokenizer)
    topic = classifier(model, tokenizer, "news : {text} . topic :", (" sport", " business"))
    items = [(sent, data(SENTIMENT), data(SENTIMENT)), (topic, data(TOPIC, "a story about"), data(TOPIC, "news"))]
    before = state(model)
    res = finetune_multitask(items, FinetuneConfig(**FAST), progress=False)
    assert same_bits(model, before)
    assert res.history["task"].tolist() == [0, 1] * 6  # two tasks of two classes: each its own 6 steps, alternating
    evals = res.history.dropna(subset=["dev_acc"])
    assert np.allclose(evals["dev_acc"], (evals["dev_acc_0"] + evals["dev_acc_1"]) / 2)
    assert list(res.delta) == list(models.graftable_parameters(model))
    with pytest.raises(ValueError, match="same model object"):
        finetune_multitask([items[0], (classifier(make_llama(), tokenizer), items[1][1], items[1][2])],
                           FinetuneConfig(**FAST), progress=False)


def test_sequential_deltas_are_cumulative(tokenizer):
    model = make_llama()
    sent = classifier(model, tokenizer)
    topic = classifier(model, tokenizer, "news : {text} . topic :", (" sport", " business"))
    items = [(sent, data(SENTIMENT), data(SENTIMENT)), (topic, data(TOPIC, "a story about"), data(TOPIC, "news"))]
    before = state(model)
    cfg = FinetuneConfig(keep_best=False, **FAST)
    stages = finetune_sequential(items, cfg, progress=False)
    assert same_bits(model, before) and len(stages) == 2
    alone = finetune(sent, *items[0][1:], cfg, progress=False)
    assert all(torch.equal(stages[0].delta[n], alone.delta[n]) for n in alone.delta)  # stage 1 = fine-tuning alone
    own = {n: stages[1].delta[n] - stages[0].delta[n] for n in alone.delta}  # stage 2's own change
    assert any(float(d.abs().max()) > 0 for d in own.values())
    assert stages[1].history["task"].eq(1).all() and stages[0].history["task"].eq(0).all()
    with grafting.apply_delta(model, stages[1].delta):  # θ_pre + cumulative delta = the weights after stage 2
        assert topic.accuracy(items[1][2]) == stages[1].history["dev_acc"].iloc[-1]


def test_sequential_resumes_exactly_from_stored_stages(tokenizer):
    model = make_llama()
    items = [(classifier(model, tokenizer), data(SENTIMENT), data(SENTIMENT)),
             (classifier(model, tokenizer, "news : {text} . topic :", (" sport", " business")),
              data(TOPIC, "a story about"), data(TOPIC, "news")),
             (classifier(model, tokenizer, "opinion : {text} . it was", (" bad", " good")),
              data(SENTIMENT, "the show was"), data(SENTIMENT, "the show was"))]
    cfg = FinetuneConfig(**FAST)
    full = finetune_sequential(items, cfg, progress=False)
    before = state(model)
    rest = finetune_sequential(items, cfg, progress=False, done=[full[0].delta])  # stage 0 read from a store
    assert same_bits(model, before) and len(rest) == 2
    for a, b in zip(full[1:], rest):
        assert all(torch.equal(a.delta[n], b.delta[n]) for n in a.delta)
        assert a.history.equals(b.history.assign(seconds=a.history.seconds))
    with pytest.raises(ValueError, match="all 3 stages are done"):
        finetune_sequential(items, cfg, progress=False, done=[r.delta for r in full])


def test_roberta_and_adamw_and_clipping(tokenizer):
    model = make_roberta()
    clf = classifier(model, tokenizer, "{text} It was {mask} .", (" bad", " good"))
    before = state(model)
    cfg = dict(FAST, optimizer="adamw", lr=1e-2, max_grad_norm=0.1)
    a, b, c = (finetune(clf, data(SENTIMENT), data(SENTIMENT), FinetuneConfig(train_mode=t, **cfg), progress=False)
               for t in (True, True, False))
    assert same_bits(model, before) and not model.training
    assert all(torch.equal(a.delta[n], b.delta[n]) for n in a.delta)  # dropout is seeded too
    assert any(not torch.equal(a.delta[n], c.delta[n]) for n in a.delta)  # and it is on in train mode
    assert "roberta.embeddings.word_embeddings.weight" not in a.delta and len(a.delta) == 32


def test_only_checkpoints_that_fit_the_train_set_are_kept(tokenizer):
    """The paper's regime: a check competes only when the whole train set is fit; the kept
    checkpoint's train loss, accuracy and passes are recorded, and match a recomputation."""
    model = make_llama()
    clf = classifier(model, tokenizer)
    train = data(SENTIMENT)
    cfg = dict(optimizer="adamw", lr=3e-2, steps=40, batch_size=4, eval_every=5)  # fits from step 35 on
    free = finetune(clf, train, train, FinetuneConfig(fit_loss=None, **cfg), progress=False)
    gated = finetune(clf, train, train, FinetuneConfig(fit_loss=0.55, **cfg), progress=False)
    checks = gated.history.dropna(subset=["dev_acc"]).set_index("step")
    fits = checks[(checks.fit_acc == 1.0) & (checks.fit_loss <= 0.55)]
    assert len(fits) and len(fits) < len(checks)  # early checks do not fit, so the gate matters
    assert gated.fit and gated.best_step == int(fits.dev_acc.idxmax()) and gated.best_step >= free.best_step
    assert gated.train_loss <= 0.55 and gated.train_acc == 1.0
    assert gated.passes == pytest.approx(gated.best_step * 4 / len(train))
    assert gated.regime()["total_passes"] == pytest.approx(40 * 4 / len(train))
    with grafting.apply_delta(model, gated.delta):
        probs = clf.predict_proba(train)
    labels = np.asarray(train["label"])
    assert -np.log(probs[np.arange(len(labels)), labels]).mean() == pytest.approx(gated.train_loss, rel=1e-4)


def test_no_fitting_checkpoint_keeps_the_last_and_says_so(tokenizer):
    model = make_llama()
    clf = classifier(model, tokenizer)
    res = finetune(clf, data(SENTIMENT), data(SENTIMENT), FinetuneConfig(**{**FAST, "lr": 1e-4, "fit_loss": 1e-6}),
                   progress=False)
    assert not res.fit and res.best_step == 6 and res.train_loss > 1e-6


def test_steps_scale_with_classes_so_passes_stay_the_same(tokenizer):
    cfg = FinetuneConfig(steps=80, eval_every=24)
    assert cfg.for_classes(2) is cfg                       # two classes: the given counts, the same recipe
    assert (cfg.for_classes(6).steps, cfg.for_classes(6).eval_every) == (240, 72)
    assert (cfg.for_classes(3).steps, cfg.for_classes(3).eval_every) == (120, 36)
    model = make_llama()
    three = [("great fun", 0), ("good plot", 0), ("awful dull", 1), ("bad plot", 1), ("sport match", 2), ("game vote", 2)]
    clf = classifier(model, tokenizer, words=(" positive", " negative", " sport"))
    res = finetune(clf, data(three), data(three), FinetuneConfig(**{**FAST, "steps": 4, "eval_every": 2}),
                   progress=False)
    assert len(res.history) == 6 and res.config.steps == 6  # 4 steps given for two classes, three here
    two = finetune(classifier(model, tokenizer), data(SENTIMENT), data(SENTIMENT),
                   FinetuneConfig(**{**FAST, "steps": 4, "eval_every": 2}), progress=False)
    assert len(two.history) == 4


def test_ties_go_to_the_later_check_as_the_official_trainer_or_to_the_first(tokenizer):
    """With a learning rate too small to move a dev prediction, every check ties: the official rule
    (``objective >= best``) keeps the last, ours before it the first; each keeps the model it names."""
    model = make_llama()
    clf = classifier(model, tokenizer)
    train, dev = data(SENTIMENT), data(SENTIMENT)
    cfg = dict(lr=1e-7, steps=9, batch_size=4, eval_every=3, fit_loss=None)
    later = finetune(clf, train, dev, FinetuneConfig(**cfg), progress=False)
    first = finetune(clf, train, dev, FinetuneConfig(ties="first", **cfg), progress=False)
    accs = later.history.dropna(subset=["dev_acc"])["dev_acc"]
    assert accs.nunique() == 1  # every check ties, so the two rules disagree
    assert (later.best_step, first.best_step) == (9, 3)
    last = finetune(clf, train, dev, FinetuneConfig(keep_best=False, **cfg), progress=False)
    assert all(torch.equal(later.delta[n], last.delta[n]) for n in last.delta)  # the later check is the last step
    assert any(not torch.equal(first.delta[n], last.delta[n]) for n in last.delta)  # the first is an earlier model


def test_interleave_spreads_each_tasks_steps_evenly():
    assert interleave([3, 3]) == [0, 1, 0, 1, 0, 1]  # equal counts alternate, as round-robin
    assert interleave([4]) == [0, 0, 0, 0]
    order = interleave([3, 1])
    assert order == [0, 0, 1, 0]  # the rarer task's step comes mid-way, not first or last
    order = interleave([240, 80, 80])  # six classes beside two of two: 3:1:1
    assert [order.count(t) for t in range(3)] == [240, 80, 80]
    for end in range(5, len(order), 5):  # every prefix keeps the shares within one step
        assert abs(order[:end].count(0) - end * 240 / 400) <= 1
    with pytest.raises(ValueError, match="integers ≥ 1"):
        interleave([2, 0])


def test_multitask_gives_each_task_the_steps_it_takes_alone(tokenizer):
    model = make_llama()
    sent = classifier(model, tokenizer)
    three = [("great fun", 0), ("awful dull", 1), ("sport match", 2)]
    topic = classifier(model, tokenizer, "news : {text} . topic :", (" positive", " negative", " sport"))
    items = [(sent, data(SENTIMENT), data(SENTIMENT)), (topic, data(three, "a story about"), data(three, "news"))]
    res = finetune_multitask(items, FinetuneConfig(**{**FAST, "steps": 4, "eval_every": 2}), progress=False)
    tasks = res.history["task"].tolist()
    assert (tasks.count(0), tasks.count(1)) == (4, 6)  # three classes take 3/2 times the steps of two
    assert res.config.steps == 10 and res.config.eval_every == 5  # a check per pass as often as alone
