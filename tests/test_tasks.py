"""Task registry: readers, cleaning, seeded disjoint splits, hub loading from local files, errors."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from skillgraft import tasks
from skillgraft.models import LM
from skillgraft.prompt import Prompt, PromptClassifier
from skillgraft.tasks import HubSource, OfflineSource, Task, get_task, load_pool, load_splits

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
WORDS = ["great", "fun", "lovely", "good", "dull", "awful", "bad", "boring"]


def _text(i: int) -> str:
    return f"the movie {i} was {WORDS[i % 8]} and {WORDS[(i // 8) % 8]}"


@pytest.fixture
def corpora(tmp_path, monkeypatch):
    """Small corpora in the formats of the real ones, under a fresh SKILLGRAFT_HOME."""
    home = tmp_path / "home"
    monkeypatch.setenv("SKILLGRAFT_HOME", str(home))
    vader = home / "corpora" / "vader"
    vader.mkdir(parents=True)
    ratings = [2.1, -1.7, 0.2, -0.4, 3.0, -2.5]  # 0.2 and -0.4 are dropped (|rating| < 0.5)
    lines = [f"{i}\t{ratings[i % 6]}\t{_text(i)}" for i in range(120)]
    lines += ["900\t1.5\tTHE movie 0   was great and great",  # duplicate of row 0 up to case/space
              "901\t2.0\tthe movie 1 was fun and great",      # same text as row 1 (negative): conflict, both dropped
              "902\tnot-a-number\tbroken row"]
    for stem in ("movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets"):
        (vader / f"{stem}_GroundTruth.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    uci = home / "corpora" / "uci-sentences"
    uci.mkdir(parents=True)
    items = [{"text": _text(i) + "  ", "class": i % 2} for i in range(60)] + [{"text": "", "class": None}]
    for stem in ("imdb", "yelp", "amazon"):
        (uci / f"{stem}.json").write_text(json.dumps(items))
    cf = home / "corpora" / "crowdflower-tweets"
    cf.mkdir(parents=True)
    rows = ["sentiment,confidence,text"] + [f"{['negative', 'neutral', 'positive'][i % 3]},1,{_text(i)}"
                                           for i in range(60)]
    rows += ["negative,0.8,RT @bob: the movie 0 was great and great http://t.co/x1", "positive,0.9,RT @amy: brand new tweet"]
    (cf / "tweets3.csv").write_text("\n".join(rows) + "\n")
    bbc = home / "corpora" / "bbc-news"
    for c, folder in enumerate(["business", "entertainment", "politics", "sports", "tech"]):
        (bbc / folder).mkdir(parents=True)
        for j in range(12):
            body = f"Mr. Smith said story {c}-{j} is news. A second sentence follows.\n\nMore text."
            (bbc / folder / f"{j:03d}.txt").write_text(f"Headline {c} {j}\n\n{body}\n")
    _new_families(home)
    return home


def _new_families(home):
    """trec, sms, subj, boolq and spamassassin corpora in their real formats."""
    trec = home / "corpora" / "trec-questions"
    trec.mkdir(parents=True)
    codes = ["ABBR:exp", "ENTY:animal", "DESC:def", "HUM:ind", "LOC:city", "NUM:date"]
    lines = [f"{codes[i % 6]} What is question {i} about {WORDS[i % 8]} ?" for i in range(72)]
    lines += lines[:30] + ["BOGUS:x not a class ?", ""]                     # nested subsets repeat; a bad code
    (trec / "questions.txt").write_text("\n".join(lines) + "\n")
    sms = home / "corpora" / "sms-spam"
    sms.mkdir(parents=True)
    rows = [",spam,text"] + [f'{i},{int(i % 4 == 0)},"msg {i}, {WORDS[i % 8]} text"' for i in range(60)]
    rows += ['60,0,"msg 1, fun text"', '61,1,"msg 2,  lovely text"']          # a duplicate; a conflicting one
    (sms / "sms-spam.csv").write_text("\n".join(rows) + "\n")
    subj = home / "corpora" / "rt-subjectivity"
    subj.mkdir(parents=True)
    import bz2
    import csv
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for i in range(12):
        plot = (f"Dr. Jones (Actor {i}) travels to city {i} with his friends. He meets a stranger there at night. "
                f"Hi. They fight for the treasure of film {i} until the end.")
        w.writerow(["plot", plot, f"film{i}", "True"])
    for i in range(40):
        w.writerow(["fresh" if i % 2 else "rotten", f"a {WORDS[i % 8]} and {WORDS[(i // 8) % 8]} film, review {i}.",
                    f"film{i}", "True"])
    (subj / "rotten_tomatoes.csv.bz2").write_bytes(bz2.compress(buf.getvalue().encode()))
    boolq = home / "corpora" / "boolq"
    boolq.mkdir(parents=True)
    items = [{"question": f"is thing {i} {WORDS[i % 8]}", "passage": f"Thing {i} -- a passage about thing {i}.",
              "idx": i, "label": ["False", "True"][i % 2]} for i in range(40)]
    items += [{"question": "no label here", "passage": "unlabelled test row", "idx": 99}]
    (boolq / "combined.jsonl").write_text("\n".join(json.dumps(r) for r in items) + "\n")
    sa = home / "corpora" / "spam-assassin"
    sa.mkdir(parents=True)
    msgs = []
    for i in range(40):
        group = "spam-1" if i % 2 else "easy-ham-1"
        if i % 4 == 3:  # an HTML spam
            text = (f"From: a@b.c\nSubject: Win prize {i}\nContent-Type: text/html\n\n"
                    f"<html><body><p>Claim your <b>prize</b> {i} now&nbsp;today</p></body></html>\n")
        else:
            text = (f"From x@y.z Mon Jan 1\nReturn-Path: <x@y.z>\nSubject: Re: topic {i}\n"
                    f"Content-Type: text/plain; charset=default\n\n> quoted line\nOn Mon, Bob wrote:\n"
                    f"Date: Tue, 20 Aug 2002\nReal body {i} about {WORDS[i % 8]}.\n-- \nsignature\n")
        msgs.append({"group": group, "id": f"{i:05d}", "text": text})
    (sa / "messages.jsonl").write_text("\n".join(json.dumps(m) for m in msgs) + "\n")


def _keys(ds, fields=("text",)):
    return {" || ".join(" ".join(str(row[f]).lower().split()) for f in fields) for row in ds}


# ------------------------------------------------------------------ registry
def test_registry_lists_offline_and_hub_tasks():
    offline = {"mr", "cr", "nyt", "tweets", "imdb-sent", "yelp-sent", "amazon-sent", "tweets3", "bbc", "trec", "subj",
               "sms", "spamassassin", "boolq"}
    hub = {"sst2", "rotten_tomatoes", "subj-hub", "trec-hub", "ag_news", "mnli", "snli", "qnli", "rte", "imdb",
           "yelp_polarity", "amazon_polarity"}
    assert set(tasks.list_tasks("offline")) == offline
    assert set(tasks.list_tasks("hub")) == hub
    for name in tasks.list_tasks():
        task = get_task(name)
        assert "{mask}" in task.prompt("masked").template
        assert len(task.prompt("causal").label_words) == len(task.class_names)
    assert get_task("mnli").prompt("masked").template == "{premise} ? {mask} , {hypothesis}"
    assert get_task("sst2").prompt("masked").label_words == (" terrible", " great")
    table = tasks.task_table(sizes=False)
    assert list(table.columns[:4]) == ["name", "source", "family", "classes"] and len(table) == len(tasks.TASKS)


def test_task_table_sizes_after_cleaning(corpora):
    table = tasks.task_table().set_index("name")
    assert table.loc["mr", "pool"] == 79  # 120 rows - 40 weak ratings - 1 conflicting text (+ its duplicate)
    assert table.loc["bbc", "per_class"] == "12 / 12 / 12 / 12 / 12"
    assert table["pool"].isna()["sst2"] and str(table["pool"].dtype) == "Int64"


def test_errors_name_the_accepted_values(corpora):
    with pytest.raises(ValueError, match="unknown task 'nope'; accepted: .*mr"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"class 'negative' holds only \d+ examples"):
        load_splits("mr", k=60)
    with pytest.raises(KeyError, match="accepted: train, dev, test"):
        load_splits("mr", k=4)["validation"]
    with pytest.raises(ValueError, match="not both"):
        load_splits("mr", k=4, dev_size=10, dev_k=2)
    with pytest.raises(ValueError, match="non-negative"):
        load_splits("mr", k=-1)
    with pytest.raises(ValueError, match="hub tasks only"):
        load_splits("mr", data_files={"train": "x.json"})
    with pytest.raises(ValueError, match="must contain the text slot"):
        Task("bad", "offline", "", "sentiment", ("text",), ("neg", "pos"),
             {"causal": Prompt("{sentence} Sentiment:", (" negative", " positive"))},
             OfflineSource("vader", lambda p: None, ""))
    with pytest.raises(ValueError, match="2 label words for 3 classes"):
        Task("bad", "hub", "", "nli", ("text",), ("a", "b", "c"), {"causal": Prompt("{text}", (" a", " b"))}, HubSource("x"))


# ------------------------------------------------------------------ readers and cleaning
def test_vader_binarizes_by_sign_and_deduplicates(corpora):
    pool, test = load_pool("mr")
    assert test is None
    assert len(pool) == 79 and set(pool["label"]) == {0, 1}
    assert pool["_key"].is_unique
    assert not pool["text"].str.contains("movie 1 was").any()          # conflicting labels: dropped
    assert (pool["text"].str.contains("the movie 0 was")).sum() == 1    # case/space duplicate: kept once
    row = pool[pool["text"] == _text(4)].iloc[0]
    assert row["label"] == 1 and (pool["text"] == _text(5)).sum() == 1 and not (pool["text"] == _text(2)).any()


def test_uci_tweets3_and_bbc_readers(corpora):
    uci, _ = load_pool("yelp-sent")
    assert len(uci) == 60 and not uci["text"].str.endswith(" ").any()
    tw, _ = load_pool("tweets3")
    assert "brand new tweet" in set(tw["text"])                          # 'RT @amy:' removed
    assert len(tw) == 61                                                 # the retweet of row 0 is a duplicate
    assert tw["text"].str.contains("movie 0 was").sum() == 1
    bbc, _ = load_pool("bbc")
    assert len(bbc) == 60 and sorted(set(bbc["label"])) == [0, 1, 2, 3, 4]
    assert "Headline 3 0. Mr. Smith said story 3-0 is news." in set(bbc["text"])  # 'sports' folder -> 'sport'


def test_new_family_readers(corpora):
    trec, _ = load_pool("trec")
    assert len(trec) == 72 and list(np.bincount(trec["label"])) == [12] * 6      # repeats and the bad code gone
    assert get_task("trec").class_names[trec.loc[trec["text"].str.contains("question 3 "), "label"].iloc[0]] == "human"
    sms, _ = load_pool("sms")
    assert len(sms) == 59 and sms["label"].sum() == 15                           # 'msg 2' conflicts: both dropped
    assert (sms["text"] == "msg 1, fun text").sum() == 1
    subj, _ = load_pool("subj")
    objective = set(subj.loc[subj["label"] == 0, "text"])
    assert "Dr. Jones (Actor 3) travels to city 3 with his friends." in objective  # 'Dr.' is not a sentence end
    assert "They fight for the treasure of film 3 until the end." in objective
    assert not any(t.startswith("Hi") for t in objective)                        # under SUBJ_WORDS[0] words
    assert (subj["label"] == 1).sum() == 40 and (subj["label"] == 0).sum() == 25  # 12 + 12 + one shared sentence
    boolq, _ = load_pool("boolq")
    assert list(boolq.columns[:2]) == ["passage", "question"] and len(boolq) == 40
    assert boolq.loc[boolq["question"] == "is thing 1 fun", "label"].item() == 1
    mail, _ = load_pool("spamassassin")
    assert len(mail) == 40 and mail["label"].sum() == 20
    ham = mail.loc[mail["text"].str.contains("topic 0"), "text"].item()
    assert ham == "Re: topic 0. Real body 0 about great. signature"               # headers, quotes, rules gone
    assert "Win prize 3. Claim your prize 3 now today" in set(mail["text"])        # HTML tags and entities gone


def test_new_family_splits_are_seeded_and_disjoint(corpora):
    for name, fields in (("trec", ("text",)), ("boolq", ("passage", "question"))):
        a, b = (load_splits(name, k=2, seed=s, test_size=12) for s in (5, 5))
        assert a.train[fields[0]] == b.train[fields[0]]
        tr, dv, te = (_keys(x, fields) for x in (a.train, a.dev, a.test))
        assert not (tr & dv) and not (tr & te) and not (dv & te)
        assert len(a.train) == 2 * len(get_task(name).class_names)
    assert get_task("boolq").length(64) == tasks.BOOLQ_LENGTH and get_task("mr").length(64) == 64
    assert get_task("boolq").length(1024) == 1024


# ------------------------------------------------------------------ splits
def test_same_seed_same_sample_other_seed_other_sample(corpora):
    a, b, c = (load_splits("mr", k=8, seed=s, test_size=20) for s in (1, 1, 2))
    assert a.train["text"] == b.train["text"] and a.dev["text"] == b.dev["text"]
    assert set(a.train["text"]) != set(c.train["text"])


def test_splits_are_disjoint_and_k_shot(corpora):
    s = load_splits("mr", k=8, seed=3, test_size=20)
    assert len(s.train) == 16 and sorted(s.train["label"]).count(0) == 8
    assert len(s.dev) == 16 and s.dev["label"].count(1) == 8      # dev = k per class by default
    assert len(s.test) == 20 and s.test["label"].count(0) == 10   # class-balanced test
    tr, dv, te = _keys(s.train), _keys(s.dev), _keys(s.test)
    assert not (tr & dv) and not (tr & te) and not (dv & te)
    assert s.train.features["label"].names == ["negative", "positive"]
    assert len(load_splits("mr", k=4, dev_size=10, test_size=20).dev) == 10
    assert len(load_splits("mr", k=4, dev_k=2, test_size=20).dev) == 4


def test_test_split_does_not_depend_on_seed_or_k(corpora):
    ref = load_splits("bbc", k=2, seed=1, test_size=25).test
    for seed, k, dev_size in [(2, 2, None), (7, 3, None), (1, 1, 5)]:
        other = load_splits("bbc", k=k, seed=seed, test_size=25, dev_size=dev_size).test
        assert other["text"] == ref["text"] and other["label"] == ref["label"]
    assert [ref["label"].count(c) for c in range(5)] == [5] * 5
    assert len(load_splits("bbc", k=1, test_size=None).test) == 30    # at most half of each class


def test_test_is_balanced_only_where_the_pool_allows(corpora):
    s = load_splits("bbc", k=1, test_size=200)
    assert len(s.test) == 30  # capped at half of each class (12 -> 6), with a warning


# ------------------------------------------------------------------ hub tasks through local files
def test_hub_task_from_local_json(tmp_path):
    files = {"train": str(FIXTURES / "sst2_train.jsonl"), "validation": str(FIXTURES / "sst2_validation.jsonl")}
    pool, test_pool = load_pool("sst2", data_files=files)
    assert len(test_pool) == 12
    assert len(pool) == 40  # the -1 label row and the row shared with validation are gone
    s = load_splits("sst2", k=4, seed=5, test_size=6, data_files=files)
    assert _keys(s.test) <= set(test_pool["_key"]) and len(s.test) == 6
    assert not _keys(s.train) & set(test_pool["_key"])
    assert load_splits("sst2", k=4, seed=5, test_size=6, data_files=files).train["text"] == s.train["text"]
    with pytest.raises(ValueError, match="split names must be 'train'"):
        load_pool("sst2", data_files={"train": files["train"], "test": files["validation"]})


def test_hub_pair_task_from_local_csv(tiny_roberta, tokenizer):
    files = {"train": FIXTURES / "mnli_train.csv", "validation_matched": FIXTURES / "mnli_validation_matched.csv"}
    s = load_splits("mnli", k=2, seed=0, test_size=None, data_files=files)
    assert s.train.column_names == ["premise", "hypothesis", "label"]
    assert len(s.train) == 6 and len(s.test) == 9
    words = (" yes", " maybe", " no")  # the tiny tokenizer's vocabulary is lower-case
    clf = PromptClassifier(LM(tiny_roberta, tokenizer, "tiny", "masked"), Prompt(get_task("mnli").prompt("masked").template, words))
    row = s.test[0]
    assert clf.render(row) == f"{row['premise']} ? <mask> , {row['hypothesis']}"
    assert clf.predict_proba(s.test).shape == (9, 3)


def test_task_classifier_picks_prompt_by_kind(tiny_llama, tiny_roberta, tokenizer):
    mr = get_task("mr")
    assert mr.classifier(LM(tiny_llama, tokenizer, "t", "causal")).prompt == mr.prompt("causal")
    assert mr.classifier(LM(tiny_roberta, tokenizer, "t", "masked")).prompt == mr.prompt("masked")


# ------------------------------------------------------------------ the real corpus
@pytest.mark.slow
def test_real_mr_task():
    from skillgraft import assets

    if not (assets.home() / "corpora" / "vader").is_dir():
        pytest.skip("vader corpus not fetched (run `skillgraft fetch`)")
    s = load_splits("mr", k=16, seed=42)
    assert len(s.train) == 32 and len(s.dev) == 32 and s.test["label"].count(1) == 100
    assert not _keys(s.train) & _keys(s.test)
    pool, _ = load_pool("mr")
    assert 9_900 < len(pool) <= 10_072
    if (assets.home() / "models" / assets.DEFAULT_MODEL).is_dir():  # label words are distinct first sub-tokens
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(assets.home() / "models" / assets.DEFAULT_MODEL)
        for name in tasks.list_tasks("offline"):
            words = get_task(name).prompt("causal").label_words
            assert len({tok(w, add_special_tokens=False).input_ids[0] for w in words}) == len(words), name
