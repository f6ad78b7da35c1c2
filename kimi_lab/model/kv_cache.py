"""MLA's decode cache: per token and layer, the compressed kv latent and the shared rotary key.

Shape legend: L layers, B batch rows, S cache slots, T new tokens, c kv latent rank,
r rope dim, k = c + r.

In MLA every head's key and value are linear functions of one normed latent ``c_kv``
(c values per token) plus a rotary key shared by all heads (r values), so that is all a
decode step needs to keep: c + r values per token and layer (576 for K2), where caching
expanded keys and values would take H * (n + r + v) (20,480 for K2). A decode step
absorbs the up-projections into the query and output sides instead
(``MultiHeadLatentAttention``), which makes attention multi-query over the latent.

The buffers are allocated once per generation (prompt + new tokens), so a step writes in
place at a position the host knows (no concatenation, no reallocation, fixed addresses,
no host sync). ``bias`` is the additive attention mask of the slots: 0 for a real token,
-inf for padding, so a decode step reads its mask instead of building one.
"""

from __future__ import annotations

import torch


class LatentCache:
    """The latent cache of all layers for one batch of sequences."""

    def __init__(self, n_layers: int, kv_rank: int, rope_dim: int, max_len: int) -> None:
        self.n_layers, self.kv_rank, self.rope_dim, self.max_len = n_layers, kv_rank, rope_dim, max_len
        self.kv_LBSk: torch.Tensor | None = None  # allocated at the first write (batch, dtype known)
        self.bias_BS: torch.Tensor | None = None
        self.length = 0  # slots filled, the same for every row (rows are left-padded)

    @property
    def values_per_token(self) -> int:
        """Cached values per token and layer: kv_lora_rank + qk_rope_head_dim."""
        return self.kv_rank + self.rope_dim

    def bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes one token occupies in the cache of all layers."""
        return self.n_layers * self.values_per_token * torch.empty((), dtype=dtype).element_size()

    def allocated(self, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        if self.kv_LBSk is None:
            self.kv_LBSk = torch.zeros(
                self.n_layers, batch, self.max_len, self.values_per_token, dtype=dtype, device=device
            )

    def begin(self, T: int, keep_BT: torch.Tensor | None, batch: int, device: torch.device) -> None:
        """Before a forward of T new tokens: reserve their slots and record which are padding."""
        if self.length + T > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens; {self.length} + {T} do not fit")
        if self.bias_BS is None:
            self.bias_BS = torch.zeros(batch, self.max_len, dtype=torch.float32, device=device)
        if keep_BT is not None:
            if keep_BT.shape != (batch, T):
                raise ValueError(
                    f"attention_mask of the new tokens is {tuple(keep_BT.shape)}, expected {(batch, T)}"
                )
            new = self.bias_BS[:, self.length : self.length + T]
            new.copy_(torch.zeros_like(new).masked_fill_(~keep_BT.bool(), float("-inf")))

    def write(self, layer: int, latent_BTk: torch.Tensor) -> torch.Tensor:
        """Store layer ``layer``'s latents of the new tokens; returns every slot so far (B, length + T, k)."""
        B, T, _ = latent_BTk.shape
        self.allocated(B, latent_BTk.dtype, latent_BTk.device)
        assert self.kv_LBSk is not None
        self.kv_LBSk[layer, :, self.length : self.length + T] = latent_BTk
        return self.kv_LBSk[layer, :, : self.length + T]

    def advance(self, T: int) -> None:
        """After a forward: the new tokens are now part of the cached prefix."""
        self.length += T

    def attention_bias(self, T: int) -> torch.Tensor:
        """Additive mask (B, T, length + T) of the new tokens: padding and (for T > 1) the future hidden."""
        assert self.bias_BS is not None
        S = self.length + T
        bias = self.bias_BS[:, None, :S]
        if T == 1:
            return bias
        causal = torch.ones(T, S, dtype=torch.bool, device=bias.device).tril(diagonal=self.length)
        return bias.masked_fill(~causal, float("-inf"))

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (e.g. finished sequences dropped)."""
        if self.kv_LBSk is not None:
            self.kv_LBSk = self.kv_LBSk[:, rows]
        if self.bias_BS is not None:
            self.bias_BS = self.bias_BS[rows]

    def first_real_slot(self) -> int:
        """The first slot that holds a real token of some row (what all rows have as padding before it)."""
        assert self.bias_BS is not None
        real_BS = self.bias_BS[:, : self.length] == 0
        return int(real_BS.any(0).float().argmax()) if self.length else 0

    @staticmethod
    def stack(caches: list[LatentCache], room: int) -> LatentCache:
        """One cache holding the rows of ``caches`` in order, with ``room`` free slots after them.

        Each cache's rows keep their tokens right-aligned at the new common length; the slots
        in front of them are padding (masked), and leading slots that are padding in every
        row of a cache are dropped. A row's attention reads the same latents and positions as
        before, so its next logits do not change: this is how the batched server lets
        newcomers (prefilled in their own cache) join the running batch between two steps.
        """
        first = caches[0]
        kv = [c.kv_LBSk for c in caches]
        if any(t is None for t in kv) or any(c.bias_BS is None for c in caches):
            raise ValueError("only caches that hold tokens can be stacked")
        starts = [c.first_real_slot() for c in caches]
        L = max(c.length - s for c, s in zip(caches, starts, strict=True))
        B = sum(c.bias_BS.shape[0] for c in caches)  # type: ignore[union-attr]
        ref = kv[0]
        assert ref is not None
        out = LatentCache(first.n_layers, first.kv_rank, first.rope_dim, L + room)
        out.kv_LBSk = ref.new_zeros(first.n_layers, B, L + room, first.values_per_token)
        out.bias_BS = torch.zeros(B, L + room, dtype=torch.float32, device=ref.device)
        out.bias_BS[:, :L] = float("-inf")
        row = 0
        for c, s in zip(caches, starts, strict=True):
            assert c.kv_LBSk is not None and c.bias_BS is not None
            n, b = c.length - s, c.bias_BS.shape[0]
            out.kv_LBSk[:, row : row + b, L - n : L] = c.kv_LBSk[:, :, s : c.length]
            out.bias_BS[row : row + b, L - n : L] = c.bias_BS[:, s : c.length]
            row += b
        out.length = L
        return out
