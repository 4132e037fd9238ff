"""The teacher PLM: loading a local transformers model + fast tokenizer, and one batched forward pass
that returns the chosen layer's states per transcript."""
from pathlib import Path
from typing import List

import numpy as np
import torch


def load_plm(plm_dir: str, device: str):
    """AutoTokenizer + AutoModel from a local directory, eval mode, on ``device``."""
    from transformers import AutoModel, AutoTokenizer

    if not Path(plm_dir).is_dir():
        raise FileNotFoundError(f"--plm-dir {plm_dir} is not a directory (a local PLM with config.json, weights, tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(plm_dir, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{plm_dir}: a fast tokenizer (tokenizer.json or a vocab convertible by `tokenizers`) is needed for offsets")
    model = AutoModel.from_pretrained(plm_dir, local_files_only=True).to(device).eval()
    return tokenizer, model


@torch.no_grad()
def run_batch(model, input_ids: List[List[int]], pad_id: int, layer: int, device: str,
              token_types: bool = True) -> List[np.ndarray]:
    """PLM states [len(ids), D] (float32) of each input id sequence, chosen layer (index into
    hidden_states, -1 the last); ``token_types``: pass all-zero token_type_ids (BERT-like models)."""
    n = max(len(ids) for ids in input_ids)
    batch = torch.full((len(input_ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), n), dtype=torch.long)
    for b, ids in enumerate(input_ids):
        batch[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
    extra = {"token_type_ids": torch.zeros_like(batch).to(device)} if token_types else {}
    out = model(input_ids=batch.to(device), attention_mask=mask.to(device), output_hidden_states=layer != -1, **extra)
    h = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    h = h.float().cpu().numpy()
    return [h[b, : len(ids)] for b, ids in enumerate(input_ids)]
