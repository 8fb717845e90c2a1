"""The object the CLI, the demo and retrieval use: a FourM plus its tokenizers, raw values in and out.

:class:`Pipeline` turns raw corpus values (a caption string, an ``uint8 (H, W, 3)`` image, depth in
metres, a list of boxes... exactly as ``CorpusReader`` yields them) into the model's tokens with
the tokenizers folder, runs a chained schedule (:mod:`fourm.generation.sampler`), and decodes the
generated tokens back into corpus values.

Condition keys may be model modalities (``tok_depth``, ``caption``, ``rgb``) or corpus entries
(``depth`` is read as ``tok_depth``; ``rgb`` as raw pixels where the model reads them, else as
``tok_rgb``). A condition value is raw, or already tokens: a 1-D integer array/tensor (image and
global tokens, -1 marking positions to generate), or a list of ids for a sequence. A caption may
hold ``[MASK]`` where a span is to be filled. Which one a value is, is its kind's call
(:meth:`fourm.kinds.KindHandler.reads_as_tokens`), under the model name and the corpus name alike: a
16 kHz speech clip (``int16 (N,)``), raw points ``(N, 7)`` or an IMU series ``(T, 6)`` given as
``tok_speech``, ``tok_point_cloud``, ``tok_imu`` are tokenized by the loaded tokenizer first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from fourm.data.masking import TextSpecials
from fourm.generation.sampler import generate as run_schedule
from fourm.generation.sampler import seeded
from fourm.generation.schedule import Target, build_schedule
from fourm.generation.state import GenerationState
from fourm.kinds import handler, resize
from fourm.modalities import CORPUS, MODALITIES
from fourm.model.fourm import FourM
from fourm.model.precision import GENERATION_PRECISIONS, check_precision, quantize_int8, resolve_precision
from fourm.tokenization.base import TokenizerMismatchError, check_tokenizer, load_tokenizers

MASK = "[MASK]"  # in a caption: a span for the model to fill


class Generated(NamedTuple):
    tokens: Any  # image / global: LongTensor (B, N); sequence: list of B id lists ending with [EOS]
    values: list | None  # B decoded corpus values (None without a tokenizer for the modality)


@dataclass
class _Resolved:
    name: str  # model modality
    values: list  # per sample: model-ready value or None


class Pipeline:
    """A FourM and its tokenizers: raw values -> tokens -> chained generation -> raw values.

    Args:
        model: the FourM.
        tokenizers: model modality -> tokenizer (``fourm.tokenization.base.load_tokenizers``);
            needed for raw inputs and decoded outputs of tokenized modalities.
        specials: text special ids (default: those of a sequence tokenizer, else the standard layout).
        precision: what MaskGIT and ROAR compute in: ``fp32``, ``bf16``, or ``auto`` (bf16 where a
            timed matmul finds it faster on the model's device, decided once here); or ``int8``: every
            scheme on a copy of the model with int8 linear weights (CPU; captions 1.5-2x faster, outputs
            slightly changed: ``fourm.model.precision.quantize_int8``).
    """

    def __init__(self, model: FourM, tokenizers: dict | None = None, specials: TextSpecials | None = None,
                 precision: str = "fp32"):
        if check_precision(precision, GENERATION_PRECISIONS) == "int8":
            model, precision = quantize_int8(model), "fp32"
        self.model = model.eval()
        self.precision = resolve_precision(precision, model.embed.mask_token.device)
        self.tokenizers = dict(tokenizers or {})
        self.specs = model.specs
        for name, tokenizer in self.tokenizers.items():  # a swapped tokenizer fails here, not after generating
            if name not in self.specs:
                raise TokenizerMismatchError(f"tokenizer {name!r} is for a modality the model does not know")
            try:  # a caption's length is checked when it is given (GenerationState.set_sequence)
                check_tokenizer(tokenizer, self.specs[name], sequence_limit=False)
            except TokenizerMismatchError as e:
                raise TokenizerMismatchError(f"the {name} tokenizer does not fit the model: {e}") from None
        if specials is None:
            seq = next((t for t in self.tokenizers.values() if hasattr(t, "sentinel_ids")), None)
            specials = TextSpecials() if seq is None else \
                TextSpecials(seq.pad_id, seq.sos_id, seq.eos_id, list(seq.sentinel_ids))
        self.specials = specials

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, tokenizers: str | os.PathLike | None = None,
                        device: str = "cpu", precision: str = "auto") -> Pipeline:
        """A saved FourM folder and a tokenizers folder (only the model's modalities are loaded)."""
        fourm = FourM.from_pretrained(model, device)
        toks = {}
        if tokenizers is not None:
            folder = Path(tokenizers)
            if not folder.is_dir():
                raise FileNotFoundError(f"tokenizers folder {folder} does not exist")
            present = [n for n in fourm.names if (folder / n / "config.json").is_file()]
            toks = load_tokenizers(folder, present, device) if present else {}
        return cls(fourm, toks, precision=precision)

    # ------------------------------------------------------------------------------ names
    def model_keys(self, key: str) -> list[str]:
        """The model modalities a condition key feeds (see the module notes)."""
        if key in self.specs:
            return [key]
        fed = [n for n, s in self.specs.items() if s.source == key]
        if not fed:
            if key not in CORPUS and key not in MODALITIES:
                known = sorted({*CORPUS, *MODALITIES})
                raise ValueError(f"unknown modality {key!r}; known: {', '.join(known)}")
            raise ValueError(f"the model does not know modality {key!r}; it has: {', '.join(self.specs)}")
        raw = [n for n in fed if handler(self.specs[n]).continuous]  # rgb: the pixels where the model reads them
        return raw or fed

    def target_key(self, key: str) -> str:
        """The model modality a target name means (``depth`` -> ``tok_depth``, ``rgb`` -> ``tok_rgb``)."""
        if key in self.specs and not self.specs[key].input_only:
            return key
        source = self.specs[key].source if key in self.specs else key
        keys = [n for n, s in self.specs.items() if s.source == source and not s.input_only]
        if keys:
            return keys[0]
        self.model_keys(key)  # unknown names: that error
        raise ValueError(f"{key!r} is input-only: the model cannot generate it")

    def _tokenizer(self, name: str):
        if name not in self.tokenizers:
            raise ValueError(f"no tokenizer for {name!r} was loaded: give it as tokens, or add it to the tokenizers "
                             f"folder (loaded: {', '.join(self.tokenizers) or 'none'})")
        return self.tokenizers[name]

    # ------------------------------------------------------------------------------ tokenize / decode
    def tokenize(self, samples: dict | list[dict]) -> dict[str, list]:
        """Raw values (one sample's dict, or a list of them) -> per model modality a list of B
        model-ready values: token id arrays (-1 = to generate), sequence id lists, raw tensors
        (``rgb`` (3, H, W) in [-1, 1], ``t5_caption`` (L, C)); None where a sample lacks it."""
        samples = [samples] if isinstance(samples, dict) else list(samples)
        out: dict[str, list] = {}
        for key in dict.fromkeys(k for s in samples for k in s):
            for name in self.model_keys(key):
                out[name] = self._tokenize(name, key, [s.get(key) for s in samples])
        return out

    def _tokenize(self, name: str, key: str, values: list) -> list:
        spec, size = self.specs[name], self.model.config.scale.image_size
        kind = handler(spec)
        out: list = [None] * len(values)
        # tokens or raw, under either name: the kind's call (a speech clip is a 1-D integer array too)
        ids = [v is not None and kind.reads_as_tokens(spec, v) for v in values]
        raw = [i for i, v in enumerate(values) if v is not None and not ids[i]]
        for i, v in enumerate(values):
            if ids[i]:
                if kind.continuous:
                    raise ValueError(f"{key}: {name} takes raw values, not token ids")
                out[i] = [int(t) for t in v] if kind.autoregressive else np.asarray(v, dtype=np.int64)
        if not raw:
            return out
        if kind.continuous:
            for i in raw:
                out[i] = kind.model_input(spec, values[i], size)
            return out
        tokenizer = self._tokenizer(name)
        if kind.autoregressive:
            for i in raw:
                out[i] = self._encode_sequence(tokenizer, values[i])
            return out
        batch = [resize(values[i], spec.source, size) if kind.grid else values[i] for i in raw]
        ids = tokenizer.encode(batch)
        for i, row in zip(raw, ids, strict=True):
            out[i] = np.asarray(row, dtype=np.int64)
        return out

    def _encode_sequence(self, tokenizer, value) -> list[int]:
        if not isinstance(value, str) or MASK not in value:
            return [int(i) for i in tokenizer.encode([value])[0]]
        pieces = value.split(MASK)
        if len(pieces) - 1 > len(self.specials.sentinels):
            raise ValueError(f"{len(pieces) - 1} masked spans, more than the {len(self.specials.sentinels)} sentinels")
        encoded = tokenizer.encode([p for p in pieces])
        ids: list[int] = []
        for j, piece in enumerate(encoded):
            ids += [int(i) for i in piece if int(i) != self.specials.eos]
            if j < len(pieces) - 1:
                ids.append(self.specials.sentinels[j])
        return [*ids, self.specials.eos]

    def decode(self, name: str, tokens) -> list | None:
        """Tokens of model modality ``name`` (as :class:`Generated` holds them) -> corpus values, or
        None without a tokenizer."""
        if name not in self.tokenizers:
            return None
        values = self.tokenizers[name].decode(tokens)
        return list(values)

    # ------------------------------------------------------------------------------ generation
    def state(self, conditions: dict | list[dict], num_samples: int = 1) -> GenerationState:
        """The generation state of raw or token conditions (a dict is one sample, repeated ``num_samples`` times)."""
        samples = [conditions] * num_samples if isinstance(conditions, dict) else list(conditions)
        if not samples:
            raise ValueError("no samples to generate")
        return self.state_of(self.tokenize(samples), len(samples))

    def state_of(self, tokenized: dict[str, list], batch_size: int) -> GenerationState:
        """The generation state of :meth:`tokenize`'s output (tokenizing once, batching many times:
        fine-tuning re-batches the same tokenized samples every epoch)."""
        state = GenerationState(self.specs, batch_size, self.specials)
        for name, values in tokenized.items():
            spec, present = self.specs[name], [v is not None for v in values]
            kind = handler(spec)
            if kind.state_slot == "sequence":
                state.set_sequence(name, values)
            elif kind.state_slot == "grid":
                ids = torch.full((len(values), spec.tokens), -1, dtype=torch.long)
                for i, v in enumerate(values):
                    if v is not None:
                        if len(v) != spec.tokens:
                            raise ValueError(f"{name}: {len(v)} tokens given, the model expects {spec.tokens}")
                        ids[i] = torch.as_tensor(v)
                state.set_grid(name, ids)
            else:
                first = next(v for v in values if v is not None)
                shape = (spec.tokens, *first.shape[1:]) if kind.ragged else first.shape  # ragged: padded
                stack = torch.zeros(len(values), *shape)
                for i, v in enumerate(values):
                    if v is not None:
                        stack[i, : len(v)] = v
                state.set_continuous(name, stack, torch.tensor(present))
        return state

    def generate(self, conditions: dict | list[dict], targets: list[str | Target | dict], seed: int | None = 0,
                 num_samples: int = 1, batch_size: int | None = None, **defaults) -> dict[str, Generated]:
        """Generate ``targets`` in order from ``conditions``; each finished target conditions the next.

        Args:
            conditions: ``{key: value}`` for one sample (repeated ``num_samples`` times), or a list
                of such dicts (a batch). Values raw or tokens (module notes).
            targets: modality names, :class:`Target` s, or dicts of Target fields.
            seed: the sampling seed (None: a fresh one); with the same ``batch_size``, the same tokens.
            batch_size: samples per forward pass (default: all at once); a progress bar shows the chunks.
            defaults: Target fields for the targets given by name or as dicts that do not set them
                (``steps=12, temperature=0.7``); a :class:`Target` is taken as it is.

        Returns ``{target: Generated(tokens, values)}`` in schedule order.
        """
        samples = [conditions] * num_samples if isinstance(conditions, dict) else list(conditions)
        if not samples:
            raise ValueError("no samples to generate")
        size = batch_size or len(samples)
        generator = seeded(seed)
        parts: list[dict[str, Generated]] = []
        for start in tqdm(range(0, len(samples), size), desc="generate", unit="batch", disable=len(samples) <= size):
            parts.append(dict(self.generate_steps(samples[start:start + size], targets, generator, **defaults)))
        if len(parts) == 1:
            return parts[0]
        return {name: Generated(torch.cat([p[name].tokens for p in parts]) if isinstance(first.tokens, torch.Tensor)
                                else [t for p in parts for t in p[name].tokens],
                                None if first.values is None else [v for p in parts for v in p[name].values])
                for name, first in parts[0].items()}

    def generate_steps(self, conditions: dict | list[dict], targets: list[str | Target | dict],
                       generator: torch.Generator, **defaults) -> Iterator[tuple[str, Generated]]:
        """One batch of :meth:`generate`, yielding ``(target, Generated)`` as each target of the chain
        finishes, so that a caller (``fourm serve``) can show it before the next one starts. Everything
        is checked before the first target runs; ``generator`` draws every sample, in schedule order,
        so the tokens are those :meth:`generate` gives for the same seed."""
        state = self.state(conditions)
        schedule = build_schedule([self._target_entry(t) for t in targets], self.specs,
                                  [n for n in self.specs if state.has(n)], **defaults)
        for target in schedule:
            if state.fully_known(target.modality):
                raise ValueError(f"target {target.modality!r} is also fully given as an input: "
                                 f"leave it out, or mask part of it")
        for target in schedule:
            run_schedule(self.model, state, [target], generator=generator, precision=self.precision)
            tokens = state.tokens(target.modality)
            yield target.modality, Generated(tokens, self.decode(target.modality, tokens))

    def _target_entry(self, target: str | Target | dict):
        """Model keys for a target's modality and for the conditions its guidance weighs."""
        if isinstance(target, str):
            return self.target_key(target)
        entry = dataclasses.asdict(target) if isinstance(target, Target) else dict(target)
        entry["modality"] = self.target_key(entry["modality"])
        weights = entry.get("condition_weights") or {}
        entry["condition_weights"] = {self.model_keys(k)[0]: w for k, w in weights.items()}
        return entry
