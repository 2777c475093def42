"""Masked-language prediction with and without vision: ``brainalign mlm CONFIG`` -> mlm.h5 + mlm.csv.

For every episode's TR windows (the same windows as ``extract``), ``mlm.mask_fraction`` of each window's
transcript words are masked (``max(1, round(fraction * n_words))`` per window that has words, drawn
without replacement from ``numpy.random.default_rng([mlm.seed, crc32(episode)])``, window by window, so
the choice does not depend on the backbone, the batch size or the other episodes). All masked words of a
window are masked together, and the SAME words are scored under every condition in ``mlm.conditions``
(so condition differences are paired). The backbone predicts each masked word from the last layer's
hidden state at its position through its language-model head:

* ``tiny``: the word's id is replaced by MASK (id 1) and ``TinyMultimodal.token_logits`` (tied to the token
  embedding) is applied at that word position (found as ``types == TYPE_LANGUAGE``) — see ``TinyBackbone.masked_word_logits`` (brainalign.models.tiny);
* backbones with a ``masked_word_logits(stimuli, idx, condition, masked)`` method (``hf``: GIT's causal LM
  head, predicting each sub-token from the position before it);
* any other backbone: ConfigError "backbone X has no language-model head".

Per masked word (all its sub-tokens): ``loss`` = sum of the sub-tokens' cross-entropies (nats; the
negative log-probability of the word), ``correct_top1`` = every sub-token is ranked first, ``correct_top5``
= every sub-token is among the 5 highest logits (rank = number of strictly higher logits, so ties count
in the word's favour). Accuracies and the mean loss are reported per episode and overall with percentile
bootstrap 95 % CIs over masked words (``mlm.bootstrap`` resamples; 0 = no CIs), and for every condition
c other than the reference (``joint`` if present, else the first) a paired bootstrap of reference - c
(the same resampled words in both), with a two-sided bootstrap p value for the top-1 difference.
"""
from __future__ import annotations

import csv
import zlib

import numpy as np
import torch

from .errors import ConfigError, DataError
from .h5io import atomic_h5, atomic_path, str_attr
from .log import get_logger, progress
from .paths import MLM, MLM_CSV

log = get_logger("mlm")

METRICS = ("top1", "top5", "loss")
CI = (2.5, 97.5)
ALL_WORDS = "all"
CSV_COLUMNS = ["condition", "episode", "word_class", "n_words"] + [f"{m}{s}" for m in METRICS
                                                     for s in ("", "_ci_low", "_ci_high")] + ["p_top1"]


# ---- masking ------------------------------------------------------------------------------------------

def episode_rng(seed: int, episode: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(episode).encode("utf-8"))])


def choose_masks(words, fraction: float, rng: np.random.Generator) -> list[list[int]]:
    """Word indices to mask per window (sorted): max(1, round(fraction * n)) of n > 0 words, none of 0."""
    out = []
    for w in words:
        n = len(w)
        if n == 0:
            out.append([])
            continue
        k = min(n, max(1, int(round(fraction * n))))
        out.append(sorted(int(i) for i in rng.choice(n, size=k, replace=False)))
    return out


# ---- per-word metrics ------------------------------------------------------------------------------------

def word_metrics(logits: torch.Tensor, target: torch.Tensor) -> tuple[bool, bool, float]:
    """(top1 correct, top5 correct, loss) of one word from its sub-tokens' logits (n_sub, vocab), target (n_sub,)."""
    logits = logits.double()
    tgt = logits.gather(1, target[:, None])                          # (n_sub, 1)
    rank = (logits > tgt).sum(1)                                     # strictly higher logits
    loss = (torch.logsumexp(logits, 1) - tgt[:, 0]).sum()
    return bool((rank < 1).all()), bool((rank < 5).all()), float(loss)


# ---- the tiny backbone's masked-word head ---------------------------------------------------------------

def masked_word_head(backbone):
    """The backbone's ``masked_word_logits`` callable; ConfigError if it has no language-model head."""
    fn = getattr(backbone, "masked_word_logits", None)
    if fn is None:
        raise ConfigError(f"model.backbone: backbone {backbone.name!r} has no language-model head "
                          "(`brainalign mlm` needs one)")
    return fn


# ---- evaluation -----------------------------------------------------------------------------------------

def check_mlm_config(cfg) -> tuple[list[str], str]:
    """(conditions, reference condition) after validating cfg.mlm; one-line ConfigError otherwise."""
    from .models.conditions import modalities

    m = cfg.mlm
    conds = list(m.conditions)
    if not conds:
        raise ConfigError("mlm.conditions: needs at least one condition")
    if len(set(conds)) != len(conds):
        raise ConfigError("mlm.conditions: duplicate condition")
    for i, c in enumerate(conds):
        try:
            keep = modalities(c)
        except ConfigError as e:
            raise ConfigError(f"mlm.conditions[{i}]: {e}") from None
        if "language" not in keep:
            raise ConfigError(f"mlm.conditions[{i}]: condition {c!r} removes the words; nothing to predict")
    if not 0.0 < m.mask_fraction <= 1.0:
        raise ConfigError(f"mlm.mask_fraction: must lie in (0, 1], got {m.mask_fraction}")
    if m.bootstrap < 0:
        raise ConfigError(f"mlm.bootstrap: must be >= 0 (0: no confidence intervals), got {m.bootstrap}")
    if cfg.model.batch_size < 1:
        raise ConfigError(f"model.batch_size: must be positive, got {cfg.model.batch_size}")
    return conds, ("joint" if "joint" in conds else conds[0])


def evaluate_episode(head, stimuli, conditions, masks, batch_size: int) -> dict:
    """Score the masked words of one episode under each condition.

    Returns {"window_index", "word_index", "n_tokens": int32 (n,), "word": list[str] (n),
    condition: {"top1": uint8 (n,), "top5": uint8 (n,), "loss": float32 (n,)}} in window, word order.
    """
    rows = [i for i, m in enumerate(masks) if m]
    win = np.array([i for i in rows for _ in masks[i]], dtype=np.int32)
    wid = np.array([w for i in rows for w in masks[i]], dtype=np.int32)
    out = {"window_index": win, "word_index": wid, "word": [str(stimuli.words[i][w]) for i, w in zip(win, wid)]}
    n_tok = None
    for c in conditions:
        res = {m: [] for m in METRICS}
        toks = []
        for start in range(0, len(rows), batch_size):
            part = rows[start: start + batch_size]
            preds = head(stimuli, np.asarray(part, dtype=np.int64), c, [masks[i] for i in part])
            for i, p in zip(part, preds):
                if len(p) != len(masks[i]):
                    raise DataError(f"episode {stimuli.episode}, window {i}: the backbone returned {len(p)} "
                                    f"predictions for {len(masks[i])} masked words")
                for logits, target in p:
                    t1, t5, loss = word_metrics(logits, target)
                    res["top1"].append(t1)
                    res["top5"].append(t5)
                    res["loss"].append(loss)
                    toks.append(len(target))
        loss = np.asarray(res["loss"], dtype=np.float32)
        if not np.isfinite(loss).all():
            raise DataError(f"episode {stimuli.episode}: non-finite masked-word loss under {c!r} "
                            "(model.precision overflow?)")
        out[c] = {"top1": np.asarray(res["top1"], np.uint8), "top5": np.asarray(res["top5"], np.uint8),
                  "loss": loss}
        n_tok = np.asarray(toks, np.int32) if n_tok is None else n_tok
    out["n_tokens"] = n_tok if n_tok is not None else np.zeros(0, np.int32)
    return out


# ---- bootstrap ------------------------------------------------------------------------------------------

def bootstrap_means(values: np.ndarray, n_boot: int, seed, max_elements: int = 4_000_000) -> np.ndarray:
    """Means of ``values`` (k, n) over the same ``n_boot`` resamples of the n columns: float64 (k, n_boot).

    Resample b draws ``rng.integers(0, n, n)`` with ``rng = numpy.random.default_rng(seed)``, in order (drawn
    in chunks of resamples to bound memory; identical to one ``rng.integers(0, n, (n_boot, n))`` draw).
    """
    values = np.asarray(values, dtype=np.float64)
    k, n = values.shape
    rng = np.random.default_rng(seed)
    out = np.empty((k, n_boot))
    step = max(1, max_elements // max(n * k, 1))
    for b0 in range(0, n_boot, step):
        m = min(step, n_boot - b0)
        idx = rng.integers(0, n, size=(m, n))
        out[:, b0: b0 + m] = values[:, idx].mean(-1)
    return out


def summarize(scores: dict, conditions, reference: str, n_boot: int, seed, episode: str,
              word_class: str = ALL_WORDS) -> list[dict]:
    """CSV rows for one scope (an episode or "all", one word class or "all"): one per condition + one per
    paired difference.

    ``scores`` = {condition: {"top1", "top5", "loss": (n,) arrays}} over the same n masked words.
    """
    n = len(scores[conditions[0]]["top1"])
    stack = np.stack([np.asarray(scores[c][m], np.float64) for c in conditions for m in METRICS]) \
        if n else np.zeros((len(conditions) * len(METRICS), 0))
    point = stack.mean(1) if n else np.full(len(stack), np.nan)
    boot = bootstrap_means(stack, n_boot, seed) if n and n_boot else None
    nm = len(METRICS)

    def row(name, est, bt):
        r = {"condition": name, "episode": episode, "word_class": word_class, "n_words": n}
        for j, m in enumerate(METRICS):
            lo, hi = np.percentile(bt[j], CI) if bt is not None else (np.nan, np.nan)
            r.update({m: float(est[j]), f"{m}_ci_low": float(lo), f"{m}_ci_high": float(hi)})
        r["p_top1"] = np.nan
        return r

    rows = []
    for ci, c in enumerate(conditions):
        sl = slice(ci * nm, (ci + 1) * nm)
        rows.append(row(c, point[sl], None if boot is None else boot[sl]))
    r0 = conditions.index(reference)
    ref = slice(r0 * nm, (r0 + 1) * nm)
    for ci, c in enumerate(conditions):
        if c == reference:
            continue
        sl = slice(ci * nm, (ci + 1) * nm)
        diff = None if boot is None else boot[ref] - boot[sl]
        r = row(f"{reference}-{c}", point[ref] - point[sl], diff)
        if diff is not None:
            r["p_top1"] = float(min(1.0, 2 * min((diff[0] <= 0).mean(), (diff[0] >= 0).mean())))
        rows.append(r)
    return rows


# ---- the stage ------------------------------------------------------------------------------------------

def word_classes(cfg, stimuli) -> list[list[str]] | None:
    """Per window, the class of each of its words from the transcript column ``mlm.word_class_column``
    (None when unset). The TSV rows are windowed exactly as the words are (by onset)."""
    from .stimuli.transcript import read_tsv
    from .stimuli.windows import window_words

    col = cfg.mlm.word_class_column
    if not col:
        return None
    path = cfg.path(cfg.data.stimuli.transcript, episode=stimuli.episode)
    if path.suffix.lower() != ".tsv":
        raise ConfigError(f"mlm.word_class_column: needs .tsv transcripts with a {col!r} column, got {path.name}")
    labels = window_words(sorted(read_tsv(path, word_column=col), key=lambda w: w.onset), stimuli.windows)
    for i, (a, b) in enumerate(zip(labels, stimuli.words)):
        if len(a) != len(b):
            raise DataError(f"transcript {path}: window {i} has {len(b)} words but {len(a)} {col!r} labels")
    return labels


def run_mlm(cfg, force: bool = False, backbone=None):
    """Write ``{output}/mlm.h5`` and ``{output}/mlm.csv`` (see the module docstring); returns the .h5 path.

    Skipped while its stage key (mlm.*, the backbone settings, the stimuli and checkpoint files) is current
    (unless ``force``).
    """
    from .stimuli.windows import check_stimuli, load_stimuli_for
    from .models import get_backbone
    from .stagecheck import stage_check

    conds, reference = check_mlm_config(cfg)
    path, csv_path = cfg.out / MLM, cfg.out / MLM_CSV
    key = stage_check(cfg, "mlm", force)
    if key.current:
        return path
    backbone = backbone or get_backbone(cfg.model, cfg.windows)
    for c in conds:
        backbone.check_condition(c)
    head = masked_word_head(backbone)
    episodes = list(cfg.data.episodes)
    per_ep = []
    for ep in progress(episodes, desc="mlm", unit="episode"):
        stimuli = load_stimuli_for(backbone, cfg, ep)
        check_stimuli(stimuli)
        masks = choose_masks(stimuli.words, cfg.mlm.mask_fraction, episode_rng(cfg.mlm.seed, ep))
        res = evaluate_episode(head, stimuli, conds, masks, cfg.model.batch_size)
        labels = word_classes(cfg, stimuli)
        res["word_class"] = [labels[i][w] if labels else ALL_WORDS for i, w in zip(res["window_index"],
                                                                                     res["word_index"])]
        per_ep.append(res)
        log.debug("mlm %s: %d masked words; top-1 %s", ep, len(res["word"]),
                 ", ".join(f"{c} {res[c]['top1'].mean():.3f}" if len(res["word"]) else f"{c} -" for c in conds))
    n_words = sum(len(r["word"]) for r in per_ep)
    if n_words == 0:
        raise DataError(f"mlm: no transcript words in any window of {', '.join(episodes)}")
    cat = lambda get, dt: np.concatenate([np.asarray(get(r), dt) for r in per_ep])      # noqa: E731
    ep_index = np.concatenate([np.full(len(r["word"]), e, np.int32) for e, r in enumerate(per_ep)])
    scores = {c: {m: cat(lambda r: r[c][m], np.float64) for m in METRICS} for c in conds}
    classes = [w for r in per_ep for w in r["word_class"]]
    kinds = [ALL_WORDS] + (sorted(set(classes) - {ALL_WORDS}) if cfg.mlm.word_class_column else [])
    rows, overall = [], []
    for k, kind in enumerate(kinds):              # class "all" first, with the seeds it always had
        extra = [k] if k else []
        for e, (ep, r) in enumerate(zip(episodes, per_ep)):
            rows += summarize(_subset(r, conds, kind), conds, reference, cfg.mlm.bootstrap,
                              [cfg.mlm.seed, 1, e] + extra, ep, kind)
        part = summarize(_subset({**scores, "word_class": classes}, conds, kind), conds, reference,
                         cfg.mlm.bootstrap, [cfg.mlm.seed, 0] + extra, "all", kind)
        rows += part
        overall += part if kind == ALL_WORDS else []

    from .stagecheck import invalidate

    invalidate(cfg, "mlm")           # the old mlm.h5 goes first, the new one (the record) is written last
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_h5(path, "mlm", config_text=cfg.text, extra=key.attrs) as f:
        f.create_dataset("episode_index", data=ep_index)
        f.create_dataset("window_index", data=cat(lambda r: r["window_index"], np.int32))
        f.create_dataset("word_index", data=cat(lambda r: r["word_index"], np.int32))
        f.create_dataset("n_tokens", data=cat(lambda r: r["n_tokens"], np.int32))
        f.create_dataset("word", data=str_attr([w for r in per_ep for w in r["word"]]))
        if cfg.mlm.word_class_column:
            f.create_dataset("word_class", data=str_attr(classes))
        for c in conds:
            g = f.create_group(c)
            g.create_dataset("correct_top1", data=cat(lambda r: r[c]["top1"], np.uint8))
            g.create_dataset("correct_top5", data=cat(lambda r: r[c]["top5"], np.uint8))
            g.create_dataset("loss", data=cat(lambda r: r[c]["loss"], np.float32))
        table = np.array([tuple(r[k] for k in CSV_COLUMNS) for r in rows], dtype=summary_dtype())
        f.create_dataset("summary", data=table)
        for r in overall:
            g = f.require_group(r["condition"]) if r["condition"] in conds else f.require_group(
                f"difference/{r['condition']}")
            for k in CSV_COLUMNS[3:]:
                g.attrs[k] = r[k]
        f.attrs.update({"conditions": str_attr(conds), "episodes": str_attr(episodes), "reference": reference,
                        "mask_fraction": float(cfg.mlm.mask_fraction), "bootstrap": int(cfg.mlm.bootstrap),
                        "seed": int(cfg.mlm.seed), "n_words": int(n_words), "backbone": backbone.name,
                        "ci_level": 0.95, "word_classes": str_attr(kinds[1:]),
                        "word_class_column": cfg.mlm.word_class_column or ""})
    log.info("mlm: %d masked words over %d episodes -> %s, %s", n_words, len(episodes), path, csv_path)
    return path


def _subset(scores: dict, conds, kind: str) -> dict:
    """The per-condition metrics of the words of class ``kind`` (all words for ALL_WORDS)."""
    if kind == ALL_WORDS:
        return {c: scores[c] for c in conds}
    keep = np.asarray(scores["word_class"]) == kind
    return {c: {m: np.asarray(scores[c][m])[keep] for m in METRICS} for c in conds}


def summary_dtype() -> np.dtype:
    """Compound dtype of the ``/summary`` table: the CSV columns (strings vlen UTF-8, n_words int64, floats)."""
    import h5py

    s = h5py.string_dtype()
    return np.dtype([("condition", s), ("episode", s), ("word_class", s), ("n_words", np.int64)]
                    + [(k, np.float64) for k in CSV_COLUMNS[4:]])
