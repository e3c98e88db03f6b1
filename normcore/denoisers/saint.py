"""SAINT-style tabular transformer: a token per IDP, attention across IDPs and rows.

Each IDP j becomes a token x_j * w_j + b_j + e_j (value embedding plus a learned feature
identity) to which the conditioning vector is added. With `idps_per_token` k > 1 a
token holds k neighbouring IDPs (schema order: FreeSurfer tables list a structure's
measures together), its value embedding the sum of theirs and its head one output per
IDP: a draw then costs about as much at 100 IDPs as at 100 / k, but the network loses
what makes it worth its cost (100 IDPs, 5 per token: conditional centiles no better than
FiLM's; a token each: far better, at several times the fit; benchmarks/RESULTS.md, "Fit
profile"), so a token per IDP is the default. Transformer layers
attend across tokens (feature self-attention), which is how the model keeps dependence
between IDPs as the dimension grows. Intersample attention mixes rows of a batch through
their mean tokens; it is a training-time regulariser (applied to a random half of the
batches) and is skipped at sampling, so a person's samples never depend on who else is
in the batch.

Small by default (`config.SAINT_SIZES`: width 16, 2 heads, a feed-forward twice the
width, 2 layers): the first stage has taken out each IDP's margins, so the network's job
is the dependence, and every draw costs a pass of each layer per token. On this scale
per-operation overhead, not arithmetic, sets the cost, and a larger network bought no
better conditional centiles (benchmarks/RESULTS.md, "Fit profile"). SAINT: Somepalli et
al., arXiv 2106.01342 (2021).

`masked=True` adds conditioning on any subset of the IDPs (CSDI, Tashiro et al., NeurIPS
2021): an observed IDP's token carries its clean score as value plus a learned "observed"
embedding of its own, so attention can tell given IDPs from noisy ones.

With a Gaussian `prior` (normcore.denoisers.gaussian_prior) the network's output is added
to the prior's v.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from normcore.config import SAINT_SIZES
from normcore.denoisers.conditioning import Conditioning, check_masked, draws_per_row
from normcore.denoisers.gaussian_prior import GaussianPrior


class SAINT(nn.Module):
    """Feature-token transformer denoiser with training-only intersample attention."""

    def __init__(
        self,
        n_idps: int,
        n_levels: list[int],
        steps: int,
        width: int = SAINT_SIZES["width"],
        depth: int = SAINT_SIZES["depth"],
        heads: int = SAINT_SIZES["heads"],
        ffn: int = SAINT_SIZES["ffn"],
        idps_per_token: int = 1,
        dropout: float = 0.0,
        intersample_p: float = 0.5,
        masked: bool = False,
        prior: GaussianPrior | None = None,
    ) -> None:
        super().__init__()
        self.masked = masked
        self.intersample_p = intersample_p
        self.cond = Conditioning(n_levels, steps, width)
        self.n_idps = n_idps
        self.group = idps_per_token
        self.n_tokens = -(-n_idps // self.group)
        cells = self.n_tokens * self.group  # the last token's cells past the IDPs hold 0
        self.value_w = nn.Parameter(torch.randn(cells, width) * 0.1)
        self.value_b = nn.Parameter(torch.zeros(self.n_tokens, width))
        self.feature = nn.Parameter(torch.randn(self.n_tokens, width) * 0.1)
        if masked:
            self.observed = nn.Parameter(torch.randn(cells, width) * 0.1)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                ffn * width,
                dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.row_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.row_norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, self.group))
        self.prior = prior

    def embed(self, age: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Covariate embedding to pass to `forward` (computed once per sampling run); with
        a prior, its last column is the prior's age level."""
        h = self.cond.embed_covariates(age, codes)
        return h if self.prior is None else self.prior.tag(h, age)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        covariates: torch.Tensor,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted v (`diffusion.v_target`) for x_t (B, D) at timesteps t and embedded
        covariates (B, dim), or (P, dim) with each row shared by B / P consecutive rows of
        x (one person's draws at one shared timestep; `draws_per_row`). `observed` (B, D)
        0/1 marks cells of x that hold clean observed scores instead of x_t (masked
        networks only; None = none observed)."""
        k = draws_per_row(x, covariates)
        levels = None
        if self.prior is not None:
            covariates, levels = self.prior.untag(covariates, k)
        c = self.cond(t, covariates).repeat_interleave(k, dim=0)
        tokens = self._embed_cells(x, self.value_w) + self.value_b + self.feature + c.unsqueeze(1)
        if observed is not None:
            check_masked(self.masked)
            tokens = tokens + self._embed_cells(observed.to(x.dtype), self.observed)
        use_rows = self.training and torch.rand(()) < self.intersample_p
        for i, layer in enumerate(self.layers):
            tokens = training_layer(layer, tokens) if self.training else layer(tokens)
            if use_rows and i == len(self.layers) - 2:
                rows = self.row_norm(tokens.mean(dim=1)).unsqueeze(0)
                mixed, _ = self.row_attention(rows, rows, rows, need_weights=False)
                tokens = tokens + mixed.squeeze(0).unsqueeze(1)
        v = self.head(tokens).flatten(1)[:, : self.n_idps]
        return v if levels is None else v + self.prior(x, t, observed, levels)

    def _embed_cells(self, cells: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, D) cells as (B, tokens, width): each token the sum of its IDPs' cells times
        their rows of `weight` (cells x width)."""
        if self.group == 1:
            return cells.unsqueeze(-1) * weight
        padded = nn.functional.pad(cells, (0, len(weight) - self.n_idps))
        return torch.einsum(
            "btg,tgw->btw",
            padded.view(-1, self.n_tokens, self.group),
            weight.view(self.n_tokens, self.group, -1),
        )


def training_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """What `layer(x)` computes in training for SAINT's pre-norm layers, with the same
    parameters, through `scaled_dot_product_attention`.

    Why: at these sizes a training step's cost is per-operation overhead, not arithmetic,
    and `nn.TransformerEncoderLayer` in training goes through the general
    `multi_head_attention_forward` (input checks, reshapes, separate head splits); this
    path does the same products in fewer operations (benchmarks/RESULTS.md, "Fit
    profile", per training step). At inference the layer's own fused fast path is the
    faster, so `SAINT.forward` calls the layer itself there.
    """
    attention = layer.self_attn
    b, n, width = x.shape
    heads = attention.num_heads
    qkv = F.linear(layer.norm1(x), attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    drop = attention.dropout if layer.training else 0.0
    mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
    x = x + layer.dropout1(attention.out_proj(mixed.transpose(1, 2).reshape(b, n, width)))
    hidden = layer.dropout(layer.activation(layer.linear1(layer.norm2(x))))
    return x + layer.dropout2(layer.linear2(hidden))
