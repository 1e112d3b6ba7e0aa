"""An independent PyTorch reference of one MSN training step, as the paper and the
authors' ``msn_train.py`` define it (written here from the method's description; no
code of facebookresearch/msn, which is CC-BY-NC):

- a timm-style ViT (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.*``
  with a fused ``attn.qkv``, ``norm``) whose projection head ``fc`` (Linear-BN-GELU x2,
  Linear) belongs to the encoder and runs once per crop-size group;
- the loss: softmax over cosine similarities with the prototypes at ``tau``, targets
  sharpened by a power ``1 / T`` and renormalised, optional Sinkhorn balancing,
  cross-entropy, me-max and mean-entropy terms;
- AdamW (torch's) with three parameter groups (decayed, not decayed, prototypes),
  warm-up + cosine learning rate and cosine weight decay advanced before each update,
  ``clip_grad_norm_`` over the encoder's parameters only, then the EMA of every
  encoder parameter (buffers excluded);
- checkpoints in the authors' layout (``encoder``, ``target_encoder``, ``prototypes``,
  ``opt``, ``epoch``, ...).

Needs torch; import it from tests that ``pytest.importorskip("torch")`` first.
"""

import collections
import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class MSNEncoder(nn.Module):
    """ViT + projection head; parameters registered in the authors' module order."""

    def __init__(self, image_size, patch, dim, depth, heads, mlp_dim, head_hidden, head_out):
        super().__init__()
        self.grid = image_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Sequential(
            collections.OrderedDict(
                [
                    ("fc1", nn.Linear(dim, head_hidden)),
                    ("bn1", nn.BatchNorm1d(head_hidden)),
                    ("gelu1", nn.GELU()),
                    ("fc2", nn.Linear(head_hidden, head_hidden)),
                    ("bn2", nn.BatchNorm1d(head_hidden)),
                    ("gelu2", nn.GELU()),
                    ("fc3", nn.Linear(head_hidden, head_out)),
                ]
            )
        )

    def _positions(self, grid):
        if grid == self.grid:
            return self.pos_embed
        table = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
        table = table.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
        return torch.cat([self.pos_embed[:, :1], table], dim=1)

    def features(self, images, keep=None):
        """Images (N, C, H, W) -> head output; ``keep``: patch indices kept (all rows)."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = x + self._positions(images.shape[-1] // self.patch_embed.proj.kernel_size[0])
        if keep is not None:
            x = x[:, torch.cat([torch.zeros(1, dtype=torch.long), 1 + keep])]
        for block in self.blocks:
            x = block(x)
        return self.fc(self.norm(x)[:, 0])

    def forward(self, groups, keep=None):
        """One forward per crop-size group (a list of (N, C, H, W)); the first group is
        masked with ``keep``."""
        return torch.cat([self.features(g, keep if i == 0 else None) for i, g in enumerate(groups)])


def randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            one = "norm" in name or "bn" in name
            param.copy_((1.0 if one and name.endswith("weight") else 0.0) + 0.1 * noise)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(1.0 + 0.1 * torch.rand(buffer.shape, generator=generator))
    return model


def msn_loss(
    anchors,
    targets,
    prototypes,
    tau,
    sharpen,
    me_max_weight,
    use_sinkhorn,
    entropy_weight,
    num_views,
    sinkhorn_iters=3,
):
    q = F.normalize(prototypes)
    probs = torch.softmax(F.normalize(anchors) @ q.T / tau, dim=1)
    with torch.no_grad():
        p = torch.softmax(F.normalize(targets) @ q.T / tau, dim=1) ** (1.0 / sharpen)
        p = p / p.sum(dim=1, keepdim=True)
        if use_sinkhorn:
            batch, k = p.shape
            p = p / p.sum()
            for _ in range(sinkhorn_iters):
                p = p / p.sum(dim=0, keepdim=True) / k  # every prototype gets 1/K
                p = p / p.sum(dim=1, keepdim=True) / batch  # every sample carries 1/B
            p = p * batch
        p = p.repeat(num_views, 1)
    ce = torch.mean(torch.sum(-p * torch.log(probs), dim=1))
    mean_probs = probs.mean(dim=0)
    me_max = torch.sum(mean_probs * torch.log(mean_probs)) + math.log(len(mean_probs))
    entropy = torch.mean(torch.sum(-probs * torch.log(probs), dim=1))
    return ce + me_max_weight * me_max + entropy_weight * entropy


class Run:
    """The authors' training state: encoder, EMA target, prototypes, AdamW, step."""

    def __init__(self, encoder, prototypes, recipe, target_noise=0.0, seed=0):
        self.encoder = encoder
        self.target = copy.deepcopy(encoder)
        for p in self.target.parameters():
            p.requires_grad_(False)
        if target_noise:
            # A mid-training state: the EMA target is not the online encoder.
            generator = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for t in list(self.target.parameters()) + list(self.target.buffers()):
                    if t.dtype.is_floating_point:
                        t.add_(target_noise * torch.randn(t.shape, generator=generator))
        self.prototypes = nn.Parameter(prototypes.clone())
        self.recipe = recipe
        decayed, other = [], []
        for name, p in encoder.named_parameters():
            if "bias" not in name and "bn" not in name and p.ndim != 1:
                decayed.append(p)
            else:
                other.append(p)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decayed},
                {"params": other, "WD_exclude": True, "weight_decay": 0.0},
                {"params": [self.prototypes], "WD_exclude": True, "weight_decay": 0.0},
            ],
            foreach=False,
        )
        self.step = 0

    def schedules(self, k):
        """lr and wd of update k (advanced before it: position k + 1), T and m (at k)."""
        r = self.recipe
        span = int(r["ipe_scale"] * r["total_steps"])
        warmup = r["warmup_steps"]
        s = k + 1
        if s < warmup:
            lr = r["start_lr"] + s / max(1, warmup) * (r["lr"] - r["start_lr"])
        else:
            progress = (s - warmup) / max(1, span - warmup)
            lr = r["final_lr"] + (r["lr"] - r["final_lr"]) * 0.5 * (
                1 + math.cos(math.pi * progress)
            )
        wd = r["final_wd"] + (r["wd"] - r["final_wd"]) * 0.5 * (1 + math.cos(math.pi * s / span))
        stretch = r["ipe_scale"] * r["total_steps"]
        sharpen = r["T"] + k * (r["final_T"] - r["T"]) / stretch
        momentum = r["m"] + k * (1.0 - r["m"]) / stretch
        return lr, wd, sharpen, momentum

    def train_step(self, target_view, anchor_view, focal_views, keep):
        """Views NCHW: target (B, ...), anchor (B, ...), focal (M * B, ...) view-major."""
        r = self.recipe
        lr, wd, sharpen, momentum = self.schedules(self.step)
        self.encoder.train()
        self.target.train()
        anchors = self.encoder([anchor_view, focal_views], keep=keep)
        with torch.no_grad():
            targets = self.target([target_view])
        num_views = len(anchors) // len(targets)
        loss = msn_loss(
            anchors,
            targets,
            self.prototypes,
            r["tau"],
            sharpen,
            r["me_max"],
            r["sinkhorn"],
            r["entropy"],
            num_views,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if not group.get("WD_exclude"):
                group["weight_decay"] = wd
        self.optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), r["clip"])
        self.optimizer.step()
        with torch.no_grad():
            for p, t in zip(self.encoder.parameters(), self.target.parameters()):
                t.mul_(momentum).add_((1.0 - momentum) * p)
        self.step += 1
        return loss.item(), norm.item()

    def save(self, path, prefix="module.", epoch=1):
        def state(module):
            return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}

        torch.save(
            {
                "encoder": state(self.encoder),
                "target_encoder": state(self.target),
                "prototypes": self.prototypes.detach().clone(),
                "opt": self.optimizer.state_dict(),
                "epoch": epoch,
                "loss": 0.0,
                "batch_size": 4,
                "world_size": 1,
                "lr": self.recipe["lr"],
                "temperature": self.recipe["tau"],
            },
            path,
        )


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
