"""TeCaFN: Text-centered Cross-sample Fusion Network (Huang et al., Multimedia Systems 30:228, 2024).

The full definition of the model, all of it in this one file. Names follow the paper:

    E_m        unimodal encoders (BERT for text; pre-LN transformer + LSTM for audio and vision)
    H_t        the text encoder's states of the utterance's own tokens; with context (k > 0) the
               context-conditioned text encoding: E_t reads the utterance followed by the
               transcripts of the k previous segments of its stream, and only the utterance's
               positions go on (see `context_conditioned_text`)
    Conv1D     temporal convolution of every modality to the common width d
    L_uccon    text-centred unimodal contrastive loss, InfoNCE(t, a) + InfoNCE(t, v), both directions
    mining     the top-`num` most similar *other* samples of modality m for every text
    gate       the replacement gate: with probability p, modality m is swapped for a hard negative
    CoAt       text-centred cross-sample attention: text queries, modality m keys/values
    L_ap       pairwise prediction: is (text, m) the original pair (1) or a replaced one (0)?
    L_bicon    fused bimodal contrastive loss between the t-v and t-a fusions of the same text
    L_task     MAE of tanh(FC(fusion)) * 3 against the label in [-3, 3]
    W_t, W_m   the contrastive mappers (Algorithm 1): L_uccon compares W_t(text) with W_m(m), so
               the contrast shapes its own projections, not the features CoAt consumes
    f1, f2     the same for L_bicon (Section 3.2.2): projections of the t-v and t-a fusions

    L = L_task + gamma1 * (L_uccon + L_bicon) + gamma2 * L_ap

"Centre" is text in the paper; `center="audio"` or `"visual"` gives the Fig. 3 variants, where
the named modality takes text's role and the other two are its sides.

Beyond the paper, for serving real segments:
    present    a per-sample presence flag for audio and vision, bool [B, 2] in PRESENCE order.
               An absent side (flag False, zero frames, or no such input) contributes nothing:
               attention over an empty set of frames is zero, so CoAt passes the text through
               its feed-forward layers alone. One graph serves full and partial segments.
    standardisation  per-dimension mean and sd of every frame modality (training split), kept
               as buffers so a checkpoint and its export carry them.
    context    k = `TeCaFNConfig.context` previous transcripts of the same stream (never a later
               one): inputs context_ids / context_mask [B, T_c], the k transcripts oldest first,
               each followed by the tokenizer's separator, cut from the oldest side. k = 0 is the
               paper's model: the same graph, inputs and outputs as before context existed.
    attribution  `score_with_attribution`: the score, the text-only score and what each side
               moved the score, from one batched pass.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from stream.contract import CONTEXT_INPUTS
from trainer.defaults import DEFAULT_MODALITY_DROPOUT, MAX_FRAMES  # noqa: F401 - part of the model's API

MODALITIES = ("text", "audio", "visual")
PRESENCE = ("audio", "visual")  # the columns of the `present` input, whatever the model has
SHORT = {"text": "t", "audio": "a", "visual": "v"}


# What each numeric field of TeCaFNConfig may be: (the allowed range in words, the check).
# Outside them the model fails deep inside torch (d_model=0, an even conv_kernel) or trains to
# NaN without a word (tau=0), so the config refuses them where they are set.
_POSITIVE = ("an integer >= 1", lambda v: v >= 1)
_LAYERS = ("an integer >= 0", lambda v: v >= 0)
_WEIGHT = ("a finite number >= 0", lambda v: 0 <= v < math.inf)
NUMERIC_RANGES = {
    "d_text": _POSITIVE, "d_audio": _POSITIVE, "d_visual": _POSITIVE, "d_model": _POSITIVE,
    "n_heads": _POSITIVE, "fusion_hidden": _POSITIVE, "num": _POSITIVE,
    "encoder_layers": _LAYERS, "cross_layers": _LAYERS, "context": _LAYERS,
    "conv_kernel": ("an odd integer >= 1 (padding keeps the length)", lambda v: v >= 1 and v % 2 == 1),
    "dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "p": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "tau": ("a finite number > 0", lambda v: 0 < v < math.inf),
    "gamma1": _WEIGHT, "gamma2": _WEIGHT,
    "label_range": ("a finite number > 0", lambda v: 0 < v < math.inf),
}



def check_ranges(values: dict) -> None:
    """ValueError naming the first field of `values` outside its range in NUMERIC_RANGES."""
    for name, value in values.items():
        allowed, within = NUMERIC_RANGES.get(name, ("", lambda v: True))
        if not within(value):  # every check is written so that NaN fails it
            raise ValueError(f"{name} must be {allowed}, got {value}")


@dataclass
class TeCaFNConfig:
    """Every hyper-parameter of the model; the defaults are the paper's (MOSI setting)."""

    d_text: int = 384  # width of the text encoder's hidden states (set from the encoder)
    d_audio: int = 5  # input feature widths (set from the data)
    d_visual: int = 20
    d_model: int = 30  # the common width d after Conv1D
    n_heads: int = 5
    encoder_layers: int = 6  # L for the audio/vision pre-LN transformer encoders
    cross_layers: int = 6  # L for CoAt
    conv_kernel: int = 3  # temporal Conv1D kernel
    dropout: float = 0.1
    fusion_hidden: int = 128
    tau: float = 0.1  # InfoNCE temperature
    p: float = 0.7  # replacement probability (best on MOSI, Table 6)
    num: int = 3  # hard negatives per text (best, Table 7)
    gamma1: float = 0.1  # weight of L_uccon + L_bicon
    gamma2: float = 0.1  # weight of L_ap
    label_range: float = 3.0
    task: str = "regression"  # or "binary" (UR-FUNNY)
    # Structure: which modalities exist, which one is the centre, and which parts are on.
    center: str = "text"
    modalities: tuple[str, ...] = MODALITIES
    contrast_sides: tuple[str, ...] = ("audio", "visual")  # sides with an L_uccon term
    gate_sides: tuple[str, ...] = ("audio", "visual")  # sides with a replacement gate (and L_ap)
    hard_negative_sides: tuple[str, ...] = ("audio", "visual")  # else: uniform other samples
    use_bicon: bool = True
    contrast_mappers: bool = True  # W_t, W_m and f1, f2 (off: contrast the features CoAt consumes)
    context: int = 0  # k: previous segments of the stream whose transcripts E_t reads (0: none)

    def __post_init__(self):
        for name in ("modalities", "contrast_sides", "gate_sides", "hard_negative_sides"):
            setattr(self, name, tuple(getattr(self, name)))
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; known: {MODALITIES}")
        if self.center not in self.modalities:
            raise ValueError(f"centre modality {self.center!r} is not among {self.modalities}")
        if self.task not in ("regression", "binary"):
            raise ValueError(f"task must be 'regression' or 'binary', not {self.task!r}")
        check_ranges(asdict(self))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def sides(self) -> tuple[str, ...]:
        """The modalities the centre attends to, in a fixed order."""
        return tuple(m for m in self.modalities if m != self.center)

    def pair(self, side: str) -> str:
        """Paper-style pair name, e.g. 'ta' for text-audio."""
        return SHORT[self.center] + SHORT[side]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TeCaFNConfig":
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Ablations: every row of Table 5 and the Fig. 3 variants, as transformations of a config.

def _without(sides: tuple[str, ...], *drop: str) -> tuple[str, ...]:
    return tuple(s for s in sides if s not in drop)


ABLATIONS = {
    "full": ("TeCaFN", lambda c: c),
    "wo-uccon-ta": ("w/o L_ta", lambda c: replace(c, contrast_sides=_without(c.contrast_sides, "audio"))),
    "wo-uccon-tv": ("w/o L_tv", lambda c: replace(c, contrast_sides=_without(c.contrast_sides, "visual"))),
    "wo-uccon": ("w/o L_ta, L_tv", lambda c: replace(c, contrast_sides=())),
    "wo-bicon": ("w/o L_bicon", lambda c: replace(c, use_bicon=False)),
    "wo-mappers": ("w/o mappers", lambda c: replace(c, contrast_mappers=False)),
    "wo-gate-ta": ("w/o gate ta", lambda c: replace(c, gate_sides=_without(c.gate_sides, "audio"))),
    "wo-gate-tv": ("w/o gate tv", lambda c: replace(c, gate_sides=_without(c.gate_sides, "visual"))),
    "wo-gate": ("w/o gates", lambda c: replace(c, gate_sides=())),
    "wo-hn-ta": ("w/o hard neg. ta",
                 lambda c: replace(c, hard_negative_sides=_without(c.hard_negative_sides, "audio"))),
    "wo-hn-tv": ("w/o hard neg. tv",
                 lambda c: replace(c, hard_negative_sides=_without(c.hard_negative_sides, "visual"))),
    "wo-hn": ("w/o hard neg.", lambda c: replace(c, hard_negative_sides=())),
    "wo-v": ("w/o V", lambda c: replace(c, modalities=_without(c.modalities, "visual"))),
    "wo-a": ("w/o A", lambda c: replace(c, modalities=_without(c.modalities, "audio"))),
    "wo-va": ("w/o V, A", lambda c: replace(c, modalities=("text",))),
    "audio-centred": ("A-centred", lambda c: replace(c, center="audio",
                                                       contrast_sides=("text", "visual"),
                                                       gate_sides=("text", "visual"),
                                                       hard_negative_sides=("text", "visual"))),
    "vision-centred": ("V-centred", lambda c: replace(c, center="visual",
                                                        contrast_sides=("text", "audio"),
                                                        gate_sides=("text", "audio"),
                                                        hard_negative_sides=("text", "audio"))),
}


def apply_ablation(config: TeCaFNConfig, name: str) -> TeCaFNConfig:
    """Return `config` changed as the ablation `name` says; unknown names are an error."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of: {', '.join(ABLATIONS)}")
    return ABLATIONS[name][1](config)


# --------------------------------------------------------------------------------------------
# Helpers on padded sequences. Masks are True at real positions, False at padding.

def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of x [B, T, d] counting only real positions."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def info_nce(query: torch.Tensor, key: torch.Tensor, tau: float, rows: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE between paired rows of query and key [B, d].

    Returns the loss (mean of the query->key and key->query cross-entropies, the "both
    directions" of the paper) and the cosine-similarity matrix S [B, B] that ranks samples.
    rows [B] bool, optional: only those samples take part in the loss (others lack a side);
    the loss is zero when fewer than two do.
    """
    q = F.normalize(query, dim=-1)
    k = F.normalize(key, dim=-1)
    similarity = q @ k.t()
    logits = similarity / tau
    if rows is not None:
        logits = logits[rows][:, rows]
    n = logits.shape[0]
    if n < 2:
        return logits.sum() * 0.0, similarity
    target = torch.arange(n, device=q.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    return loss, similarity


def mine_hard_negatives(similarity: torch.Tensor, num: int, hard: bool = True,
                        available: torch.Tensor | None = None) -> torch.Tensor:
    """For every row i, the indices [B, k] of candidate replacements j != i.

    hard=True: the top-`num` columns by similarity (the paper's hard negatives).
    hard=False: every other sample (the "w/o hard negatives" ablation).
    k = min(num, B - 1) or B - 1. available [B] bool, optional: samples that have the side at
    all rank last (the caller must not swap one in; see `TeCaFN._gate`).
    """
    b = similarity.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=similarity.device)
    if hard:
        k = min(num, b - 1)
        ranked = similarity.detach().masked_fill(eye, float("-inf"))
        if available is not None:
            ranked = ranked.masked_fill(~available[None, :] & ~eye, -1e4)
        return ranked.topk(k, dim=1).indices
    others = torch.arange(b, device=similarity.device).expand(b, b)
    return others[~eye].view(b, b - 1)


def replacement_gate(candidates: torch.Tensor, p: float, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decide, per sample, whether its side modality is swapped for a candidate.

    candidates [B, k]: replacement indices from `mine_hard_negatives`.
    Returns (source [B], pseudo_label [B]): row i takes modality m from sample source[i];
    pseudo_label is 1 where the pair is original and 0 where it was replaced (Table 2).
    """
    b, k = candidates.shape
    device = candidates.device
    rows = torch.arange(b, device=device)
    if k == 0:  # a batch of one has nothing to swap with
        return rows, torch.ones(b, dtype=torch.long, device=device)
    u = torch.rand(b, generator=generator, device=device if generator is None else generator.device)
    pick = torch.randint(k, (b,), generator=generator,
                         device=device if generator is None else generator.device)
    replace_mask = (u < p).to(device)
    source = torch.where(replace_mask, candidates[rows, pick.to(device)], rows)
    return source, (~replace_mask).long()


def context_conditioned_text(encoder: nn.Module, input_ids, attention_mask, context_ids, context_mask,
                             typed: bool) -> torch.Tensor:
    """H_t with context: E_t's states [B, T_t, d_text] of the utterance's positions, computed over
    one sequence per sample, "[CLS] utterance [SEP] context [SEP]" packed without a gap, so that
    the utterance keeps the positions it has without context and the context follows it at the
    same positions whatever either is padded to (a gap of padding would shift the context's
    positions with the batch). typed: the encoder has token types; the context gets type 1, as
    BERT's second segment. Masks are True (1) at real positions, which come first in each row.
    Positions past the utterance within T_t hold context states; the utterance's mask hides them
    from everything downstream."""
    b, t = input_ids.shape
    t_c = context_ids.shape[1]
    n_text = attention_mask.sum(1, keepdim=True)
    n_context = context_mask.sum(1, keepdim=True)
    position = torch.arange(t + t_c, device=input_ids.device)[None, :]
    from_context = position >= n_text
    # one zero column more on each, so that every gather index is valid (t_c may be 0)
    text = F.pad(input_ids, (0, 1))
    context = F.pad(context_ids, (0, 1))
    ids = torch.where(from_context,
                      context.gather(1, (position - n_text).clamp(0, t_c).expand(b, -1)),
                      text.gather(1, position.clamp(max=t).expand(b, -1)))
    real = position < n_text + n_context
    ids = ids * real.to(ids.dtype)
    inputs = dict(input_ids=ids, attention_mask=real.to(attention_mask.dtype))
    if typed:
        inputs["token_type_ids"] = (from_context & real).to(ids.dtype)
    return encoder(**inputs).last_hidden_state[:, :t]


def has_token_types(encoder: nn.Module) -> bool:
    """Whether `encoder` takes token_type_ids with a second type (BERT, MiniLM; MPNet has none)."""
    takes = "token_type_ids" in inspect.signature(encoder.forward).parameters
    return takes and getattr(encoder.config, "type_vocab_size", 0) >= 2


def modality_dropout(present: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: every (sample, side) presence flag is turned off with probability p,
    independently, so the model learns to score from text with one side, the other, or none."""
    if p <= 0.0:
        return present
    u = torch.rand(present.shape, generator=generator,
                   device=present.device if generator is None else generator.device)
    return present & (u.to(present.device) >= p)


# --------------------------------------------------------------------------------------------
# Modules

class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over padded sequences. Written out (rather than
    nn.MultiheadAttention) so the ONNX export keeps every time axis dynamic."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.h, self.d_head = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """Attention over an empty context (a row with no real position) is zero, exactly: the
        row attends to its first position only to stay finite, and the result is multiplied out."""
        has_context = context_mask.any(-1)  # [B]
        safe_mask = torch.cat([context_mask[:, :1] | ~has_context[:, None], context_mask[:, 1:]], dim=1)
        q, (k, v) = self.q(x), self.kv(context).chunk(2, dim=-1)
        if torch.onnx.is_in_onnx_export():
            out = FusedAttention.apply(q, k, v, safe_mask, self.h, self.h * self.d_head)
        else:
            out = attend(q, k, v, safe_mask, self.h, self.drop)
        return self.out(out) * has_context[:, None, None].to(out.dtype)


def attend(q, k, v, keep, h: int, drop=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh), masked) v over h heads: q [B, Tq, d], k and v [B, Tk, d], keep bool
    [B, Tk]; `drop` (dropout) on the attention weights while training."""
    b, d = q.shape[0], q.shape[-1]
    q, k, v = (t.view(b, -1, h, d // h).transpose(1, 2) for t in (q, k, v))  # [B, h, T, dh]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)  # [B, h, Tq, Tk]
    attn = scores.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(-1)
    return ((drop(attn) if drop is not None else attn) @ v).transpose(1, 2).reshape(b, -1, d)


class FusedAttention(torch.autograd.Function):
    """attend(), exported as ONNX Runtime's fused MultiHeadAttention (com.microsoft). The
    decomposed graph (transposes, MatMul, Where, Softmax per layer) was a third of the served
    graph's time on 2 CPU cores; the fused kernel gives the same scores (the export's parity check
    compares it with PyTorch) 7-15 % faster overall. Used only while exporting: training and
    PyTorch inference call attend() directly."""

    @staticmethod
    def forward(ctx, q, k, v, keep, h: int, d: int):
        return attend(q, k, v, keep, h)

    @staticmethod
    def symbolic(g, q, k, v, keep, h, d):
        no_bias = g.op("Constant", value_t=torch.zeros(3 * d))  # the q/kv Linears add their own
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, no_bias,
                   g.op("Cast", keep, to_i=6), num_heads_i=h)  # key padding mask as int32
        out.setType(q.type())
        return out


class PreLNBlock(nn.Module):
    """x + Attn(LN(x), LN(context)); x + FFN(LN(x)). Self-attention when context is x."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, context, context_mask):
        x = x + self.drop(self.attn(self.norm_q(x), self.norm_kv(context), context_mask))
        return self.feed_forward(x)

    def feed_forward(self, x):
        """The block with nothing to attend to: attention over an empty context is exactly zero."""
        return x + self.drop(self.ff(self.norm_ff(x)))


class SequenceEncoder(nn.Module):
    """E_m for audio and vision: linear input map + positions, L pre-LN self-attention
    layers, then a one-layer unidirectional LSTM.

    Key-padding masks and a unidirectional LSTM make the output at real positions independent
    of how much padding follows them.
    """

    def __init__(self, d_in: int, d_model: int, n_heads: int, layers: int, dropout: float):
        super().__init__()
        self.input = nn.Linear(d_in, d_model)
        self.position = SinusoidalPosition(d_model)
        self.layers = nn.ModuleList(PreLNBlock(d_model, n_heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.lstm = nn.LSTM(d_model, d_model, num_layers=1, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.position(self.input(x))
        for layer in self.layers:
            h = layer(h, h, mask)
        h, _ = self.lstm(self.norm(h))
        return h


class SinusoidalPosition(nn.Module):
    def __init__(self, d_model: int, max_len: int = MAX_FRAMES):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


class TemporalConv(nn.Module):
    """Conv1D over time to the common width d. Padding is zeroed first so that a real
    position next to padding sees the same zeros as at the sequence border."""

    def __init__(self, d_in: int, d_model: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(d_in, d_model, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class CoAt(nn.Module):
    """Text-centred cross-sample attention: L pre-LN layers where the centre (text) queries and
    the side modality m is key and value, then a LayerNorm. Output H_{t<-m} [B, T_t, d]."""

    def __init__(self, d_model: int, n_heads: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(PreLNBlock(d_model, n_heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, side, side_mask):
        for layer in self.layers:
            x = layer(x, side, side_mask)
        return self.norm(x)

    def without_side(self, x):
        """forward() with an empty side mask, without computing attention that comes out zero."""
        for layer in self.layers:
            x = layer.feed_forward(x)
        return self.norm(x)


class ContrastMapper(nn.Module):
    """A projection the contrastive losses compare in (W_t / W_m of Algorithm 1, f1 / f2 of
    Section 3.2.2): Linear-ReLU-Linear, as in SimCLR-style projection heads."""

    def __init__(self, d_model: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class TeCaFNOutput:
    prediction: torch.Tensor  # [B]: score in [-3, 3] (regression) or logit (binary)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # L_uccon, L_bicon, L_ap parts
    pseudo_labels: dict[str, torch.Tensor] = field(default_factory=dict)  # per pair, training only
    similarity: dict[str, torch.Tensor] = field(default_factory=dict)  # S per pair, training only


@dataclass
class Attribution:
    """What each side did to a score. All [B] except contribution [B, len(PRESENCE)].

    contribution[:, i] = score - score without side PRESENCE[i] (0 where the side is absent or
    the model has no such side); interaction = what is left, so that exactly
        score = text_only + contribution.sum(-1) + interaction.
    With one side (text + audio) the interaction is 0 and score = text_only + contribution."""

    score: torch.Tensor
    text_only: torch.Tensor
    contribution: torch.Tensor
    interaction: torch.Tensor


class TeCaFN(nn.Module):
    """The whole network. `text_encoder` is any BERT-family model returning last_hidden_state.

    Inputs (a dict): input_ids, attention_mask [B, T_t]; with context (k > 0) context_ids,
    context_mask [B, T_c] (absent: no segment has context); for each frame modality m, m [B, T_m, d_m]
    and m_lengths [B]; optionally present bool [B, 2] (PRESENCE order). A side is used for a
    sample only where present says so (default: True) and it has at least one frame."""

    def __init__(self, config: TeCaFNConfig, text_encoder: nn.Module):
        super().__init__()
        self.config = c = config
        self.text_encoder = text_encoder
        self.typed_context = c.context > 0 and has_token_types(text_encoder)
        self.frame_modalities = tuple(m for m in c.modalities if m != "text")
        self.encoders = nn.ModuleDict({
            m: SequenceEncoder(self._width(m), c.d_model, c.n_heads, c.encoder_layers, c.dropout)
            for m in self.frame_modalities})
        for m in self.frame_modalities:  # standardisation, identity until set from training data
            self.register_buffer(f"{m}_mean", torch.zeros(self._width(m)))
            self.register_buffer(f"{m}_std", torch.ones(self._width(m)))
        conv_in = {m: (c.d_text if m == "text" else c.d_model) for m in c.modalities}
        self.conv = nn.ModuleDict({m: TemporalConv(conv_in[m], c.d_model, c.conv_kernel)
                                   for m in c.modalities})
        self.coat = nn.ModuleDict({s: CoAt(c.d_model, c.n_heads, c.cross_layers, c.dropout)
                                   for s in c.sides})
        self.ap_head = nn.ModuleDict({s: nn.Sequential(nn.Linear(c.d_model, c.d_model), nn.ReLU(),
                                                       nn.Linear(c.d_model, 2))
                                      for s in c.gate_sides if s in c.sides})
        self.mappers = nn.ModuleDict()
        if c.contrast_mappers:
            for s in c.contrast_sides:
                if s not in c.sides:
                    continue
                self.mappers[f"{c.pair(s)}_{c.center}"] = ContrastMapper(c.d_model)  # W_t for this pair
                self.mappers[f"{c.pair(s)}_{s}"] = ContrastMapper(c.d_model)  # W_m
            if c.use_bicon and len(c.sides) == 2:
                self.mappers["f1"] = ContrastMapper(c.d_model)
                self.mappers["f2"] = ContrastMapper(c.d_model)
        fused = c.d_model * max(1, len(c.sides))
        self.head = nn.Sequential(nn.Linear(fused, c.fusion_hidden), nn.ReLU(), nn.Dropout(c.dropout),
                                  nn.Linear(c.fusion_hidden, 1))

    def _width(self, m: str) -> int:
        return {"audio": self.config.d_audio, "visual": self.config.d_visual}[m]

    # ----------------------------------------------------------------------------------------
    # Standardisation

    def set_feature_stats(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per-dimension (mean, sd) of each frame modality, from the training split. A dimension
        whose sd is (nearly) zero is only centred, never blown up."""
        for m, (mean, std) in stats.items():
            if m not in self.frame_modalities:
                continue
            mean = torch.as_tensor(mean, dtype=torch.float32)
            std = torch.as_tensor(std, dtype=torch.float32)
            if mean.shape != (self._width(m),) or std.shape != mean.shape:
                raise ValueError(f"{m} statistics must have shape ({self._width(m)},), got {tuple(mean.shape)}")
            getattr(self, f"{m}_mean").copy_(mean)
            getattr(self, f"{m}_std").copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    # ----------------------------------------------------------------------------------------
    # Forward

    def presence(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """bool [B, len(PRESENCE)]: the batch's `present` (if any) and-ed with "has frames"."""
        b = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        given = batch.get("present")
        columns = []
        for i, m in enumerate(PRESENCE):
            if f"{m}_lengths" in batch:
                has = batch[f"{m}_lengths"] > 0
            else:
                has = torch.zeros(b, dtype=torch.bool, device=device)
            if given is not None:
                has = has & given[:, i].bool()
            columns.append(has)
        return torch.stack(columns, dim=1)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """Unimodal features after E_m and Conv1D: X_m [B, T_m + 1, d] and masks [B, T_m + 1].
        A modality with no frames (or no input at all) has an empty mask."""
        c = self.config
        feats, masks = {}, {}
        b = batch["input_ids"].shape[0]
        for m in c.modalities:
            if m == "text":
                mask = batch["attention_mask"].bool()
                h = self.text_states(batch)
            else:
                if m in batch:
                    x, lengths = batch[m], batch[f"{m}_lengths"]
                else:
                    x = batch["input_ids"].new_zeros((b, 0, self._width(m)), dtype=torch.float32)
                    lengths = batch["input_ids"].new_zeros(b)
                # One padding frame more, so that a batch with no frames at all ([B, 0, d]) still
                # runs (the LSTM needs a time step); padding never changes a score.
                x = F.pad(x, (0, 0, 0, 1))
                mask = lengths_to_mask(lengths, x.shape[1])
                x = (x - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_std")
                x = torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x))  # padding is zeros, even NaN there
                h = self.encoders[m](x, mask)
            feats[m] = self.conv[m](h, mask)
            masks[m] = mask
        return feats, masks

    def text_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """H_t [B, T_t, d_text]: conditioned on the batch's context where the model takes context
        and the batch has it (a batch without context_ids is one whose segments have none)."""
        if self.config.context and CONTEXT_INPUTS[0] in batch:
            return context_conditioned_text(self.text_encoder, batch["input_ids"], batch["attention_mask"],
                                            batch["context_ids"], batch["context_mask"], self.typed_context)
        return self.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state

    def _side_masks(self, masks: dict, present: torch.Tensor) -> dict:
        """Masks with absent sides emptied. The centre is always taken as present."""
        out = dict(masks)
        for i, m in enumerate(PRESENCE):
            if m in out and m != self.config.center:
                out[m] = out[m] & present[:, i, None]
        return out

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> TeCaFNOutput:
        feats, masks = self.encode(batch)
        present = self.presence(batch)
        if self.training:
            return self._train_forward(feats, self._side_masks(masks, present), present, generator)
        return TeCaFNOutput(prediction=self._predict(feats, self._side_masks(masks, present)))

    def _predict(self, feats: dict, masks: dict) -> torch.Tensor:
        """Inference: CoAt per side, fusion, head. A score never depends on other samples."""
        c = self.config
        center, center_mask = feats[c.center], masks[c.center]
        fusions = [masked_mean(self.coat[s](center, feats[s], masks[s]), center_mask) for s in c.sides]
        return self._head(fusions, center, center_mask)

    def _head(self, fusions: list, center: torch.Tensor, center_mask: torch.Tensor) -> torch.Tensor:
        fusion = torch.cat(fusions, dim=-1) if fusions else masked_mean(center, center_mask)
        raw = self.head(fusion).squeeze(-1)
        return raw if self.config.task == "binary" else torch.tanh(raw) * self.config.label_range

    def _side_present(self, side: str, present: torch.Tensor) -> torch.Tensor:
        if side in PRESENCE:
            return present[:, PRESENCE.index(side)]
        return torch.ones(present.shape[0], dtype=torch.bool, device=present.device)  # text as a side

    def _train_forward(self, feats, masks, present, generator) -> TeCaFNOutput:
        """Training: contrast, mining and the gate, over the samples that have each side."""
        c = self.config
        out = TeCaFNOutput(prediction=torch.empty(0))
        center, center_mask = feats[c.center], masks[c.center]
        pooled_center = masked_mean(center, center_mask)
        fusions, fused_rows = [], []
        for side in c.sides:
            pair = c.pair(side)
            side_feat, side_mask = feats[side], masks[side]
            rows = self._side_present(side, present)
            query, key = pooled_center, masked_mean(side_feat, side_mask)
            if c.contrast_mappers and side in c.contrast_sides:
                query, key = self.mappers[f"{pair}_{c.center}"](query), self.mappers[f"{pair}_{side}"](key)
            l_con, similarity = info_nce(query, key, c.tau, rows)
            out.similarity[pair] = similarity
            if side in c.contrast_sides:
                out.losses[f"L_uccon_{pair}"] = l_con
            gated = side in c.gate_sides
            if gated:
                source, label = self._gate(similarity, rows, side in c.hard_negative_sides, generator)
                side_feat, side_mask = side_feat[source], side_mask[source]
                out.pseudo_labels[pair] = label
            h = masked_mean(self.coat[side](center, side_feat, side_mask), center_mask)
            if gated:
                logits = self.ap_head[side](h)
                out.losses[f"L_ap_{pair}"] = (F.cross_entropy(logits[rows], label[rows]) if rows.any()
                                              else logits.sum() * 0.0)
            fusions.append(h)
            fused_rows.append(rows)

        if c.use_bicon and len(fusions) == 2:
            a, b = fusions
            if c.contrast_mappers:
                a, b = self.mappers["f1"](a), self.mappers["f2"](b)
            out.losses["L_bicon"] = info_nce(a, b, c.tau, fused_rows[0] & fused_rows[1])[0]
        out.prediction = self._head(fusions, center, center_mask)
        return out

    def _gate(self, similarity, rows, hard: bool, generator):
        """Replacement gate restricted to samples that have the side: an absent sample is never
        swapped and never swapped in (its pseudo-label stays 1, and L_ap skips it)."""
        c = self.config
        candidates = mine_hard_negatives(similarity, c.num, hard=hard, available=rows)
        source, label = replacement_gate(candidates, c.p, generator)
        allowed = rows & rows[source]
        own = torch.arange(len(source), device=source.device)
        return torch.where(allowed, source, own), torch.where(allowed, label, torch.ones_like(label))

    # ----------------------------------------------------------------------------------------
    # Attribution

    @torch.no_grad()
    def score_with_attribution(self, batch: dict[str, torch.Tensor]) -> Attribution:
        """Score, text-only score and each side's contribution, in one pass.

        The encoders run once; each side's CoAt runs on two variants (with the side as given, and
        without it, which needs no attention) and the head on the four presence variants (as given, without audio, without
        vision, with neither), stacked along the batch axis, so an exported graph computes it all
        in a single call."""
        return self.attribution_from_features(*self.encode(batch), self.presence(batch))

    def attribution_from_features(self, feats: dict, masks: dict, present: torch.Tensor) -> Attribution:
        c = self.config
        if c.center != "text":
            raise ValueError("attribution is defined for text-centred models (the score from the words alone)")
        b = present.shape[0]
        columns = [i for i, m in enumerate(PRESENCE) if m in c.sides]  # a side the model lacks moves nothing
        variants = [present]
        for i in columns:
            without = present.clone()
            without[:, i] = False
            variants.append(without)
        variants.append(torch.zeros_like(present))
        n = len(variants)
        center, center_mask = feats[c.center], masks[c.center]
        given = self._side_masks(masks, present)
        fusions = []
        for side in c.sides:
            # A side's CoAt output depends only on whether the side is used, so CoAt runs twice
            # per side (with it as given, and without it, where attention is skipped), not once
            # per variant.
            with_side, without_side = self._coat_with_and_without(side, center, center_mask, feats[side], given[side])
            used = given[side].any(-1)
            column = PRESENCE.index(side)
            fusions.append(torch.cat([torch.where((used & v[:, column])[:, None], with_side, without_side)
                                      for v in variants]))
        scores = self._head(fusions, center.repeat(n, 1, 1), center_mask.repeat(n, 1)).view(n, b)
        score, text_only = scores[0], scores[-1]
        zero = torch.zeros_like(score)
        contribution = torch.stack([score - scores[1 + columns.index(i)] if i in columns else zero
                                    for i in range(len(PRESENCE))], dim=-1)
        interaction = score - text_only - contribution.sum(-1)
        return Attribution(score, text_only, contribution, interaction)

    def _coat_with_and_without(self, side: str, center, center_mask, side_feat, side_mask):
        """Pooled CoAt output [B, d] with the side as masked, and with it absent."""
        coat = self.coat[side]
        return (masked_mean(coat(center, side_feat, side_mask), center_mask),
                masked_mean(coat.without_side(center), center_mask))

    # ----------------------------------------------------------------------------------------

    def loss(self, out: TeCaFNOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """All loss components and the total, L = L_task + g1 (L_uccon + L_bicon) + g2 L_ap."""
        c = self.config
        if c.task == "binary":
            task = F.binary_cross_entropy_with_logits(out.prediction, labels.float())
        else:
            task = F.l1_loss(out.prediction, labels)
        zero = task.new_zeros(())
        uccon = sum((v for k, v in out.losses.items() if k.startswith("L_uccon")), zero)
        bicon = out.losses.get("L_bicon", zero)
        ap = sum((v for k, v in out.losses.items() if k.startswith("L_ap")), zero)
        total = task + c.gamma1 * (uccon + bicon) + c.gamma2 * ap
        return {"L_task": task, "L_uccon": uccon, "L_bicon": bicon, "L_ap": ap, "total": total}
