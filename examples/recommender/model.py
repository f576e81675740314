"""The example recommender: a DeepFM-style click-through-rate model for MovieLens 100K.

Seven fields (user, item, occupation, gender, age bucket, genre bag, dense features) each give a
16-d vector for a factorization machine (second-order interactions) and, concatenated with the
full 128-d user and item embeddings, feed an MLP. The logit is MLP + FM + user / item biases.
367,556 parameters, 91% of them in the user and item tables.
"""

from __future__ import annotations

import torch
from torch import nn

# ML-100K table sizes (max id + 1, id 0 = padding / unknown), as written to artifacts/vocab.json.
ML100K_VOCAB = {"user_id": 944, "item_id": 1683, "occupation": 22, "gender": 3, "age_bucket": 8, "genres": 20}


class DeepFM(nn.Module):
    """DeepFM over id features, a padded genre bag and dense features; returns a logit of shape [batch]."""

    def __init__(self, vocab: dict[str, int], *, id_dim: int = 128, field_dim: int = 16, num_dense: int = 2,
                 hidden: tuple[int, ...] = (64, 32), dropout: float = 0.1) -> None:
        super().__init__()
        # padding_idx=0 keeps row 0 at zero and untrained: id 0 (unknown / padding) contributes nothing.
        self.user = nn.Embedding(vocab["user_id"], id_dim, padding_idx=0)
        self.item = nn.Embedding(vocab["item_id"], id_dim, padding_idx=0)
        self.occupation = nn.Embedding(vocab["occupation"], field_dim, padding_idx=0)
        self.gender = nn.Embedding(vocab["gender"], field_dim, padding_idx=0)
        self.age = nn.Embedding(vocab["age_bucket"], field_dim, padding_idx=0)
        # Written out instead of nn.EmbeddingBag, whose ONNX export loops over rows (Loop +
        # SequenceEmpty, 60x slower at batch 256) and which litert-torch and ExecuTorch cannot run.
        # An Embedding + mean over the non-padding slots is the same function as
        # EmbeddingBag(mode="mean", padding_idx=0) and exports to Gather/ReduceSum. (edgepack now
        # does this rewrite itself for models that use nn.EmbeddingBag: see edgepack/model/bag_rewrite.py.)
        self.genres = nn.Embedding(vocab["genres"], field_dim, padding_idx=0)
        self.dense = nn.Linear(num_dense, field_dim)
        # The FM needs one width for every field: the 128-d id embeddings are projected to 16.
        self.user_fm = nn.Linear(id_dim, field_dim, bias=False)
        self.item_fm = nn.Linear(id_dim, field_dim, bias=False)
        # First-order terms for the two ids (per-user leniency, per-item popularity).
        self.user_bias = nn.Embedding(vocab["user_id"], 1, padding_idx=0)
        self.item_bias = nn.Embedding(vocab["item_id"], 1, padding_idx=0)
        layers: list[nn.Module] = []
        width = 2 * id_dim + 5 * field_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        # nn.Embedding's default N(0, 1) start makes the FM term (a sum of squares over 7 fields)
        # explode to logits of +-50; small vectors start the FM near zero, as in the DeepFM paper.
        for table in (self.user, self.item, self.occupation, self.gender, self.age, self.genres):
            nn.init.normal_(table.weight, std=0.01)
        for table in (self.user_bias, self.item_bias):
            nn.init.zeros_(table.weight)
        for table in (self.user, self.item, self.occupation, self.gender, self.age, self.genres):
            with torch.no_grad():
                table.weight[0].zero_()     # re-zero the padding row after re-initialising

    def forward(self, user_id: torch.Tensor, item_id: torch.Tensor, occupation: torch.Tensor,
                gender: torch.Tensor, age_bucket: torch.Tensor, genres: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
        """int64 ids [batch] (genres [batch, 6], 0 = padding) and float32 dense [batch, 2] -> logits [batch]."""
        user, item = self.user(user_id), self.item(item_id)
        # Mean over the genre slots that are set; row 0 of the table is zero, so padding adds
        # nothing to the sum. clamp: an item without genres gives a zero vector, not NaN.
        count = (genres > 0).sum(dim=1, keepdim=True).to(torch.float32).clamp(min=1.0)
        genre = self.genres(genres).sum(dim=1) / count
        small = [self.occupation(occupation), self.gender(gender), self.age(age_bucket), genre, self.dense(dense)]
        fields = [self.user_fm(user), self.item_fm(item)] + small
        # FM second order, sum over pairs <v_i, v_j> = 0.5 * ((sum v)^2 - sum v^2), summed over the
        # 16 dims. Plain adds over the list instead of torch.stack + bmm: torch.stack makes
        # torch-pruning drop the wrong columns, and bmm on activations blows up its dependency graph.
        total, squares = fields[0], fields[0] * fields[0]
        for field in fields[1:]:
            total = total + field
            squares = squares + field * field
        fm = 0.5 * (total * total - squares).sum(dim=1)
        deep = self.mlp(torch.cat([user, item] + small, dim=1)).squeeze(1)
        bias = (self.user_bias(user_id) + self.item_bias(item_id)).squeeze(1)
        return deep + fm + bias


def build_model(user_id: int = ML100K_VOCAB["user_id"], item_id: int = ML100K_VOCAB["item_id"],
                occupation: int = ML100K_VOCAB["occupation"], gender: int = ML100K_VOCAB["gender"],
                age_bucket: int = ML100K_VOCAB["age_bucket"], genres: int = ML100K_VOCAB["genres"],
                **kwargs) -> nn.Module:
    """The recipe's factory: table sizes (max id + 1) per id input, ML-100K's by default.

    Extra keyword arguments (id_dim, field_dim, hidden, dropout) go to DeepFM.
    """
    vocab = {"user_id": user_id, "item_id": item_id, "occupation": occupation, "gender": gender,
             "age_bucket": age_bucket, "genres": genres}
    return DeepFM(vocab, **kwargs)
