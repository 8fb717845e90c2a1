"""FourM: the any-to-any multimodal encoder-decoder of 4M / 4M-21 (arXiv 2303.06516, 2406.09406).

The encoder reads a packed list of input tokens of any modalities (``fourm.model.batch``) and
attends bidirectionally over the valid ones. The decoder gets one query per target token: a mask
token (IMAGE / GLOBAL targets) or the previous token (SEQUENCE targets, teacher forcing), plus
position and modality. A decoder token attends to the tokens of its own target group (one group
per target modality of a sample), causally inside a sequence, and to all valid encoder tokens.
Each modality has its own output head; the loss is cross-entropy per target token, averaged per
modality and then across modalities (or over all tokens, ``loss_weighting="token"``), each modality
weighted by ``loss_weights`` (default 1).

For generation, :meth:`FourM.start_decoding` caches the encoder output's cross-attention keys and
values once, and :meth:`FourM.decode_step` runs only the new tokens, appending their self-attention
keys and values to the cache: autoregressive decoding costs O(new tokens) per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fourm.kinds import KINDS
from fourm.modalities import MODALITIES, Modality, ModalityScale, get_modality, parse_modalities
from fourm.model.attention import CacheSlots, KVCache, attention_kernel, attention_mask
from fourm.model.batch import Batch
from fourm.model.blocks import NORMS, DecoderBlock, EncoderBlock, make_norm
from fourm.model.caches import DecodeCache, EncodeCache
from fourm.model.cross_entropy import IGNORE, cross_entropy_sum, fused_cross_entropy_sum
from fourm.model.embeddings import ModalityEmbeddings, pad_rows, split_by_modality
from fourm.model.expert import PatchExpertConfig
from fourm.model.heads import CodebookHead
from fourm.model.packing import Packing, mark_dynamic, pack, unpack
from fourm.model.stems import PIXEL_STEMS
from fourm.pretrained import PretrainedMixin, register_pretrained

LOSS_WEIGHTINGS = ("modality", "token")
@dataclass
class FourMConfig:
    """Trunk sizes and the modalities the model reads and writes.

    ``modalities`` fixes the modality order (index ``m`` in the batch's ``enc_mod`` / ``dec_mod``).
    ``scale`` (image size, patches, vocabularies), ``max_tokens`` (token count of image kinds and
    globals, maximum length of sequences: the positions the model has) and ``input_dims`` (width of
    EMBEDDING_SEQUENCE vectors) are filled in from the registry for every modality of the model, so a
    saved config.json rebuilds the same model even if registry defaults change.
    """

    # saved before the scale was one object, or before the use_* names (fourm.config.upgrade_config)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "image_size": "scale.image_size", "patch_size": "scale.patch_size", "patch_sizes": "scale.patch_sizes",
        "vocab_sizes": "scale.vocab_sizes", "tie_heads": "use_tied_heads"}

    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    scale: ModalityScale = field(default_factory=ModalityScale)
    max_tokens: dict[str, int] = field(default_factory=dict)
    input_dims: dict[str, int] = field(default_factory=dict)
    dim: int = 384
    encoder_depth: int = 6
    decoder_depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    use_bias: bool = False  # the 4M-21 sizes have none
    norm: str = "layernorm"  # layernorm | rmsnorm
    use_qk_norm: bool = False
    dropout: float = 0.0
    use_tied_heads: bool = False  # output head of a modality = its input token table
    # target modality -> the width of its tokenizer's code vectors: its head also scores each code by a
    # projection's similarity to the code's vector (fourm.model.heads.CodebookHead says why); the vectors
    # are loaded from the tokenizer when training builds the model and saved with its weights
    head_codebooks: dict[str, int] = field(default_factory=dict)
    loss_weighting: str = "modality"  # modality: mean per modality, then across; token: mean over tokens
    # relative weight of a target modality in the loss (default 1): where a few tokens carry what the
    # model must learn from another modality (a caption's object words, given RGB), a weight gives them
    # the share of the gradient that a per-modality mean over eight targets does not
    loss_weights: dict[str, float] = field(default_factory=dict)
    pixel_stem: str = "linear"  # how rgb pixels become tokens: a key of fourm.model.stems.PIXEL_STEMS
    # pixel_stem "hybrid" only: the architecture of its frozen CNN (fields of fourm.model.expert.PatchExpertConfig),
    # filled in from the pretrained patch expert that training loads (model.pixel_expert=PATH)
    pixel_expert: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02  # std of the linear and embedding weights at init (nanoGPT's, set at width 768)
    # multiplies the fixed sine-cosine positions (fourm.model.embeddings: RMS 0.02 at 1.0). Where content
    # outgrows them, attention cannot tell where a token is, and what a shape is lies in where its patches are
    position_scale: float = 1.0
    # position_scale per kind ("sequence": 1.0), where kinds differ in what their positions must carry:
    # an image query is a mask token + its position (all it has), a caption's query is the previous word,
    # which large positions would drown
    position_scales: dict[str, float] = field(default_factory=dict)
    # rotary attention in the encoder (RoPE, Su et al. 2021; axial over a patch grid as in Heo et al. 2024,
    # arXiv 2403.13298): an attention score then depends on where two patches lie relative to each other,
    # so what an object's outline looks like is learnt once, not once per place in the image
    use_rotary: bool = False

    def __post_init__(self):
        # overrides arrive from YAML and key=value untyped: "use_rotary=maybe" must not read as true
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, not {value!r}")
            if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{f.name} must be a number, not {value!r}")
        self.modalities = parse_modalities(self.modalities, MODALITIES)  # unknown name: error listing known
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities listed twice: {self.modalities}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {self.norm!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, not {self.loss_weighting!r}")
        if self.pixel_stem not in PIXEL_STEMS:
            raise ValueError(f"pixel_stem must be one of {', '.join(PIXEL_STEMS)}, not {self.pixel_stem!r}")
        if self.pixel_expert and self.pixel_stem != "hybrid":
            raise ValueError(f"pixel_expert is read by pixel_stem hybrid only, not {self.pixel_stem!r}")
        unknown = set(self.pixel_expert) - {f.name for f in fields(PatchExpertConfig)}
        if unknown:
            raise ValueError(f"pixel_expert: unknown fields {sorted(unknown)} (PatchExpertConfig's: "
                             f"{', '.join(f.name for f in fields(PatchExpertConfig))})")
        if self.head_codebooks and self.use_tied_heads:
            raise ValueError("head_codebooks and use_tied_heads both set the output heads: choose one")
        stray = sorted(set(self.head_codebooks) - set(self.modalities))
        if stray:
            raise ValueError(f"head_codebooks names modalities the model does not have: {', '.join(stray)}")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.head_codebooks.values()):
            raise ValueError(f"head_codebooks maps modalities to code widths (integers >= 1): {self.head_codebooks}")
        unknown = set(self.position_scales) - set(KINDS)
        if unknown:
            raise ValueError(f"position_scales: unknown kinds {sorted(unknown)}; kinds: {', '.join(KINDS)}")
        if any(w < 0 for w in self.loss_weights.values()):
            raise ValueError(f"loss_weights must not be negative: {self.loss_weights}")
        # as a masking mixture's alphas: one config serves models of fewer modalities, typos still fail
        parse_modalities(list(self.loss_weights), MODALITIES)
        self.loss_weights = {n: float(w) for n, w in self.loss_weights.items() if n in self.modalities}
        self.position_scales = {k: float(v) for k, v in self.position_scales.items()}
        # filled in below: never the caller's scale or dicts
        self.scale = replace(self.scale, patch_sizes=dict(self.scale.patch_sizes),
                             vocab_sizes=dict(self.scale.vocab_sizes))
        self.max_tokens, self.input_dims = dict(self.max_tokens), dict(self.input_dims)
        tables = {"scale.patch_sizes": self.scale.patch_sizes, "scale.vocab_sizes": self.scale.vocab_sizes,
                  "max_tokens": self.max_tokens, "input_dims": self.input_dims}
        for table, values in tables.items():
            stray = set(values) - set(self.modalities)
            if stray:
                raise ValueError(f"{table} names modalities the model does not have: {', '.join(sorted(stray))}")
        continuous = [n for n in self.scale.vocab_sizes if get_modality(n).vocab_size is None]
        if continuous:
            raise ValueError(f"scale.vocab_sizes: {', '.join(continuous)} take continuous inputs, not tokens")
        for name in self.modalities:
            m = self.scale.resolve(name)
            if m.vocab_size is not None:
                self.scale.vocab_sizes[name] = m.vocab_size
            if m.dim is not None:
                self.input_dims.setdefault(name, m.dim)
            if m.is_image and self.max_tokens.setdefault(name, m.tokens) != m.tokens:
                raise ValueError(f"max_tokens[{name!r}] = {self.max_tokens[name]}, but {self.scale.image_size} px "
                                 f"images in patches of {m.patch_size} give {m.tokens}")
            self.max_tokens.setdefault(name, m.tokens)
            if name in self.head_codebooks and (m.input_only or m.vocab_size is None):
                raise ValueError(f"head_codebooks: {name!r} has no output head over codes (it is input-only "
                                 "or continuous)")

    def specs(self) -> dict[str, Modality]:
        """The registry entries of ``modalities`` at this config's scale and numbers, in model order."""
        out = {}
        for name in self.modalities:
            m = self.scale.resolve(name)
            tokens = self.max_tokens[name]
            out[name] = replace(m, vocab_size=self.scale.vocab_sizes.get(name), dim=self.input_dims.get(name),
                                **({"num_tokens": tokens} if m.is_image else {"max_tokens": tokens}))
        return out


POOLS = ("mean", "modality", "none")


class Features(NamedTuple):
    """What :meth:`FourM.encode_features` returns; ``valid`` says which rows hold something.

    pool ``mean``: values (B, D), valid (B,) (the sample had an input token);
    ``modality``: values (B, M, D) for the M requested modalities, valid (B, M) (zeros where absent);
    ``none``: values (B, Ne, D) every encoder token, valid (B, Ne), with ``mod`` / ``pos`` (B, Ne).
    """

    values: Tensor
    valid: Tensor
    mod: Tensor | None = None
    pos: Tensor | None = None


class ModalityLogits(NamedTuple):
    index: Tensor  # (n,) positions of the tokens in the flattened (B * N) token list, ascending
    logits: Tensor  # (n, vocab_size of the modality)


@dataclass
class FourMOutput:
    loss: Tensor  # () the training objective
    modality_losses: dict[str, Tensor]  # mean cross-entropy per target modality, detached, for logging
    logits: dict[str, ModalityLogits]  # of the valid target tokens


def decoder_mask(q_group: Tensor, q_pos: Tensor, q_causal: Tensor,
                 k_group: Tensor, k_pos: Tensor, k_valid: Tensor) -> Tensor:
    """(B, Nq) query tags, (B, Nk) key tags -> (B, Nq, Nk) bool: same group, valid key, and for
    queries of sequence modalities (``q_causal``) a key position at or before the query's."""
    same = q_group[:, :, None] == k_group[:, None, :]
    earlier = k_pos[:, None, :] <= q_pos[:, :, None]
    return same & k_valid[:, None, :] & (earlier | ~q_causal[:, :, None])


@register_pretrained("fourm")
class FourM(nn.Module, PretrainedMixin):
    config_class = FourMConfig

    def __init__(self, config: FourMConfig):
        super().__init__()
        self.config = config
        self.specs = config.specs()
        self.names = list(self.specs)
        self.embed = ModalityEmbeddings(self.specs, config.dim, config.scale.image_size, config.pixel_stem,
                                        config.position_scale, config.position_scales,
                                        {"expert": config.pixel_expert} if config.pixel_stem == "hybrid" else None)
        block = dict(dim=config.dim, heads=config.heads, mlp_ratio=config.mlp_ratio, use_bias=config.use_bias,
                     norm=config.norm, use_qk_norm=config.use_qk_norm, dropout=config.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(**block) for _ in range(config.encoder_depth))
        self.encoder_norm = make_norm(config.norm, config.dim, config.use_bias)
        # half the head's dimensions turn with the row, half with the column; base 100, not a text
        # model's 10000: over a grid of 4-16 patches the slowest pairs still turn (1/100^(7/8) rad a patch)
        self.rotary = RotaryEmbedding(config.dim // config.heads // 2, theta=100) if config.use_rotary else None
        self.decoder = nn.ModuleList(DecoderBlock(**block) for _ in range(config.decoder_depth))
        self.decoder_norm = make_norm(config.norm, config.dim, config.use_bias)
        self.targets = [n for n, s in self.specs.items() if not s.input_only]
        self.heads = nn.ModuleDict() if config.use_tied_heads else nn.ModuleDict(
            {n: self._head(n) for n in self.targets})
        self.cross_entropy = cross_entropy_sum  # compile() swaps in a compiled one
        self.activation_checkpointing = False  # checkpoint_activations() turns it on
        self.compiled = False  # compile() turns it on
        self._init_weights()

    def _head(self, name: str) -> nn.Module:
        vocab, code_dim = self.specs[name].vocab_size, self.config.head_codebooks.get(name)
        if code_dim is None:
            return nn.Linear(self.config.dim, vocab, bias=self.config.use_bias)
        return CodebookHead(self.config.dim, vocab, code_dim, bias=self.config.use_bias)

    def _init_weights(self) -> None:
        if self.embed.modality.is_meta:  # a meta-device build (parameter counts, deferred init): no values
            return
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.config.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.modality, std=self.config.init_std)
        nn.init.normal_(self.embed.mask_token, std=self.config.init_std)
        # residual branches scaled by depth so the stream's variance does not grow with it (GPT-2)
        for blocks in (self.encoder, self.decoder):
            for blk in blocks:
                for name, p in blk.named_parameters():
                    if name.endswith(("proj.weight", "w3.weight")):
                        nn.init.normal_(p, std=self.config.init_std / math.sqrt(2 * len(blocks)))

    def modality_index(self, name: str) -> int:
        if name not in self.specs:
            raise ValueError(f"modality {name!r} is not one of this model's: {', '.join(self.names)}")
        return self.names.index(name)

    def compile(self, **kwargs) -> None:
        """``torch.compile`` each encoder and decoder block in place, not the whole model.

        The embeddings, masks, checks and per-modality heads branch on the data (token counts per
        modality, bad-input tests), which splits a whole-model graph into many pieces that each
        compile; a block is one graph, and all blocks of a stack share it. Outside the blocks the
        step is large matmuls (heads) and lookups, which compiling would not speed up, and the loss.

        The loss is compiled apart (its token counts vary: ``dynamic``): eager, the fp32 copy of a head's
        (n, 30k) logits, its log-softmax, the gradient's zero-fill and its cast back each pass over
        tens of MB; compiled they are one pass forward and one back. With bf16 at the reference's tiny
        size that took the two heads' cross-entropy from 197 + 172 to 110 + 80 ms (fwd + bwd with
        their matmuls, one thread of a Xeon with AMX), and its written-out backward
        (:class:`~fourm.model.cross_entropy.CrossEntropySum`) a fifth off that.

        Attention's bf16 kernel (:func:`~fourm.model.attention.attention_kernel`) is decided here, before
        anything is traced: timed inside a block, its clock broke the block's graph, and torch 2.13 then
        crashed on a warm compile cache (a garbage view shape replaying the split frame's outputs).
        """
        device = next(self.parameters()).device
        for dtype in (torch.bfloat16, torch.float32):  # fp32 too: a key added after tracing recompiled every block
            for backward in (True, False):
                attention_kernel(device, dtype, backward)
        for blk in [*self.encoder, *self.decoder]:
            blk.compile(**kwargs)
        self.compiled = True
        self.cross_entropy = torch.compile(fused_cross_entropy_sum, dynamic=True, **kwargs)

    def checkpoint_activations(self, enabled: bool = True) -> None:
        """Activation checkpointing (``train.use_activation_checkpointing``): under gradients each encoder
        and decoder block keeps only its inputs for the backward, which runs the block's forward again
        for the rest. A block's saved activations (norms, projections, attention, the SwiGLU's 2 x 4D-wide
        hidden) are many times its input, so the trunk's activation memory shrinks to about one
        (tokens, D) tensor per block, for a second forward of the blocks (at the reference's tiny size on a
        CPU: a step's peak memory -54% at batch 32, its time +20%; ``benchmarks/train_step.py``).

        Per block, with torch's non-reentrant checkpoint: it composes with compiled blocks (the compiled
        forward runs again) and with FSDP's per-block units (the backward's unshard serves the recompute).
        """
        self.activation_checkpointing = enabled

    def _pack(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Packing | None]:
        """x (B, N, D) -> its valid rows (n, D) and where they lie: the blocks run on the valid tokens only
        (fourm.model.packing). Compiled blocks always get rows, with their counts marked as varying, so each
        stack compiles one graph (and its backward) instead of three: the first batch's row counts, then
        any counts, then the padded layout of a batch that packing saves nothing on."""
        packing = Packing.of(valid, x, compiled=self.compiled)
        x = pack(x, packing)
        if self.compiled:
            mark_dynamic(x, packing)
        return x, packing

    def _block(self, block: nn.Module, *args, **kwargs) -> Tensor:
        """``block(*args, **kwargs)``, recomputed in the backward where activations are checkpointed."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP gathers and frees as one unit (``fourm.train.parallel.shard``): each block, so one
        block's full weights are alive at a time; the embeddings and heads form the root unit."""
        return [*self.encoder, *self.decoder]

    def num_params(self, trunk_only: bool = False) -> int:
        """Parameters; ``trunk_only`` counts the encoder and decoder blocks (the reference's sizes)."""
        modules = [self.encoder, self.decoder] if trunk_only else [self]
        return sum(p.numel() for m in modules for p in m.parameters())

    # ------------------------------------------------------------------------------ encoder
    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """-> memory (B, Ne, D), memory_valid (B, Ne) bool."""
        batch.check()
        valid = batch.enc_valid
        x, rotary = self._inputs(batch)
        mask = attention_mask(valid[:, None, :])  # every query sees every valid token
        x, packing = self._pack(x, valid)
        for blk in self.encoder:
            x = self._block(blk, x, mask, rotary, packing)
        return unpack(self.encoder_norm(x), packing), valid

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """The encoder's input tokens embedded (B, Ne, D), and their rotary angles (B, 1, Ne, head dim) or None."""
        valid = batch.enc_valid
        x = self.embed.encoder_content(batch.enc_ids, batch.enc_mod, batch.enc_pos, valid, batch.continuous)
        x = x + self.embed.position(batch.enc_mod, batch.enc_pos, valid)
        if self.rotary is None:
            return x, None
        rows, cols = self.embed.grid_coordinates(batch.enc_mod, batch.enc_pos, valid).unbind(-1)
        return x, torch.cat([self.rotary(rows), self.rotary(cols)], -1).unsqueeze(1)

    def start_encoding(self, batch_size: int) -> EncodeCache:
        """An empty :class:`EncodeCache` for :meth:`encode_step` over ``batch_size`` rows."""
        device = self.embed.mask_token.device
        empty = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        return EncodeCache(layers=[KVCache() for _ in self.encoder], cross=[KVCache() for _ in self.decoder],
                           valid=empty.bool(), mod=empty, pos=empty)

    def encode_step(self, cache: EncodeCache, batch: Batch) -> None:
        """Encode ``batch``'s input tokens into ``cache`` (decoder fields are ignored): a token the cache holds
        (the same modality and position) is encoded again in its place, the others are added; :meth:`decode`
        then reads every token so far from the cache (``encoded=``).

        The step's tokens attend to every token the cache then holds, as in :meth:`encode`; the other cached
        tokens keep the encodings they got when they came and do not see the step's. On an empty cache this
        is :meth:`encode`; over several steps it approximates it, as caches of already-decoded tokens' keys and
        values do for masked diffusion models (dKV-Cache, arXiv 2505.15781; Fast-dLLM, arXiv 2505.22618):
        MaskGIT and ROAR then encode each decided token once instead of at every later step, and the other
        inputs again at every step, in their places.
        """
        batch.check()
        if batch.enc_ids.shape[0] != cache.valid.shape[0]:
            raise ValueError(f"encode_step: a batch of {batch.enc_ids.shape[0]} rows for a cache of "
                             f"{cache.valid.shape[0]}")
        x, rotary = self._inputs(batch)
        slots, length = cache.place(batch.enc_mod, batch.enc_pos, batch.enc_valid)
        mask = attention_mask(cache.valid[:, None, :])  # every step token sees every token the cache then holds
        packing = Packing.of(batch.enc_valid, x)  # as in encode: the blocks run on the valid tokens only
        x = pack(x, packing)
        for blk, layer in zip(self.encoder, cache.layers, strict=True):
            x = blk(x, mask, rotary, packing, cache=CacheSlots(layer, slots, length))
        memory = self.encoder_norm(x)
        for blk, kv in zip(self.decoder, cache.cross, strict=True):
            kv.write(*blk.cross_attn.project_kv(memory, packing), slots, length)

    def encode_features(self, batch: Batch, pool: str = "mean", modalities: list[str] | None = None) -> Features:
        """Encoder outputs of the batch's input tokens of ``modalities`` (default: every input it has),
        pooled; decoder fields of ``batch`` are ignored (nothing is predicted).

        Tokens of the other modalities are dropped before the encoder, not after: features of rgb
        alone must not have seen the depth the batch also carries. Pooling averages only valid
        tokens, so padding and modalities a sample lacks do not move its features.
        """
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        names = self.names if modalities is None else list(modalities)
        index = torch.tensor([self.modality_index(n) for n in names], device=batch.enc_mod.device)
        keep = batch.enc_valid & torch.isin(batch.enc_mod, index)
        empty = batch.enc_ids.new_zeros(batch.enc_ids.shape[0], 0)
        sub = Batch(batch.enc_ids, batch.enc_mod, batch.enc_pos, keep, dec_ids=empty, dec_target=empty, dec_mod=empty,
                    dec_pos=empty, dec_group=empty, dec_valid=empty.bool(),
                    continuous={n: v for n, v in batch.continuous.items() if n in names})
        memory, valid = self.encode(sub)
        if pool == "none":
            return Features(memory.masked_fill(~valid[..., None], 0.0), valid, batch.enc_mod, batch.enc_pos)
        if pool == "mean":
            weight = valid.to(memory.dtype)
            total = torch.einsum("bn,bnd->bd", weight, memory)
            return Features(total / weight.sum(1, keepdim=True).clamp(min=1), valid.any(1))
        # per modality: a (B, M, Ne) one-hot of each token's requested modality
        onehot = (batch.enc_mod[:, None, :] == index[None, :, None]) & valid[:, None, :]
        weight = onehot.to(memory.dtype)
        total = torch.einsum("bmn,bnd->bmd", weight, memory)
        return Features(total / weight.sum(2, keepdim=True).clamp(min=1), onehot.any(2))

    # ------------------------------------------------------------------------------ decoder
    def _queries(self, ids: Tensor, mod: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """-> queries (B, N, D), causal (B, N) bool (the token is of a sequence modality)."""
        x = self.embed.decoder_content(ids, mod, pos, valid) + self.embed.position(mod, pos, valid)
        return x, self.embed.is_sequence[mod.masked_fill(~valid, 0)]

    def decode(self, batch: Batch, memory: Tensor | None, memory_valid: Tensor | None,
               encoded: EncodeCache | None = None) -> Tensor:
        """Teacher-forced decode of every target token at once -> hidden (B, Nd, D). The memory is
        :meth:`encode`'s output, or (``memory`` and ``memory_valid`` None) the tokens in ``encoded``."""
        batch.check()
        if (encoded is None) == (memory is None):
            raise ValueError("decode reads a memory or an encode cache (encoded=), one of the two")
        if encoded is not None:
            memory_valid = encoded.valid
            cross_kv = [kv.contents() for kv in encoded.cross]
        elif memory.shape[:2] != memory_valid.shape:
            raise ValueError(f"memory {tuple(memory.shape)} and memory_valid {tuple(memory_valid.shape)} do not match")
        if memory_valid.shape[0] != batch.dec_ids.shape[0]:
            raise ValueError(f"a memory of {memory_valid.shape[0]} rows does not match a batch of "
                             f"{batch.dec_ids.shape[0]}")
        x, causal = self._queries(batch.dec_ids, batch.dec_mod, batch.dec_pos, batch.dec_valid)
        group, pos = batch.dec_group, batch.dec_pos
        self_mask = attention_mask(decoder_mask(group, pos, causal, group, pos, batch.dec_valid))
        cross_mask = attention_mask(memory_valid[:, None, :])
        x, packing = self._pack(x, batch.dec_valid)
        if encoded is None:
            memory, memory_packing = self._pack(memory, memory_valid)
            cross_kv = [None] * len(self.decoder)
        else:
            memory_packing = None
        for blk, kv in zip(self.decoder, cross_kv, strict=True):
            x = self._block(blk, x, self_mask, cross_mask, memory=memory, cross_kv=kv, packing=packing,
                            memory_packing=memory_packing)
        return unpack(self.decoder_norm(x), packing)

    def start_decoding(self, memory: Tensor, memory_valid: Tensor) -> DecodeCache:
        """An empty decode state over ``memory`` (B, Ne, D): its cross-attention keys and values are
        computed here, once for the whole generation."""
        b = memory.shape[0]
        empty = memory_valid.new_zeros(b, 0, dtype=torch.long)
        return DecodeCache(cross_kv=[blk.cross_attn.project_kv(memory) for blk in self.decoder],
                           cross_mask=attention_mask(memory_valid[:, None, :]),
                           layers=[KVCache() for _ in self.decoder],
                           group=empty, pos=empty, valid=empty.bool())

    def decode_step(self, cache: DecodeCache, ids: Tensor, mod: Tensor | str, pos: Tensor,
                    group: Tensor | None = None, valid: Tensor | None = None) -> dict[str, ModalityLogits]:
        """Decode the new tokens ``ids`` (B, n) with tags ``mod`` (B, n) or one modality name for all,
        ``pos`` (B, n), ``group`` (default: the modality index), ``valid`` (default: all); they see
        the cached tokens of their group (causally for sequences) and themselves, then join the cache.

        As in :meth:`decode`, ``ids`` of a sequence target are the previous tokens; those of image
        and global targets are ignored. Returns the logits of the new valid tokens.
        """
        # one modality, every token valid (autoregressive decoding): embedded and read out without grouping
        # the tokens by modality, whose sorts and host reads took ~0.6 ms of a ~9 ms caption token
        single = mod if isinstance(mod, str) and valid is None else None
        if isinstance(mod, str):
            mod = torch.full_like(ids, self.modality_index(mod))
        group = mod if group is None else group
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
        b = cache.group.shape[0]
        for name, t in (("ids", ids), ("mod", mod), ("pos", pos), ("group", group), ("valid", valid)):
            if t.dim() != 2 or t.shape != ids.shape or t.shape[0] != b:
                raise ValueError(f"decode_step: {name} has shape {tuple(t.shape)}, expected ({b}, n) like ids")
        if single is None:
            x, causal = self._queries(ids, mod, pos, valid)
        else:
            x = self.embed.decoder_queries(single, ids, pos)
            causal = torch.full_like(valid, self.embed.kinds[single].autoregressive)
        cache.group, cache.pos = torch.cat([cache.group, group], 1), torch.cat([cache.pos, pos], 1)
        cache.valid = torch.cat([cache.valid, valid], 1)
        self_mask = attention_mask(decoder_mask(group, pos, causal, cache.group, cache.pos, cache.valid))
        for blk, kv, layer_cache in zip(self.decoder, cache.cross_kv, cache.layers, strict=True):
            x = blk(x, self_mask, cache.cross_mask, cross_kv=kv, cache=layer_cache)
        if single is None:
            return self.logits(self.decoder_norm(x), mod, valid)
        hidden = self.decoder_norm(x).flatten(0, 1)
        return {single: ModalityLogits(torch.arange(len(hidden), device=hidden.device), self._readout(single, hidden))}

    # ------------------------------------------------------------------------------ heads and loss
    def logits(self, hidden: Tensor, mod: Tensor, valid: Tensor | None = None) -> dict[str, ModalityLogits]:
        """hidden (B, N, D), mod (B, N) -> each present modality's logits over its own vocabulary,
        computed only for its (valid) tokens."""
        return {name: ModalityLogits(idx, logits[: idx.numel()])
                for name, (idx, logits) in self._padded_logits(hidden, mod, valid).items()}

    def _padded_logits(self, hidden: Tensor, mod: Tensor, valid: Tensor | None) -> dict[str, tuple[Tensor, Tensor]]:
        """Per present modality: its tokens' flat indices ``idx`` (n,) and its head's logits over
        ``pad_rows(idx)``, the first n rows its tokens' (the head's matmuls see a few row counts, not any)."""
        flat = rearrange(hidden, "b n d -> (b n) d")
        out = {}
        for m, idx in split_by_modality(mod, len(self.names), valid).items():
            name = self.names[m]
            if name not in self.targets:
                raise ValueError(f"modality {name!r} is input-only: it has no output head")
            out[name] = idx, self._readout(name, flat[pad_rows(idx, flat)])
        return out

    def _readout(self, name: str, hidden: Tensor) -> Tensor:
        """(n, D) -> (n, vocab of ``name``): its head, or its token table's transpose where heads are tied."""
        if self.config.use_tied_heads:
            return F.linear(hidden, self.embed.tables[name].weight)
        return self.heads[name](hidden)

    def forward(self, batch: Batch) -> FourMOutput:
        memory, memory_valid = self.encode(batch)
        return self.loss(self.decode(batch, memory, memory_valid), batch)

    def loss(self, hidden: Tensor, batch: Batch) -> FourMOutput:
        """Cross-entropy of the decoder output ``hidden`` (B, Nd, D) against ``batch.dec_target``."""
        target, mod = batch.dec_target, batch.dec_mod
        valid = batch.dec_valid & (target != IGNORE)
        self.embed.check_tokens("decoder target", target, mod, batch.dec_pos, valid, self.embed.vocab)
        padded = self._padded_logits(hidden, mod, valid)
        flat_target = target.flatten()
        sums, counts = {}, {}
        for name, (idx, logits) in padded.items():
            # the padding rows' targets are ignored: the loss takes the whole padded logits, not a view of
            # them (a view's base size is a guard of the compiled loss: it recompiled when padding began)
            target_ids = F.pad(flat_target[idx], (0, logits.shape[0] - idx.numel()), value=IGNORE)
            sums[name] = self.cross_entropy(logits, target_ids)
            counts[name] = idx.numel()
        per_mod = {name: ModalityLogits(idx, logits[: idx.numel()]) for name, (idx, logits) in padded.items()}
        means = {name: sums[name] / counts[name] for name in sums}
        weight = {name: self.config.loss_weights.get(name, 1.0) for name in sums}
        if not sums:  # nothing to predict: a zero that backward() accepts
            loss = hidden.sum() * 0.0
        elif self.config.loss_weighting == "modality":
            loss = sum(weight[n] * means[n] for n in means) / max(sum(weight.values()), 1e-12)
        else:
            loss = sum(weight[n] * sums[n] for n in sums) / max(sum(weight[n] * counts[n] for n in sums), 1e-12)
        return FourMOutput(loss, {n: v.detach() for n, v in means.items()}, per_mod)

