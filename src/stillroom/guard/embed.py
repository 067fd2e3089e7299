"""Prompt embeddings: what a prompt means, as a unit vector, fast enough to embed every prompt of a scan.

Two encoders, chosen by `signals.encoder` in the guard recipe:

- `static` (the default): a static token-embedding student that stillroom distils from all-MiniLM-L6-v2
  (model2vec-style). Each WordPiece token's vector is the teacher's sentence embedding of that token alone,
  projected to `DIMS` dimensions (a PCA of the teacher's sentence embeddings of the training corpus) and weighted
  by its rarity (SIF, a / (a + p(token)) from that corpus); then the table is fine-tuned so that the mean of a
  text's token vectors points where the teacher's embedding of the whole text points in that space (cosine
  loss; the epoch with the lowest loss on a tenth of the corpus held out is kept). A prompt's
  embedding is the normalised mean of its token vectors: a tokenizer pass and a gather, no transformer.
  The table ships in the package as int8 with a per-row scale (`models/prompt_encoder.safetensors`, ~4 MB),
  built by `python -m stillroom.guard.embed --build ../shared/data` from the training split of the
  capability data (never its held-out part), deterministically from seed 0.
- `minilm`: all-MiniLM-L6-v2 itself (mean pooling, normalised), ~100x slower on a CPU.

`PromptEncoder.encode(texts)` deduplicates, caches by a hash of the text (in process, bounded), batches and
shows a progress bar on large inputs. `default_encoder(kind)` is one shared instance per kind.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
STUDENT_PATH = HERE / "models" / "prompt_encoder.safetensors"
DIMS = 128
MAX_TOKENS = 256  # tokens of a prompt either encoder reads (the teacher's own limit)
MAX_CHARS = 1500  # characters of a prompt the encoders see (more than MAX_TOKENS tokens of English)
SIF_A = 1e-3
PROGRESS_MIN = 20_000  # distinct texts above which encode shows a progress bar


def _teacher_path() -> str:
    from stillroom.distill.models import default_encoder_path
    return default_encoder_path()


_WORDS = re.compile(r"[^\W_]+|[^\w\s]|_")  # BERT's pre-tokenizer: runs of letters and digits; each punctuation mark


def _tokenizer(max_tokens: int = MAX_TOKENS):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(_teacher_path()) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


class StaticBackend:
    """The distilled static student: the normalised mean of a text's token vectors (special tokens left out)."""

    name = "static"

    def __init__(self, path: Path = STUDENT_PATH):
        from safetensors.numpy import load_file
        from stillroom.core.errors import StillroomError

        if not Path(path).exists():
            raise StillroomError(f"the prompt encoder's weights are missing: {path}",
                                 hint="rebuild them with `python -m stillroom.guard.embed --build ../shared/data`, "
                                      "or set signals.encoder: minilm")
        tensors = load_file(str(path))
        self.vectors = tensors["embeddings"].astype(np.float32) * tensors["scales"][:, None]
        self.dims = self.vectors.shape[1]
        self.tokenizer = _tokenizer(MAX_TOKENS)
        self._pieces: dict[str, list[int]] = {}  # word -> its WordPiece ids: words recur, texts rarely do

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """WordPiece ids of each text (truncated to MAX_TOKENS), as the teacher's tokenizer gives them: the text is
        split where BERT's pre-tokenizer splits (white space, each punctuation mark), and each distinct word is
        tokenized once and remembered, which is ~5x faster than tokenizing every text."""
        split = [_WORDS.findall(t) for t in texts]
        new = list({w for words in split for w in words if w not in self._pieces})
        for word, enc in zip(new, self.tokenizer.encode_batch(new, add_special_tokens=False) if new else []):
            self._pieces[word] = enc.ids
        if len(self._pieces) > 2_000_000:  # bound the memory on endless vocabularies (ids, hashes)
            self._pieces.clear()
        pieces = self._pieces
        out = []
        for words in split:
            ids: list[int] = []
            for w in words:
                ids += pieces.get(w) or self.tokenizer.encode(w, add_special_tokens=False).ids
                if len(ids) >= MAX_TOKENS:
                    break
            out.append(ids[:MAX_TOKENS])
        return out

    def __call__(self, texts: list[str]) -> np.ndarray:
        import scipy.sparse as sp

        ids = self.token_ids(texts)
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))
        rows = np.repeat(np.arange(len(ids)), lengths)
        counts = sp.csr_matrix((np.ones(len(flat), np.float32), (rows, flat)), shape=(len(ids), len(self.vectors)))
        return np.asarray(counts @ self.vectors, dtype=np.float32)  # sums; `encode` normalises


class MiniLMBackend:
    """all-MiniLM-L6-v2: mean-pooled last hidden states (what sentence-transformers computes)."""

    name = "minilm"

    def __init__(self, path: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = path or _teacher_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.dims = int(self.model.config.hidden_size)

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).numpy().astype(np.float32)


BACKENDS = {"static": StaticBackend, "minilm": MiniLMBackend}


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class PromptEncoder:
    """`encode(texts) -> float32 (n, d)`, rows L2-normalised (an empty text gives a zero row).

    Identical texts are embedded once; embeddings are kept in an in-process LRU cache keyed by a hash of the
    text (`cache_size` entries), so a prompt seen in calibration is not embedded again in the scan.
    """

    def __init__(self, kind: str = "static", batch_size: int | None = None, cache_size: int = 500_000):
        if kind not in BACKENDS:
            from stillroom.core.errors import StillroomError
            raise StillroomError(f"unknown prompt encoder {kind!r}", where="signals.encoder",
                                 hint=f"allowed values: {', '.join(BACKENDS)}")
        self.kind = kind
        self.batch_size = batch_size or (4096 if kind == "static" else 64)
        self.cache_size = cache_size
        self._backend = None
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def backend(self):
        if self._backend is None:
            self._backend = BACKENDS[self.kind]()
        return self._backend

    @property
    def dims(self) -> int:
        return int(self.backend.dims)

    def encode(self, texts: Iterable[str], progress: bool | None = None) -> np.ndarray:
        texts = [t[:MAX_CHARS] for t in texts]  # past ~MAX_TOKENS tokens nothing is read anyway
        keys = [_key(t) for t in texts]
        with self._lock:
            todo: dict[bytes, str] = {}
            for k, t in zip(keys, texts):
                if k in self._cache:
                    self._cache.move_to_end(k)
                elif k not in todo:
                    todo[k] = t
            found = {k: self._cache[k] for k in keys if k in self._cache}
        if todo:
            pending = sorted(todo.items(), key=lambda kv: len(kv[1]))  # like lengths batched together: less padding
            show = progress if progress is not None else len(pending) >= PROGRESS_MIN
            bar = tqdm(total=len(pending), desc=f"embedding prompts ({self.kind})", unit="prompt", disable=not show, leave=False)
            for i in range(0, len(pending), self.batch_size):
                chunk = pending[i:i + self.batch_size]
                vectors = self.backend([t for _, t in chunk])
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
                for (k, _), v in zip(chunk, vectors):
                    found[k] = v
                bar.update(len(chunk))
            bar.close()
            with self._lock:
                for k, _ in pending:
                    self._cache[k] = found[k]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dims), np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


_SHARED: dict[str, PromptEncoder] = {}
_SHARED_LOCK = threading.Lock()


def default_encoder(kind: str = "static") -> PromptEncoder:
    """The process-wide encoder of `kind` (static student by default), created on first use."""
    with _SHARED_LOCK:
        if kind not in _SHARED:
            _SHARED[kind] = PromptEncoder(kind)
        return _SHARED[kind]


# ---- building the student -----------------------------------------------------------------------------------

def teacher_embeddings(texts: list[str], cache: Path | None = None) -> np.ndarray:
    """The teacher's normalised embeddings of `texts`, reusing and extending an npz cache keyed by text hash."""
    keys = np.array([_key(t).hex() for t in texts])
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            known = dict(zip(z["keys"].tolist(), z["vectors"]))
    missing = [i for i, k in enumerate(keys) if k not in known]
    if missing:
        encoder = PromptEncoder("minilm")
        vectors = encoder.encode([texts[i] for i in missing], progress=True)
        known.update(zip(keys[missing].tolist(), vectors))
        if cache is not None:
            tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
            os.replace(tmp, cache)
    return np.stack([known[k] for k in keys]).astype(np.float32)


def build_student(corpus: list[str], dims: int = DIMS, epochs: int = 30, seed: int = 0, cache: Path | None = None,
                  log=print) -> dict[str, np.ndarray]:
    """Distil the static student from all-MiniLM-L6-v2 on `corpus` (texts); returns the int8 table and scales.

    The student's space is the teacher's sentence-embedding space reduced by a PCA fitted on the teacher's
    embeddings of the corpus; every 10th text is held out, and the epoch with the lowest held-out loss is kept.
    """
    import torch
    from sklearn.decomposition import PCA

    torch.manual_seed(seed)
    teacher = MiniLMBackend()
    size = max(teacher.tokenizer.get_vocab().values()) + 1
    cls_id, sep_id = teacher.tokenizer.cls_token_id, teacher.tokenizer.sep_token_id
    log(f"teacher vectors of {size} tokens")
    token_vectors = np.zeros((size, teacher.dims), np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, size, 512), desc="token vectors", leave=False):
            ids = torch.arange(start, min(size, start + 512))
            batch = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], 1)
            hidden = teacher.model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            token_vectors[start:start + len(ids)] = hidden.mean(1).numpy()
    log(f"teacher embeddings of {len(corpus)} texts")
    sentences = teacher_embeddings(corpus, cache)
    pca = PCA(n_components=dims, svd_solver="full", random_state=seed).fit(sentences)
    target = pca.transform(sentences).astype(np.float32)  # the teacher's sentence embedding in the student's space
    target /= np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
    table = pca.transform(token_vectors).astype(np.float32)

    tok = _tokenizer(MAX_TOKENS)
    ids = [e.ids or [tok.token_to_id("[UNK]")] for e in tok.encode_batch(corpus, add_special_tokens=False)]
    counts = np.bincount(np.fromiter((t for x in ids for t in x), np.int64), minlength=size).astype(np.float64)
    p = (counts + 1) / (counts.sum() + size)
    table *= (SIF_A / (SIF_A + p))[:, None].astype(np.float32)

    weight = torch.nn.Parameter(torch.from_numpy(table.copy()))
    optimiser = torch.optim.Adam([weight], lr=3e-3)
    tokens = [torch.tensor(x, dtype=torch.long) for x in ids]
    target_t = torch.from_numpy(target)
    held = np.arange(len(corpus)) % 10 == 0

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(tokens[r]) for r in rows])[:-1]]), dtype=torch.long)
        pooled = torch.nn.functional.embedding_bag(torch.cat([tokens[r] for r in rows]), weight, offsets, mode="mean")
        return (1 - torch.nn.functional.cosine_similarity(pooled, target_t[rows])).mean()

    with torch.no_grad():
        best_loss, best, best_epoch = float(loss_of(np.flatnonzero(held))), weight.detach().clone(), -1
    log(f"before fine-tuning: held-out cosine loss {best_loss:.4f}")
    rng = np.random.default_rng(seed)
    train_rows = np.flatnonzero(~held)
    for epoch in range(epochs):
        order = rng.permutation(train_rows)
        for start in range(0, len(order), 256):
            loss = loss_of(order[start:start + 256])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            val = float(loss_of(np.flatnonzero(held)))
        if val < best_loss:
            best_loss, best, best_epoch = val, weight.detach().clone(), epoch
        log(f"epoch {epoch}: held-out cosine loss {val:.4f}")
    log(f"kept epoch {best_epoch} (held-out cosine loss {best_loss:.4f})")
    final = best.numpy()
    scales = np.maximum(np.abs(final).max(axis=1), 1e-12) / 127.0
    return {"embeddings": np.round(final / scales[:, None]).astype(np.int8), "scales": scales.astype(np.float32)}


def agreement(texts: list[str], student: np.ndarray, teacher: np.ndarray, k: int = 10) -> dict[str, float]:
    """How far the student's geometry matches the teacher's on `texts`: the overlap of each text's k nearest
    neighbours, and the correlation of pairwise cosines."""
    s, t = student @ student.T, teacher @ teacher.T
    np.fill_diagonal(s, -np.inf)
    np.fill_diagonal(t, -np.inf)
    ns, nt = np.argsort(-s, axis=1)[:, :k], np.argsort(-t, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ns, nt)])
    iu = np.triu_indices(len(texts), 1)
    return {f"knn{k}_overlap": round(float(overlap), 4), "pairwise_cosine_pearson": round(float(np.corrcoef(s[iu], t[iu])[0, 1]), 4)}


def speed(kind: str, texts: list[str], repeats: int = 1) -> float:
    """Distinct texts embedded per second by a fresh encoder of `kind` (no cache hits; backend loaded first)."""
    backend, elapsed = BACKENDS[kind](), 0.0
    for _ in range(repeats):
        fresh = PromptEncoder(kind, cache_size=0)
        fresh._backend = backend
        start = time.perf_counter()
        fresh.encode(texts)
        elapsed += time.perf_counter() - start
    return repeats * len(set(texts)) / elapsed


def main(argv: Iterable[str] | None = None) -> None:
    from safetensors.numpy import save_file

    from stillroom.core.runs import cache_dir
    from stillroom.guard.capabilities import MAX_CHARS, heldout_set, normalise, training_set

    parser = argparse.ArgumentParser(
        prog="python -m stillroom.guard.embed",
        description="Distil the static prompt encoder from all-MiniLM-L6-v2, or measure it against the teacher.",
        epilog="examples:\n  python -m stillroom.guard.embed --build ../shared/data\n  python -m stillroom.guard.embed --measure ../shared/data",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", metavar="DATA_DIR", help="distil on the capability data's training split and write the weights")
    parser.add_argument("--measure", metavar="DATA_DIR", help="speed and agreement with the teacher on held-out prompts")
    parser.add_argument("--out", default=str(STUDENT_PATH))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--corpus", type=int, default=8000, help="--build: training texts the teacher embeds, at most")
    parser.add_argument("--sample", type=int, default=1000, help="--measure: held-out prompts to compare on")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.build and not args.measure:
        parser.error("give --build DATA_DIR or --measure DATA_DIR")
    cache = cache_dir("guard") / "teacher_embeddings.npz"
    if args.build:
        corpus = sorted({normalise(r["prompt"])[:MAX_CHARS] for r in training_set(args.build)})
        if len(corpus) > args.corpus:  # the teacher reads ~20 texts/s on one core: a seeded sample
            corpus = [corpus[i] for i in sorted(np.random.default_rng(0).choice(len(corpus), args.corpus, replace=False))]
        tensors = build_student(corpus, epochs=args.epochs, cache=cache)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"teacher": "all-MiniLM-L6-v2", "dims": str(DIMS), "corpus_texts": str(len(corpus))})
        os.replace(tmp, out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if args.measure:
        rows = heldout_set(args.measure, max_per_class=None)
        rng = np.random.default_rng(0)
        texts = [normalise(rows[i]["prompt"])[:MAX_CHARS] for i in sorted(rng.choice(len(rows), min(args.sample, len(rows)), replace=False))]
        student = PromptEncoder("static", cache_size=0).encode(texts)
        teacher = teacher_embeddings(texts, cache)
        result = {"texts": len(texts), **agreement(texts, student, teacher),
                  "static_texts_per_s": round(speed("static", texts, repeats=5), 1),
                  "minilm_texts_per_s": round(speed("minilm", texts[::4]), 1),
                  "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
