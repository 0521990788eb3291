"""Small reference model families (torch): the paper's MLP, 1D and 2D CNNs, a transformer encoder."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """The paper's kind of model: d_in -> 96 -> 96 -> classes with ReLU (datasets/README.md)."""

    def __init__(self, d_in: int, classes: int, hidden: tuple[int, ...] = (96, 96)):
        super().__init__()
        sizes = (d_in, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


class CNN1d(nn.Module):
    """IMU/vibration windows (N, length, channels) -> two Conv1d blocks -> global average -> Linear."""

    def __init__(self, channels: int, classes: int, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)                                   # (N, C, L)
        x = torch.max_pool1d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x)).mean(dim=2)
        return self.head(x)


class CNN2d(nn.Module):
    """Images or log-mel spectrograms (N, H, W) -> three Conv2d blocks -> average -> Linear.

    pool_width: None averages over H and W (images); an int (W / 4) keeps the W axis (for spectrograms
    (N, time, mel): the mel axis, where a digit's formants are) and averages over H only.
    strided: the first block is a stride-2 convolution instead of convolution + max-pool (3x faster).
    """

    def __init__(self, classes: int, width: int = 16, pool_width: int | None = None, strided: bool = False):
        super().__init__()
        self.strided = strided
        self.conv1 = nn.Conv2d(1, width // 2, 3, padding=1, stride=2 if strided else 1)
        self.conv2 = nn.Conv2d(width // 2, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * (pool_width or 1), classes)
        self.keep_width = pool_width is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)                                      # (N, 1, H, W)
        x = torch.relu(self.conv1(x))
        x = x if self.strided else torch.max_pool2d(x, 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        x = x.mean(dim=2).flatten(1) if self.keep_width else x.mean(dim=(2, 3))
        return self.head(x)


class TransformerClassifier(nn.Module):
    """Sequences (N, L, d_in) + mask (N, L) (1 = real step) -> nn.TransformerEncoder -> masked mean -> Linear."""

    def __init__(self, d_in: int, classes: int, d_model: int = 32, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x), src_key_padding_mask=mask == 0)
        w = mask.to(h.dtype).unsqueeze(-1)
        return self.head((h * w).sum(1) / w.sum(1).clamp(min=1.0))
